"""Phi-compatible attention: q/k/v/dense projections with bias, partial rotary, optional
q/k LayerNorm (Show-o), SDPA under a boolean omni mask, optional KV cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Rotary(nn.Module):
    """Rotary embedding on the first ``dim`` channels of each head (HF Phi's rotate-half form)."""

    def __init__(self, dim: int, theta: float):
        super().__init__()
        self.dim = dim
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x: (B, H, L, Dh); pos: (B, L)
        if self.dim == 0:
            return x
        freqs = pos[:, None, :, None].float() * self.inv_freq.to(x.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        rot, rest = x[..., : self.dim], x[..., self.dim:]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return torch.cat([rot * cos + rotated * sin, rest], dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, rotary_dim: int, theta: float, qk_layernorm: bool, eps: float):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.rotary = Rotary(rotary_dim, theta)
        self.q_layernorm = nn.LayerNorm(self.head_dim, eps=eps) if qk_layernorm else None
        self.k_layernorm = nn.LayerNorm(self.head_dim, eps=eps) if qk_layernorm else None

    def forward(self, x, mask, pos, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, L, D); mask (B, 1, L, Lk) bool; pos (B, L). Returns (out, (k, v)) where k, v
        include ``cache`` so an incremental decoder can keep them."""
        b, l, _ = x.shape
        q, k, v = (p(x).view(b, l, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.q_layernorm is not None:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k = self.rotary(q, pos), self.rotary(k, pos)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.dense(out.transpose(1, 2).reshape(b, l, -1)), (k, v)
