#!/usr/bin/env python
"""Train a small CLIP (open_clip architecture + open_clip's contrastive loss) on image–caption pairs.

    python tools/train_clip.py --data runs/sf/data --text-tokenizer runs/sf/spm.model --out runs/sf/clip
    python tools/train_clip.py --help          # every option with its meaning

Then precompute uses it through the ordinary CLIP path:

    python tools/precompute_tokens.py ... --feature clip.model=UniF2ace-SynthFace-CLIP \\
        --feature "clip.model_configs=[runs/sf/clip/UniF2ace-SynthFace-CLIP.json]" \\
        --feature clip.weights=runs/sf/clip/open_clip_model.safetensors --feature clip.patch_tokens=true

Prints zero-shot attribute accuracy (text prompts per attribute value) and a linear probe per
attribute on held-out faces, and writes them to OUT/metrics.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


from unif2ace.cli import parse_dataclass
from unif2ace.features.clip_training import ClipTrainingError, TrainClipConfig, train_clip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(TrainClipConfig, argv, __doc__, required=("data", "text_tokenizer", "out"))
    try:
        m = train_clip(cfg)
    except ClipTrainingError as e:
        print(f"train_clip: {e}", file=sys.stderr)
        return 2
    rows = []
    for kind in ("zero_shot", "linear_probe"):
        for split, r in m[kind].items():
            rows.append(f"{kind:12s} {split:5s} mean {r['mean_accuracy']:.3f}  " + "  ".join(
                f"{c} {v['accuracy']:.2f}" for c, v in r["per_category"].items()))
    print("\n".join(rows))
    print(json.dumps({"train_seconds": m["train_seconds"], "final_loss": m["final_loss"],
                      "metrics": str(Path(cfg.out) / "metrics.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
