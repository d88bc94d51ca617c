"""Two-process training on CPU (DeepSpeed ZeRO-3, gloo) from real SynthFace shards.

The session fixture ``tiny_shards`` renders SynthFace and precomputes shards with a random tiny
MAGVIT + SentencePiece through tools/precompute_tokens.py; one reference run (the
documented ``deepspeed launchers/train.py`` command, 2 ranks) serves several tests. Every run
is a subprocess with a timeout; per-step metrics come from train.out_dir/metrics.jsonl, whose
floats round-trip exactly.
"""
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16
SAVE_EVERY = 3


def _env(**extra):
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")))
    env.pop("UNIF2ACE_FAULT", None)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # set by an in-process DeepSpeed test of this session; children must not inherit it
    env.update(extra)
    return env


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(shards, out, *extra):
    return ["--config", "tiny", f"data.shards={shards}", f"train.out_dir={out}", f"train.steps={STEPS}",
            f"train.save_every={SAVE_EVERY}", "train.keep_last=3", "train.progress_bar=false", *extra]


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "launchers/train.py", *args]


def _run(cmd, timeout=240, **env):
    p = subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _wait_gone(pids, timeout=30):
    deadline = time.time() + timeout
    for pid in pids:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def _rows(out):
    path = Path(out) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _losses(out):
    return {r["step"]: r["loss"] for r in _rows(out) if "event" not in r}


@pytest.fixture(scope="module")
def shards(tiny_shards):
    """SynthFace → random tiny MAGVIT + SentencePiece → shards (tests/conftest.py, session-wide)."""
    return tiny_shards


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """2 ranks × micro batch 2, ZeRO-3, launched the documented way."""
    out = tmp_path_factory.mktemp("ref")
    port = _free_port()
    rc, log = _run(["deepspeed", "--num_gpus", "2", "--master_port", str(port), "launchers/train.py",
                    "--deepspeed", "ds_configs/zero3.json", *_overrides(shards, out, "train.micro_batch=2")])
    assert rc == 0, log[-4000:]
    (out / "master_port").write_text(str(port))
    return out


def _shm_left(port, ranks, monkeypatch):
    from unif2ace.train.engine import shm_workspace_path

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    return [p for p in map(shm_workspace_path, range(ranks)) if p.exists()]


def test_deepspeed_launch_leaves_no_shared_memory_behind(shards, reference, tmp_path, monkeypatch):
    """DeepSpeed's CPU backend gives each rank a /dev/shm workspace it never unlinks; ours does,
    for 2 ranks and for 1 (launchers/demo.py --procs 1)."""
    assert not _shm_left((reference / "master_port").read_text(), 2, monkeypatch)
    port = _free_port()
    rc, log = _run(["deepspeed", "--num_gpus", "1", "--master_port", str(port), "launchers/train.py",
                    "--deepspeed", "ds_configs/zero2.json",
                    *_overrides(shards, tmp_path, "train.steps=1", "train.warmup_steps=0", "train.save_every=0",
                                   "train.export_final=false")])
    assert rc == 0, log[-4000:]
    assert not _shm_left(port, 1, monkeypatch)


