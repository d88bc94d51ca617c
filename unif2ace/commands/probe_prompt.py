"""Does a checkpoint read its T2I prompt? (a diagnostic; unif2ace/eval/prompt_probe.py)

    python tools/probe_prompt.py --checkpoint runs/demo/model --shards runs/demo/shards_unseen

Prints, per mask ratio, the masked-code loss of the split's first faces with their own
captions, with another face's and with none, and the gap other − own (in nats; > 0: the prompt
is read). ``--out`` also writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from unif2ace.atomic import atomic_write_text
from unif2ace.checkpoint.load import load_model
from unif2ace.data import shards as S
from unif2ace.eval.prompt_probe import CONDITIONS, prompt_losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model directory (tools/convert_checkpoint.py) or ZeRO run")
    p.add_argument("--shards", default="", help="precomputed shards (default: the checkpoint's data.shards)")
    p.add_argument("--split", default="test", help="split whose faces are used (default test)")
    p.add_argument("--num", type=int, default=64, help="faces (the split's first; default 64)")
    p.add_argument("--ratios", default="0.3,0.6,0.9", help="mask ratios, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks")
    p.add_argument("--out", default="", help="also write the result as JSON here")
    a = p.parse_args(argv)
    try:
        ratios = [float(r) for r in a.ratios.split(",")]
    except ValueError:
        p.error(f"--ratios {a.ratios!r}: expected numbers separated by commas")
    if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
        p.error(f"--ratios {a.ratios!r}: each must be in (0, 1]")
    model, cfg = load_model(a.checkpoint)
    shards = Path(a.shards or cfg.data.shards)
    manifest = S.read_manifest(shards)
    S.check_compatible(manifest, cfg.model, shards)
    rows = []
    for s in manifest["shards"]:
        view = S.ShardView(shards / s["name"], manifest["feature_shapes"])
        rows += [(view, r) for r in range(view.n) if view.split[r] == a.split and len(view.caption_ids[r])]
        if len(rows) >= a.num:
            break
    rows = rows[: a.num]
    if len(rows) < 2:
        raise SystemExit(f"{shards}: {len(rows)} captioned faces in split {a.split!r}; the probe needs at least two")
    codes, feats = S.codes_and_features(rows)
    captions = [v.caption_ids[r].tolist() for v, r in rows]
    torch.manual_seed(a.seed)
    losses = prompt_losses(model, cfg, codes, captions, feats, ratios, a.seed)
    print(f"{len(rows)} faces of split {a.split!r} in {shards}: masked-code loss (nats)")
    print(f"{'mask ratio':>10s} " + " ".join(f"{c:>8s}" for c in CONDITIONS) + f" {'other−own':>10s}")
    for r, d in losses.items():
        print(f"{r:>10.2f} " + " ".join(f"{d[c]:>8.4f}" for c in CONDITIONS) + f" {d['other'] - d['own']:>10.4f}")
    if a.out:
        result = {"checkpoint": str(a.checkpoint), "shards": str(shards), "split": a.split, "faces": len(rows),
                  "losses": {str(r): d for r, d in losses.items()}}
        atomic_write_text(a.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
