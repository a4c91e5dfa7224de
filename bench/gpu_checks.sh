#!/usr/bin/env bash
# The GPU checks, in one run on a machine with a CUDA GPU (CI has none, so these run by hand):
#   1. the CUDA tests: the churn scorer on the GPU (tests/models/churn/test_scorer_cuda.py) and the FAISS index on
#      the GPU (tests/models/recs/test_index_gpu.py, skipped without faiss-gpu);
#   2. bench/churn_scoring.py: score_many's sequences/s at batch 1, 32, 256, 1024 on the CPU and the GPU, encoder
#      forced and as served;
#   3. bench/faiss_index.py --gpu: 1M items on the GPU, when faiss sees one.
# Usage: bench/gpu_checks.sh [OUT_DIR]   (default .bench/gpu; PYTHON picks the interpreter, default .venv's)
# Each step's output goes to OUT_DIR; the exit status is the number of steps that failed.
set -u
out=${1:-.bench/gpu}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=0
step() {  # step NAME COMMAND...: run, keep its output, count failures
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}
step env bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; \
  $py -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))'"
step tests "$py" -m pytest -q -rs -p no:cacheprovider tests/models/churn/test_scorer_cuda.py \
  tests/models/recs/test_index_gpu.py
step churn_scoring "$py" bench/churn_scoring.py --seconds 1.5 --mixed-calls 150
step churn_scoring_as_served "$py" bench/churn_scoring.py --seconds 1.5 --mixed-calls 150 --as-served
if "$py" -c 'import sys; from models.recs.index import gpu_available; sys.exit(not gpu_available())' 2>/dev/null; then
  step faiss_gpu "$py" bench/faiss_index.py --gpu --threads 8
else
  echo "== faiss_gpu: skipped (faiss sees no GPU: faiss-cpu installed?)"
fi
echo "== $failed step(s) failed; outputs in $out"
exit "$failed"
