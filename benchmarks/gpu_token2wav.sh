#!/usr/bin/env bash
# Full-shape (CosyVoice 2) streaming token2wav on one CUDA GPU, every speed setting in turn:
# eager fp32, eager TF32, CUDA graphs (TF32, bf16 autocast, 5 Euler steps); COMPILE=1 adds
# CUDA graphs + torch.compile of each estimator block (`--compile blocks`; compiling the
# whole estimator took > 4 min on an H200: COMPILE=estimator runs that instead).
# The log and one JSON line per setting go to ${1:-.}/token2wav_gpu.{log,jsonl}.
#   bash benchmarks/gpu_token2wav.sh /tmp/out        (from the repository root)
source "$(dirname "$0")/gpu_common.sh"
run() {  # run TIMEOUT ARGS...
  run_logged "$out/token2wav_gpu.log" "$1" $py benchmarks/bench_token2wav.py --model minmo-7b \
    --device cuda "${@:2}"
}
run 150 --repeats 5 --tf32 --cuda-graphs --verify
run 150 --repeats 5 --tf32 --cuda-graphs --steps 5 --verify
run 120 --repeats 3 --tf32
run 150 --repeats 5 --dtype bf16 --cuda-graphs --verify
run 120 --repeats 3
case "${COMPILE:-0}" in
  1) run 400 --repeats 5 --tf32 --cuda-graphs --compile blocks --verify ;;
  estimator) run 600 --repeats 5 --tf32 --cuda-graphs --compile estimator --verify ;;
esac
grep '^{' "$out/token2wav_gpu.log" > "$out/token2wav_gpu.jsonl"
cat "$out/token2wav_gpu.jsonl"
