#!/usr/bin/env bash
# The serving path of the embedded minmo-small on one CUDA GPU: per-module latency
# (`minmo bench modules --device cuda`), then end of speech -> first audio with real-time
# clients at 1, 2, 4 and 8 concurrent sessions (`minmo bench serve --device cuda`; the
# clients keep their microphones open, as a browser does). Needs the install of the
# repository (`bash scripts/install.sh`) or PYTHON pointing at an interpreter with minmo.
# The log goes to ${1:-.}/serving_gpu.log and the serve figures to serving_gpu.json.
#   bash benchmarks/gpu_serving.sh /tmp/out        (from the repository root)
set -u
out=${1:-.}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
run() {  # run TIMEOUT ARGS...
  local limit=$1; shift
  echo "== $(date +%T) minmo $*"
  timeout "$limit" $py -m minmo.cli.main "$@" 2>&1 | tee -a "$out/serving_gpu.log" | tail -n 30
  [ "${PIPESTATUS[0]}" = 0 ] || echo "!! failed or timed out: minmo $*"
}
run 240 bench modules --model minmo-small --device cuda --threads 4
run 420 bench serve --model minmo-small --device cuda --threads 4 --levels 1,2,4,8 \
  --rounds 2 --json "$out/serving_gpu.json"
