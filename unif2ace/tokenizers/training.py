"""Train a MAGVIT-v2 / LFQ image tokenizer on a folder of images (PNG / JPG / WebP / BMP).

    python tools/make_synthface.py --out runs/synthface/data --num 5000
    python tools/train_image_tokenizer.py --train-dir runs/synthface/data/images/train \\
        --val-dir runs/synthface/data/images/val --preset synthface --out runs/synthface/magvit
    python tools/train_image_tokenizer.py ... --resume             # continue from OUT/train_state.pt
    python tools/train_image_tokenizer.py --help                   # every option with its meaning

    from unif2ace.tokenizers.training import TokenizerTrainConfig, train
    metrics = train(TokenizerTrainConfig(train_dir=..., out=...))

The learning rate is transformers' cosine-with-minimum schedule after a linear warm-up; its
state is saved with the optimiser, so a resumed run continues it exactly.

Objective: L1 + L2 reconstruction, LFQ entropy (per-sample entropy − γ·codebook entropy),
commitment; an optional perceptual loss (VGG16 features, LPIPS-style unit-normalised
distances without learned weights) needs a local torchvision VGG16 weights file and is off
by default. Images are decoded once into memory (uint8, centre-cropped and resized).
Data order is a function of (seed, step), so a resumed run continues the exact stream.

Measured (commands above, defaults, ``--threads 1`` on a shared 2-core machine): 2000 steps of
16 images at 0.33-0.41 s/step; val PSNR 18.9 / 20.5 / 21.4 / 21.7 dB after 500 / 1000 / 1500 / 2000
steps, all 256 codes used (perplexity 244). Reconstructions are recognisable but soft (no
perceptual or adversarial loss). On a busy machine several threads can be slower than one.

Writes into OUT: ``config.json`` + ``model.safetensors`` (``MagvitV2.from_pretrained(OUT)``),
``train_state.pt`` (model + optimiser + step, for --resume), ``metrics.json`` (val PSNR,
codebook usage) and ``recon.png`` (val originals above their reconstructions). All writes
are atomic.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from unif2ace.atomic import atomic_open, atomic_path, atomic_write_text
from unif2ace.config import ConfigError, parse_overrides
from unif2ace.schedule import warmup_cosine
from unif2ace.tokenizers import lfq
from unif2ace.tokenizers.magvit import MagvitConfig, MagvitV2

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
STATE_NAME = "train_state.pt"


@dataclass
class TokenizerTrainConfig:
    """Options of one tokenizer training run (each is a ``--flag-name`` of the command)."""

    train_dir: str = ""
    """Folder of training images (searched recursively)."""
    val_dir: str = ""
    """Folder of validation images for PSNR / codebook usage ('' = skip evaluation)."""
    out: str = "runs/image_tokenizer"
    """Output directory (pretrained tokenizer, train state, metrics)."""
    preset: str = "synthface"
    """Model preset: tiny, synthface or showlab (see MagvitConfig)."""
    model: list[str] = field(default_factory=list)
    """MagvitConfig overrides as key=value, e.g. ch=64 codebook_bits=10."""
    image_size: int = 64
    """Images are centre-cropped to a square and resized to this side."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 16
    """Images per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a fraction of the peak (cosine decay)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 disables)."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss."""
    l2_weight: float = 1.0
    """Weight of the L2 (MSE) reconstruction loss."""
    entropy_weight: float = 0.1
    """Weight of the LFQ entropy loss."""
    codebook_entropy_weight: float = 1.0
    """γ: weight of the codebook-entropy term inside the entropy loss."""
    entropy_temperature: float = 1.0
    """Temperature of the bit probabilities in the entropy loss."""
    full_codebook_entropy: bool = True
    """Codebook entropy over all 2**K codes (False: per-bit marginals, as Show-o's quantiser)."""
    commit_weight: float = 0.02
    """Weight of the commitment loss (latents towards ±1); small, since a strong early pull
    freezes the bits and collapses the codebook."""
    perceptual_weight: float = 0.0
    """Weight of the perceptual loss (needs perceptual_weights)."""
    perceptual_weights: str = ""
    """Local torchvision VGG16 state dict (full model or ``features`` only) for the perceptual loss."""
    flip: bool = True
    """Random horizontal flips."""
    seed: int = 0
    """Seed of the initialisation, data order and flips."""
    threads: int = 0
    """torch CPU threads (0 = all cores; on a busy shared machine 1 thread can be faster)."""
    save_every: int = 500
    """Write train_state.pt and the pretrained files every N steps (0 = only at the end)."""
    eval_every: int = 0
    """Evaluate on val_dir every N steps (0 = only at the end)."""
    max_images: int = 0
    """Use at most this many training images (0 = all)."""
    max_val: int = 512
    """Evaluate on at most this many validation images (0 = all)."""
    resume: bool = False
    """Continue from OUT/train_state.pt (data order and schedule continue exactly)."""
    stop_after: int = 0
    """Save and stop after this many steps of this invocation (0 = run to --steps); for time-boxed jobs."""
    progress: bool = True
    """Show a progress bar."""


