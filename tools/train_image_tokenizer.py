"""Train a MAGVIT-v2 / LFQ image tokenizer on a folder of images.

    python tools/train_image_tokenizer.py --help

The command is ``unif2ace.commands.train_image_tokenizer`` (also installed as ``unif2ace-train-image-tokenizer``).
"""
import sys

from unif2ace.commands.train_image_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
