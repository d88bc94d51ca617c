#!/usr/bin/env bash
# Create ./.venv with everything UniF²ace needs (idempotent).
#   bash tools/setup.sh            # CPU / laptop
#   GPU=1 bash tools/setup.sh      # also tries the optional MegaBlocks extra
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: 2.14.1 + torchvision 0.29.1 are the newest pair pip may take here.
python -c "import torch, torchvision" 2>/dev/null || \
  python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[dev]"
if [ "${GPU:-0}" = 1 ]; then python -m pip install -q -e ".[gpu]" || echo "megablocks unavailable: the torch MoE backend will be used"; fi
echo "setup done: $(python -c 'import torch,deepspeed,transformers;print("torch",torch.__version__,"deepspeed",deepspeed.__version__,"transformers",transformers.__version__)' 2>/dev/null | tail -1)"
