"""tools/train_clip.py: a small open_clip CLIP trained on SynthFace pairs, reloaded by open_clip and
by the project's CLIP feature path."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--image-size", "32", "--patch-size", "8", "--width", "32", "--layers", "1", "--head-width", "16",
         "--embed-dim", "24", "--text-width", "32", "--context-length", "64", "--batch-size", "16",
         "--warmup-steps", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from unif2ace import synthface
    from unif2ace.data.sources import SourceConfig, load_records, texts_for_tokenizer
    from unif2ace.tokenizers.text import train_sentencepiece

    root = tmp_path_factory.mktemp("clip")
    synthface.write_dataset(root / "data", num=48, size=32, progress=False)
    train_sentencepiece(texts_for_tokenizer(load_records(SourceConfig(root=str(root / "data")))),
                        root / "spm.model", vocab_size=512)
    from unif2ace.commands import train_clip

    rc = train_clip.main(["--data", str(root / "data"), "--text-tokenizer", str(root / "spm.model"),
                          "--out", str(root / "clip"), "--steps", "6", *FLAGS])
    assert rc == 0
    return root


def test_metrics_and_files(trained):
    out = trained / "clip"
    assert sorted(p.name for p in out.iterdir()) == ["UniF2ace-SynthFace-CLIP.json", "metrics.json",
                                                     "open_clip_model.safetensors", "train_config.json"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 6 and np.isfinite(m["final_loss"])
    zs = m["zero_shot"]["test"]
    assert 0 <= zs["mean_accuracy"] <= 1 and {"eye_colour", "glasses", "expression"} <= set(zs["per_category"])
    for c in zs["per_category"].values():
        assert c["n"] > 0 and 0 < c["chance"] < 1
    assert "linear_probe" in m and m["linear_probe"]["test"]["per_category"]


def test_open_clip_reloads_identical_embeddings_and_encoder_patches_average_to_pooled(trained):
    from unif2ace.features.clip import ClipEncoder
    from unif2ace.features.clip_training import WEIGHTS_FILE, embed_images, load_pairs
    from unif2ace.features.config import ClipConfig
    from unif2ace.tokenizers.text import TextTokenizer

    out = trained / "clip"
    name = "UniF2ace-SynthFace-CLIP"
    open_clip.add_model_config(out / f"{name}.json")
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(out / WEIGHTS_FILE))
    model.eval()
    x, _, _ = load_pairs(str(trained / "data"), "test", TextTokenizer.load(trained / "spm.model"), 64, 32)
    a = embed_images(model, x)
    b = embed_images(model, x)
    assert torch.equal(a, b) and not torch.allclose(a[0], a[1])
    # A second, independent load gives the same weights bit for bit.
    again = open_clip.create_model(name, pretrained=str(out / WEIGHTS_FILE)).eval()
    torch.testing.assert_close(embed_images(again, x), a, rtol=0, atol=0)
    # The precompute path: pooled (normalised) = the open_clip embedding; avg pooling makes the
    # projected patch tokens average to the pooled embedding before normalisation.
    enc = ClipEncoder(ClipConfig(model=name, weights=str(out / WEIGHTS_FILE), model_configs=[str(out / f"{name}.json")],
                                 patch_tokens=True, device="cpu"))
    feats = enc.encode(x)
    assert feats["clip"].shape == (len(x), 24) and feats["clip_patches"].shape == (len(x), 16, 24)
    np.testing.assert_allclose(feats["clip"], a.numpy(), atol=1e-5)
    pooled = F.normalize(torch.from_numpy(feats["clip_patches"]).mean(1), dim=-1)
    np.testing.assert_allclose(pooled.numpy(), feats["clip"], atol=1e-5)


def test_bad_data_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "tools/train_clip.py", "--data", str(tmp_path / "nope"), "--text-tokenizer",
                        "x.model", "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "is not a directory" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "tools/train_clip.py", "--data", ".", "--text-tokenizer", "x", "--out", "o",
                        "--steps", "many"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--steps" in r.stderr and "Traceback" not in r.stderr
