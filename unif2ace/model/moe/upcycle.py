"""Initialise the grouped token MoE's experts from a dense MLP (imported Phi / Show-o weights).

    from unif2ace.model.moe.upcycle import upcycle_from_dense
    upcycle_from_dense(block.ffn, dense_mlp, "split")      # "split" | "copy" | "none"

Both groups (generation, understanding) get the same experts; routers keep their init.

split (fine-grained): the dense hidden layer (I neurons) is cut into I / expert_ffn slices
of expert_ffn neurons; group expert j (shared experts first) gets slice j mod (I / expert_ffn).
Routed experts' fc2 is multiplied by num_routed, so when the slices partition the dense layer
((num_shared + num_routed)·expert_ffn = I) and every routed expert is selected with equal
gate 1/num_routed (top_k = num_routed, uniform router), the layer reproduces the dense MLP:
    Σ_shared slice(x) + Σ_routed (1/E)·E·slice(x) = Σ_all slices(x) = dense(x).
The dense fc2 bias goes to shared expert 0 (or, without shared experts, to every routed
expert, which averages back to it). Without per-expert biases (model.moe.expert_bias=false)
the dense biases cannot be carried over and are dropped (logged).

copy: every expert is the whole dense MLP (expert_ffn = I), fc2 and its bias scaled by
1/(num_shared + 1): with renormalised gates (they sum to 1) the layer reproduces the dense MLP.
"""
from __future__ import annotations

import logging

import torch

from unif2ace.model.mlp import DenseMLP
from unif2ace.model.moe.token_moe import GroupedTokenMoE

log = logging.getLogger(__name__)


@torch.no_grad()
def upcycle_from_dense(moe: GroupedTokenMoE, dense: DenseMLP, mode: str = "split") -> None:
    """Overwrite ``moe``'s expert weights (both groups) from ``dense`` (fc1 → act → fc2)."""
    if mode == "none":
        return
    ex = moe.experts
    s, e = moe.num_shared, moe.num_routed
    f = ex.w1.shape[2]
    fc1_w, fc1_b = dense.fc1.weight, dense.fc1.bias          # (I, D), (I,)
    fc2_w, fc2_b = dense.fc2.weight, dense.fc2.bias          # (D, I), (D,)
    inner, hidden = fc1_w.shape
    if hidden != moe.hidden:
        raise ValueError(f"upcycle: dense MLP width {hidden} != MoE hidden size {moe.hidden}")
    if mode == "split":
        if inner % f:
            raise ValueError(f"upcycle split: intermediate_size {inner} is not a multiple of "
                             f"model.moe.expert_ffn {f}")
        n_slices = inner // f
        if n_slices != s + e:
            log.warning("upcycle split: %d experts per group from %d slices of the dense MLP: the "
                        "layer does not reproduce the dense MLP exactly", s + e, n_slices)
        slices = [slice((j % n_slices) * f, (j % n_slices + 1) * f) for j in range(s + e)]
        scale = [1.0] * s + [float(e)] * e
    elif mode == "copy":
        if inner != f:
            raise ValueError(f"upcycle copy: model.moe.expert_ffn {f} must equal the dense intermediate_size {inner}")
        slices = [slice(0, inner)] * (s + e)
        scale = [1.0 / (s + 1)] * (s + e)
        if not moe.cfg.renormalize:
            log.warning("upcycle copy without model.moe.renormalize: the output scales with the gate sum")
    else:
        raise ValueError(f"upcycle: unknown mode {mode!r} (split, copy, none)")
    has_bias = ex.b1 is not None
    if not has_bias and (fc1_b is not None or fc2_b is not None):
        log.warning("upcycle: model.moe.expert_bias=false, the dense MLP's biases are dropped")
    for j, (sl, c) in enumerate(zip(slices, scale)):
        ex.w1[:, j] = fc1_w[sl].to(ex.w1.dtype)
        ex.w2[:, j] = (fc2_w[:, sl].t() * c).to(ex.w2.dtype)
        if has_bias:
            ex.b1[:, j] = fc1_b[sl] if fc1_b is not None else 0.0
            ex.b2[:, j] = 0.0
    if has_bias and fc2_b is not None:
        if mode == "copy":
            ex.b2.copy_((fc2_b / (s + 1)).expand_as(ex.b2))
        elif s > 0:
            ex.b2[:, 0] = fc2_b
        else:
            ex.b2.copy_(fc2_b.expand_as(ex.b2))
