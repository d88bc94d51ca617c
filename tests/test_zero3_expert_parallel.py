"""Expert parallelism under ZeRO-3 (ds_configs/zero3_ep.json), real processes on CPU (gloo).

Each scenario trains the tiny recipe with the token MoE on through the real launchers and is
compared with ZeRO-3 without EP (ds_configs/zero3.json) on the same ranks and data:

- 2 processes, EP=2 (every rank its own experts), built with ``train.zero_init=true``; every
  process is killed with SIGKILL at a random step and the run resumed. The losses match EP=1
  within 1e-5 relative; the steps computed again after the resume equal those logged before the
  kill bit for bit; the exported model equals the one gathered from the live engine and gives
  the EP=1 model's logits; resuming with another EP setting is refused naming both.
- the SLURM launch line as 2 "nodes" × 1 process (two launch.sh with their own SLURM_NODEID, one
  c10d rendezvous on 127.0.0.1): killed, resumed, and bit for bit the 2-process run's losses.
- 4 processes, EP=2 × expert-data-parallel 2 (each expert partitioned over two ranks).

One run per scenario serves several assertions (module fixtures): every launch costs tens of
seconds on a 2-core machine.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_distributed import _children, _env, _export_matches, _free_port, _losses, _rows, _run, _wait_gone

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 8, 2
MOE = ("model.moe.enabled=true", "model.moe.num_routed=4", "model.moe.top_k=2", "model.moe.expert_ffn=64",
       "train.micro_batch=2")

pytestmark = pytest.mark.slow


def _args(shards, out, ds, *extra):
    return ["launchers/train.py", "--deepspeed", f"ds_configs/{ds}", "--config", "tiny", f"data.shards={shards}",
            f"train.out_dir={out}", f"train.steps={STEPS}", f"train.save_every={SAVE_EVERY}", "train.keep_last=5",
            "train.progress_bar=false", *MOE, *extra]


def _torchrun(n, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *args]


def _train(cmd, timeout=400):
    rc, log = _run(cmd, timeout=timeout)
    assert rc == 0, log[-4000:]


def _kill_at_random_step(cmds, out, envs=None):
    """Start ``cmds`` (each in its own session), SIGKILL every process they started once a random
    odd step (one after a checkpoint) is logged; returns (losses before the kill, checkpoint step)."""
    kill_at = random.Random().choice([s for s in range(SAVE_EVERY + 1, STEPS - 1) if s % SAVE_EVERY])
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(**(e or {})), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
             for c, e in zip(cmds, envs or [None] * len(cmds))]
    try:
        deadline = time.time() + 300
        while time.time() < deadline and all(p.poll() is None for p in procs) and max(_losses(out), default=0) < kill_at:
            time.sleep(0.02)
        assert all(p.poll() is None for p in procs), "a run ended before it could be killed"
        tree = []
        for p in procs:  # launcher → (torchrun →) ranks; kill -9 every one of them by pid
            level = [p.pid]
            while level:
                tree += level
                level = [c for pid in level for c in _children(pid)]
        for pid in reversed(tree):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait(30)
        _wait_gone(tree)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    killed = _losses(out)
    resumed_from = int((Path(out) / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert max(killed) >= kill_at and SAVE_EVERY <= resumed_from < max(killed) < STEPS, (kill_at, killed, resumed_from)
    return killed, resumed_from


def _after_last_start(out):
    rows, losses = _rows(out), {}
    for r in reversed(rows):
        if r.get("event") == "start":
            return r, losses
        if "event" not in r:
            losses[r["step"]] = r["loss"]
    raise AssertionError("no start event")


def _check_resumed(out, killed, resumed_from, ep1):
    """Steps recomputed after the resume equal the killed run's bit for bit; every step matches EP=1."""
    start, resumed = _after_last_start(out)
    assert start["resumed"] and start["step"] == resumed_from and start["zero_stage"] == 3
    assert start["expert_parallel_size"] == 2
    assert sorted(resumed) == list(range(resumed_from + 1, STEPS + 1))
    overlap = [s for s in resumed if s in killed]
    assert overlap, (killed, resumed_from)
    for s in overlap:
        assert resumed[s] == killed[s], (s, resumed[s], killed[s])
    full = {**killed, **resumed}
    ref = _losses(ep1)
    assert sorted(full) == sorted(ref) == list(range(1, STEPS + 1))
    for s in full:
        assert abs(full[s] - ref[s]) <= 1e-5 * abs(ref[s]), (s, full[s], ref[s])
    return full


