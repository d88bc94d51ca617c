"""Copy precomputed shards with the CLIP features replaced by the samples' true attributes.

    python tools/oracle_features.py --shards runs/demo/shards --out runs/oracle/shards
    python tools/oracle_features.py --shards runs/demo/shards_unseen --out runs/oracle/shards_unseen

A diagnostic, not a way to train a model: each sample's ``clip`` feature (and every token of
``clip_patches``) becomes a one-hot of its attributes (``--scale`` at each (category, value)
it has, 0 elsewhere). The features then carry every answer linearly, so a model trained and
evaluated on these shards shows how fast the rest of the architecture learns to read a face
when reading is trivial: an upper bound on what better encoders can buy at a given budget.
Image codes, text and the face / noise features are copied unchanged; train and evaluate on
the copies as on any shards (``data.shards=…``, ``launchers/evaluate.py --shards …``).

Slots are the sorted (category, value) pairs found in the source shards (or ``--slots-from``
another shard directory, so that train and evaluation copies share one layout); they must fit
the feature width. The manifest of the copy records the slots and the source.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from unif2ace.data import shards as S

CLIP_KEYS = ("clip", "clip_patches")


def _attributes(table) -> list[dict[str, str]]:
    return [json.loads(a) if a else {} for a in table.column("attributes").to_pylist()]


def find_slots(shard_dir: Path, categories: set[str] | None = None) -> list[tuple[str, str]]:
    """Sorted (category, value) pairs of every sample's attributes in ``shard_dir``."""
    import datasets

    man = S.read_manifest(shard_dir)
    pairs: set[tuple[str, str]] = set()
    for sh in man["shards"]:
        table = datasets.Dataset.from_file(str(shard_dir / sh["name"] / S.DATA_FILE)).data.table
        for attrs in _attributes(table):
            pairs |= {(c, str(v)) for c, v in attrs.items() if categories is None or c in categories}
    return sorted(pairs)


def write_oracle(src: Path, out: Path, slots: list[tuple[str, str]], scale: float = 4.0) -> dict:
    """Write the copy (shard by shard, atomically) and its manifest; returns the manifest."""
    man = S.read_manifest(src)
    shapes = man["feature_shapes"]
    keys = [k for k in CLIP_KEYS if k in shapes]
    if not keys:
        raise SystemExit(f"{src}: the shards hold no CLIP features ({', '.join(shapes) or 'none'}); nothing to replace")
    width = shapes[keys[0]][-1]
    if not slots:
        raise SystemExit(f"{src}: no sample has attributes; an oracle feature needs them")
    if len(slots) > width:
        raise SystemExit(f"{len(slots)} (category, value) pairs do not fit the {width}-wide CLIP feature; "
                         "keep fewer with --categories")
    index = {s: i for i, s in enumerate(slots)}

    def edit(cols: dict) -> dict:
        n = len(cols["id"])
        onehot = np.zeros((n, width), np.float32)
        for i, attrs in enumerate(json.loads(a) if a else {} for a in cols["attributes"]):
            for c, v in attrs.items():
                if (c, str(v)) in index:
                    onehot[i, index[(c, str(v))]] = scale
        for name in keys:
            tokens = shapes[name][:-1]
            cols[name] = np.broadcast_to(onehot.reshape(n, *[1] * len(tokens), width), (n, *shapes[name]))
        return cols

    return S.copy_shards(src, out, edit, {"oracle": {"source": str(src), "features": keys, "scale": scale,
                                                     "slots": [list(s) for s in slots]}}, desc="oracle shards")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="source shard directory (manifest.json inside)")
    p.add_argument("--out", required=True, help="where the copy goes (a new directory)")
    p.add_argument("--slots-from", default="", help="take the slot layout from this shard directory's "
                   "attributes (give the training copy's source when writing the evaluation copy)")
    p.add_argument("--categories", default="", help="comma-separated attribute categories to encode (default all)")
    p.add_argument("--scale", type=float, default=4.0, help="value at a sample's slots (default 4)")
    a = p.parse_args(argv)
    src, out = Path(a.shards), Path(a.out)
    cats = {c.strip() for c in a.categories.split(",") if c.strip()} or None
    slots = find_slots(Path(a.slots_from) if a.slots_from else src, cats)
    try:
        man = write_oracle(src, out, slots, a.scale)
    except S.ShardError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"out": str(out), "samples": sum(s["count"] for s in man["shards"]), "slots": len(slots),
                      "features": man["oracle"]["features"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
