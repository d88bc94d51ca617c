"""unif2ace.checkpoint.load._load_zero: DeepSpeed ZeRO files under weights_only, whichever way the
Python that wrote them pickles enum members."""
import pickle

import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum

from unif2ace.checkpoint.load import _load_zero


class ByName:
    """Pickles like an enum member on Python builds that reduce members to getattr(cls, name)."""

    def __init__(self, cls, name):
        self.cls, self.name = cls, name

    def __reduce__(self):
        return getattr, (self.cls, self.name)


def test_enum_member_by_getattr_loads(tmp_path):
    p = tmp_path / "zero.pt"
    torch.save({"zero_stage": ByName(ZeroStageEnum, "weights"), "w": torch.arange(3.0)}, p)
    d = _load_zero(p)
    assert d["zero_stage"] is ZeroStageEnum.weights and torch.equal(d["w"], torch.arange(3.0))


def test_getattr_on_anything_else_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": ByName(LossScaler, "__init__")}, p)  # an allowed class, but not an enum member
    with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
        _load_zero(p)
