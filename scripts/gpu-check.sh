#!/usr/bin/env bash
# Checks a CUDA build of runner on a GPU machine, in one go and within a time budget (about
# 7.5 minutes): meant for a machine that has an NVIDIA driver and a PyTorch with CUDA but no
# Rust toolchain and no internet, run from the repository root of a copy of the working tree.
#
#   scripts/gpu-check.sh [BINARY]              # GPU mode; BINARY defaults to target-cuda/runner.xz
#   scripts/gpu-check.sh --dry-run [BINARY]    # CPU mode (also GPU_CHECK_DEVICE=cpu); BINARY
#                                              # defaults to target/release/runner
#
# BINARY may be xz-compressed (*.xz: unpacked into a temporary folder). Steps, each printing
# PASS, FAIL or SKIP; every step runs even when an earlier one failed:
#   a  the binary: found, unpacked, executable
#   b  its libraries: LD_LIBRARY_PATH gets the lib folders of the NVIDIA wheels that PyTorch
#      brings (site-packages/nvidia/*/lib) and the driver's folders; `ldd` must find them all
#   c  the GPU: nvidia-smi, and what PyTorch sees
#   d  runner selftest --device cuda (every space's supernet, CPU kernels vs CUDA; CPU mode:
#      --device portable)
#   e  the quickstart on the GPU, timed (CPU mode: a shortened one), with a Kendall tau in its
#      summary.json
#   f  runner bench --device cuda for nb201 and darts at the study's shape with the PyTorch twins
#      on CUDA (CPU mode: --device cpu at the tiny shape)
#   g  a 2-rank data-parallel smoke, where the machine has 2 GPUs or more (CPU mode: 2 CPU ranks)
# The outputs go to $OUT when set (the device tool brings back the files under it), else to
# ./gpu-check-out: gpu-check.log (every step's full output), summary.txt, quickstart-summary.json,
# bench-nb201.json, bench-darts.json. Exit status 1 when any step failed.
set -u

usage() { sed -n 2,27p "$0"; }

MODE="${GPU_CHECK_DEVICE:-cuda}"
BIN_ARG=""
for a in "$@"; do
  case "$a" in
    --dry-run) MODE=cpu ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu-check.sh: unknown option $a (use --dry-run, or -h)" >&2; exit 2 ;;
    *) BIN_ARG="$a" ;;
  esac
done
case "$MODE" in
  cpu|cuda) ;;
  *) echo "gpu-check.sh: GPU_CHECK_DEVICE must be cpu or cuda, not $MODE" >&2; exit 2 ;;
esac
if [ ! -f experiments/quickstart.toml ] || [ ! -d benchmarks/pytorch ]; then
  echo "gpu-check.sh: run it from the repository root (experiments/quickstart.toml not found in $(pwd))" >&2
  exit 2
fi

# The whole run must end within 8 minutes; the steps share this budget (seconds), each also
# capped by its own limit below, so that one slow step cannot take the others' time.
BUDGET="${GPU_CHECK_BUDGET:-450}"
START=$(date +%s)
OUTDIR="${OUT:-./gpu-check-out}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/gpu-check.log"
: > "$LOG"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
REPO="$(pwd)"
# candle's kernels ship as PTX that the driver compiles at first use; a writable, large enough
# cache lets the later steps (each a new process) reuse what the selftest compiled.
export CUDA_CACHE_PATH="${CUDA_CACHE_PATH:-$WORK/cuda-cache}"
export CUDA_CACHE_MAXSIZE="${CUDA_CACHE_MAXSIZE:-1073741824}"

# Per-step caps (seconds). GPU mode: the selftest includes the driver's first compilation of
# candle's PTX kernels; the quickstart is the full one (10 epochs, 50 architectures scored).
if [ "$MODE" = cuda ]; then
  CAP_SELFTEST=100 CAP_QUICKSTART=150 CAP_BENCH_NB201=75 CAP_BENCH_DARTS=90 CAP_DDP=90
  DEV=cuda SELFTEST_DEVICE=cuda
else
  # Generous: the 2-core development machine is shared, and PyTorch's OpenMP threads slow
  # down many times over when another job holds a core.
  CAP_SELFTEST=60 CAP_QUICKSTART=120 CAP_BENCH_NB201=60 CAP_BENCH_DARTS=60 CAP_DDP=90
  DEV=cpu SELFTEST_DEVICE=portable
fi

