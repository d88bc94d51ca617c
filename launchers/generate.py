"""Text-to-face: MaskGIT sampling with classifier-free guidance, decoded to PNG.

    python launchers/generate.py --help

The command is ``unif2ace.commands.generate`` (also installed as ``unif2ace-generate``).
"""
import sys

from unif2ace.commands.generate import main

if __name__ == "__main__":
    sys.exit(main())
