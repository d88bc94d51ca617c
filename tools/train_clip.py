"""Train a small CLIP (open_clip architecture + open_clip's contrastive loss) on image–caption pairs.

    python tools/train_clip.py --help

The command is ``unif2ace.commands.train_clip`` (also installed as ``unif2ace-train-clip``).
"""
import sys

from unif2ace.commands.train_clip import main

if __name__ == "__main__":
    sys.exit(main())