NAMES=() RESULTS=() NOTES=() SECS=()
record() { # record NAME PASS|FAIL|SKIP NOTE SECONDS
  NAMES+=("$1") RESULTS+=("$2") NOTES+=("$3") SECS+=("$4")
  printf '%s %s (%s s): %s\n' "$2" "$1" "$4" "$3" | tee -a "$LOG"
}
say() { printf '%s\n' "$*" | tee -a "$LOG"; }
header() { say ""; say "== $*"; }

# run_capped CAP LOGFILE CMD...: runs CMD with its output in LOGFILE (and in gpu-check.log),
# killed (with its children: timeout signals its process group) after min(CAP, what is left of
# the budget). Sets RC (124: timed out, 125: not started, the budget being spent) and ELAPSED.
run_capped() {
  local cap="$1" out="$2" left
  shift 2
  left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt "$cap" ]; then cap="$left"; fi
  if [ "$cap" -lt 5 ]; then
    RC=125 ELAPSED=0 LIMIT=0
    echo "not started: the ${BUDGET} s budget is spent" > "$out"
    return
  fi
  LIMIT="$cap"
  local t0
  t0=$(date +%s)
  timeout -k 10 "$cap" "$@" > "$out" 2>&1
  RC=$?
  ELAPSED=$(( $(date +%s) - t0 ))
  { echo "\$ $*"; cat "$out"; echo "(exit $RC after $ELAPSED s)"; } >> "$LOG"
}

# why_failed LOGFILE: one line for the summary after a non-zero RC.
why_failed() {
  case "$RC" in
    124|137) echo "timed out after $LIMIT s" ;;
    125) echo "not started: the ${BUDGET} s budget is spent" ;;
    *) echo "exit $RC: $(grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-200)" ;;
  esac
}

show_tail() { # show_tail LOGFILE N: the last N lines on stdout (all of it is in gpu-check.log)
  tail -n "$2" "$1" | sed 's/^/    /'
}

say "gpu-check.sh: mode $MODE, budget $BUDGET s, outputs in $OUTDIR"
say "repository: $REPO ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
say "machine: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# ---------------------------------------------------------------------------------------------
header "a) the runner binary"
t0=$(date +%s)
if [ -n "$BIN_ARG" ]; then SRC="$BIN_ARG"
elif [ "$MODE" = cuda ]; then SRC="target-cuda/runner.xz"
else SRC="target/release/runner"
fi
BIN=""
if [ ! -f "$SRC" ]; then
  record "a binary" FAIL "$SRC not found (build: scripts/build-cuda.sh; compress: xz -T0 -9 -c ... > target-cuda/runner.xz; or give the path)" $(( $(date +%s) - t0 ))
else
  case "$SRC" in
    *.xz)
      if xz -d -c "$SRC" > "$WORK/runner" 2>> "$LOG"; then BIN="$WORK/runner"; fi ;;
    *)
      cp "$SRC" "$WORK/runner" && BIN="$WORK/runner" ;;
  esac
  if [ -z "$BIN" ]; then
    record "a binary" FAIL "cannot unpack $SRC" $(( $(date +%s) - t0 ))
  else
    chmod +x "$BIN"
    say "$SRC -> $BIN: $(du -h "$BIN" | cut -f1), sha256 $(sha256sum "$BIN" | cut -c1-16)"
    if head -c 4 "$BIN" | grep -q 'ELF'; then
      record "a binary" PASS "$SRC -> $(du -h "$BIN" | cut -f1) executable" $(( $(date +%s) - t0 ))
    else
      record "a binary" FAIL "$SRC is not an ELF executable" $(( $(date +%s) - t0 ))
      BIN=""
    fi
  fi
fi

# ---------------------------------------------------------------------------------------------
header "b) libraries (LD_LIBRARY_PATH, ldd)"
t0=$(date +%s)
# PyTorch's CUDA comes as NVIDIA wheels (nvidia-cublas, nvidia-cuda-nvrtc, ...), each with a
# lib folder under site-packages/nvidia/ (CUDA 13: nvidia/cu13/lib); runner's CUDA build links
# the same libraries (libcublas.so.13, libnvrtc.so.13, ...). `nvidia` is a namespace package:
# its __path__ lists every site-packages folder that has one.
WHEEL_LIBS="$(python3 - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
for root in list(nvidia.__path__):
    for d in sorted(glob.glob(os.path.join(root, "*", "lib"))):
        print(d)
EOF
)"
LIBDIRS=""
for d in $WHEEL_LIBS /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu; do
  if [ -d "$d" ]; then LIBDIRS="${LIBDIRS:+$LIBDIRS:}$d"; fi
done
export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "NVIDIA wheel lib folders: $(echo "$WHEEL_LIBS" | grep -c . || true)"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if [ -z "$BIN" ]; then
  record "b libraries" SKIP "no binary (step a)" 0
