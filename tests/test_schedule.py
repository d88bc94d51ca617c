"""unif2ace/schedule.py: the one warm-up + cosine schedule (trainer, classifier, face, CLIP).

    pytest -q tests/test_schedule.py
"""
import math

import pytest
import torch
from torch import nn

from unif2ace.config import TrainConfig
from unif2ace.schedule import warmup_cosine, warmup_steps_for


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_default_train_config_values():
    """The trainer's defaults: 10 warm-up steps to 1e-4, cosine to 0.1·1e-4 at step 100."""
    t = TrainConfig()
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=t.lr)
    lrs = _lrs(warmup_cosine(opt, t.warmup_steps, t.steps, t.min_lr_ratio), opt, t.steps + 1)
    for s, lr in enumerate(lrs):
        if s < t.warmup_steps:
            want = t.lr * s / t.warmup_steps
        else:
            p = (s - t.warmup_steps) / (t.steps - t.warmup_steps)
            want = t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
        assert lr == pytest.approx(want, rel=1e-12, abs=1e-20), s
    assert lrs[0] == 0.0 and lrs[t.warmup_steps] == pytest.approx(t.lr) and lrs[-1] == pytest.approx(t.lr * 0.1)


def test_resume_from_state_dict_continues_the_same_values():
    def make():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
        return opt, warmup_cosine(opt, 3, 17, 0.2)

    opt, sched = make()
    whole = _lrs(sched, opt, 17)
    opt, sched = make()
    first = _lrs(sched, opt, 7)
    state = sched.state_dict()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    for g in opt2.param_groups:  # what an optimiser state_dict restores alongside
        g["lr"] = opt.param_groups[0]["lr"]
    assert first + _lrs(sched2, opt2, 10) == whole


def test_warmup_steps_for_is_at_least_one():
    assert warmup_steps_for(3) == 1 and warmup_steps_for(1000) == 50
