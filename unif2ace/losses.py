"""Objective: D3Diff (L_mask + α·L_score) for T2I rows, next-token CE for MMU rows, plus the
model's weighted balance losses.

Absorbing ("mask") process in diffusion time τ∈[0,1]: m(τ) is the probability that an image
token is masked, m = 1 − e^{−σ(τ)}. Show-o samples t ~ U(0,1) and masks cos(π/2·t), i.e.
τ = 1 − t and m(τ) = sin(π/2·τ). At a masked position with true code x0 the denoising score
entropy of SEDD (Lou et al. 2024) is

    σ'(τ) · [ Σ_y s_y − r·log s_{x0} + r(log r − 1) ],    r = (1 − m)/m,

and D3Diff parameterises the score from the same prediction, s_y = p_θ(y|x_t)·r. Then
Σ_y s_y = r and the bracket is −r·log p_θ(x0), so L_score = (m'/m)·CE exactly (tested).
SEDD's own unnormalised form s_y = exp(logit_y) is kept as an option.

With ``t2i_vocab=full`` the logits cover the whole vocabulary, [MASK] included. The sum Σ_y
runs over y ≠ x_t, and x_t is [MASK] at every scored position, so that column is left out
of Σ_y s_y in both parameterisations (as SEDD's absorbing ``score_entropy`` does). The
normalised p_θ stays the model's full-vocabulary softmax, the distribution L_mask trains.

All per-position terms are averaged within a row, then over rows, so a loss does not depend on
how rows are split across ranks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unif2ace.config import LossConfig
from unif2ace.tokens import IGNORE, TASK_MMU, TASK_T2I, Batch, TokenLayout

_EPS = 1e-6


def mask_rate(m: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """dm/dτ as a function of m (cosine: m = sin(π/2·τ) → (π/2)·√(1−m²); linear: 1)."""
    if schedule == "cosine":
        return (math.pi / 2) * torch.sqrt((1 - m * m).clamp_min(0))
    if schedule == "linear":
        return torch.ones_like(m)
    raise ValueError(f"unknown mask schedule {schedule!r} (cosine | linear)")


def score_entropy(logits: torch.Tensor, target: torch.Tensor, m: torch.Tensor, schedule: str = "cosine",
                  param: str = "normalized", current_state: int | None = None) -> torch.Tensor:
    """Denoising score entropy per masked position.

    logits (M, K), target (M,) in [0, K), m (M,) mask ratio of the position's image. Returns (M,).
    ``current_state``: column of x_t (the [MASK] id) when the logits include it; it is left
    out of Σ_y s_y (the score is defined for y ≠ x_t). None when the columns are clean codes.
    """
    m = m.float().clamp(_EPS, 1 - _EPS)
    r = (1 - m) / m
    logits = logits.float()
    if param == "normalized":
        log_s = F.log_softmax(logits, -1) + r.log()[:, None]
    elif param == "unnormalized":
        log_s = logits
    else:
        raise ValueError(f"unknown score parameterisation {param!r} (normalized | unnormalized)")
    if current_state is not None:
        log_s = log_s.clone()
        log_s[:, current_state] = float("-inf")  # after the softmax: p_θ keeps its own normaliser
    sum_s = torch.logsumexp(log_s, -1).exp()
    log_s_x0 = log_s.gather(-1, target[:, None]).squeeze(-1)
    bracket = sum_s - r * log_s_x0 + r * (r.log() - 1)
    sigma_rate = mask_rate(m, schedule) / (1 - m)  # dσ/dτ with σ = −log(1 − m)
    return sigma_rate * bracket


def _row_mean(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Mean of per-position ``values`` within each row, then over rows that have any."""
    total = torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    count = torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(
        0, rows, torch.ones_like(values))
    has = count > 0
    if not has.any():
        return values.sum() * 0.0
    return (total[has] / count[has]).mean()


