"""Copy precomputed shards with the CLIP features replaced by one-hots of the true attributes (a diagnostic).

    python tools/oracle_features.py --help

The command is ``unif2ace.commands.oracle_features`` (also installed as ``unif2ace-oracle-features``).
"""
import sys

from unif2ace.commands.oracle_features import main

if __name__ == "__main__":
    sys.exit(main())
