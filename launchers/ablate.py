"""The paper's ablations (Tables 4-5) at SynthFace scale: one command, one table.

    python launchers/ablate.py --help

The command is ``unif2ace.commands.ablate`` (also installed as ``unif2ace-ablate``).
"""
import sys

from unif2ace.commands.ablate import main

if __name__ == "__main__":
    sys.exit(main())
