"""Grouped token-level MoE: dropless accounting, gradients vs a naive per-token reference,
balance/z-loss against hand computation, group isolation, backends, checkpointing.

    pytest tests/test_moe_token.py -q
"""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from unif2ace.config import ConfigError, TokenMoEConfig, load_config
from unif2ace.model.context import Context
from unif2ace.model.moe import dropless
from unif2ace.model.moe.token_moe import GroupedTokenMoE
from unif2ace.tokens import TASK_MMU, TASK_T2I


def _moe(hidden=16, dtype=torch.float64, seed=0, **kw) -> GroupedTokenMoE:
    torch.manual_seed(seed)
    cfg = TokenMoEConfig(enabled=True, **{"num_shared": 1, "num_routed": 4, "top_k": 2, "expert_ffn": 8,
                                          "backend": "torch", **kw})
    m = GroupedTokenMoE(hidden, cfg).to(dtype)
    with torch.no_grad():  # spread the router so top-k choices differ between tokens
        m.router.normal_(0, 1.0)
        m.experts.w1.normal_(0, 0.5)
        m.experts.w2.normal_(0, 0.5)
        if m.experts.b1 is not None:
            m.experts.b1.normal_(0, 0.1)
            m.experts.b2.normal_(0, 0.1)
    return m


def _ctx(task, mask):
    return Context(torch.tensor(task), mask)


def _naive(m: GroupedTokenMoE, h, task, mask):
    """Per-token loop, written from the definition: group = task; shared experts always;
    softmax router of that group, top-k, optional renorm; Σ gate · expert."""
    ex, s, k = m.experts, m.num_shared, m.top_k
    gelu = lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3)))  # noqa: E731

    def expert(g, j, x):
        a = ex.w1[g, j] @ x + (ex.b1[g, j] if ex.b1 is not None else 0)
        return gelu(a) @ ex.w2[g, j] + (ex.b2[g, j] if ex.b2 is not None else 0)

    rows, losses = [], {}
    stats = {g: {"probs": [], "top": []} for g in (0, 1)}
    for b in range(h.shape[0]):
        g = 0 if task[b] == TASK_T2I else 1
        for l in range(h.shape[1]):
            x = h[b, l]
            if not mask[b, l]:
                rows.append(torch.zeros_like(x))
                continue
            p = torch.softmax(m.router[g] @ x, -1)
            top_p, top_i = torch.topk(p, k)
            if m.cfg.renormalize:
                top_p = top_p / top_p.sum()
            y = sum(expert(g, j, x) for j in range(s)) + sum(top_p[n] * expert(g, s + int(top_i[n]), x)
                                                            for n in range(k))
            rows.append(y)
            stats[g]["probs"].append(p)
            stats[g]["top"].append(top_i)
    total = 0.0
    for g, lam in ((0, m.cfg.lambda_t2i), (1, m.cfg.lambda_mmu)):
        if not stats[g]["probs"]:
            continue
        probs = torch.stack(stats[g]["probs"])
        counts = torch.bincount(torch.cat(stats[g]["top"]), minlength=m.num_routed).to(probs.dtype)
        f = counts / (probs.shape[0] * k)
        total = total + lam * m.num_routed * (f * probs.mean(0)).sum()
    losses["loss_balance_tok"] = total
    return torch.stack(rows).view_as(h), losses


@pytest.mark.parametrize("impl", ["blocked", "grouped"])
@pytest.mark.parametrize("renormalize,num_shared,bias", [(False, 1, True), (True, 0, False), (True, 2, True)])
def test_forward_and_gradients_match_naive_reference_float64(renormalize, num_shared, bias, impl):
    m = _moe(renormalize=renormalize, num_shared=num_shared, expert_bias=bias, torch_impl=impl)
    ref = _moe(renormalize=renormalize, num_shared=num_shared, expert_bias=bias)
    ref.load_state_dict(m.state_dict())
    torch.manual_seed(1)
    h = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    h_ref = h.detach().clone().requires_grad_()
    task = [TASK_T2I, TASK_MMU, TASK_T2I]
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, :2] = False  # left pads (T2I)
    mask[1, 4] = False   # right pad (MMU)
    out, aux = m(h, _ctx(task, mask))
    out_ref, aux_ref = _naive(ref, h_ref, task, mask)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aux["loss_balance_tok"], aux_ref["loss_balance_tok"], rtol=1e-12, atol=1e-14)
    w = torch.randn_like(out)
    ((out * w).sum() + 10 * aux["loss_balance_tok"]).backward()
    ((out_ref * w).sum() + 10 * aux_ref["loss_balance_tok"]).backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-10, atol=1e-12)
    for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=n)
    assert m.experts.w1.grad.abs().sum() > 0 and m.router.grad.abs().sum() > 0


