"""D3Diff: the score-entropy identity, the SEDD formula, zero-sized tasks."""
import math

import pytest
import torch
import torch.nn.functional as F

from unif2ace.config import LossConfig
from unif2ace.losses import mask_rate, mmu_loss, score_entropy, t2i_losses, total_loss
from unif2ace.tokens import IGNORE, TASK_MMU, TASK_T2I, Batch, TokenLayout


def _sigma(m):  # m = 1 − e^{−σ}
    return -math.log(1 - m)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_normalized_score_entropy_equals_weighted_ce(schedule):
    torch.manual_seed(0)
    logits = torch.randn(64, 37, dtype=torch.float64) * 3
    target = torch.randint(0, 37, (64,))
    m = torch.rand(64, dtype=torch.float64) * 0.98 + 0.01
    se = score_entropy(logits, target, m, schedule, "normalized").double()
    # m'(τ)/m(τ) by finite differences of the schedule in τ, independent of mask_rate()
    tau = (2 / math.pi) * torch.asin(m) if schedule == "cosine" else m
    fn = (lambda x: torch.sin(math.pi / 2 * x)) if schedule == "cosine" else (lambda x: x)
    h = 1e-6
    dm = (fn(tau + h) - fn(tau - h)) / (2 * h)
    ce = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(se, dm / m * ce, rtol=1e-5, atol=1e-6)


def test_unnormalized_matches_direct_sedd_formula():
    """Direct evaluation of Σ_y s_y − r log s_x0 + r(log r − 1) times dσ/dτ, one position at a time."""
    torch.manual_seed(1)
    K = 5
    logits = torch.randn(6, K, dtype=torch.float64)
    target = torch.randint(0, K, (6,))
    ms = [0.1, 0.3, 0.5, 0.7, 0.9, 0.95]
    got = score_entropy(logits, target, torch.tensor(ms, dtype=torch.float64), "linear", "unnormalized")
    for i, m in enumerate(ms):
        s = [math.exp(logits[i, y].item()) for y in range(K)]
        r = (1 - m) / m
        bracket = sum(s) - r * math.log(s[target[i]]) + r * (math.log(r) - 1)
        h = 1e-7  # linear schedule: σ(τ) = −log(1 − τ), numeric derivative
        dsigma = (_sigma(m + h) - _sigma(m - h)) / (2 * h)
        assert got[i].item() == pytest.approx(dsigma * bracket, rel=1e-6)


def test_score_entropy_is_minimised_by_true_ratio():
    # the bracket is ≥ 0 with equality when s_{x0} = r and other s_y = 0
    m = torch.tensor([0.4])
    r = 0.6 / 0.4
    good = torch.full((1, 4), -50.0)
    good[0, 2] = math.log(r)
    assert score_entropy(good, torch.tensor([2]), m, "linear", "unnormalized").item() == pytest.approx(0.0, abs=1e-6)
    worse = good.clone()
    worse[0, 2] += 0.5
    assert score_entropy(worse, torch.tensor([2]), m, "linear", "unnormalized").item() > 1e-3


def test_mask_rate_cosine_closed_form():
    m = torch.tensor([0.5])
    tau = 2 / math.pi * math.asin(0.5)
    assert mask_rate(m).item() == pytest.approx(math.pi / 2 * math.cos(math.pi / 2 * tau), rel=1e-6)


L = TokenLayout(text_vocab_size=10, codebook_size=6, bos_id=1, eos_id=2)


class _Out:
    def __init__(self, logits, aux=None):
        self.logits, self.aux_losses = logits, aux or {}


def _batch(tasks):
    b, n = len(tasks), 8
    labels = torch.full((b, n), IGNORE)
    for i, t in enumerate(tasks):
        if t == TASK_T2I:
            labels[i, 3] = L.image_offset + 2
            labels[i, 4] = L.image_offset + 5
        else:
            labels[i, 5] = 7
    return Batch(labels.clone(), labels, torch.tensor(tasks), mask_ratio=torch.full((b,), 0.5))


@pytest.mark.parametrize("tasks", [[TASK_T2I, TASK_T2I], [TASK_MMU], [TASK_T2I, TASK_MMU]])
def test_zero_sized_task_contributes_zero_not_nan(tasks):
    torch.manual_seed(0)
    logits = torch.randn(len(tasks), 8, L.vocab_size, requires_grad=True)
    loss, met = total_loss(_Out(logits), _batch(tasks), L, LossConfig())
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert ("l_mmu" in met) == (TASK_MMU in tasks) and ("l_mask" in met) == (TASK_T2I in tasks)


