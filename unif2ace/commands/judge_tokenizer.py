#!/usr/bin/env python
"""The attribute classifier's accuracy on a split's faces and on the same faces decoded from
each image tokenizer's own codes: what the codes carry for a reader of the pixels.

    python tools/judge_tokenizer.py --data runs/demo/data --classifier assets/synthface/classifier \
        --tokenizer assets/synthface/magvit [--tokenizer runs/other/magvit ...] [--out judge.json]

Prints a per-category table (real faces, then one column per tokenizer) and one JSON line of
the means; ``--out`` also writes the whole result. The measure is the classifier's own test
accuracy (visible attributes only, mean over categories), so the real column equals the
classifier's ``test_metrics.json`` when ``--data`` is the data it was tested on.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from unif2ace.atomic import atomic_write_text
from unif2ace.checkpoint.safetensors_dir import CheckpointError
from unif2ace.eval.attribute_classifier import ClassifierError
from unif2ace.eval.codes import format_table, judge_codes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="SynthFace-layout directory (metadata.jsonl, attributes.json, images/)")
    p.add_argument("--classifier", required=True, help="attribute-classifier directory (the judge)")
    p.add_argument("--tokenizer", action="append", required=True,
                   help="MAGVIT-v2 tokenizer directory (config.json + weights); repeat to compare several")
    p.add_argument("--split", default="test", help="split whose faces are judged (default test)")
    p.add_argument("--limit", type=int, default=0, help="first N faces of the split (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default="", help="also write the whole result as JSON here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        result = judge_codes(a.data, a.classifier, a.tokenizer, a.split, a.limit, a.batch_size)
    except (FileNotFoundError, ValueError, ClassifierError, CheckpointError) as e:  # bad input, not a bug
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if a.out:
        atomic_write_text(a.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({"real": result["real"]["mean_accuracy"],
                      "decoded": {t["path"]: t["mean_accuracy"] for t in result["tokenizers"]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
