# Sourced by the benchmarks/gpu_*.sh scripts: the output folder (their $1, default .), the
# interpreter ($PYTHON, default python3), the source tree on PYTHONPATH, the GPU and torch
# build printed, and run_logged.
set -u
out=${1:-.}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

run_logged() {  # run_logged LOG TIMEOUT COMMAND...: all output appended to LOG, its tail shown
  local log=$1 limit=$2; shift 2
  echo "== $(date +%T) $*"
  timeout "$limit" "$@" 2>&1 | tee -a "$log" | grep -v '^{' | tail -n 25
  [ "${PIPESTATUS[0]}" = 0 ] || echo "!! failed or timed out: $*"
}
