"""Train a MAGVIT-v2 / LFQ image tokenizer on a folder of images (PNG / JPG / WebP / BMP).

    python tools/make_synthface.py --out runs/synthface/data --num 5000
    python tools/train_image_tokenizer.py --train-dir runs/synthface/data/images/train \\
        --val-dir runs/synthface/data/images/val --preset synthface --out runs/synthface/magvit
    python tools/train_image_tokenizer.py ... --resume             # continue from OUT/train_state.pt
    python tools/train_image_tokenizer.py ... --model ch=64,codebook_bits=10   # MagvitConfig overrides

Every option below is a field of ``unif2ace.tokenizers.training.TokenizerTrainConfig``; the
training itself (objective, schedule, outputs) is documented there.
"""
from __future__ import annotations

import json
import sys

from unif2ace.cli import parse_dataclass
from unif2ace.config import ConfigError
from unif2ace.tokenizers.training import TokenizerTrainConfig, train


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(TokenizerTrainConfig, argv, __doc__, required=("train_dir",))
    try:
        metrics = train(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: metrics[k] for k in ("steps", "stopped_early", "steps_per_second", "images_per_second",
                                       "num_params") if k in metrics}
    if "val" in metrics:
        summary["val"] = metrics["val"]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
