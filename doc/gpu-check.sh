#!/bin/sh
# doc/gpu-check.sh: check the CUDA backend on a machine with a GPU, in one go.
#
#   sh doc/gpu-check.sh [OUTDIR]
#
# 1. bootstrap, configure --with-cuda, build (in the source tree);
# 2. t/cuda.t alone (every transform and primitive, GPU against the CPU
#    backend), then the whole `make check`;
# 3. examples/bench_cuda on the seed configuration: N = 4·4096 rows,
#    D = 4096, V = 128000, bf16; naive vs recompute vs fused, time by CUDA
#    events, libmel's peak workspace and the device's peak memory.
#
# Environment: CUDA_PREFIX (default /usr/local/cuda), CUDA_ARCH (nvcc
# targets, default "80 90"), BENCH_ARGS (default "16384 4096 128000 bf16
# 4096 3": N D V dtype workspace-MiB repeats), JOBS (default: all CPUs).
# Everything is logged under OUTDIR (default $TMPDIR/mel-gpu-check); the summary
# is OUTDIR/summary.txt.  Exit status: 0 when every step passed.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${TMPDIR:-/tmp}/mel-gpu-check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
sum=$out/summary.txt
: >"$sum"
prefix=${CUDA_PREFIX:-/usr/local/cuda}
arch=${CUDA_ARCH:-80 90}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 4)}
bench_args=${BENCH_ARGS:-16384 4096 128000 bf16 4096 3}
status=0
say() { echo "$*" | tee -a "$sum"; }
step() { # step NAME SECONDS COMMAND...: run, log to OUTDIR/NAME.log, record the result
  name=$1 secs=$2
  shift 2
  t0=$(date +%s)
  timeout "$secs" "$@" >"$out/$name.log" 2>&1
  rc=$?
  say "$name: $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)") in $(( $(date +%s) - t0 )) s; log $out/$name.log"
  [ $rc = 0 ] || status=1
  return $rc
}

cd "$top" || exit 1
say "gpu-check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git') in $top"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/nvidia-smi.txt" 2>&1 &&
  say "GPU: $(cat "$out/nvidia-smi.txt")" || say "nvidia-smi: not available"
"$prefix/bin/nvcc" --version 2>/dev/null | tail -1 | sed 's/^/nvcc: /' | tee -a "$sum"

step bootstrap 300 ./bootstrap &&
step configure 300 ./configure --with-cuda="$prefix" --with-cuda-arch="$arch" --disable-static &&
step build 900 make -j"$jobs" || { say "build failed: see the logs"; exit 1; }

# the GPU-vs-CPU comparison first (it is what a GPU machine is for)
step cuda-test 900 make -j"$jobs" check TESTS=t/cuda.t
cp t/cuda.log "$out/t-cuda.log" 2>/dev/null
grep -E "^(not ok|# )" t/cuda.log 2>/dev/null | head -40 | tee -a "$sum"
grep -q "^1\.\.0 # SKIP" t/cuda.log 2>/dev/null && { say "t/cuda.t SKIPPED: no usable CUDA device"; status=1; }
say "t/cuda.t: $(grep -c '^ok' t/cuda.log 2>/dev/null) ok, $(grep -c '^not ok' t/cuda.log 2>/dev/null) not ok"

# the whole suite
step make-check 1200 make -j"$jobs" check
grep -E "^# (TOTAL|PASS|SKIP|FAIL|ERROR)" "$out/make-check.log" | tee -a "$sum"
cp test-suite.log "$out/test-suite.log" 2>/dev/null

# the seed-configuration benchmark
# shellcheck disable=SC2086
step bench 900 ./examples/bench_cuda $bench_args
cat "$out/bench.log" >>"$sum"

say "gpu-check: $([ $status = 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED')"
exit $status
