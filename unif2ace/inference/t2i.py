"""Text-to-face sampling: MaskGIT iterative decoding over image tokens with classifier-free guidance.

    from unif2ace.config import load_config
    from unif2ace.inference.t2i import generate_codes, codes_to_pil, save_png
    cfg = load_config("tiny")
    codes = generate_codes(model, [prompt_ids_1, prompt_ids_2], cfg.sample)   # (B, N) image codes
    for i, img in enumerate(codes_to_pil(image_tokenizer, codes)):            # decode_codes(codes, hw)
        save_png(img, f"out/{i}.png")

Every step runs the whole T2I row (image tokens attend bidirectionally, so nothing can be
cached across steps) exactly as in training: omni mask from the ids, positions 0..L−1, the
sequence-level router deciding on each forward. One step, for every still-unknown token:
sample a code from the guided distribution, score it by its log-probability plus annealed
Gumbel noise, keep the most confident ones and re-mask the rest.

Show-o's sampler defects that this one avoids (docs/design.md §7):
  * its Gumbel temperature is multiplied by (1 − ratio) every step, a compounding product;
    here step s of T uses ``temperature · (1 − (s+1)/T)``, linear from the start value to 0;
  * it computes how many tokens stay masked from N, the whole image, which is wrong when some
    tokens are given (inpainting); here it is ``floor(U0 · m((s+1)/T))`` with U0 the row's
    unknown count at the start, so the schedule spreads over the tokens to be generated;
  * it writes into the caller's tensors; here the caller's prompts, codes and features are
    only read.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from unif2ace.atomic import atomic_open
from unif2ace.config import SampleConfig
from unif2ace.tokens import TASK_T2I, build_t2i, mask_ratio

UNKNOWN = -1
"""Marks a not-yet-decided image position in ``known_codes`` and in the trace."""


def masked_after(unknown0: torch.Tensor, step: int, steps: int, schedule: str = "cosine") -> torch.Tensor:
    """Tokens per row still masked after 0-based ``step`` of ``steps``: ``floor(U0·m((s+1)/T))``,
    0 after the last step. ``unknown0`` (B,) is each row's unknown count before decoding."""
    if step >= steps - 1:
        return torch.zeros_like(unknown0)
    ratio = mask_ratio(torch.tensor((step + 1) / steps, dtype=torch.float64), schedule)
    return torch.floor(unknown0.double() * ratio).long()


def gumbel_temperature(start: float, step: int, steps: int) -> float:
    """Re-masking noise temperature at 0-based ``step``: linear from ``start`` to 0 at the last step."""
    return start * (1.0 - (step + 1) / steps)


def guide(cond: torch.Tensor, uncond: torch.Tensor, w: float, form: str) -> torch.Tensor:
    """Combine conditional and unconditional logits (classifier-free guidance)."""
    if form == "uncond_plus":
        return uncond + w * (cond - uncond)
    if form == "showo":
        return (1 + w) * cond - w * uncond
    raise ValueError(f"unknown guidance_form {form!r} (uncond_plus | showo | none)")


def _gumbel(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # Drawn on the generator's device so a seed gives the same images on CPU and GPU.
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return (-torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))).to(device)


def _features(features: dict | None, b: int, repeat: int, model, generator: torch.Generator,
              device: torch.device) -> dict:
    """A new dict: each per-sample feature moved to ``device`` and repeated for the uncond rows."""
    out = {}
    for k, v in (features or {}).items():
        if v.shape[0] != b:
            raise ValueError(f"feature {k!r} has {v.shape[0]} rows for {b} prompts")
        out[k] = v.to(device).repeat(repeat, *([1] * (v.dim() - 1)))
    s = model.cfg.seq_moe
    if s.enabled and "noise" in s.gen_experts and "noise" not in out:
        # The noise expert's input is a Gaussian embedding per sample; draw it from the seeded
        # generator so a seed fixes the whole image.
        noise = torch.randn(b, s.noise_dim, generator=generator, device=generator.device)
        out["noise"] = noise.to(device).repeat(repeat, 1)
    return out


