"""What precompute would read from a source spec, before anyone spends hours in precompute.

    python tools/inspect_source.py --help

The command is ``unif2ace.commands.inspect_source`` (also installed as ``unif2ace-inspect-source``).
"""
import sys

from unif2ace.commands.inspect_source import main

if __name__ == "__main__":
    sys.exit(main())
