"""One transformer block in either residual layout.

parallel (Phi):     x = x + attn(ln1(x)) + ffn(ln1(x))            [+ seq_moe(ln3(x))]
sequential (paper): x = x + attn(ln1(x)); x = x + ffn(ln2(x))     [+ seq_moe(ln3(x))]

The FFN slot is a dense MLP or the grouped token-level MoE; the sequence-level MoE is an
optional residual branch. Both follow ``out, aux = module(h, ctx)``.
"""
from __future__ import annotations

from torch import nn

from unif2ace.config import ModelConfig
from unif2ace.model.attention import Attention
from unif2ace.model.mlp import DenseMLP


def make_ffn(cfg: ModelConfig) -> nn.Module:
    if cfg.moe.enabled:
        from unif2ace.model.moe.token_moe import GroupedTokenMoE
        return GroupedTokenMoE(cfg.hidden_size, cfg.moe)
    return DenseMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)


def make_seq_moe(cfg: ModelConfig) -> nn.Module | None:
    if not cfg.seq_moe.enabled:
        return None
    from unif2ace.model.moe.seq_moe import GroupedSequenceMoE
    return GroupedSequenceMoE(cfg.hidden_size, cfg.seq_moe)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layout = cfg.block_layout
        eps = cfg.layer_norm_eps
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, int(cfg.head_dim * cfg.partial_rotary_factor),
                                   cfg.rope_theta, cfg.qk_layernorm, eps)
        self.ffn_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps) if self.layout == "sequential" else None
        self.ffn = make_ffn(cfg)
        self.seq_moe = make_seq_moe(cfg)
        self.seq_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps) if self.seq_moe is not None else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, pos, ctx, cache=None):
        h = self.input_layernorm(x)
        a, kv = self.self_attn(h, mask, pos, cache)
        if self.layout == "parallel":
            f, aux = self.ffn(h, ctx)
            x = x + self.drop(a) + self.drop(f)
        else:
            x = x + self.drop(a)
            f, aux = self.ffn(self.ffn_layernorm(x), ctx)
            x = x + self.drop(f)
        if self.seq_moe is not None:
            s, aux2 = self.seq_moe(self.seq_layernorm(x), ctx)
            x = x + self.drop(s)
            aux = {**aux, **aux2}
        return x, aux, kv