def _expert_partitions(ckpt, world):
    """Per rank: the fp32 partitions of its expert ZeRO sub-groups (DeepSpeed's own metadata)."""
    from unif2ace.checkpoint.load import _load_zero

    out = []
    for r in range(world):
        osd = _load_zero(ckpt / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")["optimizer_state_dict"]
        meta = osd["ds_zero_partition_groups"]
        out.append({i: (osd["fp32_flat_groups"][i], m["partition_ranks"]) for i, m in enumerate(meta)
                    if m["families"] == ["autoep_expert"]})
    return out


# --------------------------------------------------------------------------- 2 processes


@pytest.fixture(scope="module")
def ep1(tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("z3ep1")
    _train(_torchrun(2, *_args(tiny_shards, out, "zero3.json")))
    return out


@pytest.fixture(scope="module")
def ep2(tiny_shards, tmp_path_factory):
    """EP=2 on 2 processes, zero_init, killed at a random step, resumed to the end."""
    out = tmp_path_factory.mktemp("z3ep2")
    cmd = _torchrun(2, *_args(tiny_shards, out, "zero3_ep.json", "train.zero_init=true"))
    killed, resumed_from = _kill_at_random_step([cmd], out)
    _train(cmd)
    return out, killed, resumed_from


def test_zero3_ep2_matches_ep1_and_resumes_bitwise_after_kill9(ep1, ep2):
    out, killed, resumed_from = ep2
    _check_resumed(out, killed, resumed_from, ep1)


def test_zero3_ep2_ranks_hold_their_own_experts_and_export_matches(tiny_shards, ep1, ep2, tmp_path):
    from unif2ace.checkpoint.hf_io import load_pretrained
    from unif2ace.checkpoint.load import load_model
    from unif2ace.data.loader import ShardLoader

    out = ep2[0]
    ckpt = out / "checkpoints" / f"step{STEPS:08d}"
    assert json.loads((ckpt / "expert_parallel.json").read_text())["ep_rank_of_rank"] == [0, 1]
    parts = _expert_partitions(ckpt, 2)
    assert parts[0].keys() == parts[1].keys() and len(parts[0]) >= 1
    for i in parts[0]:
        (a, ra), (b, rb) = parts[0][i], parts[1][i]
        assert ra == [0] and rb == [1]  # EP = world: each rank alone holds its experts
        assert a.shape == b.shape and not torch.equal(a, b)

    rc, log = _run([sys.executable, "tools/convert_checkpoint.py", str(out / "checkpoints"), "--out",
                    str(tmp_path / "model")])
    assert rc == 0, log
    conv, cfg = load_pretrained(tmp_path / "model")
    live, _ = load_pretrained(out / "final")  # gathered from the live engine at the end of training
    ref, _ = load_model(ep1 / "checkpoints")  # EP=1: DeepSpeed's zero_to_fp32
    sd_conv, sd_live, sd_ref = conv.state_dict(), live.state_dict(), ref.state_dict()
    assert sd_conv.keys() == sd_live.keys() == sd_ref.keys()
    assert all(torch.equal(sd_conv[k], sd_live[k]) for k in sd_conv)
    # rank 1's experts are the routed slots 3-4 of each group (slot 0 is the shared expert)
    w1 = sd_conv["layers.0.ffn.experts.w1"]
    assert w1.shape[1] == 5 and torch.equal(w1[:, 3:5].reshape(-1), parts[1][min(parts[1])][0][:w1[:, 3:5].numel()])
    batch = next(ShardLoader(cfg.data, cfg.model, 0, 1, 4, loss_cfg=cfg.loss, shard_dir=str(tiny_shards)))
    with torch.no_grad():
        logits = [m.eval()(batch.input_ids, batch.task, features=batch.features).logits
                  for m in (conv, live, ref)]
    assert torch.equal(logits[0], logits[1])
    torch.testing.assert_close(logits[0], logits[2], rtol=1e-4, atol=1e-4)


def test_zero3_ep_resume_with_other_expert_parallel_setting_is_refused(tiny_shards, ep2):
    from unif2ace.train.checkpointing import CheckpointManager, CheckpointMismatch, read_run_config

    out = ep2[0]
    rc, log = _run(_torchrun(2, *_args(tiny_shards, out, "zero3.json", f"train.steps={STEPS + 2}")))
    assert rc != 0 and "expert_parallel_size: checkpoint 2 vs run None" in log, log[-3000:]
    # another EP size (4 on 4 ranks would need a 4-process launch): the same check, called as load() does
    tag = f"step{STEPS:08d}"
    cfg = read_run_config(out / "checkpoints" / tag)
    with pytest.raises(CheckpointMismatch, match="expert_parallel_size: checkpoint 2 vs run 4"):
        CheckpointManager(out / "checkpoints", cfg, 2, 0).check_compatible(tag, 4)


# --------------------------------------------------------------------------- 2 "nodes" through SLURM


def test_slurm_launch_line_two_nodes_zero3_ep_kill9_resume_bitwise(tiny_shards, ep2, tmp_path):
    """launchers/slurm/launch.sh twice, as srun would run it on two nodes: one process per node,
    the rendezvous on the first host of the node list. The result must be the 2-process run's."""
    port = str(_free_port())
    over = _args(tiny_shards, tmp_path, "zero3_ep.json", "train.zero_init=true")[3:]  # after --deepspeed X
    envs = [dict(SLURM_JOB_NODELIST="127.0.0.1", SLURM_NNODES="2", SLURM_NODEID=str(n), SLURM_PROCID=str(n),
                 SLURM_JOB_ID="777", NPROC_PER_NODE="1", MASTER_PORT=port, PYTHON=sys.executable,
                 DS_CONFIG="ds_configs/zero3_ep.json") for n in (0, 1)]
    cmd = ["bash", "launchers/slurm/launch.sh", *over]
    killed, resumed_from = _kill_at_random_step([cmd, cmd], tmp_path, envs)
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(**e), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for e in envs]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "node 0/2, 1 workers" in logs[0] and "node 1/2, 1 workers" in logs[1]
    start, resumed = _after_last_start(tmp_path)
    assert start["world_size"] == 2 and start["expert_parallel_size"] == 2 and start["step"] == resumed_from
    assert all(resumed[s] == killed[s] for s in resumed if s in killed)
    two_procs = _losses(ep2[0])
    assert {**killed, **resumed} == two_procs  # bit for bit: 2 nodes × 1 process = 1 node × 2 processes
    ckpt = tmp_path / "checkpoints" / f"step{STEPS:08d}"
    assert json.loads((ckpt / "expert_parallel.json").read_text())["ep_rank_of_rank"] == [0, 1]
    assert {f"rank{r:05d}.pt" for r in range(2)} <= {f.name for f in ckpt.iterdir()}


# --------------------------------------------------------------------------- 4 processes: EP 2 × EDP 2


def test_zero3_ep2_times_edp2_on_four_processes(tiny_shards, tmp_path):
    ep1, ep2 = tmp_path / "ep1", tmp_path / "ep2"
    _train(_torchrun(4, *_args(tiny_shards, ep1, "zero3.json", "train.micro_batch=1", "train.export_final=false")),
           timeout=600)
    cmd = _torchrun(4, *_args(tiny_shards, ep2, "zero3_ep.json", "train.micro_batch=1", "train.zero_init=true"))
    killed, resumed_from = _kill_at_random_step([cmd], ep2)
    _train(cmd, timeout=600)
    _check_resumed(ep2, killed, resumed_from, ep1)

    ckpt = ep2 / "checkpoints" / f"step{STEPS:08d}"
    assert json.loads((ckpt / "expert_parallel.json").read_text())["ep_rank_of_rank"] == [0, 1, 0, 1]
    parts = _expert_partitions(ckpt, 4)
    for i in parts[0]:
        # ranks 0 and 2 share EP rank 0's experts, each holding half of every one (ZeRO-3 over the
        # expert-data-parallel group); ranks 1 and 3 EP rank 1's
        assert [parts[r][i][1] for r in range(4)] == [[0, 2], [1, 3], [0, 2], [1, 3]]
        flats = [parts[r][i][0] for r in range(4)]
        assert all(not torch.equal(flats[a], flats[b]) for a in range(4) for b in range(a + 1, 4))
    _export_matches(ep2, ep1)

