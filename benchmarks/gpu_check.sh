#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA device and clipsweep importable (installed, or
# on PYTHONPATH): the suite (its cuda-marked tests run there; PostgreSQL-backed tests skip without a
# database), then the GPU benchmarks behind README's device rows. Each part has its own time limit so
# that a slow one leaves the rest their turn; logs go to OUTDIR (default: gpu-check/).
#
#     bash benchmarks/gpu_check.sh [OUTDIR]        # ~8-9 minutes on one H200
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
started=$(date +%s)
mark() { echo "[$(($(date +%s) - started)) s] $*"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  python3 -c "import torch, optuna, mlflow; print(torch.__version__, torch.cuda.get_device_name(), optuna.__version__, mlflow.__version__)"
} 2>&1 | tee "$out/env.txt"

mark "suite"
workers=$(python3 -c "import importlib.util as u; print('-n 14 --dist loadfile' if u.find_spec('xdist') else '')")
timeout "${SUITE_SECONDS:-200}" python3 -m pytest -q $workers -p no:cacheprovider > "$out/suite.txt" 2>&1
echo "suite rc=$?" >> "$out/suite.txt"
tail -25 "$out/suite.txt"

mark "telemetry overhead per clip method"
for method in norm percentile zclip agc; do
    timeout 45 python3 benchmarks/step_overhead.py --device cuda --rounds 5 --steps 100 --method "$method" 2>&1 | tail -4
done | tee "$out/step_overhead.txt"

mark "batched steps: the curve over K"
timeout 110 python3 benchmarks/batching.py --device cuda --members 1,4,16,64,128,256,512 --steps 20 --rounds 3 \
    2>&1 | tee "$out/batching_curve.txt" | tail -12

mark "sweeps: 64 trials batched vs one at a time (8 trials: trials/h is a rate)"
timeout 200 python3 benchmarks/batching.py --device cuda --members 1 --steps 5 --rounds 1 \
    --sweep 64 --sweep-steps 1000 --sweep-baseline 8 2>&1 | tee "$out/batching_sweep.txt" | tail -6

mark "default run: steps' share of wall time"
timeout 60 python3 benchmarks/run_overhead.py --device cuda --profile "$out/run.prof" > "$out/run_overhead.txt" 2>&1
head -8 "$out/run_overhead.txt"
mark "done"
