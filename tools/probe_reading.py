"""How fast the recipe's transformer learns to read oracle features, per kind of question (a diagnostic).

    python tools/probe_reading.py --help

The command is ``unif2ace.commands.probe_reading`` (also installed as ``unif2ace-probe-reading``).
"""
import sys

from unif2ace.commands.probe_reading import main

if __name__ == "__main__":
    sys.exit(main())
