"""Upcycling the grouped token MoE from a dense MLP: the split identity, copy, and the errors.

    pytest tests/test_upcycle.py -q
"""
from __future__ import annotations

import logging

import pytest
import torch

from unif2ace.config import TokenMoEConfig
from unif2ace.model.context import Context
from unif2ace.model.mlp import DenseMLP
from unif2ace.model.moe.token_moe import GroupedTokenMoE
from unif2ace.model.moe.upcycle import upcycle_from_dense
from unif2ace.tokens import TASK_MMU, TASK_T2I

D, INNER = 16, 48


def _dense(seed=0) -> DenseMLP:
    torch.manual_seed(seed)
    d = DenseMLP(D, INNER).double()
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.5)  # nonzero biases so their placement is checked too
    return d


def _run(moe, h):
    task = torch.tensor([TASK_T2I, TASK_MMU, TASK_T2I])
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    mask[0, 0] = False
    out, _ = moe(h, Context(task, mask))
    return out, mask


@pytest.mark.parametrize("num_shared,renormalize", [(1, False), (1, True), (0, False), (2, True)])
def test_split_with_every_expert_at_equal_weight_reproduces_the_dense_mlp(num_shared, renormalize):
    routed = INNER // 8 - num_shared
    cfg = TokenMoEConfig(enabled=True, num_shared=num_shared, num_routed=routed, top_k=routed, expert_ffn=8,
                         renormalize=renormalize, backend="torch")
    moe = GroupedTokenMoE(D, cfg).double()
    dense = _dense()
    upcycle_from_dense(moe, dense, "split")
    with torch.no_grad():
        moe.router.zero_()  # uniform router: every routed gate is 1/num_routed
    h = torch.randn(3, 4, D, dtype=torch.float64)
    out, mask = _run(moe, h)
    ref, _ = dense(h)
    torch.testing.assert_close(out[mask], ref[mask], rtol=1e-12, atol=1e-12)
    # The slices are a partition of the dense layer (each neuron exactly once per group).
    rows = moe.experts.w1[0].reshape(-1, D)
    assert torch.equal(rows, dense.fc1.weight)
    assert torch.equal(moe.experts.w1[1], moe.experts.w1[0])


def test_copy_with_renormalised_gates_reproduces_the_dense_mlp():
    cfg = TokenMoEConfig(enabled=True, num_shared=1, num_routed=3, top_k=2, expert_ffn=INNER, renormalize=True,
                         backend="torch")
    moe = GroupedTokenMoE(D, cfg).double()
    dense = _dense()
    upcycle_from_dense(moe, dense, "copy")  # the router keeps its random init: unequal gates
    h = torch.randn(3, 4, D, dtype=torch.float64)
    out, mask = _run(moe, h)
    torch.testing.assert_close(out[mask], dense(h)[0][mask], rtol=1e-12, atol=1e-12)


def test_without_expert_biases_the_dense_biases_are_dropped(caplog):
    cfg = TokenMoEConfig(enabled=True, num_shared=1, num_routed=5, top_k=5, expert_ffn=8, expert_bias=False,
                         backend="torch")
    moe = GroupedTokenMoE(D, cfg).double()
    dense = _dense()
    with caplog.at_level(logging.WARNING):
        upcycle_from_dense(moe, dense, "split")
    assert any("biases are dropped" in r.message for r in caplog.records)
    with torch.no_grad():
        moe.router.zero_()
        dense.fc1.bias.zero_()
        dense.fc2.bias.zero_()
    h = torch.randn(3, 4, D, dtype=torch.float64)
    out, mask = _run(moe, h)
    torch.testing.assert_close(out[mask], dense(h)[0][mask], rtol=1e-12, atol=1e-12)


def test_split_size_checks_and_none_mode():
    moe = GroupedTokenMoE(D, TokenMoEConfig(enabled=True, num_routed=4, top_k=2, expert_ffn=10)).double()
    before = {k: v.clone() for k, v in moe.state_dict().items()}
    upcycle_from_dense(moe, _dense(), "none")
    assert all(torch.equal(before[k], v) for k, v in moe.state_dict().items())
    with pytest.raises(ValueError, match="not a multiple"):
        upcycle_from_dense(moe, _dense(), "split")
    with pytest.raises(ValueError, match="must equal"):
        upcycle_from_dense(moe, _dense(), "copy")
    # fewer experts than slices: filled from the first slices, with a warning (not an identity)
    small = GroupedTokenMoE(D, TokenMoEConfig(enabled=True, num_shared=1, num_routed=2, top_k=1,
                                              expert_ffn=8)).double()
    upcycle_from_dense(small, _dense(), "split")
    assert torch.equal(small.experts.w1[0, 2], _dense().fc1.weight[16:24])