@torch.inference_mode()
def generate_codes(model, prompts: Sequence[Sequence[int]], cfg: SampleConfig | None = None, *,
                   features: dict | None = None, known_codes: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, return_trace: bool = False):
    """Sample image codes for a batch of text prompts.

    ``prompts``: text ids per row, without <sot>/<eot> (truncated to the model's text budget).
    ``features``: per-sample cached features (see ``Context.features``), B rows each.
    ``known_codes``: optional (B, N) codes with ``UNKNOWN`` (−1) where the sampler decides; the
    others are kept as given (inpainting). ``generator``: a seeded ``torch.Generator``; default
    one seeded with ``cfg.seed``. Returns (B, N) long codes in [0, codebook_size) on the CPU; with
    ``return_trace`` also a list with the state after each step ((B, N), −1 = masked).
    """
    cfg = cfg or SampleConfig()
    if cfg.steps < 1:
        raise ValueError(f"sample.steps must be ≥ 1, got {cfg.steps}")
    if cfg.guidance_form not in ("uncond_plus", "showo", "none"):
        raise ValueError(f"unknown sample.guidance_form {cfg.guidance_form!r} (uncond_plus | showo | none)")
    layout, mcfg = model.layout, model.cfg
    n, k = mcfg.num_image_tokens, mcfg.codebook_size
    b = len(prompts)
    if b == 0:
        raise ValueError("no prompts given")
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator().manual_seed(cfg.seed)

    if known_codes is None:
        state = torch.full((b, n), UNKNOWN, dtype=torch.long, device=device)
    else:
        if tuple(known_codes.shape) != (b, n):
            raise ValueError(f"known_codes has shape {tuple(known_codes.shape)}, expected ({b}, {n})")
        if ((known_codes < UNKNOWN) | (known_codes >= k)).any():
            raise ValueError(f"known_codes must lie in [0, {k}) or be {UNKNOWN} (unknown)")
        state = known_codes.to(device=device, dtype=torch.long, copy=True)
    unknown0 = (state == UNKNOWN).sum(1).cpu()

    # Rows: the prompts, then (with guidance) the same number of empty-caption rows, which is
    # what training's condition dropout feeds the model.
    use_cfg = cfg.guidance_form != "none"
    all_masked = torch.ones(n, dtype=torch.bool)
    placeholder = torch.zeros(n, dtype=torch.long)
    rows = [build_t2i(layout, p, placeholder, all_masked, mcfg.text_len)[0] for p in prompts]
    if use_cfg:
        rows += [build_t2i(layout, [], placeholder, all_masked, mcfg.text_len)[0]] * b
    ids = torch.stack(rows).to(device)
    length = ids.shape[1]
    img = slice(length - 1 - n, length - 1)  # build_t2i: … <|soi|> img×N <|eoi|>
    assert bool((ids[:, img.start - 1] == layout.soi).all()), "T2I row format changed in tokens.py"
    task = torch.full((ids.shape[0],), TASK_T2I, dtype=torch.long, device=device)
    feats = _features(features, b, 2 if use_cfg else 1, model, generator, device)

    was_training = model.training
    model.eval()
    trace = []
    try:
        for step in range(cfg.steps):
            unknown = state == UNKNOWN
            if not unknown.any():
                break
            img_ids = torch.where(unknown, layout.mask_id, layout.codes_to_ids(state.clamp_min(0)))
            ids[:, img] = img_ids.repeat(ids.shape[0] // b, 1)
            logits = model(ids, task, feats).logits[:, img, layout.image_offset:layout.mask_id].float()
            if use_cfg:
                logits = guide(logits[:b], logits[b:], cfg.guidance, cfg.guidance_form)
            logp = F.log_softmax(logits, dim=-1)
            # Gumbel-max: argmax(log p + G) is a draw from p.
            sampled = (logp + _gumbel(logp.shape, generator, device)).argmax(-1)
            sampled = torch.where(unknown, sampled, state)
            temp = gumbel_temperature(cfg.temperature, step, cfg.steps)
            conf = logp.gather(-1, sampled[..., None]).squeeze(-1) + temp * _gumbel((b, n), generator, device)
            conf = torch.where(unknown, conf, torch.full_like(conf, math.inf))  # known: never re-masked
            # Reveal at least one token per step so decoding always finishes within T steps.
            left = unknown.sum(1).cpu()
            keep_masked = torch.minimum(masked_after(unknown0, step, cfg.steps, cfg.schedule),
                                        (left - 1).clamp_min(0)).to(device)
            rank = conf.argsort(-1).argsort(-1)
            state = torch.where(rank < keep_masked[:, None], UNKNOWN, sampled)
            if return_trace:
                trace.append(state.cpu())
    finally:
        model.train(was_training)
    codes = state.cpu()
    return (codes, trace) if return_trace else codes


def codes_to_pil(tokenizer, codes: torch.Tensor, hw: tuple[int, int] | None = None,
                 value_range: tuple[float, float] = (-1.0, 1.0)) -> list:
    """Decode (B, N) codes with any object exposing ``decode_codes(codes, hw)`` that returns
    (B, 3, H, W) floats in ``value_range`` (MAGVIT-v2 / Show-o: [−1, 1]); ``hw`` is the token
    grid, square by default. Returns PIL images."""
    from PIL import Image

    n = codes.shape[-1]
    if hw is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} image tokens do not form a square grid; pass hw=(h, w)")
        hw = (side, side)
    with torch.inference_mode():
        x = tokenizer.decode_codes(codes, hw)
    lo, hi = value_range
    x = ((x.float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def save_png(image, path: str | os.PathLike) -> Path:
    """Write a PIL image as PNG atomically (temp file in the same folder, then rename)."""
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    return Path(path)
