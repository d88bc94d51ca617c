"""Memory per rank of parameters, gradients and optimiser state: ZeRO-2 vs ZeRO-3, with expert parallelism.

    python benchmarks/bench_memory.py                      # table for unif2ace-1.8b + CPU validation runs
    python benchmarks/bench_memory.py --no-validate        # the table only (seconds)
    python benchmarks/bench_memory.py --json runs/bench/memory.json

The table: bytes per rank for the ``--config`` recipe (default ``unif2ace-1.8b``, token MoE on) at
``--ranks`` (8 and 64) ranks, for ZeRO-2 and ZeRO-3 with ``expert_parallel_size`` 1/2/4/8, in bf16
mixed precision (weights and gradients 2 bytes, fp32 master + AdamW's two moments 12 bytes per
element). Activations, communication buckets and the CUDA allocator's slack are not included.

The element counts come from ``plan()``, which partitions the model's real parameter list the way
the engine does: routed experts split over EP ranks (``unif2ace/train/expert_parallel.py``); under
ZeRO-3 every parameter split into ceil(n/P) elements over its partition group (all ranks, or the
expert-data-parallel group of world/EP ranks for routed experts), parameters of at most
``stage3_param_persistence_threshold`` elements also kept whole; under ZeRO-2 weights replicated
and each optimiser group flattened, padded to a multiple of 2·P and split over its group.

``--validate`` (default on) checks ``plan()`` against what DeepSpeed actually allocated: it trains
a reduced recipe (same structure, small widths) for 2 steps on 2 and 4 CPU processes (gloo) with
ZeRO-2 and ZeRO-3 × EP 1/2 (2 processes) and EP 2/4 (4 processes) — 8 runs, about 20 minutes on a
busy 2-core machine — reads the partition sizes from the live engines (ZeRO-3:
``partition_numel()`` of every parameter and the fp32 flat groups; ZeRO-2: the fp32 partitions),
and reports the largest relative difference and each run's peak RSS per rank (``ru_maxrss``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from _report import report

BYTES = {"params": 2, "grads": 2, "optim": 12, "moe_layer_gathered": 2}
"""bf16 weights / gradients; fp32 master + exp_avg + exp_avg_sq."""
STEADY = ("params", "grads", "optim")
"""What stays allocated between steps (``moe_layer_gathered`` is transient, during one MoE layer)."""
REDUCED = ["model.hidden_size=128", "model.num_layers=2", "model.num_heads=4", "model.intermediate_size=512",
           "model.moe.expert_ffn=64", "model.seq_moe.enabled=false", "model.activation_checkpointing=false",
           "model.moe.backend=torch", "train.micro_batch=1"]


def ds_config(stage: int, ep: int) -> dict:
    """The shipped JSON for this stage, with ``expert_parallel_size`` = ep."""
    name = f"zero{stage}{'_ep' if ep > 1 else ''}.json"
    spec = json.loads((ROOT / "ds_configs" / name).read_text())
    if ep > 1:
        spec["expert_parallel_size"] = ep
    return spec


# --------------------------------------------------------------------------- the arithmetic


def parameter_list(model_cfg, weight_decay: float = 0.1) -> list[tuple[str, tuple, bool]]:
    """(name, shape, decay) of every trainable parameter of the unsharded model, built on the meta device."""
    import torch

    from unif2ace.model.unif2ace import UniF2ace
    from unif2ace.train.engine import param_groups

    with torch.device("meta"):
        model = UniF2ace(model_cfg)
    decay = set(param_groups(model, weight_decay)[0]["names"])
    return [(n, tuple(p.shape), n in decay) for n, p in model.named_parameters() if p.requires_grad]


def _sharded(params, model_cfg, ep: int):
    """The parameters one rank holds under EP: (numel, decay, is_routed_expert). An expert stack
    (G, S+E, ...) becomes its shared part (G, S, ...) and this rank's routed part (G, E/ep, ...)."""
    s, e = model_cfg.moe.num_shared, model_cfg.moe.num_routed
    out = []
    for name, shape, decay in params:
        if ".experts." in name and ep > 1:
            per_slot = math.prod(shape) // (s + e)
            if s:
                out.append((per_slot * s, decay, False))
            out.append((per_slot * e // ep, decay, True))
        else:
            out.append((math.prod(shape), decay, False))
    return out


def plan(params, model_cfg, stage: int, world: int, ep: int, persistence: int = 100_000) -> dict[str, int]:
    """Elements per rank: ``params`` (weights resident between steps), ``grads`` (this rank's
    gradient partition) and ``optim`` (its fp32 master partition; AdamW keeps two more of the same size)."""
    held = _sharded(params, model_cfg, ep)
    size = {False: world, True: world // ep}  # partition group: all ranks, or the expert-data-parallel group
    layer0 = [math.prod(shape) for name, shape, _ in params if name.startswith("layers.0.") and ".experts." in name]
    s, e = model_cfg.moe.num_shared, model_cfg.moe.num_routed
    # ZeRO-3 all-gathers a MoE layer's experts when the layer runs: shared + this rank's routed ones
    gathered = sum(n // (s + e) * (s + e // ep) for n in layer0) if stage == 3 else 0
    if stage == 3:
        part = sum(math.ceil(n / size[x]) for n, _, x in held)
        persistent = sum(n for n, _, _ in held if n <= persistence)
        return {"params": part + persistent, "grads": part, "optim": part, "moe_layer_gathered": gathered}
    groups: dict[tuple[bool, bool], int] = {}
    for n, decay, x in held:  # our optimiser groups: decay / no decay, each split dense / expert
        groups[(decay, x)] = groups.get((decay, x), 0) + n
    part = sum(math.ceil(total / (2 * size[x])) * 2 for (_, x), total in groups.items())
    return {"params": sum(n for n, _, _ in held), "grads": part, "optim": part, "moe_layer_gathered": gathered}


def table(config: str, ranks: list[int], eps: list[int]) -> list[dict]:
    from unif2ace.config import load_config

    cfg = load_config(config)
    if not cfg.model.moe.enabled:
        raise SystemExit(f"{config}: the token MoE is off (model.moe.enabled=false)")
    params = parameter_list(cfg.model)
    threshold = ds_config(3, 1)["zero_optimization"]["stage3_param_persistence_threshold"]
    rows = []
    for world in ranks:
        for stage in (2, 3):
            for ep in eps:
                if world % ep or cfg.model.moe.num_routed % ep:
                    continue
                el = plan(params, cfg.model, stage, world, ep, threshold)
                gb = {k: el[k] * BYTES[k] / 2 ** 30 for k in el}
                rows.append({"ranks": world, "zero": stage, "ep": ep, **{f"{k}_GiB": v for k, v in gb.items()},
                             "total_GiB": sum(gb[k] for k in STEADY)})
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(title)
    print(f"{'ranks':>5} {'ZeRO':>4} {'EP':>3} {'params':>7} {'grads':>7} {'optim':>7} {'total':>7}   "
          f"{'MoE layer gathered':>18}")
    print(f"{'':>14} {'GiB per rank, between steps':^31}   {'MiB, transient':>18}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['zero']:>4} {r['ep']:>3} {r['params_GiB']:>7.2f} {r['grads_GiB']:>7.2f} "
              f"{r['optim_GiB']:>7.2f} {r['total_GiB']:>7.2f}   {r['moe_layer_gathered_GiB'] * 1024:>18.1f}")


# --------------------------------------------------------------------------- validation (real engines)


def measure(engine) -> dict[str, int]:
    """Elements this rank's engine allocated, counted as ``plan()`` counts them."""
    opt = engine.optimizer
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3
        ps = list(engine.module.parameters())
        part = sum(p.partition_numel() for p in ps)
        return {"params": part + sum(p.ds_numel for p in ps if p.ds_persist), "grads": part,
                "optim": sum(t.numel() for t in opt.fp32_partitioned_groups_flat)}
    part = sum(t.numel() for t in opt.single_partition_of_fp32_groups)  # ZeRO-1/2
    return {"params": sum(p.numel() for p in engine.module.parameters()), "grads": part, "optim": part}


def worker(args) -> None:
    """One rank of a validation run (started by torchrun): build, 2 steps, measure, report."""
    import resource

    import torch
    import torch.distributed as dist

    from unif2ace.config import load_config
    from unif2ace.train import engine as E

    torch.set_num_threads(1)
    info = E.init_distributed(300)
    cfg = load_config(args.config, REDUCED)
    ds = E.load_ds_config(ds_config(args.stage, args.ep[0]), cfg.train, info.world_size, gpu=False)
    engine = E.build_engine(E.build_model(cfg, ds), cfg.train, ds)
    g = torch.Generator().manual_seed(info.rank)
    length = cfg.model.text_len + cfg.model.num_image_tokens + 3
    for _ in range(2):
        ids = torch.randint(0, cfg.model.text_vocab_size, (cfg.train.micro_batch, length), generator=g)
        out = engine(ids, torch.randint(0, 2, (cfg.train.micro_batch,), generator=g))
        engine.backward(out.logits.float().pow(2).mean())
        engine.step()
    row = {**measure(engine), "rank": info.rank, "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rows = [None] * info.world_size
    dist.all_gather_object(rows, row)
    if info.rank == 0:
        Path(args.worker_out).write_text(json.dumps(rows))
    dist.barrier()
    os._exit(0)  # skip gloo / DeepSpeed teardown at exit


def validate(config: str, procs: list[int]) -> list[dict]:
    from unif2ace.config import load_config

    cfg = load_config(config, REDUCED)
    params = parameter_list(cfg.model)
    threshold = ds_config(3, 1)["zero_optimization"]["stage3_param_persistence_threshold"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": str(ROOT)}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in procs:
            for stage in (2, 3):
                for ep in (1, 2, 4):
                    if world % ep or (world > 2 and ep == 1):  # EP=1 partitions the same way at any world size
                        continue
                    res = Path(tmp) / f"{world}-{stage}-{ep}.json"
                    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                           __file__, "--worker", "--config", config, "--stage", str(stage), "--ep", str(ep),
                           "--worker-out", str(res)]
                    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                    if r.returncode != 0 or not res.exists():
                        raise SystemExit(f"validation run {world} ranks ZeRO-{stage} EP={ep} failed:\n"
                                         f"{(r.stdout + r.stderr)[-3000:]}")
                    ranks = json.loads(res.read_text())
                    want = plan(params, cfg.model, stage, world, ep, threshold)
                    want = {k: want[k] for k in STEADY}
                    diff = max(abs(r_[k] - want[k]) / want[k] for r_ in ranks for k in want)
                    out.append({"ranks": world, "zero": stage, "ep": ep, "planned": want,
                                "measured_rank0": {k: ranks[0][k] for k in want}, "max_rel_diff": diff,
                                "peak_rss_MiB": [round(r_["peak_rss_MiB"]) for r_ in ranks]})
                    print(f"  {world} ranks ZeRO-{stage} EP={ep}: planned {want}, measured (rank 0) "
                          f"{out[-1]['measured_rank0']}, max rel. diff {diff:.2e}, peak RSS MiB "
                          f"{out[-1]['peak_rss_MiB']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="unif2ace-1.8b")
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--ep", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--procs", type=int, nargs="+", default=[2, 4], help="process counts of the validation runs")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rows = table(args.config, args.ranks, args.ep)
    print_table(rows, f"{args.config}, token MoE on, bf16 + fp32 AdamW state:")
    checks = []
    if args.validate:
        print(f"validation against real engines ({args.config} reduced: {' '.join(REDUCED)}):")
        checks = validate(args.config, args.procs)
        worst = max(c["max_rel_diff"] for c in checks)
        report({"validation_runs": len(checks), "max_rel_diff_planned_vs_measured": worst}, digits=6)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"table": rows, "validation": checks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