def test_fp32_paths_agree_grouped_mm_matmul_loop_and_blocked():
    """torch._grouped_mm (fp32, aligned), the per-expert matmul loop and the fused blocked path
    give the same outputs and gradients (float64 runs of both are checked above)."""
    torch.manual_seed(0)
    x = torch.randn(30, 16, requires_grad=True)
    ids = torch.randint(0, 6, (30, 3))
    ids[:, 0] = 2  # one busy expert; expert 5 may get no rows
    gates = torch.rand(30, 3, requires_grad=True)
    ws = [torch.randn(6, 8, 16, requires_grad=True), torch.randn(6, 8, 16, requires_grad=True),
          torch.randn(6, 8, requires_grad=True), torch.randn(6, 16, requires_grad=True)]
    results = []
    for impl, use in (("grouped", True), ("grouped", False), ("blocked", None)):
        out, counts = dropless.dropless_moe(x, ids, gates, ws[0], ws[1], F.gelu, ws[2], ws[3], impl=impl,
                                            use_grouped=use)
        out.sum().backward()  # a .sum() gradient is stride-0: the grouped path must cope
        results.append([out.detach()] + [t.grad.clone() for t in (x, gates, *ws)])
        for t in (x, gates, *ws):
            t.grad = None
        assert counts.tolist() == torch.bincount(ids.reshape(-1), minlength=6).tolist()
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_grouped_mm_path_is_used_in_fp32_and_matches_the_per_expert_loop():
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    w = torch.randn(5, 16, 8)
    assert dropless.can_group(x, w)
    assert dropless.can_group(x, w.transpose(1, 2).contiguous().transpose(1, 2).transpose(1, 2).contiguous())
    assert not dropless.can_group(x.double(), w.double())          # dtype
    assert not dropless.can_group(torch.randn(4, 6), torch.randn(2, 6, 3))  # 24-byte rows: misaligned
    ids = torch.randint(0, 5, (20, 2))
    ids[:, 0] = 3  # one busy expert; expert ids with no rows exist too (most likely)
    gates = torch.rand(20, 2)
    w1 = torch.randn(5, 8, 16, requires_grad=True)
    w2 = torch.randn(5, 8, 16, requires_grad=True)
    xs = torch.randn(20, 16, requires_grad=True)
    outs, grads = [], []
    for use in (True, False):
        plan = dropless.make_plan(ids, 5)
        y = dropless.expert_mlp(dropless.gather_tokens(xs, plan), plan, w1, w2, F.gelu, use_grouped=use)
        out = dropless.combine(y, gates, plan)
        out.sum().backward()  # a .sum() gradient is stride-0: the grouped path must cope
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in (xs, w1, w2)])
        for t in (xs, w1, w2):
            t.grad = None
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["blocked", "grouped"])
def test_dropless_accounting_every_token_computed_exactly_k_times(impl):
    m = _moe(num_shared=1, top_k=2, torch_impl=impl)
    rows = []
    m.act.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    # Skew routing hard: every token picks the same two experts (a capacity MoE would drop).
    with torch.no_grad():
        m.router.zero_()
        m.router[:, 0, 0] = 50.0
        m.router[:, 1, 0] = 40.0
    h = torch.randn(2, 6, 16, dtype=torch.float64)
    h[..., 0] = h[..., 0].abs() + 1.0
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    out, aux = m(h, _ctx([TASK_T2I, TASK_MMU], mask))
    n_real = int(mask.sum())
    assert sum(rows) == n_real * (m.num_shared + m.top_k)  # each (token, expert) pair once, no pads
    assert len(rows) == (1 if impl == "grouped" else 6)     # one grouped pass / one per used expert (2·3)
    ref, _ = _naive(m, h, [TASK_T2I, TASK_MMU], mask)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)  # nothing dropped
    torch.testing.assert_close(aux["route_frac_gen"], torch.tensor([0.5, 0.5, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(aux["route_frac_und"], torch.tensor([0.5, 0.5, 0, 0], dtype=torch.float64))
    # The plan itself: counts per expert = how often it was chosen, total = T·k.
    ids = torch.tensor([[0, 2], [2, 2], [1, 2]])
    plan = dropless.make_plan(ids, 4)
    assert plan.counts.tolist() == [1, 1, 4, 0] and plan.offsets.tolist() == [1, 2, 6, 6]
    assert plan.token.tolist() == [0, 2, 0, 1, 1, 2]


def test_balance_and_z_loss_against_hand_computation():
    cfg = TokenMoEConfig(enabled=True, num_shared=0, num_routed=2, top_k=1, expert_ffn=4, lambda_t2i=0.5,
                         lambda_mmu=0.1, z_loss=0.01, backend="torch")
    m = GroupedTokenMoE(2, cfg).double()
    with torch.no_grad():
        m.router.copy_(torch.eye(2).expand(2, 2, 2))
    ln3 = math.log(3.0)
    # generation: probs [3/4,1/4], [1/4,3/4], [3/4,1/4] → top-1 e0,e1,e0: f=[2/3,1/3], P=[7/12,5/12]
    # understanding: [1/4,3/4] → e1: f=[0,1], P=[1/4,3/4]
    h = torch.tensor([[[ln3, 0.0], [0.0, ln3], [ln3, 0.0]],
                      [[0.0, ln3], [9.0, 9.0], [9.0, 9.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    _, aux = m(h, _ctx([TASK_T2I, TASK_MMU], mask))
    bal_gen = 2 * (2 / 3 * 7 / 12 + 1 / 3 * 5 / 12)   # = 19/18
    bal_und = 2 * (0 * 1 / 4 + 1 * 3 / 4)             # = 3/2
    assert aux["balance_gen"].item() == pytest.approx(19 / 18, rel=1e-12)
    assert aux["balance_und"].item() == pytest.approx(1.5, rel=1e-12)
    assert aux["loss_balance_tok"].item() == pytest.approx(0.5 * bal_gen + 0.1 * bal_und, rel=1e-12)
    # every real token's logsumexp is log(3 + 1) = log 4; pads are not counted
    assert aux["loss_zloss"].item() == pytest.approx(0.01 * math.log(4.0) ** 2, rel=1e-12)


def test_generation_tokens_never_reach_understanding_experts_and_vice_versa():
    m = _moe()
    h = torch.randn(4, 5, 16, dtype=torch.float64)
    task = [TASK_T2I, TASK_MMU, TASK_MMU, TASK_T2I]
    mask = torch.ones(4, 5, dtype=torch.bool)
    clean, _ = m(h, _ctx(task, mask))
    gen_rows, und_rows = [0, 3], [1, 2]
    for poisoned, other_rows, own_rows in ((1, gen_rows, und_rows), (0, und_rows, gen_rows)):
        bad = _moe()
        bad.load_state_dict(m.state_dict())
        with torch.no_grad():
            for p in (bad.experts.w1, bad.experts.w2, bad.experts.b1, bad.experts.b2):
                p[poisoned] = float("nan")
            bad.router[poisoned] += torch.randn_like(bad.router[poisoned])
        out, _ = bad(h, _ctx(task, mask))
        assert torch.equal(out[other_rows], clean[other_rows])  # bitwise: never touched
        assert torch.isnan(out[own_rows]).all()
    # gradients: a T2I-only batch leaves every understanding weight untouched
    out, aux = m(h[[0, 3]], _ctx([TASK_T2I, TASK_T2I], mask[:2]))
    (out.square().sum() + aux["loss_balance_tok"]).backward()
    for p in (m.experts.w1, m.experts.w2, m.experts.b1, m.experts.b2, m.router):
        assert p.grad[1].abs().max() == 0 and p.grad[0].abs().max() > 0
    assert aux["route_frac_und"].abs().sum() == 0 and aux["route_frac_gen"].sum().item() == pytest.approx(1.0)


def test_backend_selection_auto_falls_back_with_one_log_line_and_explicit_megablocks_fails(caplog):
    from unif2ace.model.moe import token_moe

    token_moe._logged.clear()
    cfg = TokenMoEConfig(enabled=True, num_routed=4, top_k=2, expert_ffn=8, expert_bias=False, backend="auto")
    layers = [GroupedTokenMoE(16, cfg) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="unif2ace.model.moe.token_moe"):
        for m in layers:
            m(torch.randn(1, 3, 16), _ctx([TASK_T2I], torch.ones(1, 3, dtype=torch.bool)))
    assert [m.backend for m in layers] == ["torch"] * 3
    lines = [r.message for r in caplog.records if "megablocks" in r.message]
    assert len(lines) == 1 and "torch backend" in lines[0]
    # No CUDA / no megablocks here: an explicit request must fail and say why.
    with pytest.raises(RuntimeError, match="backend=megablocks cannot be used: (CUDA|cannot import)"):
        GroupedTokenMoE(16, TokenMoEConfig(enabled=True, expert_bias=False, backend="megablocks"))
    with pytest.raises(ConfigError, match="expert_bias"):
        load_config("tiny", ["model.moe.enabled=true", "model.moe.backend=megablocks"])


def test_active_parameters_hand_count():
    m = GroupedTokenMoE(16, TokenMoEConfig(enabled=True, num_shared=1, num_routed=4, top_k=2, expert_ffn=8))
    per_expert = 2 * 8 * 16 + 8 + 16
    assert m.active_parameters() == 4 * 16 + 3 * per_expert
    assert sum(p.numel() for p in m.parameters()) == 2 * 4 * 16 + 2 * 5 * per_expert


def test_activation_checkpointing_gives_identical_losses_and_gradients():
    from unif2ace.model.unif2ace import UniF2ace

    cfg = load_config("tiny", ["model.moe.enabled=true", "model.moe.expert_ffn=32", "model.moe.z_loss=0.01",
                               "model.seq_moe.enabled=true", "model.seq_moe.resampler_dim=16"])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model).train()
    b, l = 2, cfg.model.seq_len
    ids = torch.randint(0, cfg.model.text_vocab_size, (b, l))
    feats = {"clip": torch.randn(b, 3, 512), "face": torch.randn(b, 512),
             "face_found": torch.tensor([True, False]), "noise": torch.randn(b, 64)}
    results = []
    for ckpt in (False, True):
        model.cfg.activation_checkpointing = ckpt
        model.zero_grad()
        out = model(ids, torch.tensor([TASK_T2I, TASK_MMU]), feats)
        total = out.logits.float().pow(2).mean() + sum(out.aux_losses.values())
        total.backward()
        results.append(({k: v.item() for k, v in out.aux_losses.items()},
                        [p.grad.clone() if p.grad is not None else None for p in model.parameters()]))
    (l0, g0), (l1, g1) = results
    assert set(l0) == {"loss_balance_tok", "loss_zloss", "loss_balance_seq"}
    assert l0 == pytest.approx(l1, rel=1e-6)
    # 2 layers: the summed balance loss is ~2 layers · (λ_t2i·1 + λ_mmu·1), not doubled
    assert 0.02 < l1["loss_balance_tok"] < 0.08
    for a, c in zip(g0, g1):
        assert (a is None) == (c is None)
        if a is not None:
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_routing_stats_collect_per_layer_and_heatmap_png(tmp_path):
    from unif2ace.eval.routing import save_routing_heatmaps
    from unif2ace.model.moe.stats import RoutingStats

    layers = [_moe(seed=i) for i in range(3)]
    h = torch.randn(2, 4, 16, dtype=torch.float64)
    ctx = _ctx([TASK_T2I, TASK_MMU], torch.ones(2, 4, dtype=torch.bool))
    acc = RoutingStats()
    for _ in range(2):
        stats = {}
        for i, m in enumerate(layers):
            _, aux = m(h, ctx)
            stats.update({f"L{i}/{k}": v for k, v in aux.items() if not k.startswith("loss_")})
        acc.add(stats)
    mats = acc.matrices()
    assert set(mats) == {"route_frac_gen", "route_frac_und"}
    assert mats["route_frac_gen"].shape == (3, 4)
    assert abs(mats["route_frac_und"].sum(1) - 1).max() < 1e-12
    path = save_routing_heatmaps(mats, tmp_path / "plots" / "routing.png", title="two groups")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [x.name for x in (tmp_path / "plots").iterdir()] == ["routing.png"]  # no temp file left
    import matplotlib.image
    assert matplotlib.image.imread(path).ndim == 3
