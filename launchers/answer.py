"""Understanding: answer questions about (or caption) a face image, KV-cache decoding.

    python launchers/answer.py --help

The command is ``unif2ace.commands.answer`` (also installed as ``unif2ace-answer``).
"""
import sys

from unif2ace.commands.answer import main

if __name__ == "__main__":
    sys.exit(main())
