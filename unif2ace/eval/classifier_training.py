"""Train the attribute classifier on SynthFace and measure it on the held-out test split.

    from unif2ace.eval.classifier_training import TrainClassifierConfig, train_classifier
    result = train_classifier(TrainClassifierConfig(data="data/synthface", out="runs/clf"))
    result["test"]["mean_accuracy"], result["test"]["per_category"]["glasses"]

The command line is ``tools/train_attribute_classifier.py``. Labels of attributes that cannot
be seen in an image (``synthface.hidden_categories``: eye colour behind sunglasses, the mouth
under a mask, …) are ignored in the loss and in the accuracy: no one, model or classifier,
should be judged on them. Splits are by identity, so test faces are people never trained on.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unif2ace.eval.attribute_classifier import (AttributeClassifier, ClassifierConfig, ClassifierError,
                                                encode_labels, load_taxonomy, to_input)
from unif2ace.schedule import warmup_cosine, warmup_steps_for

IGNORE = -100


@dataclass
class TrainClassifierConfig:
    """Attribute-classifier training run."""

    data: str = ""
    """SynthFace directory (metadata.jsonl, attributes.json, images/)."""
    out: str = ""
    """Output directory: the classifier (config.json, model.safetensors) + test_metrics.json."""
    steps: int = 1200
    """Optimiser steps (the run's cost is fixed whatever the data size: ~30 epochs of 5k images).
    Measured on SynthFace: 12 epochs of 4.9k images gave 87% mean test accuracy, 30 epochs 95%."""
    epochs: int = 0
    """Passes over the train split instead of ``steps`` (0 = use ``steps``)."""
    batch_size: int = 128
    """Images per optimiser step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over the first 5% of steps, then cosine to 0)."""
    weight_decay: float = 5e-4
    """AdamW weight decay."""
    max_shift: int = 3
    """Random translation in pixels (reflect-padded crop); the generator's faces are not pixel-aligned."""
    hflip: bool = True
    """Random horizontal flips (no SynthFace attribute depends on left/right)."""
    blur_prob: float = 0.3
    """Probability of a light Gaussian blur: decoded generated faces are softer than renders."""
    seed: int = 0
    """Initialisation, shuffling and augmentation seed."""
    max_train: int = 0
    """Use at most this many train images (0 = all)."""
    threads: int = 1
    """torch CPU threads during training (0 = torch's default). One by default: this net's small
    convolutions gain little from a second thread, and on a busy 2-core machine two OpenMP
    threads made a step ~9x slower in wall time (measured: 0.4 s vs 3.6 s per batch of 128)."""
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    """Architecture; ``categories`` is filled from the data's attributes.json."""
    progress: bool = True
    """Show a tqdm progress bar."""


def load_split(data: str | Path, split: str, categories: dict[str, list[str]], limit: int = 0):
    """Images of one split as uint8 (N,3,H,W), labels (N,C) with hidden attributes = IGNORE, ids."""
    from PIL import Image

    from unif2ace import synthface
    from unif2ace.data.sources import SourceConfig, load_records

    records = load_records(SourceConfig(root=str(data)), split=split)
    if limit:
        records = records[:limit]
    if not records:
        raise ClassifierError(f"{data}: no images in split {split!r}")
    imgs, attrs = [], []
    for r in records:
        try:
            with Image.open(r.image) as im:
                imgs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (OSError, ValueError) as e:
            raise ClassifierError(f"{r.where}: unreadable image: {e}") from None
        hidden = synthface.hidden_categories(r.attributes) if set(synthface.TAXONOMY) <= set(r.attributes) else set()
        attrs.append({c: v for c, v in r.attributes.items() if c not in hidden})
    sizes = {a.shape for a in imgs}
    if len(sizes) != 1:
        raise ClassifierError(f"{data}: split {split!r} mixes image sizes {sorted(sizes)}")
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    y = encode_labels(attrs, categories, where=f"{data} split {split}")
    return x, y, [r.id for r in records]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable 5-tap Gaussian blur of float (B,3,H,W), reflect-padded."""
    k = [math.exp(-(t * t) / (2 * sigma * sigma)) for t in range(-2, 3)]
    k = [v / sum(k) for v in k]
    h, w = x.shape[-2:]
    # Weighted sums of shifted slices: several times faster on CPU than a depthwise conv2d.
    xp = F.pad(x, (2, 2, 0, 0), mode="reflect")
    x = sum(k[i] * xp[..., i:i + w] for i in range(5))
    xp = F.pad(x, (0, 0, 2, 2), mode="reflect")
    return sum(k[i] * xp[..., i:i + h, :] for i in range(5))


def augment(x: torch.Tensor, cfg: TrainClassifierConfig, g: torch.Generator) -> torch.Tensor:
    """Random shift / flip / blur of float images (B,3,H,W) in [-1, 1]."""
    b, _, h, w = x.shape
    if cfg.max_shift or cfg.hflip:
        # One affine resample for shift + flip: whole-pixel shifts land on pixel centres, so
        # bilinear sampling copies pixels exactly; borders are reflected.
        s = cfg.max_shift
        dx = torch.randint(-s, s + 1, (b,), generator=g).to(x.dtype) * 2 / w
        dy = torch.randint(-s, s + 1, (b,), generator=g).to(x.dtype) * 2 / h
        sx = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
        theta = torch.zeros(b, 2, 3, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, dx, 1.0, dy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.blur_prob > 0:
        sel = torch.rand(b, generator=g) < cfg.blur_prob
        if sel.any():
            sigma = 0.4 + 0.6 * float(torch.rand(1, generator=g))  # one strength per batch: one conv
            x = torch.where(sel[:, None, None, None], _gaussian_blur(x, sigma), x)
    return x


@torch.no_grad()
def accuracy(model: AttributeClassifier, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-category accuracy over the images whose attribute is visible, and their mean."""
    model.eval()
    feats = model.features(x)
    per = {}
    for j, (c, head) in enumerate(model.heads.items()):
        keep = y[:, j] != IGNORE
        n = int(keep.sum())
        pred = head(feats[keep]).argmax(-1)
        per[c] = {"n": n, "accuracy": float((pred == y[keep, j]).float().mean()) if n else None,
                  "chance": 1.0 / len(model.categories[c])}
    accs = [v["accuracy"] for v in per.values() if v["accuracy"] is not None]
    return {"mean_accuracy": sum(accs) / len(accs) if accs else None,
            "min_accuracy": min(accs) if accs else None, "n_images": len(x), "per_category": per}


