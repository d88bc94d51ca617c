"""Face-recogniser training on tiny SynthFace sets: ONNX contract, embeddings, metrics, errors.

    pytest tests/test_face_training.py -q
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from PIL import Image

from unif2ace import synthface
from unif2ace.features.config import FaceConfig
from unif2ace.commands import train_face_recognizer as tool
from unif2ace.features.face import FaceEncoder
from unif2ace.features.face_training import (ArcMarginHead, FaceTrainConfig, FaceTrainError, RecognizerConfig,
                                             best_threshold, load_recognizer, roc_auc, train_face_recognizer,
                                             verification_pairs)



def _meta(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """48 faces of 12 people (32 px): 6 train, 3 val, 3 test identities; 4 steps through the CLI."""
    root = tmp_path_factory.mktemp("face_rec")
    data = root / "synthface"
    counts = synthface.write_dataset(data, num=48, size=32, val_frac=0.3, test_frac=0.3, progress=False)
    assert counts == {"train": 24, "val": 12, "test": 12}
    out = root / "rec"
    rc = tool.main(["--data", str(data), "--out", str(out), "--steps", "4", "--batch-size", "8",
                    "--model-widths", "8,16,16,32", "--no-progress"])
    assert rc == 0
    return data, out


def test_onnx_follows_insightface_arcface_contract(tiny):
    _, out = tiny
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.safetensors", "rec.onnx",
                                                     "train_config.json"]
    rec = get_model(str(out / "rec.onnx"))
    assert isinstance(rec, ArcFaceONNX) and rec.taskname == "recognition"
    assert rec.input_size == (112, 112) and rec.input_shape[1:] == [3, 112, 112]
    assert isinstance(rec.input_shape[0], str)  # dynamic batch axis
    assert rec.output_shape[-1] == 512
    assert (rec.input_mean, rec.input_std) == (127.5, 127.5)  # not mistaken for a pre-normalised mxnet graph
    crops = [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(5)]
    assert rec.get_feat(crops).shape == (5, 512)


def test_face_encoder_embeddings_equal_torch(tiny):
    data, out = tiny
    model = load_recognizer(out)
    files = [data / m["file"] for m in _meta(data) if m["split"] == "test"]
    images = [Image.open(f).convert("RGB") for f in files]
    for cfg in (FaceConfig(rec_path=str(out / "rec.onnx"), mode="aligned", batch_size=5),
                FaceConfig(model_dir=str(out), mode="aligned")):  # the directory alone: no detector needed
        enc = FaceEncoder(cfg)
        assert enc.det is None and enc.rec_batch > 1
        emb, found = enc.encode(images)
        assert found.all()
        for im, e in zip(images, emb):
            # Reference written out: enlarge to 112² (INTER_LINEAR), RGB, (x - 127.5) / 127.5, torch, L2 norm.
            crop = cv2.resize(np.asarray(im), (112, 112), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            x = torch.from_numpy(((crop - 127.5) / 127.5).transpose(2, 0, 1).copy())[None]
            with torch.no_grad():
                ref = model(x)[0].numpy()
            np.testing.assert_allclose(e, ref / np.linalg.norm(ref), atol=1e-4)


def test_metrics_report_verification_on_held_out_identities(tiny):
    data, out = tiny
    metrics = json.loads((out / "metrics.json").read_text())
    meta = _meta(data)
    for split in ("val", "test"):
        m = metrics[split]
        per_id = Counter(r["identity"] for r in meta if r["split"] == split)
        positives = sum(math.comb(k, 2) for k in per_id.values())
        assert (m["identities"], m["images"]) == (len(per_id), sum(per_id.values()))
        assert m["positive_pairs"] == positives and m["pairs"] == 2 * positives
        assert 0.0 <= m["auc"] <= 1.0 and 0.5 <= m["best_accuracy"] <= 1.0
        assert -1.0 <= m["best_threshold"] <= 1.0 + 1e-5
    assert metrics["threshold"] == metrics["val"]["best_threshold"] == metrics["test"]["threshold"]
    assert 0.0 <= metrics["test"]["accuracy"] <= metrics["test"]["best_accuracy"]
    assert metrics["train"]["identities"] == 6 and metrics["train"]["steps"] == 4
    assert metrics["onnx_max_abs_diff"] < 1e-4
    config = json.loads((out / "train_config.json").read_text())
    assert config["model"]["widths"] == [8, 16, 16, 32] and config["num_classes"] == 6


def test_training_separates_unseen_people(tmp_path):
    # 240 faces, 60 people, 29 of them held out: training must beat the untrained network, whose
    # random convolutional features already separate these faces fairly well (AUC ~0.87).
    data = tmp_path / "sf"
    synthface.write_dataset(data, num=240, size=32, seed=3, val_frac=0.25, test_frac=0.25, progress=False)
    cfg = FaceTrainConfig(data=str(data), out=str(tmp_path / "rec"), steps=60, batch_size=32, progress=False,
                          model=RecognizerConfig(widths=[8, 16, 32, 32], dim=64))
    result = train_face_recognizer(cfg)
    assert result["train"]["final_loss"] < 0.2 * result["train"]["first_loss"]
    trained = (result["val"]["auc"] + result["test"]["auc"]) / 2
    untrained = (result["untrained_auc"]["val"] + result["untrained_auc"]["test"]) / 2
    assert trained > untrained + 0.02 and trained > 0.88, (trained, untrained)
    # The embedding width is configurable; FaceEncoder checks it against face.dim.
    enc = FaceEncoder(FaceConfig(rec_path=str(tmp_path / "rec" / "rec.onnx"), mode="aligned", dim=64))
    assert enc.encode([Image.new("RGB", (32, 32), (200, 150, 120))])[0].shape == (1, 64)


def test_arc_margin_logits():
    torch.manual_seed(0)
    head = ArcMarginHead(dim=4, num_classes=3, margin=0.5, scale=10.0)
    emb = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        head.weight[2] = -emb[2]  # θ = π: past π − m, the fallback cos θ − m·sin m applies
        logits = head(emb, labels)
    w = head.weight.detach().numpy()
    for i, y in enumerate(labels.tolist()):
        e = emb[i].numpy()
        cos = w @ e / (np.linalg.norm(w, axis=1) * np.linalg.norm(e))
        theta = math.acos(np.clip(cos[y], -1, 1))
        want = cos.copy()
        want[y] = math.cos(theta + 0.5) if theta + 0.5 <= math.pi else cos[y] - 0.5 * math.sin(0.5)
        np.testing.assert_allclose(logits[i].numpy(), 10.0 * want, atol=1e-4)


def test_verification_pairs_and_threshold():
    ids = ["a", "a", "a", "b", "b", "c", "d", "d"]
    pairs, same = verification_pairs(ids, seed=0)
    pos = {(i, j) for i, j in itertools.combinations(range(len(ids)), 2) if ids[i] == ids[j]}
    assert {tuple(p) for p in pairs[same]} == pos and same.sum() == (~same).sum() == 5
    neg = [tuple(p) for p in pairs[~same]]
    assert len(set(neg)) == 5 and all(ids[i] != ids[j] and i < j for i, j in neg)
    with pytest.raises(FaceTrainError, match="2 identities"):
        verification_pairs(["a", "b", "c"], seed=0)

    rng = np.random.default_rng(0)
    sims = np.round(rng.normal(size=40), 1)  # rounded: ties on purpose
    y = rng.random(40) < 0.5
    thr, acc = best_threshold(sims, y)
    brute = max(((sims >= t) == y).mean() for t in np.concatenate([sims, [sims.max() + 1]]))
    assert acc == pytest.approx(brute) and ((sims >= thr) == y).mean() == pytest.approx(acc)
    auc = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in sims[y] for n in sims[~y]])
    assert roc_auc(sims, y) == pytest.approx(auc)


def test_bad_inputs_give_clear_errors(tiny, tmp_path, capsys):
    data, out = tiny
    args = ["--steps", "1", "--no-progress"]
    assert tool.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *args]) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert tool.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *args]) == 2
    assert "metadata.jsonl: not found" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    victim = next(m["file"] for m in _meta(broken) if m["split"] == "val")
    (broken / victim).unlink()
    assert tool.main(["--data", str(broken), "--out", str(tmp_path / "o"), *args]) == 2
    assert f"{victim}: missing file" in capsys.readouterr().err
    (broken / victim).write_bytes(b"not a png")
    assert tool.main(["--data", str(broken), "--out", str(tmp_path / "o"), *args]) == 2
    assert f"{victim}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written

    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert tool.main(["--data", str(data), "--out", str(keep), *args]) == 2
    assert "not a face-recogniser directory" in capsys.readouterr().err
    assert (keep / "notes.txt").read_text() == "mine"
