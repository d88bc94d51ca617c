#!/usr/bin/env python
"""Train a face-identity recogniser on SynthFace (ArcFace loss) and export it as insightface ONNX.

    python tools/train_face_recognizer.py --data data/synthface --out runs/face_rec [--steps 400]

Each train-split identity is a class; held-out people (val/test splits) measure pair
verification (threshold chosen on val, accuracy and ROC AUC reported on test). Writes
OUT/rec.onnx (112² input, dynamic batch, insightface's ArcFace preprocessing), OUT/metrics.json
and OUT/train_config.json. Use it for face features with
``face.mode=aligned face.rec_path=OUT/rec.onnx`` (or ``face.model_dir=OUT``).
One thread by default.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from unif2ace.features.face_training import (FaceTrainConfig, FaceTrainError, RecognizerConfig,
                                             format_report, train_face_recognizer)


def main(argv: list[str] | None = None) -> int:
    d, dm = FaceTrainConfig(), RecognizerConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="SynthFace directory (metadata.jsonl, images/)")
    p.add_argument("--out", required=True, help="output directory (rec.onnx, metrics.json, train_config.json)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--margin", type=float, default=d.margin, help="ArcFace additive angular margin (radians)")
    p.add_argument("--scale", type=float, default=d.scale, help="ArcFace logit scale")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--input-size", type=int, default=dm.input_size, help="side the network runs at (ONNX input stays 112)")
    p.add_argument("--widths", default=",".join(map(str, dm.widths)), help="channels per stage, comma-separated")
    p.add_argument("--dim", type=int, default=dm.dim, help="embedding width (face.dim must match)")
    p.add_argument("--dropout", type=float, default=dm.dropout)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = FaceTrainConfig(
        data=a.data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, margin=a.margin, scale=a.scale,
        hflip=not a.no_flip, threads=a.threads, seed=a.seed, progress=not a.no_progress,
        model=RecognizerConfig(input_size=a.input_size, widths=[int(w) for w in a.widths.split(",") if w],
                               dim=a.dim, dropout=a.dropout))
    try:
        result = train_face_recognizer(cfg)
    except FaceTrainError as e:
        print(f"train_face_recognizer: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    print(json.dumps({"test_accuracy": result["test"]["accuracy"], "test_auc": result["test"]["auc"],
                      "rec_path": str(Path(a.out) / "rec.onnx"), "metrics": str(Path(a.out) / "metrics.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