# Fields that fix the data stream and schedule: a resumed run must keep them.
RESUME_FIELDS = ("seed", "batch_size", "image_size", "steps", "lr", "warmup_steps", "min_lr_ratio", "flip", "max_images")


# --------------------------------------------------------------------------- data


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def load_image(path: Path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): any mode converted to RGB, centre square crop, bicubic resize."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if s != size:
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def load_folder(folder: str | Path, size: int, limit: int = 0) -> tuple[torch.Tensor, list[str]]:
    """All images of a folder as uint8 (N, 3, size, size); unreadable files are skipped and named."""
    paths = list_images(folder)
    if limit:
        paths = paths[:limit]
    arrays, bad = [], []
    for p in paths:
        try:
            arrays.append(load_image(p, size))
        except (OSError, ValueError) as e:  # PIL: truncated / corrupt / unknown format
            bad.append(f"{p} ({e})")
    if bad:
        print(f"skipped {len(bad)} unreadable images:\n  " + "\n  ".join(bad[:20]), file=sys.stderr)
    if not arrays:
        raise FileNotFoundError(f"{folder}: no readable images ({', '.join(sorted(IMAGE_EXTS))})")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), bad


def batch_indices(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Indices of step ``step``'s batch in an endless stream of per-epoch permutations.

    A pure function of its arguments, so resuming at any step continues the same stream.
    """
    pos = torch.arange(step * batch, (step + 1) * batch)
    epochs, offsets = pos // n, pos % n
    out = torch.empty(batch, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
        sel = epochs == e
        out[sel] = perm[offsets[sel]]
    return out


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# --------------------------------------------------------------------------- losses


class VGGPerceptual(torch.nn.Module):
    """LPIPS-style distance on frozen VGG16 features (relu1_2 … relu5_3), each feature
    vector unit-normalised over channels, squared differences averaged over space and summed.
    Weights come from a local file (torchvision's ``vgg16`` state dict or its ``features.*``)."""

    TAPS = (3, 8, 15, 22, 29)

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"])[: self.TAPS[-1] + 1]
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: perceptual-loss weights not found (a torchvision VGG16 state dict)")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a state dict")
        sd = {k.removeprefix("features."): v for k, v in sd.items() if not k.startswith("classifier.")}
        own = self.features.state_dict()
        missing = sorted(set(own) - set(sd))
        if missing:
            raise ValueError(f"{path}: not a VGG16 features state dict; missing {', '.join(missing[:8])}")
        self.features.load_state_dict({k: sd[k] for k in own}, strict=True)
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.TAPS:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self._taps(target)
        return sum(((a - b) ** 2).sum(1).mean() for a, b in zip(self._taps(recon), ref))


def compute_losses(model: MagvitV2, x: torch.Tensor, cfg: TokenizerTrainConfig,
                   perceptual: VGGPerceptual | None) -> tuple[torch.Tensor, dict[str, float], dict]:
    out = model(x)
    rec, z = out["recon"], out["latents"]
    l1 = (rec - x).abs().mean()
    l2 = F.mse_loss(rec, x)
    ent = lfq.entropy_terms(z, temperature=cfg.entropy_temperature, full_codebook=cfg.full_codebook_entropy)
    commit = lfq.commitment_loss(z)
    loss = (cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.commit_weight * commit
            + cfg.entropy_weight * (ent.sample - cfg.codebook_entropy_weight * ent.codebook))
    logs = {"l1": l1.item(), "l2": l2.item(), "commit": commit.item(),
            "ent_sample": ent.sample.item(), "ent_codebook": ent.codebook.item()}
    if perceptual is not None and cfg.perceptual_weight > 0:
        p = perceptual(rec, x)
        loss = loss + cfg.perceptual_weight * p
        logs["perceptual"] = p.item()
    logs["loss"] = loss.item()
    return loss, logs, out


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8 images (B, C, H, W); identical images give 100 dB."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))


@torch.no_grad()
def evaluate(model: MagvitV2, images: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Mean PSNR of 8-bit reconstructions and codebook usage over ``images`` (uint8)."""
    was_training = model.training
    model.eval()
    psnrs, codes = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        out = model(to_model_range(x))
        psnrs.append(psnr_uint8(to_uint8(out["recon"]), x))
        codes.append(out["codes"].flatten())
    model.train(was_training)
    all_codes = torch.cat(codes)
    used, ppl = lfq.code_usage(all_codes, model.config.codebook_size)
    return {"psnr": float(torch.cat(psnrs).mean()), "codebook_usage": used, "code_perplexity": ppl,
            "codebook_size": model.config.codebook_size, "num_images": len(images),
            "tokens_per_image": int(all_codes.numel() // max(len(images), 1))}


# --------------------------------------------------------------------------- checkpoints


def save_grid(model: MagvitV2, images: torch.Tensor, path: Path, n: int = 8) -> None:
    """Originals (top row) above their reconstructions (bottom row)."""
    x = images[:n]
    with torch.no_grad():
        was = model.training
        model.eval()
        rec = to_uint8(model(to_model_range(x))["recon"])
        model.train(was)
    grid = torch.cat([torch.cat(list(x), 2), torch.cat(list(rec), 2)], 1)  # (3, 2H, nW)
    with atomic_open(path, "wb") as f:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(f, format="PNG")


def lr_schedule(opt: torch.optim.Optimizer, cfg: TokenizerTrainConfig):
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr·cfg.min_lr_ratio at cfg.steps."""
    return warmup_cosine(opt, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def model_config(cfg: TokenizerTrainConfig) -> MagvitConfig:
    data = MagvitConfig.preset(cfg.preset).to_dict()
    data.update(parse_overrides(cfg.model))
    return MagvitConfig.from_dict(data)


# --------------------------------------------------------------------------- training


def train(cfg: TokenizerTrainConfig) -> dict:
    """Run training; returns the final metrics (also written to OUT/metrics.json)."""
    if not cfg.train_dir:
        raise ConfigError("--train-dir is required")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # tiny Adam moments turn denormal and slow CPU maths badly
    out = Path(cfg.out)
    mcfg = model_config(cfg)
    mcfg.grid(cfg.image_size, cfg.image_size)  # fail early on a size the model cannot tile
    if cfg.perceptual_weight > 0 and not cfg.perceptual_weights:
        raise ConfigError("--perceptual-weight > 0 needs --perceptual-weights (a local VGG16 state dict); "
                          "no weights are downloaded")
    perceptual = VGGPerceptual(cfg.perceptual_weights) if cfg.perceptual_weight > 0 else None

    t0 = time.time()
    train_imgs, _ = load_folder(cfg.train_dir, cfg.image_size, cfg.max_images)
    val_imgs = load_folder(cfg.val_dir, cfg.image_size, cfg.max_val)[0] if cfg.val_dir else None
    print(f"loaded {len(train_imgs)} train / {0 if val_imgs is None else len(val_imgs)} val images "
          f"at {cfg.image_size}² in {time.time() - t0:.1f}s", file=sys.stderr)

    torch.manual_seed(cfg.seed)
    model = MagvitV2(mcfg)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
    sched = lr_schedule(opt, cfg)
    start, history = 0, []
    state_path = out / STATE_NAME
    if cfg.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"{state_path}: nothing to resume from")
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st["model_config"] != mcfg.to_dict():
            raise ConfigError(f"{state_path}: saved model config {st['model_config']} differs from {mcfg.to_dict()}")
        changed = [k for k in RESUME_FIELDS if st["train_config"].get(k) != getattr(cfg, k)]
        if changed:
            raise ConfigError(f"{state_path}: cannot resume exactly, changed options: {', '.join(changed)}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start, history = st["step"], json.loads(st["history"])
        print(f"resumed from {state_path} at step {start}", file=sys.stderr)

    def checkpoint(step: int) -> None:
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "step": step,
                        "model_config": mcfg.to_dict(), "train_config": dataclasses.asdict(cfg),
                        "history": json.dumps(history)}, tmp)
        model.save_pretrained(out)

    def run_eval(step: int) -> dict:
        m = evaluate(model, val_imgs)
        m["step"] = step
        history.append(m)
        tqdm.write(f"step {step}: val PSNR {m['psnr']:.2f} dB, codebook usage {m['codebook_usage']:.1%} "
                   f"(perplexity {m['code_perplexity']:.1f} of {m['codebook_size']})", file=sys.stderr)
        return m

    model.train()
    end = min(cfg.steps, start + cfg.stop_after) if cfg.stop_after else cfg.steps
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not cfg.progress,
               desc="tokenizer", dynamic_ncols=True)
    t_train, logs = time.time(), {}
    for step in bar:
        idx = batch_indices(step, cfg.batch_size, len(train_imgs), cfg.seed)
        x = to_model_range(train_imgs[idx])
        if cfg.flip:
            g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
            flip = torch.rand(len(x), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
        loss, logs, _ = compute_losses(model, x, cfg, perceptual)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"non-finite loss at step {step}: {logs}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        done = step + 1
        if step % 10 == 0:
            psnr = 10 * math.log10(4.0 / max(logs["l2"], 1e-12))  # on the [-1, 1] scale, float
            bar.set_postfix(loss=f"{logs['loss']:.4f}", psnr=f"{psnr:.1f}", ent=f"{logs['ent_codebook']:.2f}")
        if val_imgs is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            run_eval(done)
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
            checkpoint(done)
    bar.close()
    elapsed = time.time() - t_train
    trained = end - start
    if end < cfg.steps:
        checkpoint(end)
        print(f"stopped at step {end} of {cfg.steps}; continue with --resume", file=sys.stderr)
        return {"steps": end, "stopped_early": True, "history": history}

    metrics = {"steps": cfg.steps, "train_seconds_this_run": round(elapsed, 1),
               "steps_per_second": round(trained / elapsed, 3) if trained and elapsed > 0 else None,
               "images_per_second": round(trained * cfg.batch_size / elapsed, 1) if trained and elapsed > 0 else None,
               "num_params": model.num_params(), "final_train_losses": logs, "threads": torch.get_num_threads()}
    if val_imgs is not None:
        metrics["val"] = run_eval(cfg.steps)
        save_grid(model, val_imgs, out / "recon.png")
    metrics["history"] = history
    checkpoint(cfg.steps)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
