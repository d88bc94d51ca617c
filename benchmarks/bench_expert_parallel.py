"""Expert parallelism vs data parallelism for the token MoE: steps/s and per-rank expert memory.

    python benchmarks/bench_expert_parallel.py --shards runs/demo/shards          # 2 CPU ranks
    python benchmarks/bench_expert_parallel.py --shards S --procs 8 --ep 8 --gpu   # a GPU node

Trains the same MoE model (``--config`` recipe + token MoE, same seed and data) three times with the
real launcher: ZeRO-2 data parallel (``ds_configs/zero2.json``, every rank holds every expert),
ZeRO-2 with ``expert_parallel_size`` = ``--ep`` (``ds_configs/zero2_ep.json``, each rank holds
1/ep of the routed experts and tokens travel by all-to-all) and ZeRO-3 with the same EP
(``ds_configs/zero3_ep.json``: everything partitioned, experts inside their expert-data-parallel
group). Reports the median step time of each (first steps dropped as warm-up), the ratios, the
routed-expert parameters per rank, and the largest loss difference from the data-parallel run. On CPU (gloo, 2 processes on shared cores) the all-to-all is
a pure cost and the memory saving is the point; on GPUs EP's use is fitting more experts per device.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from _report import report

from unif2ace.jsonfile import read_jsonl

MOE = ["model.moe.enabled=true", "model.moe.num_shared=1", "model.moe.num_routed=8", "model.moe.top_k=3",
       "model.moe.expert_ffn=256"]


def _train(ds_config: Path, out: Path, args) -> list[dict]:
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cuda" if args.gpu else "cpu"),
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(args.threads),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
           "launchers/train.py", "--deepspeed", str(ds_config), "--config", args.config,
           f"data.shards={args.shards}", f"train.out_dir={out}", f"train.steps={args.steps}",
           f"train.save_every={args.steps + 1}", "train.export_final=false", "train.progress_bar=false",
           *MOE, *args.overrides]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"training with {ds_config.name} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return read_jsonl(out / "metrics.jsonl")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="runs/demo/shards")
    ap.add_argument("--config", default="synthface")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--ep", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="steps dropped from the timing")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        configs = {"dp": ROOT / "ds_configs" / "zero2.json"}
        for name, src in (("ep", "zero2_ep.json"), ("ep3", "zero3_ep.json")):
            spec = json.loads((ROOT / "ds_configs" / src).read_text())
            spec["expert_parallel_size"] = args.ep
            configs[name] = Path(tmp) / src
            configs[name].write_text(json.dumps(spec))
        rows = {}
        for name, cfg in configs.items():
            rows[name] = [r for r in _train(cfg, Path(tmp) / name, args) if "event" not in r]
    step_time = {k: statistics.median(r["step_time_s"] for r in v[args.warmup:]) for k, v in rows.items()}
    diff = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for k in ("ep", "ep3") for a, b in zip(rows[k], rows["dp"]))
    from unif2ace.config import load_config

    m = load_config(args.config, MOE + list(args.overrides)).model
    per_expert = 2 * m.moe.expert_ffn * m.hidden_size + m.moe.expert_ffn + m.hidden_size
    routed = m.num_layers * 2 * m.moe.num_routed * per_expert  # 2 groups
    report({"procs": args.procs, "expert_parallel_size": args.ep, "steps_timed": args.steps - args.warmup,
            "dp_step_s": step_time["dp"], "ep_step_s": step_time["ep"], "zero3_ep_step_s": step_time["ep3"],
            "ep_over_dp_time": step_time["ep"] / step_time["dp"],
            "zero3_ep_over_zero2_ep_time": step_time["ep3"] / step_time["ep"],
            "routed_expert_params_per_rank_dp_M": routed / 1e6,
            "routed_expert_params_per_rank_ep_M": routed / args.ep / 1e6,
            "max_rel_loss_diff": diff}, args.json, digits=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