def train_classifier(cfg: TrainClassifierConfig) -> dict:
    """Train on the train split, save to ``cfg.out``, return (and write) the test-split report."""
    if not cfg.data or not cfg.out:
        raise ValueError("train_classifier: set both data and out")
    from unif2ace.runtime import torch_threads

    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: TrainClassifierConfig) -> dict:
    from tqdm import tqdm

    from unif2ace.atomic import atomic_write_text

    categories = load_taxonomy(Path(cfg.data) / "attributes.json")
    mcfg = ClassifierConfig(**{**asdict(cfg.model), "categories": categories})
    t0 = time.time()
    x_tr, y_tr, _ = load_split(cfg.data, "train", categories, cfg.max_train)
    x_te, y_te, _ = load_split(cfg.data, "test", categories)
    t_load = time.time() - t0

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = AttributeClassifier(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(x_tr)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the ragged last batch: BatchNorm needs a real batch
    total = steps_per_epoch * cfg.epochs if cfg.epochs > 0 else cfg.steps
    if total < 1:
        raise ValueError(f"train_classifier: steps={cfg.steps}, epochs={cfg.epochs}: nothing to train")
    sched = warmup_cosine(opt, warmup_steps_for(total), total)
    x_in = to_input(x_tr, mcfg.image_size)  # normalise once; augmentation works on floats
    bar = tqdm(total=total, desc="classifier", unit="step", disable=not cfg.progress, mininterval=1.0)
    t1 = time.time()
    loss_ema = None
    model.train()
    for step in range(total):
        s = step % steps_per_epoch
        if s == 0:
            perm = torch.randperm(n, generator=g)  # a fresh order every epoch
        idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        xb = augment(x_in[idx], cfg, g)
        logits = model(xb)
        yb = y_tr[idx]
        losses = [F.cross_entropy(lg, yb[:, j], ignore_index=IGNORE)
                  for j, lg in enumerate(logits.values()) if (yb[:, j] != IGNORE).any()]
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    t_train = time.time() - t1
    test = accuracy(model, x_te, y_te)
    result = {"test": test, "train_images": n, "test_images": len(x_te), "epochs": round(total / steps_per_epoch, 1),
              "steps": total, "train_seconds": round(t_train, 1), "load_seconds": round(t_load, 1),
              "threads": torch.get_num_threads(), "config": {**asdict(cfg), "model": asdict(mcfg)}}
    result["config"]["model"].pop("categories")
    out = Path(cfg.out)
    model.save(out, extra={"test_mean_accuracy": test["mean_accuracy"], "data": str(cfg.data)})
    atomic_write_text(out / "test_metrics.json", json.dumps(result, indent=2))
    return result


def format_report(result: dict) -> str:
    """Plain-text table of per-category test accuracy (with chance) and the mean."""
    t = result["test"]
    lines = [f"{'category':22s} {'n':>5s} {'accuracy':>9s} {'chance':>7s}"]
    for c, v in t["per_category"].items():
        acc = "-" if v["accuracy"] is None else f"{v['accuracy']:.3f}"
        lines.append(f"{c:22s} {v['n']:5d} {acc:>9s} {v['chance']:7.3f}")
    lines.append(f"{'mean':22s} {t['n_images']:5d} {t['mean_accuracy']:9.3f}")
    lines.append(f"min {t['min_accuracy']:.3f}; {result['train_images']} train images, {result['steps']} steps "
                 f"({result['epochs']} epochs), {result['train_seconds']} s training on {result['threads']} thread(s)")
    return "\n".join(lines)
