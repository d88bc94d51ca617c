"""Render the SynthFace data set (procedural faces + dense captions + VQA + identities).

    python tools/make_synthface.py --out data/synthface --num 10000
    python tools/make_synthface.py --out data/synthface128 --num 2000 --size 128 --workers 2
    python tools/make_synthface.py --out /tmp/sf --num 16 --grid /tmp/synthface_grid.png

Writes ``OUT/images/{train,val,test}/{id}.png``, ``OUT/metadata.jsonl`` (one JSON object per
image: id, split, identity, file, caption, qa, attributes) and ``OUT/attributes.json`` (the
taxonomy). Same --seed → byte-identical files, whatever --workers. Splits are by identity.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from PIL import Image

from unif2ace.synthface import contact_sheet, write_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--num", type=int, required=True, help="number of images")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--per-identity", type=int, default=4, help="images per identity (default 4)")
    ap.add_argument("--val-frac", type=float, default=0.1, help="fraction of identities in val")
    ap.add_argument("--test-frac", type=float, default=0.1, help="fraction of identities in test")
    ap.add_argument("--grid", default=None, help="also write a contact sheet of the first 16 images here")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    try:
        counts = write_dataset(args.out, args.num, args.size, args.seed, args.workers, args.per_identity,
                               args.val_frac, args.test_frac, progress=not args.quiet)
    except (ValueError, OSError) as e:
        print(f"make_synthface: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t
    print(f"wrote {args.num} images to {args.out} in {dt:.1f}s ({args.num / dt:.0f} img/s): {counts}")
    if args.grid:
        out = Path(args.out)
        with open(out / "metadata.jsonl") as f:
            files = [json.loads(line)["file"] for line, _ in zip(f, range(16))]
        contact_sheet([Image.open(out / p).convert("RGB") for p in files], cols=4,
                      scale=max(1, 256 // args.size)).save(args.grid)
        print(f"contact sheet: {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