elif ! command -v ldd > /dev/null; then
  record "b libraries" FAIL "ldd not found" 0
else
  ldd "$BIN" > "$WORK/ldd.txt" 2>&1
  { echo "\$ ldd $BIN"; cat "$WORK/ldd.txt"; } >> "$LOG"
  show_tail "$WORK/ldd.txt" 40
  missing="$(grep 'not found' "$WORK/ldd.txt" | awk '{print $1}' | tr '\n' ' ')"
  if [ -n "$missing" ]; then
    record "b libraries" FAIL "not found: $missing(look for them under site-packages/nvidia/*/lib, /usr/local/cuda/lib64)" $(( $(date +%s) - t0 ))
  elif [ "$MODE" = cuda ] && ! grep -q 'libcuda\.so' "$WORK/ldd.txt"; then
    record "b libraries" FAIL "the binary does not link libcuda.so.1: not a CUDA build (scripts/build-cuda.sh makes one)" $(( $(date +%s) - t0 ))
  elif ! "$BIN" --version > "$WORK/version.txt" 2>&1; then
    record "b libraries" FAIL "$BIN --version failed: $(tail -n 1 "$WORK/version.txt")" $(( $(date +%s) - t0 ))
  else
    cuda_libs="$(grep -oE 'lib(cuda|cudart|cublas|cublasLt|curand|nvrtc|nccl)\.so[.0-9]*' "$WORK/ldd.txt" | sort -u | tr '\n' ' ')"
    record "b libraries" PASS "$(cat "$WORK/version.txt"); every library found${cuda_libs:+ (CUDA: $cuda_libs)}" $(( $(date +%s) - t0 ))
  fi
fi

# ---------------------------------------------------------------------------------------------
header "c) the GPU (nvidia-smi, PyTorch)"
t0=$(date +%s)
NGPU=0
TORCH_INFO="$(timeout 60 python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())' 2>&1 | tail -n 1)"
say "python3: $(command -v python3 || echo none); $TORCH_INFO"
if command -v nvidia-smi > /dev/null; then
  timeout 30 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,compute_cap --format=csv > "$WORK/smi.txt" 2>&1
  smi_rc=$?
  if [ "$smi_rc" != 0 ]; then
    # An older nvidia-smi may not know a field; its plain list is enough to count the GPUs.
    timeout 30 nvidia-smi -L > "$WORK/smi.txt" 2>&1
    smi_rc=$?
    NGPU=$(grep -c '^GPU ' "$WORK/smi.txt" || true)
  else
    NGPU=$(grep -cE '^[0-9]+,' "$WORK/smi.txt" || true)
  fi
  tee -a "$LOG" < "$WORK/smi.txt" | sed 's/^/    /'
else
  smi_rc=127
fi
if [ "$MODE" = cpu ]; then
  record "c gpu" SKIP "CPU mode (nvidia-smi: $( [ "$smi_rc" = 127 ] && echo 'not installed' || echo "$NGPU GPU(s)"))" $(( $(date +%s) - t0 ))
elif [ "$smi_rc" = 127 ]; then
  record "c gpu" FAIL "nvidia-smi not found" $(( $(date +%s) - t0 ))
elif [ "$smi_rc" != 0 ]; then
  record "c gpu" FAIL "nvidia-smi failed (exit $smi_rc)" $(( $(date +%s) - t0 ))
elif [ "$NGPU" -lt 1 ]; then
  record "c gpu" FAIL "nvidia-smi lists no GPU" $(( $(date +%s) - t0 ))
else
  record "c gpu" PASS "$NGPU GPU(s): $(grep -m1 -E '^(GPU )?[0-9]' "$WORK/smi.txt" | cut -c1-80); $TORCH_INFO" $(( $(date +%s) - t0 ))
fi

# ---------------------------------------------------------------------------------------------
header "d) runner selftest --device $SELFTEST_DEVICE"
if [ -z "$BIN" ]; then
  record "d selftest" SKIP "no binary (step a)" 0
