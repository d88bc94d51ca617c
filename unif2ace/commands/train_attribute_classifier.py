#!/usr/bin/env python
"""Train the SynthFace attribute classifier (the evaluator's judge) and report its test accuracy.

    python tools/train_attribute_classifier.py --data data/synthface --out runs/classifier [--steps 1200]

Trains on the train split for a fixed number of steps (CPU, one thread by default: about
5 minutes for the default 1200 steps of 128 images on a shared 2-core machine), then
prints per-category accuracy on the test split (people never seen in training) with chance
level, and writes OUT/config.json + OUT/model.safetensors + OUT/test_metrics.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from unif2ace.eval.attribute_classifier import ClassifierConfig
from unif2ace.eval.classifier_training import TrainClassifierConfig, format_report, train_classifier


def main(argv: list[str] | None = None) -> int:
    d, dm = TrainClassifierConfig(), ClassifierConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="SynthFace directory (metadata.jsonl, attributes.json, images/)")
    p.add_argument("--out", required=True, help="output directory for the classifier and test_metrics.json")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the train split instead of --steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--max-train", type=int, default=d.max_train, help="cap on train images (0 = all)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--widths", default=",".join(map(str, dm.widths)), help="channels per stage, comma-separated")
    p.add_argument("--stem-stride", type=int, default=dm.stem_stride)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = TrainClassifierConfig(
        data=a.data, out=a.out, steps=a.steps, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, max_train=a.max_train,
        threads=a.threads, seed=a.seed, progress=not a.no_progress,
        model=ClassifierConfig(widths=[int(w) for w in a.widths.split(",") if w], stem_stride=a.stem_stride))
    result = train_classifier(cfg)
    print(format_report(result))
    print(json.dumps({"test_mean_accuracy": result["test"]["mean_accuracy"],
                      "metrics": str(Path(a.out) / "test_metrics.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
