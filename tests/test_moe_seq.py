"""Grouped sequence-level MoE: Copy/Zero semantics, feature experts vs hand-written math,
no-face path (mask and copy), masked-mean routing, cached decisions, balance loss.

    pytest tests/test_moe_seq.py -q
"""
from __future__ import annotations

import math

import pytest
import torch

from unif2ace.config import ConfigError, SeqMoEConfig, load_config
from unif2ace.model.context import Context
from unif2ace.model.moe.seq_moe import GroupedSequenceMoE
from unif2ace.tokens import TASK_MMU, TASK_T2I

D = 8


def _smoe(seed=0, **kw) -> GroupedSequenceMoE:
    torch.manual_seed(seed)
    cfg = SeqMoEConfig(enabled=True, **{"clip_dim": 6, "face_dim": 5, "noise_dim": 4, "resampler_dim": 8,
                                        "resampler_heads": 2, **kw})
    return GroupedSequenceMoE(D, cfg).double()


def _feats(b, found=None):
    f = {"clip": torch.randn(b, 3, 6, dtype=torch.float64), "face": torch.randn(b, 5, dtype=torch.float64),
         "noise": torch.randn(b, 4, dtype=torch.float64)}
    if found is not None:
        f["face_found"] = torch.tensor(found)
    return f


def _ctx(task, mask, feats, state=None):
    return Context(torch.tensor(task), mask, feats, state)


def _set_router(group, weights):
    with torch.no_grad():
        group.router.weight.copy_(torch.as_tensor(weights, dtype=torch.float64))


def test_copy_and_zero_semantics_and_pads_are_zero():
    m = _smoe(gen_experts=["copy", "zero"], und_experts=["copy", "copy"], top_k=2)
    h = torch.randn(2, 4, D, dtype=torch.float64)
    mask = torch.tensor([[False, True, True, True], [True, True, True, False]])
    out, aux = m(h, _ctx([TASK_T2I, TASK_MMU], mask, {}))
    # generation: gates of top-2 of 2 renormalised = the softmax itself; Copy → g·h, Zero → 0
    pooled = h[0, 1:].mean(0)
    g_copy = torch.softmax(m.gen.router.weight @ pooled, -1)[0]
    torch.testing.assert_close(out[0, 1:], g_copy * h[0, 1:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1, :3], h[1, :3], rtol=1e-12, atol=1e-12)  # Copy + Copy, gates sum to 1
    assert out[0, 0].abs().max() == 0 and out[1, 3].abs().max() == 0
    zero = _smoe(gen_experts=["zero", "zero"], top_k=1)
    assert zero(h, _ctx([TASK_T2I, TASK_T2I], mask, {}))[0].abs().max() == 0
    assert set(aux) == {"loss_balance_seq", "seq_route_gen", "seq_route_und"}


def _hand_feature_expert(expert, h, feats):
    """w·h + (1−w)·S(F), S = multi-head cross-attention written out with plain matmuls."""
    r = expert.resampler
    w = torch.softmax(h @ expert.gate.weight.t() + expert.gate.bias, -1)
    tok = torch.nn.functional.layer_norm(feats @ r.proj.weight.t() + r.proj.bias, (r.norm.weight.numel(),),
                                         r.norm.weight, r.norm.bias)
    kv = tok @ r.kv.weight.t()
    dim = kv.shape[-1] // 2
    k, v = kv[..., :dim], kv[..., dim:]
    q = h @ r.q.weight.t()
    dh = dim // r.heads
    heads = []
    for i in range(r.heads):
        sl = slice(i * dh, (i + 1) * dh)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dh), -1)
        heads.append(att @ v[..., sl])
    s = torch.cat(heads, -1) @ r.out.weight.t() + r.out.bias
    return w[..., :1] * h + w[..., 1:] * s


