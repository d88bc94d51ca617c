"""Parameter counts per component, computed on the meta device (no memory, any size).

    python -m unif2ace.config unif2ace-1.8b                 # resolved config + counts
    python -m unif2ace.config tiny model.num_layers=4

    from unif2ace.model.params import param_counts
    param_counts(load_config("tiny").model)       # OrderedDict component -> parameters
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from unif2ace.config import ModelConfig


def _component(name: str) -> str:
    if name.startswith("embed_tokens"):
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if name.startswith("image_input."):
        return "image-feature input"
    if name.startswith("image_positions."):
        return "image positions"
    if ".self_attn." in name:
        return "attention"
    if ".seq_moe." in name:
        return "sequence-level MoE"
    if ".ffn." in name:
        return "token-level MoE" if (".experts" in name or "router" in name or "shared" in name) else "FFN"
    return "norms"


def param_counts(cfg: ModelConfig) -> "OrderedDict[str, int]":
    from unif2ace.model.unif2ace import UniF2ace
    with torch.device("meta"):
        model = UniF2ace(cfg)
    counts: OrderedDict[str, int] = OrderedDict()
    for n, p in model.named_parameters():
        c = _component(n)
        counts[c] = counts.get(c, 0) + p.numel()
    counts["total"] = sum(v for k, v in counts.items())
    active = getattr(model.layers[0].ffn, "active_parameters", None)
    if callable(active):
        counts["active per token (FFN slot, all layers)"] = sum(l.ffn.active_parameters() for l in model.layers)
    return counts


def print_param_counts(cfg: ModelConfig) -> None:
    for k, v in param_counts(cfg).items():
        print(f"{k:>42s}: {v:>15,d}  ({v / 1e6:,.1f} M)")
