#!/usr/bin/env bash
# One GPU, under 8 minutes: bench.selection at 1.28M x 512 on CUDA (every strategy, each
# capped at 45 s, the whole at 270 s), then open_clip ViT-B-32 encoding, CoOp steps/s and
# student images/s on CUDA against this machine's CPU (all its cores); prints one table and
# writes bench/results/selection_<host>.* and train_*_<host>.md.
#
#     bench/gpu.sh                      # from the repository root, after `make setup`
#     PY=python OUT=/tmp/out bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results}
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'bench/gpu.sh needs a CUDA device'; \
print(torch.cuda.get_device_name(0))"
start=$SECONDS
timeout 270 "$PY" -m bench.selection --sizes 1.28M --dim 512 --classes 1000 --dtype float16 --refs none \
    --device cuda --timeout 45 --mem-cap-gb 64 --out "$OUT" > /dev/null \
  || echo "bench.selection stopped at its 270 s limit: the strategies measured by then are in the table"
echo "selection: $((SECONDS - start)) s"
"$PY" -m bench.train --parts encode,coop,student,table --devices cuda,cpu --workers local --threads "$(nproc)" \
    --encode-batches 8 --coop-steps 20 --student-steps 20 --student-pool 512 --decode-workers 8 --out "$OUT" \
  | sed -n '/^| measurement/,$p'
echo "total: $((SECONDS - start)) s"
