#!/bin/sh
# run.sh LOGDIR: the libmel GPU check, from the bundle made by
# `make gpu-bundle` (tools/gpu/bundle.sh; doc/gpu-check.md).
#
# The whole run ends within 8 minutes: each step runs under its own
# timeout, cut to what is left of RUN_SECONDS (default 465 s, so that with
# the kill grace and the checks before the first step it stays under 480 s).
# Each step is logged to LOGDIR/STEP.log, one line per step in
# LOGDIR/summary.txt:
#   gpus       nvidia-smi -L, and the driver version              10 s
#   smoke      cuda.t, MEL_CUDA_TEST_SMOKE=1 (ce, two small shapes,
#              the caller-stream cases)                           30 s
#   cuda-test  cuda.t, every case                                240 s
#   bench      bench_cuda 16384 4096 128000 bf16: naive,
#              recompute, fused (exact and fast16 precision)      80 s
#   memcheck   compute-sanitizer --tool memcheck, MEL_CUDA_TEST_SMOKE=tiny  45 s
#   synccheck  compute-sanitizer --tool synccheck, the same      40 s
# (the limits: doc/gpu-check.md, "Step limits").
#
# Libraries: everything but cuBLAS comes with the bundle (lib/; checked
# again here by libcheck.sh).  cuBLAS (libcublas.so.N, libcublasLt.so.N of
# the CUDA major version the bundle was built with) is searched for when
# the loader does not find it: CUBLAS_DIR, $CUDA_HOME/lib64,
# $CUDA_PATH/lib64, /usr/local/cuda/lib64, /usr/local/cuda-*/lib64 (newest
# first), the targets/*/lib folders of those, /usr/lib/x86_64-linux-gnu,
# /usr/lib64, the pip wheels' site-packages/nvidia/cublas/lib (system,
# /usr/local, ~/.local, conda) and `ldconfig -p`; the folder found is
# added to LD_LIBRARY_PATH, else the run stops naming what it searched.
#
# No usable CUDA device: when `nvidia-smi -L` lists no GPU (or there is
# no nvidia-smi) the run stops after the smoke step with "run.sh: SKIP: no
# CUDA device (...)" and exit status 0 (what it does on a machine without
# a GPU).  When nvidia-smi lists a GPU, the same skip is a FAILURE (a
# driver / runtime mismatch, a missing device node, ...), exit status 1.
#
# compute-sanitizer: when it is not found, or it cannot run here (it
# starts nothing: no ERROR SUMMARY and no test output in its log), the two
# sanitizer steps are reported as skipped with the reason; they do not
# fail the run.
#
# Exit status otherwise: 0 when every step passed, 1 when one failed.
# Environment: BENCH_ARGS (default "16384 4096 128000 bf16 4096 3"),
# SANITIZER (path of compute-sanitizer; default: PATH, then
# /usr/local/cuda/bin and /usr/local/cuda/compute-sanitizer), CUBLAS_DIR,
# RUN_SECONDS.
set -u
here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 LOGDIR" >&2; exit 2; }
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
sum=$out/summary.txt
: >"$sum"
t_start=$(date +%s)
run_seconds=${RUN_SECONDS:-465}
LD_LIBRARY_PATH=$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
bench_args=${BENCH_ARGS:-16384 4096 128000 bf16 4096 3}
status=0
say() { echo "$*" | tee -a "$sum"; }
# step NAME SECONDS COMMAND...: run it under timeout (cut to what is left
# of the run's RUN_SECONDS), log to LOGDIR/NAME.log
step() {
  name=$1 secs=$2
  shift 2
  left=$((t_start + run_seconds - $(date +%s)))
  if [ "$left" -lt 5 ]; then
    say "$name: NOT RUN: the run's $run_seconds s are spent"
    status=1
    return 125
  fi
  [ "$left" -lt "$secs" ] && secs=$left
  t0=$(date +%s)
  timeout -k 3 "$secs" "$@" >"$out/$name.log" 2>&1
  rc=$?
  dt=$(($(date +%s) - t0))
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

# ---- libraries
# the sonames the loader does not find
unresolved() { ldd "$here/cuda.t" "$here/bench_cuda" 2>/dev/null | awk '/=> not found/ { print $1 }' | sort -u; }
missing=$(unresolved)
if [ -n "$missing" ]; then
  # cuBLAS / cudart of the machine: search the usual places
  for so in $missing; do
    case $so in libcublas*|libcudart*) ;; *) continue ;; esac
    found=
    for d in ${CUBLAS_DIR:-} ${CUDA_HOME:+$CUDA_HOME/lib64} ${CUDA_PATH:+$CUDA_PATH/lib64} /usr/local/cuda/lib64 \
             $(ls -d /usr/local/cuda-*/lib64 2>/dev/null | sort -r -V) \
             $(ls -d /usr/local/cuda/targets/*/lib /usr/local/cuda-*/targets/*/lib 2>/dev/null | sort -r -V) \
             /usr/lib/x86_64-linux-gnu /usr/lib64 \
             $(ls -d /usr/lib/python3*/*-packages/nvidia/cublas/lib /usr/local/lib/python3*/*-packages/nvidia/cublas/lib \
                     "$HOME"/.local/lib/python3*/site-packages/nvidia/cublas/lib /opt/conda/lib \
                     /opt/conda/lib/python3*/site-packages/nvidia/cublas/lib 2>/dev/null); do
      if [ -e "$d/$so" ]; then found=$d; break; fi
    done
    if [ -z "$found" ] && command -v ldconfig >/dev/null 2>&1; then
      f=$(ldconfig -p 2>/dev/null | awk -v so="$so" '$1 == so { print $NF; exit }')
      [ -n "$f" ] && found=$(dirname "$f")
    fi
    if [ -n "$found" ]; then
      say "run.sh: $so found in $found (added to LD_LIBRARY_PATH)"
      case ":$LD_LIBRARY_PATH:" in *":$found:"*) ;; *) LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$found ;; esac
    fi
  done
  export LD_LIBRARY_PATH
  missing=$(unresolved)
