"""The feature-reading probe: its rows state the answers, its scores are per kind, it runs end to end.

    pytest -q tests/test_probe_reading.py
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unif2ace.commands import probe_reading as P
from unif2ace.config import load_config
from unif2ace.synthface.taxonomy import CATEGORIES, TAXONOMY, sample_face
from unif2ace.synthface.text import make_qa, question_kind
from unif2ace.tokens import IGNORE, TokenLayout


@pytest.mark.parametrize("features", P.FEATURES)
def test_rows_carry_each_face_attributes_and_answers(features):
    cfg = load_config("synthface")
    words = P.Words(cfg.model.text_vocab_size)
    rows = P.make_rows(cfg, 3, 6, features, words, image_tokens=5)
    cats = [c.name for c in CATEGORIES]
    slots = [(c, v) for c in cats for v in TAXONOMY[c].values]
    inv = {i: w for w, i in words.ids.items()}
    for i, (ids, labels, feat, kinds, row_cats) in enumerate(rows):
        attrs = sample_face(3, i).attributes
        pos = P.first_answer_positions(labels)
        assert len(pos) == len(kinds) >= 8
        answers = [inv[int(labels[p])] for p in pos]
        assert all(a in ("yes", "no") for a, k in zip(answers, kinds) if k != "open")
        if features == "tokens":
            assert feat.shape[0] == len(cats) and (feat.count_nonzero(1) == 2).all()
            for j, c in enumerate(cats):
                assert feat[j, j] == 4 and feat[j, len(cats) + slots.index((c, attrs[c]))] == 4
        elif features == "pooled":
            hot = {slots[k] for k in feat[0].nonzero().flatten().tolist()}
            assert hot == set(attrs.items())
        else:  # the image span holds one code per category: its (category, value)
            codes = TokenLayout.from_model_config(cfg.model).ids_to_codes(ids[2:2 + len(cats)])
            assert [slots[k] for k in codes.tolist()] == [(c, attrs[c]) for c in cats]
        # the answers are SynthFace's for this face, in its question order
        qa = make_qa(attrs, np.random.default_rng([3, 7, i]))
        assert answers == [t["a"].split()[0].lower() for t in qa]
        assert kinds == [question_kind(t["q"]) for t in qa] and row_cats == [t["category"] for t in qa]


def test_majority_and_first_answer_positions_by_hand():
    labels = torch.tensor([IGNORE, IGNORE, 7, 2, IGNORE, 8, 2, IGNORE, 7, 9, 2])
    assert P.first_answer_positions(labels) == [2, 5, 8]
    # per (category, kind): glasses always 7 → 1 of 1; earrings 8 then 7 → 1 of 2; so presence 2 of 3
    rows = [(None, labels, None, ["presence", "presence", "open"], ["glasses", "earrings", "hat"]),
            (None, torch.tensor([IGNORE, 7, 2]), None, ["presence"], ["earrings"])]
    assert P.majority(rows) == {"presence": pytest.approx(2 / 3), "open": 1.0}


def test_end_to_end_writes_one_evaluation_per_eval_step(tmp_path):
    out = tmp_path / "probe.json"
    rc = P.main(["--features", "tokens", "--steps", "4", "--eval-every", "2", "--faces", "8", "--eval-faces", "6",
                 "--set", "model.num_layers=1", "--set", "model.hidden_size=64", "--set", "model.intermediate_size=128",
                 "--set", "model.moe.enabled=false", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [e["step"] for e in res["evaluations"]] == [2, 4]
    for e in res["evaluations"]:
        assert set(e["accuracy"]) == set(P.KINDS) and all(0 <= v <= 1 for v in e["accuracy"].values())
    assert set(res["majority"]) == set(P.KINDS)


def test_features_that_do_not_fit_or_have_no_reader_are_refused():
    with pytest.raises(SystemExit, match="needs a .*-wide feature"):
        P.main(["--features", "tokens", "--steps", "1", "--set", "model.seq_moe.clip_dim=16"])
    with pytest.raises(SystemExit, match="read by the CLIP expert"):
        P.main(["--features", "pooled", "--steps", "1", "--set", "model.seq_moe.enabled=false"])
    with pytest.raises(SystemExit, match="no image"):  # the recipe's default is off for the probe, not overridable
        P.main(["--features", "codes", "--steps", "1", "--set", "model.mmu_image_features=true"])
