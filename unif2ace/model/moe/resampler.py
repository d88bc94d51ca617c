"""Feature resampler S(F) and the feature expert E(x) = w·x + (1−w)·S(F) of the sequence MoE.

    expert = FeatureExpert(hidden=2048, feat_dim=512, dim=512, heads=4)
    y = expert(h, feats)      # h (B, L, D); feats (B, N, Df) patch tokens or (B, 1, Df) pooled

S cross-attends from every sequence position (queries from the hidden state) to the feature
tokens projected into ``dim`` (keys/values), then maps back to the hidden width. With one
pooled feature vector the attention weights are all 1, so S(F) is that vector's value for
every position; that case skips the query projection (same result, less work).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Resampler(nn.Module):
    def __init__(self, hidden: int, feat_dim: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"resampler dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.proj = nn.Linear(feat_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(hidden, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, hidden)

    def forward(self, h: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """h (B, L, D), feats (B, N, Df) → (B, L, D)."""
        b, l, _ = h.shape
        n = feats.shape[1]
        tok = self.norm(self.proj(feats.to(h.dtype)))
        k, v = self.kv(tok).chunk(2, dim=-1)
        if n == 1:
            return self.out(v).expand(b, l, -1)
        dh = v.shape[-1] // self.heads
        q = self.q(h).view(b, l, self.heads, dh).transpose(1, 2)
        k = k.view(b, n, self.heads, dh).transpose(1, 2)
        v = v.view(b, n, self.heads, dh).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(b, l, self.heads * dh))  # explicit: b may be 0


class FeatureExpert(nn.Module):
    """E(x) = w·x + (1−w)·S(F), [w, 1−w] = softmax of a learned per-token gate.

    The gate's bias starts at [−gate_init, gate_init], so w starts at σ(−2·gate_init): ½ by
    default, mostly the feature for gate_init > 0 (``SeqMoEConfig.feature_gate_init``).
    """

    init_after_children = True  # its init sets the gate's bias (``UniF2ace.init_weights``)

    def __init__(self, hidden: int, feat_dim: int, dim: int, heads: int, gate_init: float = 0.0):
        super().__init__()
        self.feat_dim = feat_dim
        self.gate_init = gate_init
        self.gate = nn.Linear(hidden, 2)
        self.resampler = Resampler(hidden, feat_dim, dim, heads)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """The gate's starting bias (draws nothing: its weights keep the model's generic init)."""
        if self.gate.bias.numel() == 0:  # a partitioned placeholder (deepspeed.zero.Init): the
            return                       # model's explicit init sets it once gathered
        self.gate.bias.copy_(torch.tensor([-self.gate_init, self.gate_init]))

    def forward(self, h: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        w = self.gate(h).softmax(-1)
        return w[..., :1] * h + w[..., 1:] * self.resampler(h, feats)
