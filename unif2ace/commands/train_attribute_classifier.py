#!/usr/bin/env python
"""Train the SynthFace attribute classifier (the evaluator's judge) and report its test accuracy.

    python tools/train_attribute_classifier.py --data data/synthface --out runs/classifier [--steps 1200]

Trains on the train split for a fixed number of steps (CPU, one thread by default: about
5 minutes for the default 1200 steps of 128 images on a shared 2-core machine), then
prints per-category accuracy on the test split (people never seen in training) with chance
level, and writes OUT/config.json + OUT/model.safetensors + OUT/test_metrics.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from unif2ace.cli import parse_dataclass
from unif2ace.eval.classifier_training import TrainClassifierConfig, format_report, train_classifier


def main(argv: list[str] | None = None) -> int:
    # model.categories come from the data's attributes.json, not from a flag
    cfg = parse_dataclass(TrainClassifierConfig, argv, __doc__, required=("data", "out"), exclude=("model.categories",))
    result = train_classifier(cfg)
    print(format_report(result))
    print(json.dumps({"test_mean_accuracy": result["test"]["mean_accuracy"],
                      "metrics": str(Path(cfg.out) / "test_metrics.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
