"""Evaluate a checkpoint on SynthFace: VQA, captions, generated faces; metrics.json, report.md, answers.jsonl.

    python launchers/evaluate.py --help

The command is ``unif2ace.commands.evaluate`` (also installed as ``unif2ace-evaluate``).
"""
import sys

from unif2ace.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
