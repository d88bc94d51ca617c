#!/usr/bin/env bash
# Per-node launch line of launchers/slurm/train.sbatch: srun runs this once per node.
#
#   srun --ntasks-per-node=1 bash launchers/slurm/launch.sh --config unif2ace-1.8b train.steps=100000
#
# It starts torchrun with a c10d rendezvous on the first host of $SLURM_JOB_NODELIST (every node
# computes the same host, so no shared file or head-node broadcast is needed), and turns
# SIGTERM / SIGUSR1 (pre-emption, time-limit notice, scancel) into a clean stop: the signal is
# forwarded to the training workers only, they agree on a step, write a checkpoint and exit 0,
# so torchrun and this script exit 0 as well.
#
# Environment (SLURM sets the first four; set them by hand to try it without SLURM):
#   SLURM_JOB_NODELIST  e.g. gpu-[012-015]        SLURM_NNODES   number of nodes
#   SLURM_NODEID        this node's index          SLURM_JOB_ID   rendezvous id
#   NPROC_PER_NODE      workers per node (default $SLURM_GPUS_ON_NODE, else 1)
#   MASTER_PORT         rendezvous port (default 29500)
#   DS_CONFIG           DeepSpeed JSON (default ds_configs/zero3.json)
#   PYTHON              interpreter (default python)
#   LAUNCH_DRY_RUN=1    print the torchrun command and exit
set -uo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python}
: "${SLURM_JOB_NODELIST:?not under SLURM: set SLURM_JOB_NODELIST, SLURM_NNODES, SLURM_NODEID and SLURM_JOB_ID}"
NNODES=${SLURM_NNODES:-1}
NPROC=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
PORT=${MASTER_PORT:-29500}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero3.json}

first_host() {
    if command -v scontrol >/dev/null 2>&1; then
        scontrol show hostnames "$1" | head -n 1
        return
    fi
    # No scontrol (a laptop, a container, the tests): expand the first entry ourselves.
    # "gpu-[012-015,020],cpu7" -> gpu-012
    "$PY" -c '
import re, sys
m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", sys.argv[1])
if not m:
    sys.exit("cannot parse SLURM_JOB_NODELIST=%r" % sys.argv[1])
prefix, ranges = m.group(1), m.group(2)
print(prefix + (ranges.split(",")[0].split("-")[0] if ranges else ""))' "$1"
}

HEAD=$(first_host "$SLURM_JOB_NODELIST") || exit 2
CMD=("$PY" -m torch.distributed.run
     --nnodes="$NNODES" --nproc_per_node="$NPROC"
     --rdzv_backend=c10d --rdzv_endpoint="$HEAD:$PORT" --rdzv_id="${SLURM_JOB_ID:-0}"
     --max_restarts=0
     launchers/train.py --deepspeed "$DS_CONFIG" "$@")

echo "[launch.sh] node ${SLURM_NODEID:-0}/$NNODES, $NPROC workers, rendezvous $HEAD:$PORT" >&2
if [ "${LAUNCH_DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi

# torchrun in its own session: a signal aimed at this script's process group reaches only this
# script, which forwards it to the workers; torchrun then sees them exit 0 and exits 0 itself.
# (If the cluster signals every process, torchrun forwards SIGTERM too and waits ~30 s.)
setsid "${CMD[@]}" &
TR=$!
forward() {
    echo "[launch.sh] $1: asking the workers to checkpoint and stop" >&2
    for pid in $(ps -o pid= --ppid "$TR"); do kill -TERM "$pid" 2>/dev/null; done
}
trap 'forward SIGTERM' TERM
trap 'forward SIGUSR1' USR1
trap 'forward SIGINT' INT
rc=0
while :; do
    wait "$TR"; rc=$?
    kill -0 "$TR" 2>/dev/null || break   # wait was interrupted by a trapped signal: keep waiting
done
exit "$rc"