@pytest.mark.parametrize("pooled", [False, True])
def test_feature_expert_matches_hand_computation(pooled):
    m = _smoe(und_experts=["clip", "zero"], top_k=1)
    _set_router(m.und, [[5.0] * D, [-5.0] * D])
    h = torch.rand(2, 3, D, dtype=torch.float64) + 0.5  # positive mean → clip always wins
    feats = _feats(2)
    if pooled:
        feats["clip"] = feats["clip"][:, 0]  # (B, Dc): one pooled vector
    mask = torch.ones(2, 3, dtype=torch.bool)
    out, aux = m(h, _ctx([TASK_MMU, TASK_MMU], mask, feats))
    clip = feats["clip"] if not pooled else feats["clip"].unsqueeze(1)
    ref = _hand_feature_expert(m.und.experts["0"], h, clip)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert aux["seq_route_und"].tolist() == [1.0, 0.0]


def test_no_face_mask_mode_never_routes_to_face():
    m = _smoe(und_experts=["clip", "face", "copy", "copy"], top_k=2, no_face="mask")
    _set_router(m.und, [[0.0] * D, [9.0] * D, [1.0] * D, [0.5] * D])  # face strongly preferred
    h = torch.rand(3, 4, D, dtype=torch.float64) + 0.5
    mask = torch.ones(3, 4, dtype=torch.bool)
    feats = _feats(3, found=[True, False, False])
    decisions, aux = m.decide(h, _ctx([TASK_MMU] * 3, mask, feats))
    rows, gates = decisions[1]
    assert rows.tolist() == [0, 1, 2]
    assert gates[0, 1] > 0 and (gates[1:, 1] == 0).all()           # face only where a face was found
    assert ((gates > 0).sum(1) == 2).all()                          # still top-2 among the rest
    torch.testing.assert_close(gates.sum(1), torch.ones(3, dtype=torch.float64))
    # no-face rows: Copy experts (2, 3) win, so their output is h exactly
    out, _ = m(h, _ctx([TASK_MMU] * 3, mask, feats))
    torch.testing.assert_close(out[1:], h[1:], rtol=1e-12, atol=1e-12)
    # the face expert gets no gradient from sequences without a face
    m.zero_grad()
    out, aux = m(h[1:], _ctx([TASK_MMU] * 2, mask[1:], {k: v[1:] for k, v in feats.items()}))
    (out.sum() + aux["loss_balance_seq"]).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.und.experts["1"].parameters())
    # a missing feature key masks its expert for everyone
    no_clip = {k: v for k, v in feats.items() if k != "clip"}
    _set_router(m.und, [[9.0] * D, [0.0] * D, [1.0] * D, [0.5] * D])
    _, g = m.decide(h, _ctx([TASK_MMU] * 3, mask, no_clip))[0][1]
    assert (g[:, 0] == 0).all()


def test_no_face_copy_mode_face_expert_reduces_to_copy():
    m = _smoe(und_experts=["face", "zero"], top_k=1, no_face="copy")
    _set_router(m.und, [[5.0] * D, [-5.0] * D])
    h = torch.rand(2, 3, D, dtype=torch.float64) + 0.5
    feats = _feats(2, found=[True, False])
    out, _ = m(h, _ctx([TASK_MMU, TASK_MMU], torch.ones(2, 3, dtype=torch.bool), feats))
    torch.testing.assert_close(out[1], h[1], rtol=1e-12, atol=1e-12)
    ref = _hand_feature_expert(m.und.experts["0"], h[:1], feats["face"][:1].unsqueeze(1))
    torch.testing.assert_close(out[:1], ref, rtol=1e-10, atol=1e-12)


def test_router_uses_masked_mean_over_real_tokens_only():
    m = _smoe()
    h = torch.randn(2, 5, D, dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, False]])
    feats = _feats(2, found=[True, True])
    out1, aux1 = m(h, _ctx([TASK_T2I, TASK_MMU], mask, feats))
    h2 = h.clone()
    h2[~mask] = 1e3 * torch.randn(int((~mask).sum()), D, dtype=torch.float64)  # change only the pads
    out2, aux2 = m(h2, _ctx([TASK_T2I, TASK_MMU], mask, feats))
    torch.testing.assert_close(out1, out2, rtol=1e-12, atol=1e-12)
    assert aux1["loss_balance_seq"].item() == aux2["loss_balance_seq"].item()


