"""Dropless MoE compute as pure functions: sort assignments by expert, expert MLPs, unsort.

    from unif2ace.model.moe import dropless
    out, counts = dropless.dropless_moe(x, expert_ids, gates, w1, w2, act, b1, b2)
    # x (T, D), expert_ids / gates (T, k) → out (T, D) = Σ_j gates[:, j] · expert_{ids[:, j]}(x)

No capacity, no padding, no dropped tokens: the T·k (token, expert) pairs are sorted by
expert (``make_plan``) and every pair is computed exactly once. Weights are stacked per
expert as ``w1`` (E, F, D) (each slice an ``nn.Linear`` weight, = MegaBlocks' GroupedMLP
``w1``) and ``w2`` (E, F, D) (= MegaBlocks' ``w2``), so the same tensors feed every backend.

Two implementations (``impl``):
  grouped  ``torch._grouped_mm`` where the device/dtype/alignment allows it (float32 / bfloat16 /
           float16, row strides multiple of 16 bytes; probed once per device type, dtype and
           weight layout), a per-expert loop of matmuls otherwise (float64, odd widths); bias,
           activation and gate as whole-tensor ops. The default on GPUs.
  blocked  ``blocked.py``: one fused pass per expert (gather, fc1, activation, gate, fc2,
           scatter-add, and their gradients on cache-resident slices). The default on CPU,
           where ``_grouped_mm`` is itself a per-expert loop and large temporaries are costly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from unif2ace.model.moe.blocked import blocked_moe

_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_probe_cache: dict[tuple[str, torch.dtype, bool], bool] = {}


@dataclass
class RoutePlan:
    """How T·k assignments are laid out sorted by expert."""

    order: torch.Tensor
    """(A,) sorted row → flat assignment index (token·k + slot)."""
    inverse: torch.Tensor
    """(A,) flat assignment index → sorted row (the inverse permutation of ``order``)."""
    token: torch.Tensor
    """(A,) sorted row → token index."""
    expert: torch.Tensor
    """(A,) sorted row → expert id (non-decreasing)."""
    counts: torch.Tensor
    """(E,) rows per expert (long)."""
    offsets: torch.Tensor
    """(E,) int32 inclusive cumulative counts (``torch._grouped_mm``'s ``offs``)."""
    num_tokens: int
    k: int


def make_plan(expert_ids: torch.Tensor, num_experts: int) -> RoutePlan:
    """``expert_ids`` (T, k) long → the sort plan (stable: each expert's rows stay in token order)."""
    t, k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    expert, order = torch.sort(flat, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(flat, minlength=num_experts)
    return RoutePlan(order, inverse, torch.div(order, k, rounding_mode="floor"), expert, counts,
                     counts.cumsum(0).to(torch.int32), t, k)


class _GatherTokens(torch.autograd.Function):
    """x (T, D) → x[token] (A, D). Backward sums each token's k copies through the inverse
    permutation (a gather + reduction) instead of index_add's scatter."""

    @staticmethod
    def forward(ctx, x, token, inverse, k):
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x.index_select(0, token)

    @staticmethod
    def backward(ctx, g):
        (inverse,) = ctx.saved_tensors
        t = inverse.numel() // ctx.k
        return g.index_select(0, inverse).view(t, ctx.k, -1).sum(1), None, None, None


class _PermuteRows(torch.autograd.Function):
    """y[perm] for a permutation; backward is the gather by the inverse permutation."""

    @staticmethod
    def forward(ctx, y, perm, inv):
        ctx.save_for_backward(inv)
        return y.index_select(0, perm)

    @staticmethod
    def backward(ctx, g):
        (inv,) = ctx.saved_tensors
        return g.index_select(0, inv), None, None


def gather_tokens(x: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """(T, D) → (A, D) rows sorted by expert."""
    return _GatherTokens.apply(x, plan.token, plan.inverse, plan.k)


def combine(y: torch.Tensor, gates: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """Sorted expert outputs (A, D) and gates (T, k) → Σ_j gates[:, j] · y_j, (T, D)."""
    y = _PermuteRows.apply(y, plan.inverse, plan.order).view(plan.num_tokens, plan.k, -1)
    return torch.bmm(gates.to(y.dtype).unsqueeze(1), y).squeeze(1)


def _probe(device: torch.device, dtype: torch.dtype, b_transposed: bool) -> bool:
    """Does torch._grouped_mm run (forward and backward) on this device type, dtype and weight
    layout? Probed once, with tiny tensors, because support differs by build and GPU."""
    key = (device.type, dtype, b_transposed)
    if key not in _probe_cache:
        try:
            a = torch.randn(6, 8, device=device, dtype=dtype, requires_grad=True)
            b = torch.randn(2, 8, 8, device=device, dtype=dtype)
            b = (b.transpose(1, 2).contiguous().transpose(1, 2) if b_transposed else b).requires_grad_()
            offs = torch.tensor([2, 6], device=device, dtype=torch.int32)
            torch._grouped_mm(a, b, offs=offs).backward(torch.ones(6, 8, device=device, dtype=dtype))
            _probe_cache[key] = True
        except (RuntimeError, NotImplementedError, AttributeError):
            _probe_cache[key] = False
    return _probe_cache[key]


def can_group(x: torch.Tensor, w: torch.Tensor) -> bool:
    """True when ``torch._grouped_mm(x, w)`` is usable: supported dtype and device, and the row
    strides of x (A, K), w (E, K, N) and the (A, N) output 16-byte aligned."""
    if x.dtype not in _GROUPED_DTYPES or w.dtype != x.dtype or not hasattr(torch, "_grouped_mm"):
        return False
    size = x.element_size()
    k, n = w.shape[1], w.shape[2]
    if (k * size) % 16 or (n * size) % 16 or (max(w.stride(1), w.stride(2)) * size) % 16:
        return False
    return _probe(x.device, x.dtype, w.stride(1) == 1)


def _contiguous_grad(g: torch.Tensor) -> torch.Tensor:
    # _grouped_mm's backward rejects expanded (stride-0) gradients, e.g. the one of a .sum().
    return g.contiguous()


def grouped_mm(x: torch.Tensor, w: torch.Tensor, plan: RoutePlan, use_grouped: bool | None = None) -> torch.Tensor:
    """Rows of expert e (contiguous in ``x`` (A, K)) times ``w[e]`` (K, N) → (A, N).

    ``use_grouped``: None picks ``torch._grouped_mm`` when :func:`can_group` allows it; False
    forces the per-expert loop."""
    if x.shape[0] == 0:
        return x.new_zeros(0, w.shape[2])
    if use_grouped is None:
        use_grouped = can_group(x, w)
    if use_grouped:
        y = torch._grouped_mm(x.contiguous(), w, offs=plan.offsets)
        if y.requires_grad:
            y.register_hook(_contiguous_grad)
        return y
    parts = x.split(plan.counts.tolist())
    return torch.cat([p @ w[e] for e, p in enumerate(parts)], 0)


class _SegmentBias(torch.autograd.Function):
    """h (A, N) + b[e] on expert e's contiguous rows, in place; the bias gradient is a per-segment
    row sum. Avoids materialising b[expert] (A, N) and index_add's scatter in backward."""

    @staticmethod
    def forward(ctx, h, b, counts):
        ctx.counts = counts
        for seg, bias in zip(h.split(counts), b):
            seg.add_(bias)
        ctx.mark_dirty(h)
        return h

    @staticmethod
    def backward(ctx, g):
        gb = torch.stack([seg.sum(0) for seg in g.split(ctx.counts)])
        return g, gb, None


def add_expert_bias(h: torch.Tensor, b: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """Sorted rows (A, N) + their expert's bias b (E, N)."""
    if h.device.type == "cpu":
        return _SegmentBias.apply(h, b, plan.counts.tolist())
    return h + b.index_select(0, plan.expert)  # on GPU the gather is cheap and needs no host sync


def expert_mlp(xs: torch.Tensor, plan: RoutePlan, w1: torch.Tensor, w2: torch.Tensor,
               act: Callable[[torch.Tensor], torch.Tensor], b1: torch.Tensor | None = None,
               b2: torch.Tensor | None = None, use_grouped: bool | None = None) -> torch.Tensor:
    """Sorted rows (A, D) through their experts: act(x·w1[e]ᵀ + b1[e])·w2[e] + b2[e].

    ``w1`` (E, F, D), ``w2`` (E, F, D), ``b1`` (E, F), ``b2`` (E, D)."""
    h = grouped_mm(xs, w1.transpose(1, 2), plan, use_grouped)
    if b1 is not None:
        h = add_expert_bias(h, b1, plan)
    h = act(h)
    y = grouped_mm(h, w2, plan, use_grouped)
    if b2 is not None:
        y = add_expert_bias(y, b2, plan)
    return y


def default_impl(x: torch.Tensor) -> str:
    return "blocked" if x.device.type == "cpu" else "grouped"


def dropless_moe(x: torch.Tensor, expert_ids: torch.Tensor, gates: torch.Tensor, w1: torch.Tensor,
                 w2: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor], b1: torch.Tensor | None = None,
                 b2: torch.Tensor | None = None, impl: str | None = None,
                 use_grouped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, D), expert_ids (T, k), gates (T, k) → (out (T, D), rows per expert (E,)).

    ``impl``: 'blocked' | 'grouped' | None (blocked on CPU, grouped elsewhere); ``use_grouped``
    (grouped only): None = torch._grouped_mm when allowed, False = the per-expert matmul loop."""
    plan = make_plan(expert_ids, w1.shape[0])
    impl = impl or default_impl(x)
    if impl == "blocked":
        gs = gates.reshape(-1).index_select(0, plan.order)
        return blocked_moe(x, plan.token, gs, plan.counts.tolist(), w1, w2, act, b1, b2), plan.counts
    if impl != "grouped":
        raise ValueError(f"dropless_moe: unknown impl {impl!r} (blocked, grouped)")
    y = expert_mlp(gather_tokens(x, plan), plan, w1, w2, act, b1, b2, use_grouped)
    return combine(y, gates, plan), plan.counts
