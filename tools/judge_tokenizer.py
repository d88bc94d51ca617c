"""The attribute classifier on a split's faces and on the same faces decoded from each image tokenizer's codes.

    python tools/judge_tokenizer.py --help

The command is ``unif2ace.commands.judge_tokenizer`` (also installed as ``unif2ace-judge-tokenizer``).
"""
import sys

from unif2ace.commands.judge_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