def test_cached_decoding_reuses_the_prompt_decision():
    m = _smoe(und_experts=["copy", "zero"], top_k=1)
    _set_router(m.und, [[1.0] * D, [-1.0] * D])
    prompt = torch.ones(1, 4, D, dtype=torch.float64)      # mean > 0 → Copy
    new = -torch.ones(1, 1, D, dtype=torch.float64)        # alone it would pick Zero
    state: dict = {}
    out, _ = m(prompt, _ctx([TASK_MMU], torch.ones(1, 4, dtype=torch.bool), {}, state))
    torch.testing.assert_close(out, prompt)
    step, aux = m(new, _ctx([TASK_MMU], torch.ones(1, 1, dtype=torch.bool), {}, state))
    torch.testing.assert_close(step, new)                  # Copy kept
    assert aux == {}
    fresh, _ = m(new, _ctx([TASK_MMU], torch.ones(1, 1, dtype=torch.bool), {}))
    assert fresh.abs().max() == 0                          # without the cache: Zero


def test_balance_loss_against_hand_computation():
    m = _smoe(und_experts=["copy", "zero"], gen_experts=["copy", "zero", "copy"], top_k=1, balance_weight=0.5)
    e = [1.0] + [0.0] * (D - 1)
    _set_router(m.und, [e, [0.0] * D])
    _set_router(m.gen, [e, [0.0] * D, [0.0] * D])
    ln3 = math.log(3.0)
    h = torch.zeros(3, 2, D, dtype=torch.float64)
    h[0, :, 0] = ln3          # und: probs [3/4, 1/4] → copy
    h[1, :, 0] = -ln3         # und: probs [1/4, 3/4] → zero
    h[2, :, 0] = math.log(4)  # gen: probs [4/6, 1/6, 1/6] → copy
    _, aux = m(h, _ctx([TASK_MMU, TASK_MMU, TASK_T2I], torch.ones(3, 2, dtype=torch.bool), {}))
    und = 2 * (0.5 * 0.5 + 0.5 * 0.5)          # f = [1/2, 1/2], P = [1/2, 1/2]
    gen = 3 * (1.0 * 4 / 6)                    # f = [1, 0, 0],   P = [4/6, 1/6, 1/6]
    assert aux["loss_balance_seq"].item() == pytest.approx(0.5 * (und + gen), rel=1e-12)
    assert aux["seq_route_gen"].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("k", [1, 3])
def test_top_k_and_expert_lists_are_recipe_switches(k):
    cfg = load_config("tiny", ["model.seq_moe.enabled=true", f"model.seq_moe.top_k={k}",
                               "model.seq_moe.und_experts=[copy,copy,zero]"])
    m = GroupedSequenceMoE(cfg.model.hidden_size, cfg.model.seq_moe)
    h = torch.randn(2, 3, cfg.model.hidden_size)
    decisions, _ = m.decide(h, _ctx([TASK_MMU, TASK_T2I], torch.ones(2, 3, dtype=torch.bool),
                                    {"noise": torch.randn(2, 64)}))
    for _, gates in decisions:
        assert ((gates > 0).sum(1) == k).all()
    with pytest.raises(ConfigError, match="top_k"):
        load_config("tiny", ["model.seq_moe.enabled=true", "model.seq_moe.top_k=4",
                             "model.seq_moe.und_experts=[copy,face,clip]"])
    with pytest.raises(ConfigError, match="unknown experts"):
        load_config("tiny", ["model.seq_moe.enabled=true", "model.seq_moe.und_experts=[copy,sketch]"])


