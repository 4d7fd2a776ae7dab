#!/usr/bin/env bash
# Builds and runs the oneDNN convolution benchmark (route (a) of runner's CPU engine choice):
#   apt-get install -y libdnnl-dev g++ && benchmarks/onednn/run.sh [threads]
# Compare with `cargo test --release --lib bench_conv -- --ignored --nocapture` (runner's own
# kernels, same shapes) and tests/fixtures/bench_conv_torch.py (PyTorch).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
threads="${1:-2}"
out="${TMPDIR:-/tmp}/runner-onednn-conv-bench"
g++ -O2 -std=c++17 -o "$out" "$here/conv_bench.cpp" -ldnnl
OMP_NUM_THREADS="$threads" "$out" "$threads"
