#!/usr/bin/env bash
# Every GPU measurement of the project as ONE script, for ONE call of the device tool: a session
# that is lent a GPU has 15 minutes of device time in all (the machine's start included) and at
# most 10 minutes per command, so the whole script is budgeted to GPU_SESSION_BUDGET_S seconds
# (default 540) and each step to its own cap. Run from the repository root:
#
#   run(command="bash bench/gpu_session.sh", timeout_s=600)    # on the lent GPU machine
#   bash bench/gpu_session.sh --dry-run                        # the same steps on the CPU, tiny
#   bash bench/gpu_session.sh [--dry-run] objective search     # some of the steps only
#
# Steps, in this order (a step that no longer fits the time left is skipped, and said so):
#   tests      the CUDA tests: those marked or named cuda, and the Triton kernel's tests
#   objective  bench/objective.py on CUDA: the torch path against the Triton kernel, P = 100 ..
#              16,000, N = 10,240, 102,400 and 1,024,000 (P x N <= 1.1e9), both physics
#              (the kernel: device physics), with torch.profiler's top ops
#   search     bench/search.py: one layer at the reference's default budget (popsize 100 x D,
#              200 generations, polish and 100-programming validation), torch backend
#   network    bench/network.py: the BERT-base-shaped network (73 layers), per layer, the same
#              default budget
#   ray        bench/distributed.py: 2 GPUs against 1 through Ray (only with >= 2 GPUs and ray)
#
# Logs and JSON go to $OUT (the device tool brings that folder back): commit the JSON under
# bench/results/ and the figures in docs/RESULTS.md ("Speed"). session.txt lists every step with
# its exit status and seconds. The GPU machine has no network and no evotorch: gpuwpo runs from
# the checkout (PYTHONPATH); the toolkit (aihwkit) is not timed there (bench/objective.py and
# bench/search.py time it on the CPU).
#
# --dry-run runs the same steps, with the same scripts and flags where they matter, on the CPU
# (CUDA hidden) at tiny sizes, in about a minute: what tests/test_bench_gpu_session.py runs.
set -uo pipefail

dry=0
steps=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    tests|objective|search|network|ray) steps+=("$arg") ;;
    -h|--help)
      sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *)
      echo "gpu_session.sh: error: unknown step or option '$arg' (steps: tests objective" \
           "search network ray; option: --dry-run)" >&2
      exit 2 ;;
  esac
done
[ ${#steps[@]} -eq 0 ] && steps=(tests objective search network ray)

cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpuwpo-out}
mkdir -p "$OUT"
budget=${GPU_SESSION_BUDGET_S:-540}
PY=${PYTHON:-python3}
start=$SECONDS
: > "$OUT/session.txt"

if [ "$dry" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  echo "dry run: the GPU steps on the CPU at tiny sizes" | tee -a "$OUT/session.txt"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'gpus', torch.cuda.device_count())" | tee -a "$OUT/session.txt"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null \
  | tee -a "$OUT/session.txt"

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
have_ray=$("$PY" -c "import ray" >/dev/null 2>&1 && echo 1 || echo 0)

# step NAME CAP_S MIN_S COMMAND...: run COMMAND with at most CAP_S seconds (less if less is
# left), skip it when fewer than MIN_S seconds are left; log to $OUT/NAME.log.
step() {
  local name=$1 cap=$2 need=$3
  shift 3
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -lt "$need" ]; then
    echo "$name: skipped ($left s left, needs $need)" | tee -a "$OUT/session.txt"
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== $name (cap ${cap} s): $*" | tee -a "$OUT/session.txt"
  local t0=$SECONDS
  timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/session.txt"
}

for s in "${steps[@]}"; do
  case "$s" in
    tests)
      if [ "$dry" = 1 ]; then
        step tests 120 20 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda
      else
        step tests 90 30 "$PY" -m pytest -q -rs -p no:cacheprovider -k "cuda or kernel"
      fi ;;
    objective)
      if [ "$dry" = 1 ]; then
        step objective 120 20 "$PY" bench/objective.py --devices cpu --no-compile \
          --sizes 4 9 --n-values 40 80 --out-features 2 --rounds 1 --ref-candidates 1 \
          --toolkit-candidates 0 --roofline-sizes 1024 --roofline-threads 1 --profile \
          --out "$OUT/objective.json"
      else
        step objective 140 60 "$PY" bench/objective.py --devices cuda --threads 0 \
          --sizes 100 1000 4000 16000 --n-values 10240 102400 1024000 \
          --toolkit-candidates 0 --no-roofline --ref-candidates 2 --profile \
          --out "$OUT/objective.json"
      fi ;;
    search)
      if [ "$dry" = 1 ]; then
        step search 90 15 "$PY" bench/search.py --quick --backends torch --toolkit off \
          --out-dir "$OUT"
      else
        step search 60 30 "$PY" bench/search.py --backends torch --threads 0 --toolkit off \
          --out-dir "$OUT"
      fi ;;
    network)
      # What is left, less a minute for Ray when it will run.
      reserve=0
      if [ "$gpus" -ge 2 ] && [ "$have_ray" = 1 ] && [[ " ${steps[*]} " == *" ray "* ]]; then
        reserve=60
      fi
      cap=$((budget - (SECONDS - start) - reserve))
      if [ "$dry" = 1 ]; then
        step network "$cap" 15 "$PY" bench/network.py --quick --toolkit off --out-dir "$OUT"
      else
        step network "$cap" 120 "$PY" bench/network.py --threads 0 --toolkit off \
          --out-dir "$OUT"
      fi ;;
    ray)
      if [ "$have_ray" != 1 ]; then
        echo "ray: skipped (ray is not installed)" | tee -a "$OUT/session.txt"
      elif [ "$dry" = 1 ]; then
        step ray 120 30 "$PY" bench/distributed.py --quick --workers 1 --out-dir "$OUT"
      elif [ "$gpus" -ge 2 ]; then
        step ray 60 40 "$PY" bench/distributed.py --gpus-per-worker 1 --workers 1 2 \
          --out-dir "$OUT"
      else
        echo "ray: skipped (one GPU: nothing to shard over)" | tee -a "$OUT/session.txt"
      fi ;;
  esac
done
echo "session: $((SECONDS - start)) s of a $budget-s budget" | tee -a "$OUT/session.txt"
# Exit status: 1 when any step failed or timed out, so that a caller sees it at once.
! grep -Eq ': exit [1-9]' "$OUT/session.txt"
