#!/usr/bin/env python
"""Evaluate a checkpoint on SynthFace: VQA, captions, generated faces; metrics.json, report.md, answers.jsonl.

    python launchers/evaluate.py --checkpoint runs/synthface/model --data data/synthface \\
        --classifier runs/classifier --out runs/eval [--shards runs/synthface/shards] \\
        [--num-understanding 200] [--num-generation 64] [--inception-weights FILE] [--skip-generation]

``--checkpoint`` is a model directory or a DeepSpeed checkpoint (``unif2ace.checkpoint.load``);
the tokenizers and the faces' precomputed codes and features come from the shards
(default: the checkpoint's ``data.shards``), so questions are asked about exactly what the
model was trained to see. The evaluation itself is ``unif2ace.eval.evaluate.evaluate``,
which only sees callables:

    from unif2ace.eval.evaluate import EvalConfig, evaluate
    from unif2ace.eval.checkpoint import model_callables
    generate_fn, answer_fn, decode_fn = model_callables("runs/synthface/model")
    evaluate(EvalConfig(data=..., classifier=..., out=...), generate_fn, answer_fn)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unif2ace.cli import parse_with_extras
from unif2ace.eval.checkpoint import model_callables
from unif2ace.eval.evaluate import EvalConfig, evaluate


def _run_flags(p: argparse.ArgumentParser) -> None:
    """Flags that are not EvalConfig fields: how the model is reached and what is skipped."""
    p.add_argument("--shards", default=None, help="precomputed shards (default: the checkpoint's data.shards)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=None, help="generation seed (default: the checkpoint's sample.seed)")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--skip-understanding", action="store_true")


def main(argv: list[str] | None = None) -> int:
    cfg, a = parse_with_extras(EvalConfig, argv, __doc__, required=("checkpoint", "data", "out"), extras=_run_flags)
    generate_fn, answer_fn, decode_fn = model_callables(cfg.checkpoint, a.shards, a.device, a.seed)
    cfg.answer_after = cfg.answer_after or answer_fn.answer_separator  # grounded answers: score the verdict
    m = evaluate(cfg, None if a.skip_generation else generate_fn, None if a.skip_understanding else answer_fn,
                 decode_fn)
    u = m.get("understanding", {})
    summary = {"vqa_accuracy": u.get("vqa", {}).get("overall", {}).get("accuracy"),
               "vqa_own_vs_other_image": [u["image_control"][k] for k in ("own_image", "other_image")]
               if "image_control" in u else None,
               "vqa_classifier_real": u.get("real_reference", {}).get("overall", {}).get("accuracy"),
               "vqa_classifier_decoded": u.get("decoded_reference", {}).get("overall", {}).get("accuracy"),
               "caption_recall": m.get("understanding", {}).get("caption", {}).get("recall"),
               "caption_precision": m.get("understanding", {}).get("caption", {}).get("precision"),
               "caption_recall_own_vs_other_image": [u["image_control"][k] for k in ("caption_own_recall",
                                                                                     "caption_other_recall")]
               if "caption_own_recall" in u.get("image_control", {}) else None,
               "generation_attribute_accuracy": m.get("generation", {}).get("attributes", {}).get("overall"),
               "decoded_attribute_accuracy": m.get("generation", {}).get("decoded_reference", {}).get("overall"),
               "synthface_fid": m.get("generation", {}).get("synthface_fid", {}).get("value"),
               "report": str(Path(cfg.out) / "report.md")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
