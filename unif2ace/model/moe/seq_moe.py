"""Grouped sequence-level MoE: one routing decision per sequence, a residual branch.

    from unif2ace.model.moe.seq_moe import GroupedSequenceMoE
    smoe = GroupedSequenceMoE(hidden, cfg.model.seq_moe)
    s, aux = smoe(ln(x), ctx)        # the block adds s to the residual stream

Per layer two groups (generation for T2I sequences, understanding for MMU), each with its
own expert list (default und: CLIP, Face, Copy, Copy; gen: Copy, Zero, Noise, Copy) and a
router on the masked mean of the normed hidden states over real tokens. Top-k (default 2) of
the softmax, gates renormalised to sum to one; output = Σ gate · expert(h), zero at [PAD].
Copy(h) = h, Zero(h) = 0, feature experts w·h + (1−w)·S(F) (``resampler.py``) on the cached
features in ``ctx.features``: 'clip' (B, Nc, Dc) or (B, Dc), 'face' (B, 512), 'noise' (B, Dn).

Missing inputs: an expert whose feature is absent from ``ctx.features`` is masked out of the
router (it can never be picked). No face (``face_found`` False): with ``no_face='mask'`` (the
default) the router never picks the Face expert for that sequence — its top-k is taken among
the others; with ``no_face='copy'`` the Face expert acts as Copy for it. If fewer experts are
available than top_k, the unavailable picks get gate 0.

Cached decoding: with ``ctx.layer_state`` (a per-layer dict) the decision taken on the first
call (the prompt) is stored there and reused for every later token.

aux: ``loss_balance_seq`` = balance_weight · Σ_groups n·Σ f_j P_j (Switch form over sequences:
f = fraction of the group's chosen (sequence, expert) pairs, P = mean router probability),
``seq_route_gen`` / ``seq_route_und`` (detached f per expert).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unif2ace.config import SeqMoEConfig
from unif2ace.model.moe.resampler import FeatureExpert
from unif2ace.model.moe.token_moe import GROUPS, task_to_group

FEATURE_EXPERTS = ("clip", "face", "noise")
_STATE_KEY = "seq_moe_decision"


class SeqExpertGroup(nn.Module):
    """One group's router and feature experts (Copy / Zero need no parameters)."""

    def __init__(self, hidden: int, names: list[str], cfg: SeqMoEConfig):
        super().__init__()
        self.names = list(names)
        self.router = nn.Linear(hidden, len(names), bias=False)
        dims = {"clip": cfg.clip_dim, "face": cfg.face_dim, "noise": cfg.noise_dim}
        self.experts = nn.ModuleDict({
            str(j): FeatureExpert(hidden, dims[n], cfg.resampler_dim, cfg.resampler_heads,
                                  cfg.feature_gate_init)
            for j, n in enumerate(names) if n in FEATURE_EXPERTS
        })


def _feature(features: dict, name: str, rows: torch.Tensor, dim: int) -> torch.Tensor:
    f = features[name]
    if f.dim() == 2:
        f = f.unsqueeze(1)
    if f.dim() != 3 or f.shape[-1] != dim:
        raise ValueError(f"ctx.features[{name!r}] has shape {tuple(features[name].shape)}; expected "
                         f"(B, {dim}) or (B, N, {dim}) (model.seq_moe.{name}_dim)")
    return f.index_select(0, rows)


