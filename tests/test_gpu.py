"""CUDA checks: a bf16 ZeRO-3 training step, the ``torch._grouped_mm`` token MoE against the CPU
blocked path, MaskGIT and KV-cache decoding on the GPU against the CPU.

    pytest -q -m gpu tests/test_gpu.py          # on a machine with CUDA
    bash benchmarks/gpu_suite.sh                 # these tests + the throughput benchmark, one JSON

Every test here is marked ``gpu``; tests/conftest.py skips them, with the reason, when
``torch.cuda.is_available()`` is False (CI and the CPU machines this project is developed on).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unif2ace.config import TokenMoEConfig, load_config
from unif2ace.inference import mmu
from unif2ace.inference.t2i import generate_codes
from unif2ace.model.context import Context
from unif2ace.model.moe import dropless
from unif2ace.model.moe.blocked import TanhGELU
from unif2ace.model.moe.token_moe import GroupedTokenMoE
from unif2ace.model.unif2ace import UniF2ace
from unif2ace.tokens import TASK_MMU, TASK_T2I

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64: bf16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 0.2 %),
    so sums of many such products land within ~1 % of an fp32 reference."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# --------------------------------------------------------------------------- training


def test_zero3_bf16_training_steps_of_the_tiny_recipe(tmp_path):
    """Three optimiser steps through the real trainer (ZeRO-3, bf16 on, one process, NCCL) in a
    fresh interpreter: DeepSpeed picks its accelerator once per process, and the rest of the
    suite runs with DS_ACCELERATOR=cpu."""
    code = (
        "import sys; from pathlib import Path;"
        "from test_train_engine import ZERO3, _cfg, _mem; from unif2ace.train.trainer import run;"
        "cfg = _cfg(Path(sys.argv[1]), 'train.steps=3', 'train.save_every=1', 'train.keep_last=3');"
        "sys.exit(run(cfg, ZERO3, loader_factory=_mem))")
    path = os.pathsep.join(x for x in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")) if x)  # keep carried wheels
    env = {**os.environ, "DS_ACCELERATOR": "cuda", "PYTHONPATH": path}
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    start = [r for r in rows if r.get("event") == "start"][-1]
    assert start["zero_stage"] == 3 and start["dtype"] == "torch.bfloat16" and start["world_size"] == 1
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert math.isfinite(r["loss"]) and r["skipped"] == 0 and r["tokens_per_s"] > 0
        assert 0 < r["mfu"] < 1  # logged on CUDA only: the GPU's peak is known (train/metrics.py)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = tmp_path / "checkpoints"
    w1, w3 = (get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=f"step0000000{s}") for s in (1, 3))
    assert all(torch.isfinite(v).all() for v in w3.values())
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)  # the bf16 steps updated the fp32 masters


# --------------------------------------------------------------------------- token MoE


def _moe_problem(t=512, d=256, f=128, e=9, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, d, generator=g)
    ids = torch.rand(t, e, generator=g).topk(k, -1).indices  # k distinct experts per token
    ids[: t // 4, 0] = 3  # one busy expert
    gates = torch.rand(t, k, generator=g)
    ws = [torch.randn(e, f, d, generator=g) * d ** -0.5, torch.randn(e, f, d, generator=g) * f ** -0.5,
          torch.randn(e, f, generator=g) * 0.1, torch.randn(e, d, generator=g) * 0.1]
    # Round once to bf16, so both sides start from identical values.
    return [v.to(torch.bfloat16) for v in (x, gates, *ws)], ids


def test_grouped_mm_moe_on_cuda_matches_the_cpu_blocked_path(monkeypatch):
    inputs, ids = _moe_problem()
    gout = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    calls = []
    real = torch._grouped_mm

    def spy(*a, **kw):
        calls.append(a[0].device.type)
        return real(*a, **kw)

    monkeypatch.setattr(torch, "_grouped_mm", spy)

    def run(device, dtype, impl):
        ts = [v.to(device, dtype).requires_grad_() for v in inputs]
        x, gates, w1, w2, b1, b2 = ts
        out, counts = dropless.dropless_moe(x, ids.to(device), gates, w1, w2, TanhGELU(), b1, b2, impl=impl)
        out.backward(gout.to(device, dtype))
        return [out] + [t.grad for t in ts], counts.cpu()

    ref, counts_ref = run("cpu", torch.float32, "blocked")
    assert not calls
    assert dropless.default_impl(inputs[0].to(CUDA)) == "grouped"
    got, counts = run(CUDA, torch.bfloat16, None)
    assert calls.count("cuda") >= 4  # fc1, fc2 forward and their backward went through _grouped_mm
    assert torch.equal(counts, counts_ref)
    names = ["out", "x", "gates", "w1", "w2", "b1", "b2"]
    errs = {n: rel_err(a, b) for n, a, b in zip(names, got, ref)}
    assert all(e < 1.5e-2 for e in errs.values()), errs


def test_token_moe_module_bf16_on_cuda_matches_fp32_on_cpu():
    torch.manual_seed(0)
    cfg = TokenMoEConfig(enabled=True, num_shared=1, num_routed=8, top_k=4, expert_ffn=64, backend="torch")
    m = GroupedTokenMoE(128, cfg)
    with torch.no_grad():
        m.router.normal_(0, 0.5)
        for p in m.experts.parameters():
            p.normal_(0, 0.05)
    m_cpu = GroupedTokenMoE(128, cfg)
    m_cpu.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in m.state_dict().items()})
    m_gpu = m.to(CUDA, torch.bfloat16)
    h = torch.randn(4, 24, 128).to(torch.bfloat16)
    task = torch.tensor([TASK_T2I, TASK_MMU, TASK_T2I, TASK_MMU])
    mask = torch.ones(4, 24, dtype=torch.bool)
    mask[0, :5] = False
    out_cpu, aux_cpu = m_cpu(h.float(), Context(task, mask))
    out_gpu, aux_gpu = m_gpu(h.to(CUDA), Context(task.to(CUDA), mask.to(CUDA)))
    assert out_gpu.dtype == torch.bfloat16
    assert rel_err(out_gpu, out_cpu) < 2e-2
    # routing is a discrete choice: bf16 router logits may flip a near-tie, so compare the loss loosely
    assert abs(float(aux_gpu["loss_balance_tok"]) - float(aux_cpu["loss_balance_tok"])) < 0.05 * float(
        aux_cpu["loss_balance_tok"])


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def tiny():
    # init_std 0.1 (as tests/test_sampling.py): a near-uniform model would hide position errors
    cfg = load_config("tiny", ["model.init_std=0.1"])
    torch.manual_seed(0)
    return cfg, UniF2ace(cfg.model).eval()


def _copy(model, device, dtype=torch.float32):
    out = UniF2ace(model.cfg).eval()
    out.load_state_dict(model.state_dict())
    return out.to(device, dtype)


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]


def test_maskgit_on_cuda_equals_cpu_and_bf16_follows_the_schedule(tiny):
    cfg, model = tiny
    scfg = dataclasses.replace(cfg.sample, steps=4)
    # The Gumbel draws come from a CPU generator on both sides (inference/t2i.py), so fp32 runs
    # make the same choices unless two confidences tie to ~1e-6.
    cpu = generate_codes(model, PROMPTS, scfg, generator=torch.Generator().manual_seed(1))
    gpu = generate_codes(_copy(model, CUDA), PROMPTS, scfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(gpu, cpu)
    codes, trace = generate_codes(_copy(model, CUDA, torch.bfloat16), PROMPTS, scfg,
                                  generator=torch.Generator().manual_seed(1), return_trace=True)
    assert [(t == -1).sum(1).tolist() for t in trace] == [[14] * 3, [11] * 3, [6] * 3, [0] * 3]
    assert int(codes.min()) >= 0 and int(codes.max()) < cfg.model.codebook_size


def _mmu_prompts(cfg, model):
    questions = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15, 16]]  # different lengths → left pads
    codes = torch.randint(0, cfg.model.codebook_size, (3, cfg.model.num_image_tokens),
                          generator=torch.Generator().manual_seed(1))
    return mmu.mmu_prompts(model.layout, codes, questions)


def test_kv_cache_decoding_on_cuda_equals_full_recompute_and_cpu(tiny):
    cfg, model = tiny
    prompts = _mmu_prompts(cfg, model)
    gpu_model = _copy(model, CUDA)
    kw = dict(max_new_tokens=12, stop_at_eos=False)
    cpu = mmu.generate_answers(model, prompts, cfg.sample, **kw)
    kv = mmu.generate_answers(gpu_model, prompts, cfg.sample, **kw)
    full = mmu.decode_full_recompute(gpu_model, prompts, cfg.sample, **kw)
    assert kv == full == cpu
    assert len({tuple(r) for r in kv}) == 3


@torch.inference_mode()
def test_kv_cache_bf16_logits_track_full_recompute_along_one_path(tiny):
    """bf16: greedy choices may flip on near-ties, so feed both decoders the same tokens (the fp32
    CPU answer) and compare the logits of every step."""
    cfg, model = tiny
    prompts = _mmu_prompts(cfg, model)
    path = torch.tensor(mmu.generate_answers(model, prompts, cfg.sample, max_new_tokens=8, stop_at_eos=False))
    m = _copy(model, CUDA, torch.bfloat16)
    ids = mmu.left_pad(prompts, model.layout.pad_id).to(CUDA)
    task = torch.full((3,), TASK_MMU, device=CUDA)
    kv_logits, kv_step = mmu._kv_stepper(m, ids, task, {}, [{} for _ in m.layers])
    full_logits, full_step = mmu._full_stepper(m, ids, task, {}, [{} for _ in m.layers])
    errs = [rel_err(kv_logits, full_logits)]
    for t in range(path.shape[1] - 1):
        new = path[:, t].to(CUDA)
        errs.append(rel_err(kv_step(new), full_step(new)))
    assert max(errs) < 2e-2, errs