else
  run_capped "$CAP_SELFTEST" "$WORK/selftest.txt" "$BIN" selftest --device "$SELFTEST_DEVICE"
  grep -E '^(native|[a-z0-9]+ +(ok|FAIL)|selftest)' "$WORK/selftest.txt" | sed 's/^/    /'
  worst="$(grep -E '^[a-z0-9]+ +(ok|FAIL) +worst' "$WORK/selftest.txt" | awk '{printf "%s%s %s %s", (NR > 1 ? "; " : ""), $1, $2, $4}')"
  if [ "$RC" != 0 ]; then
    show_tail "$WORK/selftest.txt" 15
    record "d selftest" FAIL "$(why_failed "$WORK/selftest.txt")" "$ELAPSED"
  elif grep -q 'selftest skipped' "$WORK/selftest.txt"; then
    # runner exits 0 when it cannot reach a device (skipped is not passed).
    record "d selftest" FAIL "$(grep 'selftest skipped' "$WORK/selftest.txt" | head -n 1)" "$ELAPSED"
  elif [ "$(grep -cE '^[a-z0-9]+ +ok +worst' "$WORK/selftest.txt")" -lt 5 ]; then
    record "d selftest" FAIL "fewer than 5 spaces reported ok" "$ELAPSED"
  else
    record "d selftest" PASS "all 5 spaces within tolerance: $worst" "$ELAPSED"
  fi
fi

# ---------------------------------------------------------------------------------------------
header "e) the quickstart on $DEV"
QS_SETS=(--set "device.kind=$DEV" --set "experiment.output=$WORK/results" --fresh)
if [ "$MODE" = cpu ]; then
  # The CPU mode checks the step, not the numbers: 30 steps, 8 architectures.
  QS_SETS+=(--set train.epochs=1 --set train.max_steps=30 --set eval.num_archs=8
            --set eval.num_archs_intermediate=4 --set eval.valid_images=250
            --set eval.bn_recalibration.steps=1)
fi
if [ -z "$BIN" ]; then
  record "e quickstart" SKIP "no binary (step a)" 0
else
  run_capped "$CAP_QUICKSTART" "$WORK/quickstart.txt" "$BIN" experiments/quickstart.toml "${QS_SETS[@]}"
  summary=""
  for f in "$WORK"/results/quickstart-*/summary.json; do
    if [ -f "$f" ]; then summary="$f"; break; fi
  done
  if [ "$RC" != 0 ]; then
    show_tail "$WORK/quickstart.txt" 20
    record "e quickstart" FAIL "$(why_failed "$WORK/quickstart.txt")" "$ELAPSED"
  elif [ -z "$summary" ]; then
    show_tail "$WORK/quickstart.txt" 20
    record "e quickstart" FAIL "no summary.json under $WORK/results" "$ELAPSED"
  else
    cp "$summary" "$OUTDIR/quickstart-summary.json"
    # The final table (runner prints it on stdout after the log lines).
    sed -n '/^run  /,$p' "$WORK/quickstart.txt" | sed 's/^/    /'
    tau="$(python3 -c '
import json, math, sys
e = json.load(open(sys.argv[1])).get("final_eval") or {}
t = e.get("kendall_tau")
ok = isinstance(t, (int, float)) and math.isfinite(t)
print(("kendall tau %.3f, mean accuracy %.3f over %d architectures" % (t, e["mean_accuracy"], e["num_archs"])) if ok else "")
' "$summary" 2>> "$LOG")"
    if [ -n "$tau" ]; then
      record "e quickstart" PASS "$ELAPSED s wall on $DEV; $tau" "$ELAPSED"
    else
      record "e quickstart" FAIL "summary.json has no Kendall tau (final_eval.kendall_tau)" "$ELAPSED"
    fi
  fi
fi