class GroupedSequenceMoE(nn.Module):
    def __init__(self, hidden: int, cfg: SeqMoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gen = SeqExpertGroup(hidden, cfg.gen_experts, cfg)
        self.und = SeqExpertGroup(hidden, cfg.und_experts, cfg)

    def groups(self) -> list[SeqExpertGroup]:
        return [getattr(self, g) for g in GROUPS]

    def available(self, names: list[str], rows: torch.Tensor, features: dict) -> torch.Tensor:
        """(len(rows), len(names)) bool: which experts each sequence may be routed to."""
        cols = []
        for n in names:
            if n not in FEATURE_EXPERTS:
                ok = torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)
            elif self.cfg.feature_key(n) not in features:
                ok = torch.zeros(rows.numel(), dtype=torch.bool, device=rows.device)
            elif n == "face" and self.cfg.no_face == "mask" and "face_found" in features:
                ok = features["face_found"].to(rows.device).bool().index_select(0, rows)
            else:
                ok = torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)
            cols.append(ok)
        return torch.stack(cols, 1)

    def decide(self, h: torch.Tensor, ctx) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict]:
        """Route every sequence once → per group (rows (b_g,), gates (b_g, n_g) with k nonzero
        entries summing to one) and the aux losses / statistics."""
        m = ctx.token_mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        group = task_to_group(ctx.task)
        rdt = torch.float32 if h.dtype in (torch.float16, torch.bfloat16) else h.dtype  # route in ≥ fp32
        decisions, balance, aux = [], h.new_zeros((), dtype=rdt), {}
        for gi, grp in enumerate(self.groups()):
            n, k = len(grp.names), self.cfg.top_k
            rows = (group == gi).nonzero().squeeze(1)
            # A group without sequences in this batch still runs (on zero rows): its router and
            # experts then get zero gradients, not none, so every rank reduces the same set of
            # gradients (ZeRO-1/2 bucket them by arrival and fail on a mismatch).
            logits = F.linear(pooled.index_select(0, rows).to(rdt), grp.router.weight.to(rdt))
            logits = logits.masked_fill(~self.available(grp.names, rows, ctx.features), float("-inf"))
            probs = torch.nan_to_num(logits.softmax(-1), nan=0.0)  # a row with nothing available → 0
            top_p, top_i = probs.topk(k, dim=-1)
            top_p = top_p / top_p.sum(-1, keepdim=True).clamp(min=1e-12)
            gates = torch.zeros_like(probs).scatter(1, top_i, top_p)
            frac = (gates > 0).to(rdt).sum(0) / max(rows.numel() * k, 1)
            if rows.numel():
                balance = balance + n * (frac * probs.mean(0)).sum()
            decisions.append((rows, gates))
            aux[f"seq_route_{GROUPS[gi]}"] = frac.detach()
        aux["loss_balance_seq"] = self.cfg.balance_weight * balance
        return decisions, aux

    def forward(self, h: torch.Tensor, ctx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        state = ctx.layer_state
        if state is not None and _STATE_KEY in state:
            decisions, aux = state[_STATE_KEY], {}
            if sum(r.numel() for r, _ in decisions) != h.shape[0]:
                raise ValueError(f"sequence MoE: cached routing holds {sum(r.numel() for r, _ in decisions)} "
                                 f"sequences but the batch has {h.shape[0]}")
        else:
            decisions, aux = self.decide(h, ctx)
            if state is not None:
                state[_STATE_KEY] = [(r, g.detach()) for r, g in decisions]
        out = torch.zeros_like(h)
        for grp, (rows, gates) in zip(self.groups(), decisions):
            out = out.index_copy(0, rows, self._group_out(grp, h.index_select(0, rows), rows, gates, ctx.features))
        return out * ctx.token_mask.to(h.dtype).unsqueeze(-1), aux

    def _group_out(self, grp: SeqExpertGroup, hg: torch.Tensor, rows: torch.Tensor, gates: torch.Tensor,
                   features: dict) -> torch.Tensor:
        gates = gates.to(hg.dtype)
        out = torch.zeros_like(hg)
        for j, name in enumerate(grp.names):
            w = gates[:, j]
            if name == "zero":
                continue
            if name == "copy":
                out = out + w.view(-1, 1, 1) * hg
                continue
            if self.cfg.feature_key(name) not in features:  # masked out of the router: never picked
                continue
            # Only the sequences routed here run the expert; with none it runs on zero rows (zero
            # gradients rather than none: see ``decide``).
            sel = (w > 0).nonzero().squeeze(1)
            expert = grp.experts[str(j)]
            hs = hg.index_select(0, sel)
            y = expert(hs, _feature(features, self.cfg.feature_key(name), rows.index_select(0, sel), expert.feat_dim))
            if name == "face" and self.cfg.no_face == "copy" and "face_found" in features:
                found = features["face_found"].to(hg.device).bool().index_select(0, rows.index_select(0, sel))
                y = torch.where(found.view(-1, 1, 1), y, hs)
            out = out.index_add(0, sel, w.index_select(0, sel).view(-1, 1, 1) * y)
        return out
