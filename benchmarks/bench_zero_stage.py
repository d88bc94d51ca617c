"""Seconds per optimiser step of the real trainer under each DeepSpeed config, same recipe and data.

    python benchmarks/bench_zero_stage.py --shards runs/demo/shards
    python benchmarks/bench_zero_stage.py --shards runs/demo/shards --configs zero3,zero2 --steps 40 \
        --json runs/bench_zero_stage.json train.micro_batch=4

Each config trains the recipe (``launchers/train.py`` under ``deepspeed``, ``--procs`` CPU processes,
gloo, one OpenMP thread each) for ``--steps`` steps from the same seed on the same shards; the
figure is the median of the trainer's own ``step_time_s`` after ``--skip`` warm-up steps, so process
start-up and DeepSpeed's initialisation do not count. Configs run one after the other in one
invocation (this machine is shared: compare the ratios of one run, not numbers across runs).
Why it exists: ZeRO-3 all-gathers every layer's weights on each forward and backward, which buys
nothing for a model that fits on every rank; this says how much a CPU step pays for it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import report

from unif2ace.commands.demo import ROOT, cpu_env, train_command
from unif2ace.jsonfile import read_jsonl


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="precomputed shards of the recipe (e.g. runs/demo/shards)")
    ap.add_argument("--recipe", default="synthface")
    ap.add_argument("--configs", default="zero3,zero2", help="names in ds_configs/, comma-separated")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the median")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every config")
    args = ap.parse_args(argv)
    if args.steps <= args.skip:
        ap.error(f"--steps {args.steps} leaves nothing after --skip {args.skip}")
    py, names = sys.executable, args.configs.split(",")
    res: dict = {"recipe": args.recipe, "procs": args.procs, "timed steps": args.steps - args.skip}
    with tempfile.TemporaryDirectory(prefix="bench_zero_") as tmp:
        for name in names:
            out = Path(tmp) / name
            cmd = train_command(py, args.procs, f"ds_configs/{name}.json", args.recipe, Path(args.shards).resolve(),
                                out, args.steps, "train.wandb=disabled", *args.overrides)
            r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **cpu_env(py)}, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"{name}: training failed (rc {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
            rows = read_jsonl(out / "metrics.jsonl")
            res[f"{name}: s/step"] = statistics.median(r["step_time_s"] for r in rows
                                                       if "step_time_s" in r and r["step"] > args.skip)
    for name in names[1:]:
        res[f"{names[0]} / {name}"] = res[f"{names[0]}: s/step"] / res[f"{name}: s/step"]
    report(res, args.json, digits=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
