"""Per-forward side information shared by every block (task, real-token mask, cached features).

Kept separate from the activations so FFN / MoE modules have one call signature::

    out, aux = module(h, ctx)   # h: (B, L, D); aux: dict of scalar losses / detached stats
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Context:
    task: torch.Tensor
    """(B,) long: 0 = T2I (generation group), 1 = MMU (understanding group)."""
    token_mask: torch.Tensor
    """(B, L) bool: True at real (non-[PAD]) tokens of the current input."""
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    """Cached per-sample features: 'clip' (B, Nc, Dc) or (B, Dc), 'face' (B, 512),
    'face_found' (B,) bool, 'noise' (B, Dn). Absent keys are absent features."""
    layer_state: dict | None = None
    """This layer's scratch kept across incremental decoding steps (e.g. a sequence router's
    decision taken on the prompt); None outside cached decoding."""
