"""Per-expert fused dropless MoE: the CPU path (``dropless_moe(..., impl='blocked')``).

    from unif2ace.model.moe.blocked import blocked_moe
    out = blocked_moe(x, token, gs, counts, w1, w2, act, b1, b2)
    # rows r sorted by expert (counts[e] rows for expert e), token[r] its token, gs[r] its gate:
    # out[t] = Σ_{r: token[r]=t} gs[r] · (act(x[t]·w1[e]ᵀ + b1[e])·w2[e] + b2[e])

Why not ``torch._grouped_mm`` on CPU: there it is a loop of per-expert GEMMs anyway, and the
unfused path allocates several (rows·k, D|F) tensors per call (gathered inputs, bias,
activation, gate product, unsorted outputs, and their gradients). On CPU every fresh
allocation that large is mmapped and page-faulted anew, and each whole-tensor elementwise op
streams through memory. Here each expert's rows are gathered, pushed through fc1 + bias,
activation, fc2 + bias and gate, and added into the output while they are in cache; backward
does the same per expert and writes each weight-gradient slice in place. Pre-activations and
activations are kept for backward (small per-expert tensors, through ``save_for_backward`` so
activation checkpointing can drop them; the gathered inputs are re-gathered instead of kept).
The activation's derivative comes from ``act.derivative`` when it has one (``TanhGELU``),
else from autograd on the expert's slice. ``benchmarks/bench_moe.py`` compares the paths.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TanhGELU(nn.Module):
    """Tanh-approximate GELU (= Phi's gelu_new) with its derivative exposed, so the blocked
    backward needs no autograd recomputation of the activation."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h, approximate="tanh")

    @staticmethod
    def derivative(h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """d act(h) / dh applied to ``grad``."""
        return torch.ops.aten.gelu_backward(grad, h, approximate="tanh")


def _segments(counts: list[int]):
    s = 0
    for e, n in enumerate(counts):
        if n:
            yield e, slice(s, s + n)
        s += n


def _act_backward(act, h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    derivative = getattr(act, "derivative", None)
    if derivative is not None:
        return derivative(h, grad)
    with torch.enable_grad():  # any other activation: autograd on this expert's slice
        h = h.detach().requires_grad_()
        return torch.autograd.grad(act(h), h, grad)[0]


class _BlockedMoE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gs, w1, w2, b1, b2, token, counts, act):
        out = torch.zeros_like(x)
        saved = []
        for e, sl in _segments(counts):
            tok = token[sl]
            xe = x.index_select(0, tok)
            he = torch.mm(xe, w1[e].t()) if b1 is None else torch.addmm(b1[e], xe, w1[e].t())
            a = act(he)
            ye = torch.mm(a, w2[e]) if b2 is None else torch.addmm(b2[e], a, w2[e])
            out.index_add_(0, tok, ye.mul_(gs[sl].unsqueeze(1)))  # gate applied in place
            saved += [he, a]
        ctx.save_for_backward(x, gs, w1, w2, b2, token, *saved)
        ctx.counts, ctx.act, ctx.has_b1 = counts, act, b1 is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        x, gs, w1, w2, b2, token, *saved = ctx.saved_tensors
        gout = gout.contiguous()
        gx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        ggs = torch.empty_like(gs)
        gw1, gw2 = torch.empty_like(w1), torch.empty_like(w2)
        gb1 = w1.new_empty(w1.shape[:2]) if ctx.has_b1 else None
        gb2 = torch.empty_like(b2) if b2 is not None else None
        for t in (gw1, gw2, gb1, gb2):  # experts without rows get zero gradients
            if t is not None:
                t[[e for e, n in enumerate(ctx.counts) if not n]] = 0
        for i, (e, sl) in enumerate(_segments(ctx.counts)):
            he, a = saved[2 * i], saved[2 * i + 1]
            tok = token[sl]
            g, gate = gout.index_select(0, tok), gs[sl].unsqueeze(1)
            ga = g @ w2[e].t()                                 # d/d(g·a) = gout·w2ᵀ
            ggs[sl] = (ga * a).sum(1)                          # d/dg = gout·(a·w2 + b2)
            if b2 is not None:
                ggs[sl] += g @ b2[e]
                torch.mv(g.t(), gs[sl], out=gb2[e])
            torch.mm((a * gate).t(), g, out=gw2[e])
            gh = _act_backward(ctx.act, he, ga.mul_(gate))
            torch.mm(gh.t(), x.index_select(0, tok), out=gw1[e])
            if gb1 is not None:
                torch.sum(gh, 0, out=gb1[e])
            if gx is not None:
                gx.index_add_(0, tok, gh @ w1[e])
        return gx, ggs, gw1, gw2, gb1, gb2, None, None, None


def blocked_moe(x: torch.Tensor, token: torch.Tensor, gs: torch.Tensor, counts: list[int], w1: torch.Tensor,
                w2: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor], b1: torch.Tensor | None = None,
                b2: torch.Tensor | None = None) -> torch.Tensor:
    """x (T, D); rows sorted by expert: ``token`` (A,), gates ``gs`` (A,), ``counts[e]`` rows of
    expert e; ``w1``/``w2`` (E, F, D), ``b1`` (E, F), ``b2`` (E, D) → (T, D)."""
    return _BlockedMoE.apply(x.contiguous(), gs.to(x.dtype).contiguous(), w1, w2, b1, b2, token, counts, act)
