"""Train a SentencePiece text tokenizer on a data set's captions and QA text.

    python tools/train_text_tokenizer.py --help

The command is ``unif2ace.commands.train_text_tokenizer`` (also installed as ``unif2ace-train-text-tokenizer``).
"""
import sys

from unif2ace.commands.train_text_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
