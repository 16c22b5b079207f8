#!/usr/bin/env bash
# For a session that is lent a GPU (the device tool): everything that needs CUDA, one step per
# call, each well inside the tool's 10-minute limit. Run from the repository root on the device
# machine; logs and JSON go to $OUT (which comes back), to be committed under bench/results/.
#
#   run(command="bash bench/gpu_session.sh tests")            # the suite, CUDA tests included
#   run(command="bash bench/gpu_session.sh objective")        # N = 10,240, P = 100 .. 16,000
#   run(command="bash bench/gpu_session.sh objective-large")  # N = 102,400 and 1,024,000
#   run(command="bash bench/gpu_session.sh search")           # one layer, default budget
#   run(command="bash bench/gpu_session.sh network")          # BERT-base-shaped, default budget
#
# The machine has no network and no evotorch: gpuwpo runs from the checkout (PYTHONPATH), the
# evotorch tests skip, and the search benchmark times the torch and scipy backends (carry
# evotorch's wheels as the device README explains to time it too).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpuwpo-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

case "${1:-}" in
  tests)
    python3 -m pytest -q -rs 2>&1 | tee "$OUT/tests.log" ;;
  objective)
    python3 bench/objective.py --threads 0 --n-values 10240 --profile \
      --out "$OUT/objective.json" 2>&1 | tee "$OUT/objective.log" ;;
  objective-large)
    python3 bench/objective.py --threads 0 --n-values 102400 1024000 --sizes 100 1000 \
      --no-compile --out "$OUT/objective-large.json" 2>&1 | tee "$OUT/objective-large.log" ;;
  search)
    python3 bench/search.py --threads 0 --backends torch scipy --scipy-popsize 20 \
      --scipy-maxiter 50 --out-dir "$OUT" 2>&1 | tee "$OUT/search.log" ;;
  network)
    python3 bench/network.py --threads 0 --out-dir "$OUT" 2>&1 | tee "$OUT/network.log" ;;
  *)
    echo "usage: bash bench/gpu_session.sh tests|objective|objective-large|search|network" >&2
    exit 2 ;;
esac
