"""Train the SynthFace attribute classifier (the evaluator's judge) and report its test accuracy.

    python tools/train_attribute_classifier.py --help

The command is ``unif2ace.commands.train_attribute_classifier`` (also installed as ``unif2ace-train-attribute-classifier``).
"""
import sys

from unif2ace.commands.train_attribute_classifier import main

if __name__ == "__main__":
    sys.exit(main())
