#!/usr/bin/env bash
# The serving path of the embedded minmo-small on one CUDA GPU: per-module latency
# (`minmo bench modules --device cuda`), then end of speech -> first audio with real-time
# clients at 1, 2, 4 and 8 concurrent sessions (`minmo bench serve --device cuda`; the
# clients keep their microphones open, as a browser does). Needs the install of the
# repository (`bash scripts/install.sh`) or PYTHON pointing at an interpreter with minmo.
# The log goes to ${1:-.}/serving_gpu.log and the serve figures to serving_gpu.json.
#   bash benchmarks/gpu_serving.sh /tmp/out        (from the repository root)
source "$(dirname "$0")/gpu_common.sh"
run() {  # run TIMEOUT ARGS...
  run_logged "$out/serving_gpu.log" "$1" $py -m minmo.cli.main "${@:2}"
}
if $py -c "import pytest" 2>/dev/null; then  # the GPU-only tests first (seconds)
  run_logged "$out/serving_gpu.log" 240 $py -m pytest -q -p no:cacheprovider \
    tests/test_cuda_serving.py tests/test_cuda_graphs.py
fi
run 240 bench modules --model minmo-small --device cuda --threads 4
run 420 bench serve --model minmo-small --device cuda --threads 4 --levels 1,2,4,8 \
  --rounds 2 --json "$out/serving_gpu.json"
