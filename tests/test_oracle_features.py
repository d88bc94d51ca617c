"""tools/oracle_features.py: shards whose CLIP features are one-hots of the true attributes.

    pytest tests/test_oracle_features.py -q
"""
import json

import numpy as np
import pytest

from unif2ace.commands import oracle_features
from unif2ace.config import DataConfig, load_config
from unif2ace.data import shards as S
from unif2ace.data.loader import ShardLoader


def _views(shard_dir):
    man = S.read_manifest(shard_dir)
    shapes = {k: list(v) for k, v in man["feature_shapes"].items()}
    return man, [S.ShardView(shard_dir / s["name"], shapes) for s in man["shards"]]


def test_copy_holds_the_attributes_and_nothing_else_changes(tiny_shards, tmp_path):
    out = tmp_path / "oracle"
    assert oracle_features.main(["--shards", str(tiny_shards), "--out", str(out)]) == 0
    assert S.verify(out) == []
    src_man, src = _views(tiny_shards)
    man, copy = _views(out)
    slots = [tuple(s) for s in man["oracle"]["slots"]]
    assert slots == sorted(slots) and man["oracle"]["features"] == ["clip"]
    seen = 0
    for a, b in zip(src, copy):
        assert a.ids() == b.ids() and np.array_equal(a.codes, b.codes)
        for k in ("face", "noise"):
            assert np.array_equal(a.features[k], b.features[k])
        assert not np.array_equal(a.features["clip"], b.features["clip"])
        attrs = [json.loads(x) for x in b.dataset.data.table.column("attributes").to_pylist()]
        for row, at in zip(b.features["clip"], attrs):
            want = np.zeros(row.shape, np.float32)
            want[[slots.index((c, str(v))) for c, v in at.items()]] = 4.0
            assert np.array_equal(row.astype(np.float32), want)
            seen += 1
    assert seen == sum(s["count"] for s in src_man["shards"]) > 0
    # the training loader reads the copy like any shards
    model = load_config("tiny", ["model.seq_moe.enabled=true"]).model
    batch = next(iter(ShardLoader(DataConfig(shards=str(out), t2i_fraction=0.0), model, 0, 1, 4)))
    clip = batch.features["clip"]
    assert set(clip.unique().tolist()) == {0.0, 4.0} and bool((clip.sum(1) > 0).all())


def test_categories_slots_from_and_errors(tiny_shards, tmp_path):
    out = tmp_path / "two"
    assert oracle_features.main(["--shards", str(tiny_shards), "--out", str(out),
                                 "--categories", "hair_colour,eye_colour", "--slots-from", str(tiny_shards)]) == 0
    man, views = _views(out)
    assert {c for c, _ in man["oracle"]["slots"]} == {"hair_colour", "eye_colour"}
    # SynthFace records every category (hidden ones too): one hair colour and one eye colour each
    assert all(int((row > 0).sum()) == 2 for v in views for row in v.features["clip"])
    with pytest.raises(SystemExit, match="already holds shards"):
        oracle_features.main(["--shards", str(tiny_shards), "--out", str(out)])
    with pytest.raises(SystemExit, match="other than its source"):
        oracle_features.main(["--shards", str(tiny_shards), "--out", str(tiny_shards)])
    with pytest.raises(SystemExit, match="do not fit the 512-wide CLIP feature"):
        oracle_features.write_oracle(tiny_shards, tmp_path / "wide", [("c", str(i)) for i in range(513)])
