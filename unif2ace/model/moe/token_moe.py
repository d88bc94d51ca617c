"""Grouped token-level MoE (the paper's FFN replacement), dropless.

    from unif2ace.model.moe.token_moe import GroupedTokenMoE
    moe = GroupedTokenMoE(hidden, cfg.model.moe)
    out, aux = moe(h, ctx)          # h (B, L, D); ctx.task (B,) picks the group per sequence

Two expert groups per layer: generation (T2I sequences) and understanding (MMU sequences).
Every real token of a sequence goes to its sequence's group; each group has ``num_shared``
always-on experts and ``num_routed`` experts behind its own softmax top-k router:
``out = Σ_shared expert(x) + Σ_topk gate · expert(x)`` (gates optionally renormalised).
[PAD] tokens are not routed (their output is 0; nothing attends to them or is scored on them).

Shared and routed experts of both groups are one stacked set of G·(S+E) experts
(``experts.w1``/``experts.w2`` of shape (2, S+E, F, D)): a token's S shared experts are
assignments with gate 1, so one dropless pass (``dropless.py``: sort by expert, then
``torch._grouped_mm`` — or, on CPU, a fused per-expert pass, ``blocked.py``) computes
everything. The routed slice ``[g, S:]`` viewed as (E·F, D) is exactly MegaBlocks'
GroupedMLP layout, so checkpoints move between the ``torch`` and ``megablocks`` backends.

aux (no global state; returned through the — possibly checkpointed — block, so recomputation
cannot double count):
  loss_balance_tok  λ_t2i·E·Σ f_i P_i (generation) + λ_mmu·E·Σ f_j P_j (understanding), with
                    f = fraction of the group's routed assignments sent to expert i, P = the
                    group's mean router probability (Switch); 0 for a group with no tokens.
  loss_zloss        z_loss · mean logsumexp(router logits)² (only when z_loss > 0).
  route_frac_gen / route_frac_und (E,), balance_gen / balance_und: detached statistics.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from unif2ace.config import TokenMoEConfig
from unif2ace.model.moe import dropless
from unif2ace.model.moe.blocked import TanhGELU
from unif2ace.model.moe.megablocks_backend import MegablocksExperts, megablocks_unavailable_reason
from unif2ace.tokens import TASK_MMU, TASK_T2I

log = logging.getLogger(__name__)
GROUPS = ("gen", "und")
"""Group index 0 = generation (T2I), 1 = understanding (MMU)."""
_logged: set[str] = set()


def _log_once(msg: str) -> None:
    # 24 layers resolve their backend; the fallback is worth one line per process, not 24.
    if msg not in _logged:
        _logged.add(msg)
        log.warning(msg)


def activation(name: str) -> nn.Module:
    """ACT2FN[name], except Phi's gelu_new (and gelu_pytorch_tanh): the same function
    (tanh-approximate GELU) as one fused kernel with a closed-form derivative (``TanhGELU``)
    instead of five elementwise ops."""
    return TanhGELU() if name in ("gelu_new", "gelu_pytorch_tanh") else ACT2FN[name]


def task_to_group(task: torch.Tensor) -> torch.Tensor:
    """(B,) task ids (TASK_T2I / TASK_MMU) → group index (0 generation, 1 understanding)."""
    lut = torch.zeros(max(TASK_T2I, TASK_MMU) + 1, dtype=torch.long, device=task.device)
    lut[TASK_T2I], lut[TASK_MMU] = 0, 1
    return lut[task.long()]


class ExpertStack(nn.Module):
    """Expert MLP weights of both groups; slot [g, j] is group g's expert j (shared ones first).

    w1 (G, S+E, F, D): each [g, j] an nn.Linear(D, F) weight; w2 (G, S+E, F, D): each [g, j]
    the transpose of an nn.Linear(F, D) weight; b1 (G, S+E, F), b2 (G, S+E, D) when biased."""

    def __init__(self, groups: int, per_group: int, hidden: int, ffn: int, bias: bool):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(groups, per_group, ffn, hidden))
        self.w2 = nn.Parameter(torch.empty(groups, per_group, ffn, hidden))
        if bias:
            self.b1 = nn.Parameter(torch.empty(groups, per_group, ffn))
            self.b2 = nn.Parameter(torch.empty(groups, per_group, hidden))
        else:
            self.register_parameter("b1", None)
            self.register_parameter("b2", None)


class GroupedTokenMoE(nn.Module):
    def __init__(self, hidden: int, cfg: TokenMoEConfig):
        super().__init__()
        self.cfg = cfg
        self.hidden = hidden
        self.num_shared, self.num_routed, self.top_k = cfg.num_shared, cfg.num_routed, cfg.top_k
        self.per_group = cfg.num_shared + cfg.num_routed
        self.router = nn.Parameter(torch.empty(len(GROUPS), cfg.num_routed, hidden))
        """Router weights (G, E, D): group g's logits are x · router[g]ᵀ (nn.Linear, no bias)."""
        self.experts = ExpertStack(len(GROUPS), self.per_group, hidden, cfg.expert_ffn, cfg.expert_bias)
        self.act = activation(cfg.activation)
        self.backend: str | None = None
        """Resolved at the first forward (auto depends on the input's device)."""
        self._mb: MegablocksExperts | None = None
        if cfg.backend == "megablocks":
            reason = ("model.moe.expert_bias=true (MegaBlocks' grouped MLP has no per-expert biases)"
                      if cfg.expert_bias else megablocks_unavailable_reason())
            if reason:
                raise RuntimeError(f"model.moe.backend=megablocks cannot be used: {reason}")
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        nn.init.normal_(self.router, std=std)
        nn.init.normal_(self.experts.w1, std=std)
        nn.init.normal_(self.experts.w2, std=std)
        if self.experts.b1 is not None:
            nn.init.zeros_(self.experts.b1)
            nn.init.zeros_(self.experts.b2)

    def active_parameters(self) -> int:
        """Parameters one token uses: its group's router + S shared + top_k routed experts."""
        f, d = self.cfg.expert_ffn, self.hidden
        per_expert = 2 * f * d + ((f + d) if self.cfg.expert_bias else 0)
        return self.num_routed * d + (self.num_shared + self.top_k) * per_expert

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"groups={GROUPS}, shared={c.num_shared}, routed={c.num_routed}, top_k={c.top_k}, "
                f"expert_ffn={c.expert_ffn}, bias={c.expert_bias}, backend={self.backend or c.backend}")

    # ------------------------------------------------------------------ backend

    def _resolve_backend(self, x: torch.Tensor) -> str:
        want = self.cfg.backend
        if want == "torch":
            return "torch"
        reason = ("model.moe.expert_bias=true (MegaBlocks' grouped MLP has no per-expert biases)"
                  if self.cfg.expert_bias else megablocks_unavailable_reason(x.device))
        if reason is None:
            return "megablocks"
        if want == "megablocks":
            raise RuntimeError(f"model.moe.backend=megablocks cannot run: {reason}")
        _log_once(f"token MoE: megablocks backend not used ({reason}); using the torch backend")
        return "torch"

    def _run_experts(self, x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor):
        if self.backend is None:
            self.backend = self._resolve_backend(x)
        ex = self.experts
        impl = None if self.cfg.torch_impl == "auto" else self.cfg.torch_impl
        if not isinstance(ex, ExpertStack):
            # Replaced by a parallel layout (unif2ace/train/expert_parallel.py), which runs
            # the same dropless kernels on the experts it holds: same call, same result.
            return ex(x, ids, gates, self.act, impl), None
        n = len(GROUPS) * self.per_group
        w1 = ex.w1.view(n, *ex.w1.shape[2:])
        w2 = ex.w2.view(n, *ex.w2.shape[2:])
        if self.backend == "megablocks":
            mb = self._mb
            if mb is None or mb.dtype != x.dtype:  # its fp16/bf16 flags follow the dtype
                mb = self._mb = MegablocksExperts(n, ids.shape[1], self.hidden, self.cfg.expert_ffn, self.act, x.dtype)
            return mb(x, ids, gates, w1, w2)
        b1 = ex.b1.view(n, -1) if ex.b1 is not None else None
        b2 = ex.b2.view(n, -1) if ex.b2 is not None else None
        return dropless.dropless_moe(x, ids, gates, w1, w2, self.act, b1, b2, impl=impl)

    # ------------------------------------------------------------------ forward

    def route(self, x: torch.Tensor, group: torch.Tensor):
        """Real tokens x (T, D) and their group (T,) → (logits (T, E) float, probs (T, E),
        top-k gates (T, k), top-k expert indices within the group (T, k))."""
        t, d = x.shape
        e = self.num_routed
        rdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        logits = F.linear(x.to(rdt), self.router.to(rdt).view(len(GROUPS) * e, d)).view(t, len(GROUPS), e)
        logits = logits.gather(1, group.view(t, 1, 1).expand(t, 1, e)).squeeze(1)
        probs = logits.softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        if self.cfg.renormalize:
            top_p = top_p / top_p.sum(-1, keepdim=True)
        return logits, probs, top_p, top_i

    def forward(self, h: torch.Tensor, ctx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if ctx is None:
            raise ValueError("GroupedTokenMoE needs a Context (task picks the expert group)")
        b, l, d = h.shape
        s = self.num_shared
        flat = h.reshape(b * l, d)
        real = ctx.token_mask.reshape(-1).nonzero().squeeze(1)
        dense = real.numel() == b * l  # no [PAD]: skip the gather / scatter of every token
        x = flat if dense else flat.index_select(0, real)
        group = task_to_group(ctx.task).view(b, 1).expand(b, l).reshape(-1)
        group = group if dense else group.index_select(0, real)
        logits, probs, top_p, top_i = self.route(x, group)
        base = (group * self.per_group).unsqueeze(1)
        ids = torch.cat([base + torch.arange(s, device=x.device), base + s + top_i], 1)
        gates = torch.cat([top_p.new_ones(x.shape[0], s), top_p], 1).to(x.dtype)
        y, _ = self._run_experts(x, ids, gates)
        out = (y if dense else flat.new_zeros(b * l, d).index_copy(0, real, y)).view(b, l, d)
        return out, self._aux(logits, probs, top_i, group)

    def _aux(self, logits, probs, top_i, group) -> dict[str, torch.Tensor]:
        g, e, k = len(GROUPS), self.num_routed, self.top_k
        member = F.one_hot(group, g).to(probs.dtype)                        # (T, G)
        tokens = member.sum(0)                                              # (G,)
        p_mean = (member.t() @ probs) / tokens.clamp(min=1).unsqueeze(1)    # (G, E)
        slots = (group.unsqueeze(1) * e + top_i).reshape(-1)
        counts = torch.zeros(g * e, dtype=probs.dtype, device=probs.device)
        counts = counts.index_add(0, slots, torch.ones_like(slots, dtype=probs.dtype)).view(g, e)
        frac = counts / (tokens * k).clamp(min=1).unsqueeze(1)              # (G, E), rows sum to 1 or 0
        balance = e * (frac * p_mean).sum(1)                                # (G,); 1 when uniform
        aux = {
            "loss_balance_tok": self.cfg.lambda_t2i * balance[0] + self.cfg.lambda_mmu * balance[1],
            "route_frac_gen": frac[0].detach(),
            "route_frac_und": frac[1].detach(),
            "balance_gen": balance[0].detach(),
            "balance_und": balance[1].detach(),
        }
        if self.cfg.z_loss > 0:
            z = torch.logsumexp(logits, -1).square()
            aux["loss_zloss"] = self.cfg.z_loss * (z.mean() if z.numel() else z.sum())
        return aux
