"""Text-to-face: MaskGIT sampling with classifier-free guidance, decoded to PNG.

    python launchers/generate.py --checkpoint runs/synthface/model --prompt "A smiling woman with red hair" \
        --num 4 --out runs/samples
    python launchers/generate.py --checkpoint runs/synthface/train/checkpoints --prompts prompts.txt --out runs/samples \
        sample.steps=16 sample.guidance=3

``--checkpoint`` takes our model directory or a DeepSpeed checkpoint directory. Tokenizers and
encoders come from the training shards' manifest (``--shards``, default the run's data.shards).
Trailing ``key=value`` arguments override the ``sample`` section of the checkpoint's config.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unif2ace.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="model directory or DeepSpeed checkpoint directory")
    ap.add_argument("--shards", default=None, help="training shard directory (tokenizers / encoders)")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="one prompt")
    g.add_argument("--prompts", help="a text file, one prompt per line")
    ap.add_argument("--num", type=int, default=1, help="images per prompt")
    ap.add_argument("--batch", type=int, default=8, help="prompts per forward")
    ap.add_argument("--out", required=True, help="output directory for PNGs + index.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("overrides", nargs="*", help="sample.key=value")
    args = ap.parse_args(argv)
    from unif2ace.inference.assets import load_assets
    from unif2ace.inference.batch import generate_images, sample_config

    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            print(f"error: {path}: no such prompts file", file=sys.stderr)
            return 2
        prompts = [l.strip() for l in path.read_text().splitlines() if l.strip()]
        if not prompts:
            print(f"error: {path}: no prompts (one per line)", file=sys.stderr)
            return 2
    else:
        prompts = [args.prompt]
    try:
        assets = load_assets(args.checkpoint, args.shards, args.device)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        scfg = sample_config(assets.cfg, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    images = generate_images(assets, prompts, scfg, args.num, args.batch, out)
    print(f"wrote {len(images)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