fi
if [ -n "$missing" ]; then
  ldd "$here/cuda.t" "$here/bench_cuda" >"$out/ldd.log" 2>&1
  say "run.sh: missing shared libraries: $(echo $missing)"
  other=$( (ls /usr/local/cuda*/lib64/libcublas.so.* /usr/lib/x86_64-linux-gnu/libcublas.so.* 2>/dev/null;
            ldconfig -p 2>/dev/null | awk '$1 ~ /^libcublas\.so\./ { print $NF }') | sort -u | tr '\n' ' ')
  say "run.sh: searched CUBLAS_DIR, \$CUDA_HOME/lib64, \$CUDA_PATH/lib64, /usr/local/cuda*/lib64, /usr/lib/x86_64-linux-gnu, /usr/lib64, pip's nvidia/cublas/lib, conda, ldconfig -p"
  [ -n "$other" ] && say "run.sh: cuBLAS of another version is here: $other"
  say "run.sh: the bundle needs cuBLAS of the CUDA major version it was built with ($(sed -n 's/^nvcc: //p' "$here/BUILD.txt" 2>/dev/null)); set CUBLAS_DIR to its folder, or rebuild the bundle with CUDA_PREFIX set to this machine's toolkit"
  exit 1
fi
# the rest must come from the bundle (the build checked it; a copied
# bundle missing lib/ would otherwise pick up whatever this machine has)
if [ -f "$here/libcheck.sh" ] && ! sh "$here/libcheck.sh" check "$here/lib" "$here/cuda.t" "$here/bench_cuda" $(ls "$here"/lib/libmel-cuda.so 2>/dev/null) >"$out/libcheck.log" 2>&1; then
  say "run.sh: libraries outside the bundle: $(cut -d' ' -f1 "$out/libcheck.log" | tr '\n' ' ')(log $out/libcheck.log)"
  exit 1
fi

# ---- the GPUs nvidia-smi lists
ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  step gpus 10 sh -c 'nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | sed "s/^/driver: /"'
  tee -a "$sum" <"$out/gpus.log"
  ngpu=$(grep -c '^GPU [0-9]' "$out/gpus.log")
else
  say "gpus: nvidia-smi not found"
fi

MEL_CUDA_TEST_SMOKE=1 step smoke 30 "$here/cuda.t"
if grep -q '^1\.\.0 # SKIP' "$out/smoke.log"; then
  why=$(sed -n 's/^1\.\.0 # SKIP //p' "$out/smoke.log")
  if [ "$ngpu" -gt 0 ]; then
    say "run.sh: FAILED: cuda.t skipped ($why) but nvidia-smi lists $ngpu GPU(s): the device is there and libmel cannot use it (driver older than the CUDA runtime of the bundle? see BUILD.txt)"
    exit 1
  fi
  say "run.sh: SKIP: $why"
  say "run.sh: nothing else to run without a CUDA device"
  exit 0
fi
say "smoke: $(tap_counts "$out/smoke.log")"

step cuda-test 240 "$here/cuda.t"
say "cuda-test: $(tap_counts "$out/cuda-test.log")"
grep '^# counts' "$out/cuda-test.log" | tee -a "$sum"
grep '^not ok' "$out/cuda-test.log" | head -20 | tee -a "$sum"

# shellcheck disable=SC2086
step bench 80 "$here/bench_cuda" $bench_args exact,fast16
grep -v '^#' "$out/bench.log" | tee -a "$sum"

san=${SANITIZER:-}
if [ -z "$san" ]; then
  for c in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -n "$c" ] && [ -x "$c" ]; then san=$c; break; fi
  done
fi
if [ -z "$san" ]; then
  say "memcheck, synccheck: SKIPPED: compute-sanitizer not found (set SANITIZER to its path)"
else
  for tool in memcheck synccheck; do
    secs=45
    [ $tool = synccheck ] && secs=40
    status_before=$status
    MEL_CUDA_TEST_SMOKE=tiny step "$tool" "$secs" "$san" --tool "$tool" --error-exitcode 3 "$here/cuda.t"
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 3 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ] && [ $rc -ne 125 ] &&
       ! grep -q 'ERROR SUMMARY' "$out/$tool.log" && ! grep -q '^\(not \)\{0,1\}ok ' "$out/$tool.log"; then
      # the tool ran nothing: it cannot run here (driver, device, permissions)
      status=$status_before
      say "$tool: SKIPPED: compute-sanitizer could not run here: $(grep -v '^ *$' "$out/$tool.log" | head -2 | tr '\n' ' ')"
      continue
    fi
    say "$tool: $(grep -E 'ERROR SUMMARY' "$out/$tool.log" | tail -1)"
  done
fi

say "run.sh: $([ $status = 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED') in $(($(date +%s) - t_start)) s; logs in $out"
exit $status
