"""Precompute training shards: MAGVIT image codes, text ids, CLIP / face / noise features.

    python tools/precompute_tokens.py --help

The command is ``unif2ace.commands.precompute_tokens`` (also installed as ``unif2ace-precompute-tokens``).
"""
import sys

from unif2ace.commands.precompute_tokens import main

if __name__ == "__main__":
    sys.exit(main())
