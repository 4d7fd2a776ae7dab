#!/usr/bin/env bash
# Installs PyTorch (CPU) for `runner bench`'s comparison with the PyTorch twins in
# benchmarks/pytorch/. Never needed by the tests or by training.
#
#   scripts/install-pytorch.sh           # Debian/Ubuntu: apt-get install python3-torch python3-numpy
#                                        # elsewhere: a virtual environment with the CPU wheel
#   scripts/install-pytorch.sh --venv    # always the virtual environment (.venv-bench by default)
#   VENV=/path scripts/install-pytorch.sh --venv
#
# Then: runner bench --space all --shape both --python <the python it prints>
# (or RUNNER_BENCH_PYTHON=<that python> runner bench ...).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$here/.venv-bench}"
mode="auto"
case "${1:-}" in
  --venv) mode="venv" ;;
  --apt) mode="apt" ;;
  "") ;;
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--venv|--apt]" >&2; exit 2 ;;
esac

has_torch() { "$1" -c 'import torch, numpy' >/dev/null 2>&1; }

if [[ "$mode" == "auto" ]]; then
  for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null && has_torch "$py"; then
      echo "PyTorch is already importable by $py ($("$py" -c 'import torch; print(torch.__version__)'))"
      echo "run: runner bench --python $(command -v "$py")"
      exit 0
    fi
  done
  if command -v apt-get >/dev/null && [[ -r /etc/debian_version ]]; then
    mode="apt"
  else
    mode="venv"
  fi
fi

sudo_cmd=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then sudo_cmd=(sudo); fi

if [[ "$mode" == "apt" ]]; then
  # Debian's python3-torch (CPU build, Debian 12 and later, Ubuntu 23.04 and later).
  "${sudo_cmd[@]}" apt-get update
  if "${sudo_cmd[@]}" apt-get install -y python3-torch python3-numpy && has_torch /usr/bin/python3; then
    echo "run: runner bench --python /usr/bin/python3"
    exit 0
  fi
  echo "python3-torch is not available here; falling back to a virtual environment" >&2
fi

# The CPU wheel (no CUDA libraries) in a virtual environment: PyTorch's CPU index by default,
# numpy from PyPI; TORCH_INDEX_URL=https://pypi.org/simple takes PyPI's default wheel instead.
index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
python3 -m venv "$venv"
"$venv/bin/pip" install --upgrade pip
"$venv/bin/pip" install numpy
"$venv/bin/pip" install torch --index-url "$index"
has_torch "$venv/bin/python"
echo "run: runner bench --python $venv/bin/python"
