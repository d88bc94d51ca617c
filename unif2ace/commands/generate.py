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
import json
import sys
from pathlib import Path



def sample_config(cfg, overrides: list[str]):
    from unif2ace.config import SampleConfig, _build, parse_overrides
    import dataclasses
    tree = parse_overrides(overrides)
    extra = set(tree) - {"sample"}
    if extra:
        raise SystemExit(f"error: only sample.* overrides apply here, got {sorted(extra)}")
    return _build(SampleConfig, {**dataclasses.asdict(cfg.sample), **tree.get("sample", {})}, "sample.")


def generate(assets, prompts: list[str], scfg, num: int = 1, batch: int = 8, out: Path | None = None) -> list:
    """Images (PIL) for every prompt × num, seeds scfg.seed + i; PNGs + index.json under ``out``."""
    import torch
    from tqdm import tqdm

    from unif2ace.inference.t2i import codes_to_pil, generate_codes, save_png

    jobs = [(p, k) for p in prompts for k in range(num)]
    images, index = [], []
    for s in tqdm(range(0, len(jobs), batch), desc="generate", unit="batch", disable=len(jobs) <= batch):
        chunk = jobs[s:s + batch]
        ids = [assets.text.encode(p) for p, _ in chunk]
        gen = torch.Generator().manual_seed(scfg.seed + s)
        codes = generate_codes(assets.model, ids, scfg, generator=gen)
        pics = codes_to_pil(assets.image_tokenizer, codes)
        for (p, k), im in zip(chunk, pics):
            images.append(im)
            if out is not None:
                name = f"{len(index):05d}.png"
                save_png(im, out / name)
                index.append({"file": name, "prompt": p, "sample": k})
    if out is not None:
        (out / "index.json").write_text(json.dumps(index, indent=1))
    return images


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
    scfg = sample_config(assets.cfg, args.overrides)
    out = Path(args.out)
    images = generate(assets, prompts, scfg, args.num, args.batch, out)
    print(f"wrote {len(images)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
