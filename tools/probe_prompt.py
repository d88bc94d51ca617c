"""Does a checkpoint read its T2I prompt? Masked-code loss with own / another face's / no caption.

    python tools/probe_prompt.py --help

The command is ``unif2ace.commands.probe_prompt`` (also installed as ``unif2ace-probe-prompt``).
"""
import sys

from unif2ace.commands.probe_prompt import main

if __name__ == "__main__":
    sys.exit(main())