def test_total_combines_parts_with_coefficients():
    torch.manual_seed(0)
    logits = torch.randn(2, 8, L.vocab_size)
    aux = {"loss_balance_tok": torch.tensor(0.25)}
    cfg = LossConfig(alpha=0.1, t2i_coef=2.0, mmu_coef=0.5)
    loss, met = total_loss(_Out(logits, aux), _batch([TASK_T2I, TASK_MMU]), L, cfg)
    expect = 2.0 * (met["l_mask"] + 0.1 * met["l_score"]) + 0.5 * met["l_mmu"] + 0.25
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    # l_mask by hand: codebook softmax at the two masked positions of row 0
    lg = logits[0, 3:5, L.image_offset:L.mask_id]
    assert met["l_mask"].item() == pytest.approx(F.cross_entropy(lg, torch.tensor([2, 5])).item(), rel=1e-6)


def test_mmu_loss_is_shifted():
    logits = torch.full((1, 4, 10), -20.0)
    logits[0, 1, 7] = 20.0  # position 1 predicts the token at position 2
    labels = torch.tensor([[IGNORE, IGNORE, 7, IGNORE]])
    assert mmu_loss(logits, labels).item() < 1e-6


@pytest.mark.parametrize("param", ["normalized", "unnormalized"])
def test_full_vocab_score_entropy_leaves_out_the_mask_column(param):
    """t2i_vocab=full: Σ_y s_y runs over y ≠ [MASK] (the current state). Checked against the
    formula evaluated position by position, with a [MASK] logit large enough that counting
    its column would change the loss many times over."""
    torch.manual_seed(2)
    V = L.vocab_size
    logits = torch.randn(1, 8, V, dtype=torch.float64)
    logits[0, :, L.mask_id] = 6.0
    batch = _batch([TASK_T2I])
    m = 0.5
    cfg = LossConfig(t2i_vocab="full", score_param=param, schedule="linear", alpha=1.0)
    got = t2i_losses(logits, batch.labels, torch.tensor([m]), L, cfg)["l_score"].item()
    r = (1 - m) / m
    h = 1e-7
    dsigma = (_sigma(m + h) - _sigma(m - h)) / (2 * h)
    want = []
    for p in (3, 4):
        lg = logits[0, p].tolist()
        if param == "unnormalized":
            s = [math.exp(v) for v in lg]
        else:
            z = sum(math.exp(v) for v in lg)
            s = [math.exp(v) / z * r for v in lg]
        x0 = batch.labels[0, p].item()
        pos = sum(s[y] for y in range(V) if y != L.mask_id)
        want.append(dsigma * (pos - r * math.log(s[x0]) + r * (math.log(r) - 1)))
    assert got == pytest.approx(sum(want) / 2, rel=1e-6)
    # the [MASK] column is not merely down-weighted: changing its logit leaves the
    # unnormalised loss untouched
    if param == "unnormalized":
        logits[0, :, L.mask_id] = -3.0
        again = t2i_losses(logits, batch.labels, torch.tensor([m]), L, cfg)["l_score"].item()
        assert again == pytest.approx(got, rel=1e-9)


def test_scale_weights_each_task_like_scaled_coefficients_and_the_metric_uses_the_same_formula():
    """The trainer's per-task factors act exactly like coefficients times the factor, and the
    logged loss (floats of the reduced parts) comes from the same ``combine``."""
    from dataclasses import replace

    from unif2ace.losses import combine

    torch.manual_seed(1)
    logits = torch.randn(2, 8, L.vocab_size)
    aux = {"loss_balance_tok": torch.tensor(0.25), "loss_balance_seq": torch.tensor(0.125)}
    cfg = LossConfig(alpha=0.1, t2i_coef=2.0, mmu_coef=0.5)
    scaled, met = total_loss(_Out(logits, aux), _batch([TASK_T2I, TASK_MMU]), L, cfg, scale=(1.5, 0.25))
    as_coefs, _ = total_loss(_Out(logits, aux), _batch([TASK_T2I, TASK_MMU]), L,
                             replace(cfg, t2i_coef=2.0 * 1.5, mmu_coef=0.5 * 0.25))
    assert torch.equal(scaled, as_coefs)
    want = 2.0 * 1.5 * met["l_d3diff"].item() + 0.5 * 0.25 * met["l_mmu"].item() + 0.375
    assert scaled.item() == pytest.approx(want, rel=1e-6)
    floats = {k: float(v) for k, v in met.items() if k != "loss"}
    assert combine(floats, cfg) == pytest.approx(2.0 * floats["l_d3diff"] + 0.5 * floats["l_mmu"] + 0.375, rel=1e-12)
    assert combine({"loss_x": 1.0}, cfg) == 1.0  # absent tasks contribute nothing
