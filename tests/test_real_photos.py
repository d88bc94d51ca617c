"""Real photographs end to end: the LFW faces and the astronaut that scikit-image ships, read
through a source spec, precomputed in detect mode (the SCRFD-shaped detector and ArcFace-shaped
recogniser exported to ONNX by tests/test_features.py), a few training steps with the face
features live (sequence-level MoE on), then launchers/answer.py and launchers/generate.py.

    pytest tests/test_real_photos.py -q
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from test_features import DET_SIZE, TinyArcFace, TinySCRFD, export
from unif2ace.data import shards as S
from unif2ace.data.spec import load_spec, read_source

ROOT = Path(__file__).resolve().parents[1]
N_LFW = 24
HAIR = ("dark", "grey", "fair", "brown")


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _write_source(root: Path) -> Path:
    """Photos on disk, captions (a list for the astronaut), LLaVA-style VQA in a second file."""
    (root / "images").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(root / "images" / "astronaut.png")
    faces = skimage.data.lfw_subset()[:N_LFW]  # the first 100 of the subset are faces, 25×25 grey
    caps, vqa = [], []
    for i, x in enumerate(faces):
        name = f"lfw_{i:03d}.png"
        Image.fromarray((x * 255).astype(np.uint8)).save(root / "images" / name)
        caps.append({"image": name, "caption": f"A grey photo of a person with {HAIR[i % 4]} hair.",
                     "split": "val" if i % 8 == 7 else "train", "person": f"lfw{i}"})
        vqa.append({"image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the hair?"},
            {"from": "gpt", "value": f"The hair is {HAIR[i % 4]}."}]})
    caps.append({"image": "astronaut.png", "person": "eileen", "split": "train",
                 "caption": ["A smiling astronaut in a white suit.", "A woman in front of a flag."]})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(c) for c in caps) + "\n")
    (root / "vqa.json").write_text(json.dumps(vqa))
    spec = root / "photos.yaml"
    spec.write_text("""\
images: [{dir: images}]
tables:
  - files: captions.jsonl
    fields: {key: image, caption: caption, split: split, identity: person}
  - files: vqa.json
    fields: {key: image, conversations: conversations}
""")
    return spec


@pytest.mark.slow
def test_real_photos_precompute_train_answer_generate(tmp_path):
    from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2
    from unif2ace.tokenizers.text import train_sentencepiece
    from unif2ace.data.sources import texts_for_tokenizer

    spec_path = _write_source(tmp_path / "data")
    read = read_source(load_spec(spec_path))
    assert not read.errors, [str(p) for p in read.problems]
    assert read.splits()["train"]["samples"] == 21 + 2 and read.splits()["val"]["samples"] == 3

    torch.manual_seed(0)
    MagvitV2(MagvitConfig.tiny()).save_pretrained(tmp_path / "magvit")  # 32 px → 16 codes, the tiny recipe
    train_sentencepiece(texts_for_tokenizer(read.records), tmp_path / "spm.model", vocab_size=512)
    det, rec = tmp_path / "det.onnx", tmp_path / "rec.onnx"
    export(TinySCRFD(gate=0.9), det, {"input.1": {2: "h", 3: "w"}}, 9)
    export(TinyArcFace(0), rec, {"input.1": {0: "batch"}, "out0": {0: "batch"}}, 1)

    shards = tmp_path / "shards"
    r = _run("tools/precompute_tokens.py", "--spec", spec_path, "--out", shards, "--image-tokenizer",
             tmp_path / "magvit", "--text-tokenizer", tmp_path / "spm.model", "--recipe", "tiny", "--no-progress",
             "--shard-size", "16", "--feature", "clip.model=UniF2ace-Tiny-CLIP", "--feature",
             "clip.fallback=random-init", "--feature", "face.mode=detect", "--feature", f"face.det_path={det}",
             "--feature", f"face.rec_path={rec}", "--feature", f"face.det_size={DET_SIZE}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    m = S.read_manifest(shards)
    assert m["complete"] and m["num_samples"] == N_LFW + 2 and m["encoders"]["face"]["mode"] == "detect"
    views = [S.ShardView(shards / s["name"], m["feature_shapes"]) for s in m["shards"]]
    found = np.concatenate([v.face_found for v in views])
    faces = np.concatenate([v.features["face"] for v in views]).astype(np.float32)
    assert found.all()  # the detector found a face on every photo
    np.testing.assert_allclose(np.linalg.norm(faces, axis=1), 1.0, atol=2e-3)  # float16 ArcFace embeddings
    ids = [i for v in views for i in v.ids()]
    assert "astronaut#0" in ids and "astronaut#1" in ids
    assert len({faces[ids.index("lfw_000")].tobytes(), faces[ids.index("lfw_001")].tobytes()}) == 2

    train_dir = tmp_path / "train"
    r = _run("launchers/train.py", "--config", "tiny", f"data.shards={shards}", f"train.out_dir={train_dir}",
             "train.steps=3", "train.warmup_steps=1", "train.save_every=0", "model.seq_moe.enabled=true",
             timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = [json.loads(x) for x in (train_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "event" not in x]
    assert [x["step"] for x in steps] == [1, 2, 3] and all(np.isfinite(x["loss"]) for x in steps)
    model = train_dir / "final"

    r = _run("launchers/answer.py", "--checkpoint", model, "--shards", shards, "--image",
             tmp_path / "data" / "images" / "astronaut.png", "--question", "What colour is the hair?", "--caption")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Q: ") == 2 and r.stdout.count("A: ") == 2

    out = tmp_path / "samples"
    r = _run("launchers/generate.py", "--checkpoint", model, "--shards", shards, "--prompt",
             "A grey photo of a person with dark hair.", "--num", "2", "--out", out, "sample.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 2
    for e in index:
        im = Image.open(out / e["file"])
        assert im.size == (32, 32) and im.mode == "RGB"
