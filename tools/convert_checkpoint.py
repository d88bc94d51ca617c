"""Turn a DeepSpeed (ZeRO-1/2/3) training checkpoint into our model directory, and back.

    python tools/convert_checkpoint.py --help

The command is ``unif2ace.commands.convert_checkpoint`` (also installed as ``unif2ace-convert-checkpoint``).
"""
import sys

from unif2ace.commands.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
