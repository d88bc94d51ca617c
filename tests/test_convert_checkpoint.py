"""tools/convert_checkpoint.py accepts the checkpoints directory (latest or --tag) or one step directory."""

import torch

from unif2ace.commands import convert_checkpoint

from test_train_engine import ZERO3, _cfg, _mem  # the in-memory loader and tiny config of the engine tests



def test_a_step_directory_converts_that_step(tmp_path, capsys):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from unif2ace.train.trainer import EXIT_OK, run

    cfg = _cfg(tmp_path, "train.steps=2", "train.save_every=1", "train.keep_last=2")
    assert run(cfg, ZERO3, loader_factory=_mem) == EXIT_OK
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000002"

    assert convert_checkpoint.main([str(ckpt / "step00000001")]) == 0  # no --out: beside the checkpoints
    assert convert_checkpoint.main([str(ckpt), "--out", str(tmp_path / "m2")]) == 0  # latest
    m1, m2 = (load_file(str(tmp_path / m / "model.safetensors")) for m in ("model-step00000001", "m2"))
    want1 = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="step00000001")
    assert m1.keys() == want1.keys() and all(torch.equal(m1[k], want1[k].float()) for k in m1)
    assert not all(torch.equal(m1[k], m2[k]) for k in m1)  # step 1, not the latest step 2

    # a directory that is neither: exit 2, one line naming it
    capsys.readouterr()
    assert convert_checkpoint.main([str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "no 'latest' file" in err
