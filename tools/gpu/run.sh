#!/bin/sh
# run.sh LOGDIR: the libmel GPU check, from the bundle made by
# `make gpu-bundle` (tools/gpu/bundle.sh; doc/gpu-check.md).
#
# Steps, each under its own timeout (475 s in all, within 8 minutes), each
# logged to LOGDIR/STEP.log, one line per step in LOGDIR/summary.txt:
#   gpus       nvidia-smi -L                                      10 s
#   smoke      cuda.t, MEL_CUDA_TEST_SMOKE=1 (ce, two small shapes,
#              the caller-stream cases)                           45 s
#   cuda-test  cuda.t, every case                                200 s
#   bench      bench_cuda 16384 4096 128000 bf16: naive,
#              recompute, fused (exact and fast16 precision)     120 s
#   memcheck   compute-sanitizer --tool memcheck, MEL_CUDA_TEST_SMOKE=tiny  50 s
#   synccheck  compute-sanitizer --tool synccheck, the same      50 s
# With no usable CUDA device (no driver, no GPU) it stops after the smoke
# step with "run.sh: SKIP: no CUDA device (...)" and exit status 0.
# Exit status otherwise: 0 when every step passed, 1 when one failed.
# Environment: BENCH_ARGS (default "16384 4096 128000 bf16 4096 3"),
# SANITIZER (path of compute-sanitizer; default: PATH, then
# /usr/local/cuda/bin and /usr/local/cuda/compute-sanitizer).
set -u
here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 LOGDIR" >&2; exit 2; }
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
sum=$out/summary.txt
: >"$sum"
LD_LIBRARY_PATH=$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
bench_args=${BENCH_ARGS:-16384 4096 128000 bf16 4096 3}
status=0
say() { echo "$*" | tee -a "$sum"; }
# step NAME SECONDS COMMAND...: run it under timeout, log to LOGDIR/NAME.log
step() {
  name=$1 secs=$2
  shift 2
  t0=$(date +%s)
  timeout -k 5 "$secs" "$@" >"$out/$name.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) say "$name: ok in $dt s" ;;
    124|137) say "$name: TIMED OUT after $secs s (log $out/$name.log)"; status=1 ;;
    *) say "$name: FAILED (exit $rc) in $dt s (log $out/$name.log)"; status=1 ;;
  esac
  return $rc
}
tap_counts() { # the TAP totals of a log
  echo "$(grep -c '^ok' "$1") ok, $(grep -c '^not ok' "$1") not ok, $(grep -c '# SKIP' "$1") skipped"
}

say "run.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -n); bundle: $(sed -n 2p "$here/BUILD.txt" 2>/dev/null)"
# libraries: everything the programs need must resolve (cuBLAS comes from the machine)
if ldd "$here/cuda.t" "$here/bench_cuda" 2>&1 | grep -q "not found"; then
  ldd "$here/cuda.t" "$here/bench_cuda" >"$out/ldd.log" 2>&1
  say "run.sh: missing shared libraries: $(grep 'not found' "$out/ldd.log" | awk '{print $1}' | sort -u | tr '\n' ' ')"
  say "run.sh: the bundle needs cuBLAS of the CUDA major version it was built with ($here/BUILD.txt); add its lib64 to LD_LIBRARY_PATH"
  exit 1
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  step gpus 10 nvidia-smi -L
  cat "$out/gpus.log" | tee -a "$sum"
else
  say "gpus: nvidia-smi not found"
fi

MEL_CUDA_TEST_SMOKE=1 step smoke 45 "$here/cuda.t"
if grep -q '^1\.\.0 # SKIP' "$out/smoke.log"; then
  say "run.sh: SKIP: $(sed -n 's/^1\.\.0 # SKIP //p' "$out/smoke.log")"
  say "run.sh: nothing else to run without a CUDA device"
  exit 0
fi
say "smoke: $(tap_counts "$out/smoke.log")"

step cuda-test 200 "$here/cuda.t"
say "cuda-test: $(tap_counts "$out/cuda-test.log")"
grep '^not ok' "$out/cuda-test.log" | head -20 | tee -a "$sum"

# shellcheck disable=SC2086
step bench 120 "$here/bench_cuda" $bench_args exact,fast16
grep -v '^#' "$out/bench.log" | tee -a "$sum"

san=${SANITIZER:-}
if [ -z "$san" ]; then
  for c in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -n "$c" ] && [ -x "$c" ]; then san=$c; break; fi
  done
fi
if [ -n "$san" ]; then
  for tool in memcheck synccheck; do
    MEL_CUDA_TEST_SMOKE=tiny step "$tool" 50 "$san" --tool "$tool" --error-exitcode 3 "$here/cuda.t"
    say "$tool: $(grep -E 'ERROR SUMMARY' "$out/$tool.log" | tail -1)"
  done
else
  say "memcheck, synccheck: compute-sanitizer not found (set SANITIZER)"
  status=1
fi

say "run.sh: $([ $status = 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED'); logs in $out"
exit $status