def test_clip_tokens_patches_reads_the_patch_tokens_entry():
    # clip_tokens='patches': the CLIP expert reads ctx.features['clip_patches'] (B, N, D); with only
    # the pooled 'clip' present it is unavailable (never routed), and the pooled entry is ignored.
    m = _smoe(und_experts=["clip", "copy"], top_k=1, clip_tokens="patches")
    _set_router(m.und, [[1.0] * D, [0.0] * D])  # prefer CLIP whenever it is available
    h = torch.rand(2, 3, D, dtype=torch.float64) + 0.5
    mask = torch.ones(2, 3, dtype=torch.bool)
    patches = torch.randn(2, 4, 6, dtype=torch.float64)
    out_p, _ = m(h, _ctx([TASK_MMU, TASK_MMU], mask, {"clip_patches": patches, "clip": torch.randn(2, 6).double()}))
    expert = m.und.experts["0"]
    torch.testing.assert_close(out_p, expert(h, patches), rtol=1e-12, atol=1e-12)
    out_none, _ = m(h, _ctx([TASK_MMU, TASK_MMU], mask, {"clip": torch.randn(2, 6).double()}))
    torch.testing.assert_close(out_none, h, rtol=1e-12, atol=1e-12)  # routed to Copy
    assert SeqMoEConfig(clip_tokens="patches").feature_key("clip") == "clip_patches"
    assert SeqMoEConfig().feature_key("clip") == "clip"


def _grads(smoe, task):
    smoe.zero_grad(set_to_none=True)
    h = torch.randn(len(task), 4, D, dtype=torch.float64, requires_grad=True)
    out, aux = smoe(h, _ctx(task, torch.ones(len(task), 4, dtype=torch.bool), _feats(len(task))))
    (out.sum() + aux["loss_balance_seq"]).backward()
    return {n: p.grad for n, p in smoe.named_parameters()}, aux


@pytest.mark.parametrize("task", [[TASK_MMU, TASK_MMU], [TASK_T2I, TASK_T2I]])
def test_every_parameter_gets_a_gradient_when_a_group_or_expert_is_unused(task):
    """A batch of one task leaves the other group (and unpicked experts) idle; their gradients
    must be zeros, not None, so that which parameters have gradients never depends on the batch:
    ZeRO-1/2 reduce gradients in buckets filled as they arrive, and a rank whose batch routes
    differently would otherwise send a differently sized bucket."""
    smoe = _smoe()
    both, _ = _grads(smoe, [TASK_MMU, TASK_T2I])
    one, aux = _grads(smoe, task)
    assert [n for n, g in one.items() if g is None] == [n for n, g in both.items() if g is None]
    # only the query projections of pooled-feature experts (face, noise) never run: one vector, no attention
    assert all(n.endswith("resampler.q.weight") for n, g in both.items() if g is None)
    idle = "gen" if task[0] == TASK_MMU else "und"
    assert all(g.abs().sum() == 0 for n, g in one.items() if n.startswith(idle) and g is not None)
    assert any(g.abs().sum() > 0 for n, g in one.items() if not n.startswith(idle) and g is not None)
    assert math.isfinite(float(aux["loss_balance_seq"].detach()))
    assert float(aux[f"seq_route_{idle}"].sum()) == 0.0


@pytest.mark.parametrize("b", [0.0, 2.0])
def test_feature_gate_starts_on_the_feature_in_the_whole_model(b):
    # The gate bias survives the model's generic init (which zeroes every Linear bias): every
    # feature expert starts at w = σ(−2b) on any hidden state (its gate weights are ~0.02).
    from unif2ace.model.moe.resampler import FeatureExpert
    from unif2ace.model.unif2ace import UniF2ace

    cfg = load_config("tiny", ["model.seq_moe.enabled=true", f"model.seq_moe.feature_gate_init={b}"])
    torch.manual_seed(0)
    model = UniF2ace(cfg.model)
    experts = [m for m in model.modules() if isinstance(m, FeatureExpert)]
    assert len(experts) == 3 * cfg.model.num_layers  # clip + face (und), noise (gen)
    h = torch.nn.functional.layer_norm(torch.randn(4, 5, cfg.model.hidden_size), (cfg.model.hidden_size,))
    for e in experts:
        assert e.gate.bias.tolist() == [-b, b]
        w = e.gate(h).softmax(-1)[..., 0]
        assert abs(w.mean().item() - 1 / (1 + math.exp(2 * b))) < 0.05
    with pytest.raises(ConfigError, match="feature_gate_init"):
        load_config("tiny", ["model.seq_moe.enabled=true", "model.seq_moe.feature_gate_init=nan"])
