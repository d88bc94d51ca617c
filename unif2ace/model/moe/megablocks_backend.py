"""MegaBlocks backend of the grouped token MoE (CUDA only, imported lazily).

    reason = megablocks_unavailable_reason(device)     # None when usable
    experts = MegablocksExperts(num_experts=18, top_k=5, hidden=2048, ffn=512, act=act,
                                dtype=torch.bfloat16)
    out = experts(x, expert_ids, gates, w1, w2)         # same contract as dropless_moe

Only the expert computation runs in MegaBlocks: a ``megablocks.layers.dmoe.dMoE`` is built
with ``mlp_impl='grouped'`` and its dropless ``experts`` (ParallelDroplessMLP: permutation +
grouped GEMM) are called with *our* routing and *our* stacked weights, viewed as GroupedMLP's
(E·F, D) ``w1``/``w2``. Routing, balance loss and z-loss stay in ``token_moe`` so both backends
route identically and a checkpoint moves between them unchanged. dMoE's own router and weights
are created on the meta device and never used.

Defaults that would bite (docs/design.md §8): ``fp16=True`` is MegaBlocks' default and
wins over ``bf16`` → both flags are set from the weight dtype; ``mlp_impl='sparse'`` fails
with triton ≥ 3.2 → 'grouped'; its global load-balancing list would grow (and double under
activation checkpointing) → ``moe_loss_weight=0`` so nothing is saved, and the list and the
router z-loss list are cleared after every call anyway.

UNTESTED here: MegaBlocks is not installable in this environment (no CUDA; 0.10.0 pins
torch 2.7). Written against megablocks' layers/arguments.py, dmoe.py, moe.py, mlp.py.
"""
from __future__ import annotations

from typing import Callable

import torch


def megablocks_unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the megablocks backend cannot run on ``device`` (None: it can)."""
    if device is not None and device.type != "cuda":
        return f"MegaBlocks needs CUDA tensors, got device {device}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        from megablocks import grouped_gemm_util
        from megablocks.layers import dmoe  # noqa: F401
    except Exception as e:  # ImportError, or a broken build raising anything at import
        return f"cannot import megablocks: {type(e).__name__}: {e}"
    try:
        grouped_gemm_util.assert_grouped_gemm_is_available()
    except Exception as e:
        return f"megablocks' grouped GEMM (package grouped_gemm) is unavailable: {e}"
    return None


class MegablocksExperts:
    """Callable wrapper; deliberately not an ``nn.Module`` so dMoE's meta tensors never show
    up in ``parameters()`` / ``state_dict()``."""

    def __init__(self, num_experts: int, top_k: int, hidden: int, ffn: int,
                 act: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype):
        from megablocks.layers.arguments import Arguments
        from megablocks.layers.dmoe import dMoE

        args = Arguments(
            hidden_size=hidden, ffn_hidden_size=ffn, num_layers=1,
            bias=False, return_bias=False, activation_fn=act,
            moe_num_experts=num_experts, moe_top_k=top_k,
            moe_loss_weight=0.0, moe_zloss_weight=0.0,
            mlp_type="mlp", mlp_impl="grouped",
            fp16=dtype == torch.float16, bf16=dtype == torch.bfloat16,
            device="meta",
        )
        self.num_experts, self.hidden, self.ffn, self.dtype = num_experts, hidden, ffn, dtype
        self.dmoe = dMoE(args)
        mlp = self.dmoe.experts.mlp
        del mlp.w1, mlp.w2  # replaced by views of our weights at every call

    def __call__(self, x: torch.Tensor, expert_ids: torch.Tensor, gates: torch.Tensor,
                 w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, D), expert_ids (T, k), gates (T, k), w1/w2 (E, F, D) → (out (T, D), counts (E,))."""
        from megablocks.layers import moe as mb_moe
        from megablocks.layers import router as mb_router

        e, f, d = w1.shape
        experts = self.dmoe.experts
        experts.train(torch.is_grad_enabled())
        experts.mlp.w1 = w1.reshape(e * f, d)  # views: gradients flow into our parameters
        experts.mlp.w2 = w2.reshape(e * f, d)
        try:
            out = experts(x.unsqueeze(1), None, gates.to(x.dtype), expert_ids.int())
        finally:
            experts.mlp.w1 = experts.mlp.w2 = None
            mb_moe.clear_load_balancing_loss()
            mb_router.clear_router_zloss()
        counts = torch.bincount(expert_ids.reshape(-1), minlength=e)
        return out.view(x.shape), counts