def test_zero3_two_ranks_loss_decreases_with_every_metric(reference):
    rows = [r for r in _rows(reference) if "event" not in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    loss = [r["loss"] for r in rows]
    assert all(map(lambda x: x == x, loss))
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4 - 0.5, loss
    last = rows[-1]
    for key in ("l_mmu", "l_mask", "l_score", "l_d3diff", "mask_ratio", "grad_norm", "lr", "tokens_per_s",
                "rank0/tokens_per_s", "rank1/tokens_per_s", "rank1/samples_per_s", "rank0/data_wait_s"):
        assert key in last, key
    assert 0 < last["mask_ratio"] <= 1 and last["lr"] > 0
    start = next(r for r in _rows(reference) if r.get("event") == "start")
    assert start["world_size"] == 2 and start["zero_stage"] == 3


def test_one_rank_batch_2b_matches_two_ranks_batch_b(shards, reference, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    rc, log = _run([sys.executable, "launchers/train.py", *_overrides(shards, tmp_path, "train.micro_batch=4",
                                                                        "train.export_final=false")],
                   TMPDIR=str(scratch))
    assert rc == 0, log[-4000:]
    # a world of one joins through a FileStore in a scratch directory; the trainer leaves through
    # os._exit, and removes that directory first
    assert list(scratch.iterdir()) == []
    one, two = _losses(tmp_path), _losses(reference)
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for s in range(1, 11):
        assert abs(one[s] - two[s]) <= 1e-4 * abs(two[s]), (s, one[s], two[s])


def test_kill9_then_resume_continues_bitwise_identically(shards, reference, tmp_path):
    """Also samples every 4 steps (the reference does not): sampling must not perturb training."""
    kill_at = random.Random().randint(SAVE_EVERY + 1, STEPS - 4)
    cmd = _torchrun(*_overrides(shards, tmp_path, "train.micro_batch=2", "train.export_final=false",
                                "train.sample_every=4", "sample.steps=2", "sample.max_new_tokens=4"))
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and p.poll() is None and max(_losses(tmp_path), default=0) < kill_at:
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be killed"
        # torchrun starts each rank in its own session: kill the ranks and the launcher by pid
        ranks = _children(p.pid)
        assert len(ranks) == 2
        for pid in ranks + [p.pid]:
            os.kill(pid, signal.SIGKILL)
        p.wait(30)
        _wait_gone(ranks)
    finally:
        if p.poll() is None:
            for pid in _children(p.pid) + [p.pid]:
                os.kill(pid, signal.SIGKILL)
    killed = _losses(tmp_path)
    latest = (tmp_path / "checkpoints" / "latest").read_text()
    resumed_from = int(latest.removeprefix("step"))
    assert SAVE_EVERY <= resumed_from < STEPS and max(killed) < STEPS
    rc, log = _run(cmd)
    assert rc == 0, log[-4000:]
    start = [r for r in _rows(tmp_path) if r.get("event") == "start"][-1]
    assert start["resumed"] and start["step"] == resumed_from
    ref = _losses(reference)
    after = [r for r in _rows(tmp_path)][len(_rows(tmp_path)) - 1::-1]  # newest first
    resumed = {}
    for r in after:
        if r.get("event") == "start":
            break
        if "event" not in r:
            resumed[r["step"]] = r["loss"]
    assert sorted(resumed) == list(range(resumed_from + 1, STEPS + 1))
    for s, v in resumed.items():
        assert v == ref[s], (s, v, ref[s], f"killed at step ≥{kill_at}, resumed from {resumed_from}")
    for s, v in killed.items():  # and the killed run itself matched the reference
        assert v == ref[s], s
    samples = tmp_path / "samples"
    assert (samples / "step00000016.png").is_file() and (samples / "step00000004.png").is_file()
    vqa = [json.loads(x) for x in (samples / "vqa.jsonl").read_text().splitlines()]
    assert {r["step"] for r in vqa} >= {4, 16} and all(r["question"] and "answer" in r for r in vqa)


def test_sigterm_through_slurm_launch_line_checkpoints_and_exits_0(shards, tmp_path):
    """SLURM variables set by hand for 1 node × 2 processes; MoE on (ZeRO-3 leaf modules)."""
    env = dict(SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", SLURM_NODEID="0", SLURM_JOB_ID="4242",
               NPROC_PER_NODE="2", MASTER_PORT=str(_free_port()), PYTHON=sys.executable)
    over = _overrides(shards, tmp_path, "train.micro_batch=2", "train.steps=100000", "train.save_every=0",
                      "train.warmup_steps=2", "model.moe.enabled=true", "model.moe.num_routed=4",
                      "model.moe.top_k=2", "model.moe.expert_ffn=32", "model.seq_moe.enabled=true",
                      "model.seq_moe.noise_dim=64")
    p = subprocess.Popen(["bash", "launchers/slurm/launch.sh", *over], cwd=ROOT, env=_env(**env),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and p.poll() is None and max(_losses(tmp_path), default=0) < 3:
            time.sleep(0.1)
        assert p.poll() is None, p.stdout.read()[-4000:]
        p.send_signal(signal.SIGTERM)  # to launch.sh only, as srun delivers it to its task
        log, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, log[-4000:]
    rows = _rows(tmp_path)
    stopped = [r for r in rows if r.get("event") == "stopped"]
    assert len(stopped) == 1
    step = stopped[0]["step"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"step{step:08d}"
    assert {f"rank{r:05d}.pt" for r in range(2)} <= {f.name for f in (tmp_path / "checkpoints" / f"step{step:08d}").iterdir()}
    assert "asking the workers to checkpoint" in log and "Root Cause" not in log
    last = [r for r in rows if "event" not in r][-1]
    assert "loss_balance_tok" in last and "L0/route_frac_gen/0" in last  # MoE balance loss + routing stats


def test_slurm_launch_line_for_several_nodes():
    env = _env(SLURM_JOB_NODELIST="gpu-[012-013,020],cpu7", SLURM_NNODES="3", SLURM_NODEID="2", SLURM_JOB_ID="99",
               SLURM_GPUS_ON_NODE="8", LAUNCH_DRY_RUN="1", PYTHON=sys.executable)
    p = subprocess.run(["bash", "launchers/slurm/launch.sh", "--config", "unif2ace-1.8b"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    cmd = p.stdout.split()
    for want in ("--nnodes=3", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu-012:29500",
                 "--rdzv_id=99", "launchers/train.py", "unif2ace-1.8b"):
        assert want in cmd, (want, cmd)
    assert subprocess.run(["bash", "-n", "launchers/slurm/train.sbatch"], cwd=ROOT).returncode == 0
    env.pop("SLURM_JOB_NODELIST")
    p = subprocess.run(["bash", "launchers/slurm/launch.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "SLURM_JOB_NODELIST" in p.stderr


def test_hung_rank_becomes_a_clear_error_not_a_hang(shards, tmp_path):
    t0 = time.time()
    rc, log = _run(_torchrun(*_overrides(shards, tmp_path, "train.micro_batch=2", "train.dist_timeout_s=6")),
                   timeout=150, UNIF2ACE_FAULT="hang:3:1")
    assert rc != 0
    assert "rank 0 failed at step 3" in log and "another rank probably died or hangs" in log, log[-3000:]
    assert "rank      : 1" in log  # torchrun names the failed rank
    assert time.time() - t0 < 140


def test_convert_round_trip_gives_identical_weights_and_logits(shards, reference, tmp_path):
    from unif2ace.checkpoint.hf_io import load_pretrained
    from unif2ace.data.loader import ShardLoader
    from unif2ace.train import engine as E

    rc, log = _run([sys.executable, "tools/convert_checkpoint.py", str(reference / "checkpoints"), "--out",
                    str(tmp_path / "model")])
    assert rc == 0, log
    conv, cfg = load_pretrained(tmp_path / "model")
    live, _ = load_pretrained(reference / "final")  # gathered from the live engine at the end of training
    sd_conv, sd_live = conv.state_dict(), live.state_dict()
    assert sd_conv.keys() == sd_live.keys()
    assert all(torch.equal(sd_conv[k], sd_live[k]) for k in sd_conv)
    batch = next(ShardLoader(cfg.data, cfg.model, 0, 1, 4, loss_cfg=cfg.loss, shard_dir=str(shards)))
    # and back: the directory initialises a DeepSpeed engine (here one process) with the same function
    E.init_distributed(60)
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(tmp_path / "model")))
    ds = E.load_ds_config(ROOT / "ds_configs" / "zero3.json", cfg2.train, 1, gpu=False)
    engine = E.build_engine(E.build_model(cfg2, ds), cfg2.train, ds)
    engine.eval()
    gathered = E.full_state_dict(engine)
    assert all(torch.equal(gathered[k], sd_conv[k]) for k in sd_conv)
    with torch.no_grad():
        again = engine(batch.input_ids, batch.task, features=batch.features).logits
        # computed after ZeRO-3 is set up: it swaps F.linear for its memory-efficient version
        # process-wide (matmul + add: last-bit differences against addmm), so both sides use it
        logits = conv.eval()(batch.input_ids, batch.task, features=batch.features).logits
    assert torch.equal(logits, again)


def test_missing_and_mismatched_shards_are_clear_errors(shards, tmp_path, capsys):
    from unif2ace.train.trainer import EXIT_CONFIG, main

    base = ["--config", "tiny", f"train.out_dir={tmp_path}", "train.progress_bar=false"]
    assert main(base + [f"data.shards={tmp_path / 'nowhere'}"]) == EXIT_CONFIG
    assert f"{tmp_path / 'nowhere'}: no manifest.json" in capsys.readouterr().err
    assert main(base + [f"data.shards={shards}", "model.codebook_size=128"]) == EXIT_CONFIG
    assert "codebook_size: shards 64 vs model.codebook_size 128" in capsys.readouterr().err


@pytest.mark.slow
def test_zero2_trains_the_sequence_moe_when_ranks_route_differently(shards, tmp_path):
    """One row per rank: rank 0 holds a T2I row, rank 1 an understanding row, so each rank leaves
    the other's sequence-MoE group idle. ZeRO-2 buckets gradients as they arrive; an idle group
    without gradients made the ranks' buckets differ and the first step fail."""
    rc, log = _run(_torchrun("--deepspeed", "ds_configs/zero2.json",
                             *_overrides(shards, tmp_path, "train.micro_batch=1", "data.t2i_fraction=0.5",
                                         "model.seq_moe.enabled=true", "model.seq_moe.noise_dim=64"),
                             "train.steps=3"))
    assert rc == 0, log[-4000:]
    losses = _losses(tmp_path)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    start = next(r for r in _rows(tmp_path) if r.get("event") == "start")
    assert start["zero_stage"] == 2


EP_MOE = ("model.moe.enabled=true", "model.moe.num_routed=4", "model.moe.top_k=2", "model.moe.expert_ffn=64",
          "train.micro_batch=2")


def test_expert_parallel_two_ranks_matches_ep1_resumes_and_keeps_every_ranks_experts(shards, tmp_path):
    """EP=2 (ds_configs/zero2_ep.json) against EP=1 (zero2.json) on the same 2 ranks and data;
    then 3 + 3 steps with a resume against 6 straight; then conversion gathers both ranks' experts."""
    from safetensors.torch import load_file

    def train(ds, out, steps=6, **env):
        rc, log = _run(_torchrun("--deepspeed", f"ds_configs/{ds}", *_overrides(shards, out, *EP_MOE),
                                 f"train.steps={steps}"), **env)
        assert (rc != 0) == bool(env), log[-4000:]

    ep, dp, res = tmp_path / "ep", tmp_path / "dp", tmp_path / "resumed"
    train("zero2_ep.json", ep)
    train("zero2.json", dp)
    l_ep, l_dp = _losses(ep), _losses(dp)
    assert sorted(l_ep) == sorted(l_dp) == list(range(1, 7))
    for s in l_ep:
        assert abs(l_ep[s] - l_dp[s]) <= 1e-5 * abs(l_dp[s]), (s, l_ep[s], l_dp[s])
    start = next(r for r in _rows(ep) if r.get("event") == "start")
    assert start["expert_parallel_size"] == 2 and start["zero_stage"] == 2

    train("zero2_ep.json", res, UNIF2ACE_FAULT="crash:5:1")  # rank 1 dies at step 5; last checkpoint: step 3
    train("zero2_ep.json", res)  # resumes from step 3
    assert [_losses(res)[s] for s in range(1, 7)] == [l_ep[s] for s in range(1, 7)]

    # each rank wrote its own experts, and they differ
    ckpt = ep / "checkpoints" / "step00000006"
    s0, s1 = (load_file(str(ckpt / f"experts-ep00{r}.safetensors")) for r in (0, 1))
    assert s0.keys() == s1.keys() and len(s0) == 8  # 2 layers × local w1, w2, b1, b2
    assert all(not torch.equal(s0[k], s1[k]) for k in s0)
    # the ZeRO checkpoint loads with all experts (shared + rank 0's + rank 1's), equal to the model
    # gathered from the live engine, and to the EP=1 run's within the loss tolerance
    sd_conv = _export_matches(ep, dp)
    w1 = sd_conv["layers.1.ffn.experts.w1"]
    assert torch.equal(w1[:, 1:3], s0["layers.1.ffn.experts.local_w1"])
    assert torch.equal(w1[:, 3:5], s1["layers.1.ffn.experts.local_w1"])

    # a shard that disagrees with the optimiser's fp32 masters (e.g. copied from another run) is refused
    from safetensors.torch import save_file

    bad = res / "checkpoints" / "step00000006" / "experts-ep001.safetensors"
    save_file({k: v + 1 for k, v in load_file(str(bad)).items()}, str(bad), metadata={"ep_size": "2", "ep_rank": "1"})
    rc, log = _run(_torchrun("--deepspeed", "ds_configs/zero2_ep.json", *_overrides(shards, res, *EP_MOE),
                             "train.steps=8"))
    assert rc != 0 and "refusing to resume" in log, log[-3000:]

    # resuming an EP checkpoint without EP is refused with the reason
    rc, log = _run(_torchrun("--deepspeed", "ds_configs/zero2.json", *_overrides(shards, ep, *EP_MOE),
                             "train.steps=8"))
    assert rc != 0 and "expert_parallel_size: checkpoint 2 vs run None" in log, log[-3000:]


def _export_matches(run: Path, ref_run: Path) -> dict:
    """The ZeRO checkpoint of ``run`` loads equal to the model gathered from its live engine
    (``final``), and within the loss tolerance of ``ref_run``'s; returns its state dict."""
    from unif2ace.checkpoint.hf_io import load_pretrained
    from unif2ace.checkpoint.load import load_model

    conv, _ = load_model(run / "checkpoints")
    live, _ = load_pretrained(run / "final")
    ref, _ = load_model(ref_run / "checkpoints")
    sd_conv, sd_live, sd_ref = conv.state_dict(), live.state_dict(), ref.state_dict()
    assert sd_conv.keys() == sd_live.keys() == sd_ref.keys()
    for k in sd_ref:
        assert torch.equal(sd_conv[k], sd_live[k]), k
        torch.testing.assert_close(sd_conv[k], sd_ref[k], rtol=1e-4, atol=1e-5, msg=k)
    return sd_conv