# ---------------------------------------------------------------------------------------------
# f) runner bench for one space: bench SPACE CAP ARGS...
bench() {
  local space="$1" cap="$2"
  shift 2
  header "f) runner bench --device $DEV --space $space $*"
  if [ -z "$BIN" ]; then
    record "f bench $space" SKIP "no binary (step a)" 0
    return
  fi
  local json="$OUTDIR/bench-$space.json"
  rm -f "$json"
  run_capped "$cap" "$WORK/bench-$space.txt" "$BIN" bench --device "$DEV" --space "$space" "$@" --out "$json"
  # The table and its notes, the check; not the shapes and architectures (in the log).
  awk '/^Shapes:/{skip=1} /^Check:/{skip=0} /^bench /{next} !skip' "$WORK/bench-$space.txt" |
    grep -v '^\s*$' | sed 's/^/    /'
  if [ "$RC" != 0 ]; then
    # Progress lines say how far it got (per-round times) when it ran out of time.
    grep -E '^bench ' "$WORK/bench-$space.txt" | tail -n 8 | sed 's/^/    /'
    record "f bench $space" FAIL "$(why_failed "$WORK/bench-$space.txt")" "$ELAPSED"
    return
  fi
  local verdict
  verdict="$(python3 - "$json" "$MODE" <<'EOF' 2>&1
import json, sys
j = json.load(open(sys.argv[1]))
mode = sys.argv[2]
rows = j["rows"]
bad = [r["space"] + " " + r["what"] for r in rows if not r.get("runner_ms")]
if bad:
    print("FAIL no runner time for " + ", ".join(bad))
elif j.get("pytorch") is None and mode == "cuda":
    print("FAIL PyTorch not compared: %s" % j.get("no_pytorch_reason"))
else:
    parts = []
    for r in rows:
        ratio = r.get("pytorch_over_runner")
        gpu = r.get("pytorch_gpu_peak_mib")
        parts.append("%s %s %.1f ms%s%s" % (
            r["shape"], r["what"], r["runner_ms"],
            "" if ratio is None else " (PyTorch/runner %.2f)" % ratio,
            "" if gpu is None else " PyTorch GPU %.0f MiB" % gpu))
    checks = ["check " + ("agree" if c["ok"] else "DISAGREE") for c in j.get("checks", [])]
    if j.get("pytorch") is None:
        checks.append("PyTorch not compared: %s" % j.get("no_pytorch_reason"))
    print("PASS " + "; ".join(parts + checks))
EOF
)"
  case "$verdict" in
    PASS*) record "f bench $space" PASS "${verdict#PASS }" "$ELAPSED" ;;
    *) record "f bench $space" FAIL "${verdict#FAIL }" "$ELAPSED" ;;
  esac
}
if [ "$MODE" = cuda ]; then
  bench nb201 "$CAP_BENCH_NB201" --shape study --rounds 2 --repeats 3 --warmup 2
  # DARTS's study shape (C=36, 20 cells, batch 112) is the heaviest; one round.
  bench darts "$CAP_BENCH_DARTS" --shape study --rounds 1 --repeats 2 --warmup 1
else
  # One thread: with two, PyTorch's OpenMP threads spin-wait for a core that another job holds
  # (seen here: the darts row took over 90 s instead of 9 on the loaded 2-core machine).
  bench nb201 "$CAP_BENCH_NB201" --shape tiny --rounds 1 --repeats 2 --warmup 1 --threads 1
  bench darts "$CAP_BENCH_DARTS" --shape tiny --rounds 1 --repeats 2 --warmup 1 --threads 1
fi

# ---------------------------------------------------------------------------------------------
header "g) data parallel, 2 ranks on $DEV"
if [ -z "$BIN" ]; then
  record "g data parallel" SKIP "no binary (step a)" 0
elif [ "$MODE" = cuda ] && [ "$NGPU" -lt 2 ]; then
  record "g data parallel" SKIP "this machine has $NGPU GPU(s); 2 ranks need 2 (the CPU mode runs 2 CPU ranks)" 0
else
  run_capped "$CAP_DDP" "$WORK/ddp.txt" "$BIN" experiments/tiny/nb201_ddp.toml \
    --set "device.kind=$DEV" --set device.gpus=2 --set "experiment.output=$WORK/ddp" --fresh \
    --set train.epochs=1 --set train.max_steps=20 --set eval.num_archs=4 --set eval.num_archs_intermediate=4
  run_dir=""
  for d in "$WORK"/ddp/tiny-nb201-ddp-*; do
    if [ -d "$d" ]; then run_dir="$d"; break; fi
  done
  if [ "$RC" != 0 ]; then
    show_tail "$WORK/ddp.txt" 15
    record "g data parallel" FAIL "$(why_failed "$WORK/ddp.txt")" "$ELAPSED"
  elif [ -z "$run_dir" ] || [ ! -f "$run_dir/summary.json" ] || [ ! -f "$run_dir/run.rank1.log" ]; then
    record "g data parallel" FAIL "no summary.json or no rank 1 log in ${run_dir:-$WORK/ddp}" "$ELAPSED"
  else
    sed -n '/^run  /,$p' "$WORK/ddp.txt" | sed 's/^/    /'
    record "g data parallel" PASS "2 ranks on $DEV finished; summary.json and run.rank1.log written" "$ELAPSED"
  fi
fi

# ---------------------------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - START ))
FAILED=0
{
  echo "gpu-check.sh summary: mode $MODE, $TOTAL s in all (budget $BUDGET s)"
  for i in "${!NAMES[@]}"; do
    printf '%-4s %-16s %4s s  %s\n' "${RESULTS[$i]}" "${NAMES[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
    if [ "${RESULTS[$i]}" = FAIL ]; then FAILED=$((FAILED + 1)); fi
  done
  if [ "$FAILED" -gt 0 ]; then echo "$FAILED step(s) FAILED"; else echo "no step failed"; fi
} > "$OUTDIR/summary.txt"
echo "================================================================"
tee -a "$LOG" < "$OUTDIR/summary.txt"
[ "$FAILED" -eq 0 ]
