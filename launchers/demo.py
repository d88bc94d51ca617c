"""The built-in end-to-end run on SynthFace, on CPU (README command 1).

    python launchers/demo.py --help

The command is ``unif2ace.commands.demo`` (also installed as ``unif2ace-demo``).
"""
import sys

from unif2ace.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
