#!/usr/bin/env python
"""Train a face-identity recogniser on SynthFace (ArcFace loss) and export it as insightface ONNX.

    python tools/train_face_recognizer.py --data data/synthface --out runs/face_rec [--steps 400] [--model-widths 16,32,64]

Each train-split identity is a class; held-out people (val/test splits) measure pair
verification (threshold chosen on val, accuracy and ROC AUC reported on test). Writes
OUT/rec.onnx (112² input, dynamic batch, insightface's ArcFace preprocessing), OUT/metrics.json
and OUT/train_config.json. Use it for face features with
``face.mode=aligned face.rec_path=OUT/rec.onnx`` (or ``face.model_dir=OUT``).
One thread by default.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from unif2ace.cli import parse_dataclass
from unif2ace.features.face_training import FaceTrainConfig, FaceTrainError, format_report, train_face_recognizer


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(FaceTrainConfig, argv, __doc__, required=("data", "out"))
    try:
        result = train_face_recognizer(cfg)
    except FaceTrainError as e:
        print(f"train_face_recognizer: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    print(json.dumps({"test_accuracy": result["test"]["accuracy"], "test_auc": result["test"]["auc"],
                      "rec_path": str(Path(cfg.out) / "rec.onnx"), "metrics": str(Path(cfg.out) / "metrics.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