def t2i_losses(logits: torch.Tensor, labels: torch.Tensor, mask_ratio: torch.Tensor, layout: TokenLayout,
               cfg: LossConfig) -> dict[str, torch.Tensor]:
    """L_mask and L_score on T2I rows. logits (B, L, V), labels (B, L) unshifted, mask_ratio (B,)."""
    is_code = (labels >= layout.image_offset) & (labels < layout.mask_id)
    rows, pos = is_code.nonzero(as_tuple=True)
    b = labels.shape[0]
    if cfg.t2i_vocab == "codebook":
        lg = logits[rows, pos, layout.image_offset: layout.mask_id]
        tgt = labels[rows, pos] - layout.image_offset
        ce_rows, ce_pos, ce_lg, ce_tgt = rows, pos, lg, tgt
        state = None
    else:  # Show-o: whole vocabulary, <|soi|>/<|eoi|> targets included in L_mask
        lg = logits[rows, pos]
        tgt = labels[rows, pos]
        ce_rows, ce_pos = (labels != IGNORE).nonzero(as_tuple=True)
        ce_lg, ce_tgt = logits[ce_rows, ce_pos], labels[ce_rows, ce_pos]
        state = layout.mask_id
    l_mask = _row_mean(F.cross_entropy(ce_lg.float(), ce_tgt, reduction="none"), ce_rows, b)
    out = {"l_mask": l_mask}
    if cfg.alpha > 0:
        se = score_entropy(lg, tgt, mask_ratio[rows], cfg.schedule, cfg.score_param, state)
        out["l_score"] = _row_mean(se, rows, b)
        out["l_d3diff"] = l_mask + cfg.alpha * out["l_score"]
    else:
        out["l_d3diff"] = l_mask
    return out


def mmu_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE on answer tokens: logit i predicts label i+1."""
    lg, lb = logits[:, :-1], labels[:, 1:]
    rows, pos = (lb != IGNORE).nonzero(as_tuple=True)
    ce = F.cross_entropy(lg[rows, pos].float(), lb[rows, pos], reduction="none")
    return _row_mean(ce, rows, labels.shape[0])


def combine(parts, cfg: LossConfig, scale: tuple[float, float] = (1.0, 1.0), start=0.0):
    """The one total: ``c_t2i·s_t2i·L_D3Diff + c_mmu·s_mmu·L_MMU + Σ balance losses``, added in
    that order. ``parts`` holds the terms present (``l_d3diff``, ``l_mmu``, ``loss_*``): tensors
    for the loss, floats for the logged metric; a task with no rows is simply absent. ``scale``:
    per-task factors, the trainer's share of the global per-task mean (trainer.task_weights);
    (1, 1) for a loss that already is the global mean."""
    total = start
    if "l_d3diff" in parts:
        total = total + cfg.t2i_coef * scale[0] * parts["l_d3diff"]
    if "l_mmu" in parts:
        total = total + cfg.mmu_coef * scale[1] * parts["l_mmu"]
    for k, v in parts.items():
        if k.startswith("loss_"):
            total = total + v
    return total


def total_loss(out, batch: Batch, layout: TokenLayout, cfg: LossConfig, scale: tuple[float, float] = (1.0, 1.0)):
    """``combine`` of this batch's parts (``scale`` as there). A task with no rows in the batch
    contributes an exact 0 (still attached to the graph, so every rank back-propagates)."""
    logits, labels, task = out.logits, batch.labels, batch.task
    metrics: dict[str, torch.Tensor] = {}
    t2i = task == TASK_T2I
    if t2i.any() and cfg.t2i_coef * scale[0]:
        metrics.update(t2i_losses(logits[t2i], labels[t2i], batch.mask_ratio[t2i], layout, cfg))
    mmu = task == TASK_MMU
    if mmu.any() and cfg.mmu_coef * scale[1]:
        metrics["l_mmu"] = mmu_loss(logits[mmu], labels[mmu])
    metrics.update(out.aux_losses)
    total = combine(metrics, cfg, scale, start=logits.sum() * 0.0)
    metrics["loss"] = total
    return total, {k: v.detach() for k, v in metrics.items()}
