"""Parameter counts per component, computed on the meta device (no memory, any size).

    python -m unif2ace.config unif2ace-1.8b                 # resolved config + counts (main() below)
    python -m unif2ace.config tiny model.num_layers=4
"""
from __future__ import annotations

import sys
from collections import OrderedDict

import torch
import yaml

from unif2ace.config import ConfigError, ModelConfig, load_config, print_help


def _component(name: str) -> str:
    if name.startswith("embed_tokens"):
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
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


def main(argv: list[str] | None = None) -> int:
    """``python -m unif2ace.config RECIPE [key=value ...]``: the resolved config, then parameter
    counts. A bad recipe or key is one line on stderr (exit 2), with no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print_help()
        return 0
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    print_param_counts(cfg.model)
    return 0
