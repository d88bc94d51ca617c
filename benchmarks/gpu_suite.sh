#!/usr/bin/env bash
# The GPU checks of this repository in one run (one CUDA GPU, about 5 minutes, under 8 by design):
#   1. pytest -m gpu: a bf16 ZeRO-3 training step of the tiny recipe, the torch._grouped_mm token
#      MoE against the CPU blocked path, MaskGIT and KV-cache decoding on CUDA against the CPU
#      (tests/test_gpu.py), and the MFU arithmetic (tests/test_flops.py);
#   2. benchmarks/bench_gpu_train.py on unif2ace-1.8b: training tokens/s and MFU (bf16, ZeRO-3,
#      one rank, activation checkpointing), T2I images/s at 16 MaskGIT steps, MMU decode tokens/s
#      with the KV cache at batch 1 and 32.
# Results: one JSON file (default $OUT/gpu_suite.json when $OUT is set, else runs/gpu_suite.json).
#
#   bash benchmarks/gpu_suite.sh [RESULT.json]
#   LAYERS=12 bash benchmarks/gpu_suite.sh      # fewer layers (model.num_layers) if time or memory is short
#   STEPS=20 WARMUP=5 bash benchmarks/gpu_suite.sh
#
# Machines without a package index: the script first installs every wheel in ./.whl (if that
# folder exists) into /tmp/unif2ace-site, put before the system packages. Prepare it where pip
# works, for the GPU machine's Python (3.12 below) — torch, numpy, safetensors, transformers,
# PyYAML are expected there already; DeepSpeed ships no wheel on PyPI, so build one:
#   python -m pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8   # pure Python
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5
# (.whl/ is git-ignored.) The JSON records the versions that ran.
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;; esac
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULT=${1:-${OUT:+$OUT/gpu_suite.json}}
RESULT=${RESULT:-runs/gpu_suite.json}
LAYERS=${LAYERS:-24}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
mkdir -p "$(dirname "$RESULT")"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/unif2ace-site \
    .whl/*.whl || { echo "gpu_suite: installing .whl/*.whl failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/unif2ace-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/unif2ace-torch-extensions}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite: no CUDA device')" || exit 2
"$PY" -c "import deepspeed" 2>/dev/null || { echo "gpu_suite: deepspeed is not importable; carry it in .whl/ (see the header)" >&2; exit 2; }

# 1. the tests (DS_ACCELERATOR=cpu for the in-process parts, as in CI; the training test starts
#    its own CUDA process)
DS_ACCELERATOR=cpu timeout 180 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_flops.py \
  --junitxml="$WORK/junit.xml" 2>&1 | tee "$WORK/pytest.log"
tests_rc=${PIPESTATUS[0]}
t1=$(date +%s)

# 2. the benchmark
timeout 270 "$PY" benchmarks/bench_gpu_train.py --recipe unif2ace-1.8b --steps "$STEPS" --warmup "$WARMUP" \
  --t2i-steps 16 --t2i-batch 16 --mmu-batches 1 32 --new-tokens 64 --repeats 3 \
  --json "$WORK/bench.json" "model.num_layers=$LAYERS" 2>&1 | tee "$WORK/bench.log"
bench_rc=${PIPESTATUS[0]}
t2=$(date +%s)

"$PY" - "$WORK" "$RESULT" "$tests_rc" "$bench_rc" "$((t1 - t0))" "$((t2 - t1))" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
from unif2ace.atomic import atomic_write_text

work, result, tests_rc, bench_rc, tests_s, bench_s = sys.argv[1:]
out = {"tests": {"exit_status": int(tests_rc), "wall_s": int(tests_s)},
       "benchmark": {"exit_status": int(bench_rc), "wall_s": int(bench_s)}}
junit = Path(work) / "junit.xml"
if junit.exists():
    cases = []
    for c in ET.parse(junit).iter("testcase"):
        status = "passed"
        for tag in ("failure", "error", "skipped"):
            el = c.find(tag)
            if el is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                cases.append({"test": f"{c.get('classname')}::{c.get('name')}", "status": status,
                              "message": (el.get("message") or "")[:500]})
                break
        else:
            cases.append({"test": f"{c.get('classname')}::{c.get('name')}", "status": status,
                          "seconds": float(c.get("time", 0))})
    out["tests"]["cases"] = cases
bench = Path(work) / "bench.json"
if bench.exists():
    out["benchmark"].update(json.loads(bench.read_text()))
else:
    out["benchmark"]["log_tail"] = (Path(work) / "bench.log").read_text()[-3000:]
atomic_write_text(result, json.dumps(out, indent=1) + "\n")
print(f"gpu_suite: wrote {result}")
EOF
echo "gpu_suite: tests exit $tests_rc, benchmark exit $bench_rc, $(( $(date +%s) - t0 )) s"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
