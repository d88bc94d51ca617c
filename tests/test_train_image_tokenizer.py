"""The image-tokenizer trainer (unif2ace/tokenizers/training.py, tools/train_image_tokenizer.py) on a few tiny generated images (tiny preset, 32² → 16 codes).

    pytest -q tests/test_train_image_tokenizer.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from unif2ace.config import ConfigError
from unif2ace.tokenizers import training as tit
from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "train_image_tokenizer.py"


def make_images(folder: Path, n: int, seed: int, size: int = 40) -> None:
    """Smooth shapes: a colour gradient with two filled ellipses (non-square, to test the crop)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size + 8] / size
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        grad = c0 + (c1 - c0) * (0.5 * xx + 0.5 * yy)[..., None]
        im = Image.fromarray(grad.clip(0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(2):
            x, y, r = rng.uniform(4, size - 4), rng.uniform(4, size - 4), rng.uniform(4, 12)
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        im.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok_data")
    make_images(root / "train", 24, 0)
    make_images(root / "val", 8, 1)
    (root / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # must be skipped, not fatal
    return root


def cfg_for(data: Path, out: Path, **kw) -> "tit.TokenizerTrainConfig":
    base = dict(train_dir=str(data / "train"), val_dir=str(data / "val"), out=str(out), preset="tiny",
                image_size=32, steps=40, batch_size=8, lr=3e-3, warmup_steps=4, threads=1,
                save_every=0, progress=False)
    base.update(kw)
    return tit.TokenizerTrainConfig(**base)


def recon_mse(model: MagvitV2, images: torch.Tensor) -> float:
    with torch.no_grad():
        x = tit.to_model_range(images)
        return float(((model(x)["recon"] - x) ** 2).mean())


def test_training_reduces_reconstruction_loss_and_reloads(data, tmp_path, capsys):
    # Full batches at a constant LR: the fewest image-steps that get past the "mean image" stage.
    cfg = cfg_for(data, tmp_path / "run", batch_size=24, min_lr_ratio=1.0, flip=False)
    metrics = tit.train(cfg)
    assert "broken.png" in capsys.readouterr().err  # named in the skip report

    train_imgs, _ = tit.load_folder(data / "train", 32)
    assert train_imgs.shape == (24, 3, 32, 32)
    torch.manual_seed(cfg.seed)
    untrained = MagvitV2(MagvitConfig.tiny())  # the run's initial weights (same seed, same order)
    trained = MagvitV2.from_pretrained(tmp_path / "run")
    before, after = recon_mse(untrained, train_imgs), recon_mse(trained, train_imgs)
    x = tit.to_model_range(train_imgs)
    mean_image = float(((x - x.mean(0)) ** 2).mean())  # what a decoder ignoring the codes reaches
    assert after < 0.8 * mean_image < 0.8 * before, (before, mean_image, after)

    val = metrics["val"]
    assert val["num_images"] == 8 and val["tokens_per_image"] == 16 and val["codebook_size"] == 64
    assert 0 < val["codebook_usage"] <= 1 and 1 <= val["code_perplexity"] <= 64
    assert 5 < val["psnr"] < 100
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val"]["psnr"] == pytest.approx(val["psnr"])
    assert Image.open(tmp_path / "run" / "recon.png").size == (8 * 32, 2 * 32)

    # The pretrained files, the train state and a second load all give the same codes.
    state = torch.load(tmp_path / "run" / tit.STATE_NAME, weights_only=True)
    from_state = MagvitV2(MagvitConfig.tiny())
    from_state.load_state_dict(state["model"])
    x = tit.to_model_range(train_imgs[:6])
    codes = trained.encode(x)
    assert torch.equal(from_state.encode(x), codes)
    assert torch.equal(MagvitV2.from_pretrained(tmp_path / "run" / "model.safetensors").encode(x), codes)
    # Recomputing the PSNR from the saved tokenizer agrees with the reported one.
    val_imgs, _ = tit.load_folder(data / "val", 32)
    assert tit.evaluate(trained, val_imgs)["psnr"] == pytest.approx(val["psnr"], abs=1e-4)


def test_resume_continues_exactly(data, tmp_path):
    straight = tmp_path / "straight"
    tit.train(cfg_for(data, straight, steps=12, val_dir=""))
    split = tmp_path / "split"
    first = tit.train(cfg_for(data, split, steps=12, val_dir="", stop_after=5))
    assert first["stopped_early"] and torch.load(split / tit.STATE_NAME, weights_only=True)["step"] == 5
    with pytest.raises(ConfigError, match="batch_size"):
        tit.train(cfg_for(data, split, steps=12, val_dir="", batch_size=4, resume=True))
    tit.train(cfg_for(data, split, steps=12, val_dir="", resume=True))
    a = MagvitV2.from_pretrained(straight).state_dict()
    b = MagvitV2.from_pretrained(split).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_batch_stream_is_a_permutation_per_epoch():
    n, b = 10, 4
    stream = torch.cat([tit.batch_indices(s, b, n, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])
    assert torch.equal(tit.batch_indices(3, b, n, seed=3), stream[12:16])


def test_perceptual_loss_needs_local_weights(data, tmp_path):
    with pytest.raises(ConfigError, match="--perceptual-weights"):
        tit.train(cfg_for(data, tmp_path / "p", perceptual_weight=0.1))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tit.VGGPerceptual(tmp_path / "nope.pth")
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    feats = make_layers(cfgs["D"])  # random VGG16 features in torchvision's key layout
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp_path / "vgg.pth")
    torch.save({"classifier.0.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        tit.VGGPerceptual(tmp_path / "bad.pth")
    p = tit.VGGPerceptual(tmp_path / "vgg.pth")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    assert p(x, x).item() == pytest.approx(0.0, abs=1e-6)
    d = p(y, x)
    d.backward()
    assert d.item() > 0 and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(not q.requires_grad for q in p.parameters())


def test_cli_runs_and_rejects_bad_options(data, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, str(TOOL), "--train-dir", str(data / "train"), "--preset", "tiny",
                        "--image-size", "32", "--steps", "2", "--warmup-steps", "1", "--batch-size", "4",
                        "--threads", "1", "--no-progress", "--out", str(out), "--model", "ch=8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 2
    assert MagvitV2.from_pretrained(out).config.ch == 8
    r = subprocess.run([sys.executable, str(TOOL), "--train-dir", str(data / "train"), "--preset", "tiny",
                        "--image-size", "30", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "multiple" in r.stderr
