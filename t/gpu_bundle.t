#!/bin/sh
# The GPU bundle's checks, without a GPU (tools/gpu/libcheck.sh and
# tools/gpu/run.sh; doc/gpu-check.md):
#   libcheck.sh check: a library outside the bundle and a library not found
#     are reported, one inside it or provided by the GPU machine is not
#     (a program and a library made here with the C compiler); libmel's own
#     test program t/backend_ops.t: OpenBLAS and its runtimes gathered into
#     the bundle resolve there, and in a build with MPI the check names
#     libmpi (the bundle is configured --without-mpi for this reason).
#   run.sh, in bundles of stand-in programs: no GPU listed -> SKIP, exit 0;
#     nvidia-smi listing a GPU while cuda.t skips -> FAILED, exit 1; no
#     compute-sanitizer, or one that cannot run here -> reported as skipped;
#     sanitizer errors -> exit 1; cuBLAS found through CUBLAS_DIR and
#     reported by name when missing; steps cut to RUN_SECONDS.
top_src=${MEL_TOP_SRCDIR:-.}
top=${MEL_TOP_BUILDDIR:-.}
. "$top_src/t/tap.sh" # ok, diag, done_testing
cc=${CC:-cc}
tmp=${TMPDIR:-/tmp}/mel-gpu-bundle.$$
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src" "$tmp/sys" "$tmp/bin"
libcheck="sh $top_src/tools/gpu/libcheck.sh"

# ---- libcheck.sh on a program needing a library of its own
printf 'int zz_fake(void) { return 7; }\n' >"$tmp/src/zz.c"
printf 'int zz_fake(void);\nint main(void) { return zz_fake() == 7 ? 0 : 1; }\n' >"$tmp/src/main.c"
if ! $cc -shared -fPIC -Wl,-soname,libzzfake.so.1 -o "$tmp/sys/libzzfake.so.1" "$tmp/src/zz.c" 2>"$tmp/cc.log" ||
   ! ln -s libzzfake.so.1 "$tmp/sys/libzzfake.so" ||
   ! $cc -o "$tmp/prog" "$tmp/src/main.c" -L"$tmp/sys" -lzzfake 2>>"$tmp/cc.log"; then
    echo "1..0 # SKIP the C compiler ($cc) cannot build a shared library and a program using it"
    exit 0
fi
mkdir -p "$tmp/b1/lib"
LD_LIBRARY_PATH=$tmp/sys $libcheck check "$tmp/b1/lib" "$tmp/prog" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 1 ] && grep -q "^libzzfake.so.1 => $tmp/sys/libzzfake.so.1, outside the bundle" "$tmp/out" && echo 0 || echo 1) \
    "libcheck: a library resolved outside the bundle is reported (exit $rc)" || diag "$tmp/out"
cp "$tmp/sys/libzzfake.so.1" "$tmp/b1/lib/"
LD_LIBRARY_PATH=$tmp/sys $libcheck check "$tmp/b1/lib" "$tmp/prog" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 0 ] && [ ! -s "$tmp/out" ] && echo 0 || echo 1) \
    "libcheck: the same library inside the bundle passes, libc and the loader need nothing (exit $rc)" || diag "$tmp/out"
rm "$tmp/b1/lib/libzzfake.so.1"
$libcheck check "$tmp/b1/lib" "$tmp/prog" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 1 ] && grep -q '^libzzfake.so.1 => not found' "$tmp/out" && echo 0 || echo 1) \
    "libcheck: a library found nowhere is reported (exit $rc)" || diag "$tmp/out"
# named like cuBLAS: provided by the GPU machine, found or not
if $cc -shared -fPIC -Wl,-soname,libcublas.so.99 -o "$tmp/sys/libcublas.so.99" "$tmp/src/zz.c" 2>>"$tmp/cc.log" &&
   ln -s libcublas.so.99 "$tmp/sys/libcublas.so" &&
   $cc -o "$tmp/progcu" "$tmp/src/main.c" -L"$tmp/sys" -lcublas 2>>"$tmp/cc.log"; then
    LD_LIBRARY_PATH=$tmp/sys $libcheck check "$tmp/b1/lib" "$tmp/progcu" >"$tmp/out" 2>&1
    rc1=$?
    $libcheck check "$tmp/b1/lib" "$tmp/progcu" >>"$tmp/out" 2>&1
    rc2=$?
    ok $([ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && echo 0 || echo 1) \
        "libcheck: cuBLAS (libcublas.so.99) outside the bundle or not found is the GPU machine's (exit $rc1, $rc2)" ||
        diag "$tmp/out"
else
    ok 1 "libcheck: a stand-in libcublas.so.99 builds" || diag "$tmp/cc.log"
fi

# ---- libcheck.sh on libmel's t/backend_ops.t (libmel static, OpenBLAS shared)
exe=$top/t/backend_ops.t
if [ -f "$exe" ] && ldd "$exe" >"$tmp/ldd" 2>&1 && grep -q 'libopenblas' "$tmp/ldd"; then
    mkdir -p "$tmp/b2/lib"
    $libcheck gather "$tmp/b2/lib" "$exe" >"$tmp/out" 2>&1
    ok $([ $? -eq 0 ] && ls "$tmp/b2/lib" | grep -q '^libopenblas' && echo 0 || echo 1) \
        "libcheck gather: OpenBLAS of t/backend_ops.t copied into the bundle ($(ls "$tmp/b2/lib" | tr '\n' ' '))" ||
        diag "$tmp/out" "$tmp/ldd"
    $libcheck check "$tmp/b2/lib" "$exe" >"$tmp/out" 2>&1
    rc=$?
    if grep -q 'libmpi' "$tmp/ldd"; then
        ok $([ $rc -eq 1 ] && grep -q '^libmpi[^ ]* => .*outside the bundle' "$tmp/out" &&
             ! grep -q '^lib\(openblas\|gfortran\|gomp\|quadmath\)' "$tmp/out" && echo 0 || echo 1) \
            "libcheck: t/backend_ops.t of this MPI build needs Open MPI, reported (the bundle's build has none), OpenBLAS not (exit $rc)" ||
            diag "$tmp/out"
    else
        ok $rc "libcheck: t/backend_ops.t (no MPI) needs nothing outside the bundle once OpenBLAS is gathered" ||
            diag "$tmp/out"
    fi
else
    ok 0 "# SKIP t/backend_ops.t is not built or links no shared OpenBLAS"
fi
grep -q -- '--without-mpi' "$top_src/tools/gpu/bundle.sh"
ok $? "tools/gpu/bundle.sh configures libmel --without-mpi"

# ---- run.sh in bundles of stand-in programs
# mkbundle DIR CUDA_T_SCRIPT: run.sh, libcheck.sh, an empty lib/, BUILD.txt,
# cuda.t running the script (sh), bench_cuda printing one row
mkbundle() {
    mkdir -p "$1/lib"
    cp "$top_src/tools/gpu/run.sh" "$top_src/tools/gpu/libcheck.sh" "$1/"
    printf 'libmel GPU bundle (stand-in)\ncommit: test\nnvcc: Build cuda_99.0\n' >"$1/BUILD.txt"
    printf '#!/bin/sh\n%s\n' "$2" >"$1/cuda.t"
    printf '#!/bin/sh\necho "fused exact 1.0 ms"\n' >"$1/bench_cuda"
    chmod +x "$1/run.sh" "$1/cuda.t" "$1/bench_cuda"
}
skipper='echo "1..0 # SKIP no CUDA device (cudaErrorInsufficientDriver: stand-in)"'
passer='echo "ok 1 - stand-in"; echo "# counts: 1 call"; echo "1..1"'
# a PATH without nvidia-smi / compute-sanitizer, and one with a stand-in nvidia-smi
nosmi=$tmp/bin
for c in sh awk sed grep tee cat date mkdir dirname ldd sort tr head tail cut ls timeout ldconfig env sleep uname pwd rm cp chmod; do
    p=$(command -v "$c" 2>/dev/null) && [ -n "$p" ] && [ "${p#/}" != "$p" ] && ln -sf "$p" "$nosmi/$c"
done
mkdir -p "$tmp/smi"
printf '#!/bin/sh\ncase "$*" in *query*) echo 999.99;; *) echo "GPU 0: Stand-in GPU (UUID: GPU-0)";; esac\n' >"$tmp/smi/nvidia-smi"
chmod +x "$tmp/smi/nvidia-smi"

mkbundle "$tmp/r1" "$skipper"
PATH=$nosmi CUBLAS_DIR= "$tmp/r1/run.sh" "$tmp/log1" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 0 ] && grep -q '^run.sh: SKIP: no CUDA device' "$tmp/log1/summary.txt" && echo 0 || echo 1) \
    "run.sh: no GPU listed (no nvidia-smi) and cuda.t skips: SKIP, exit $rc" || diag "$tmp/out"
PATH=$tmp/smi:$nosmi "$tmp/r1/run.sh" "$tmp/log2" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 1 ] && grep -q '^run.sh: FAILED: cuda.t skipped .* nvidia-smi lists 1 GPU' "$tmp/log2/summary.txt" &&
     grep -q '^driver: 999.99' "$tmp/log2/summary.txt" && echo 0 || echo 1) \
    "run.sh: nvidia-smi lists a GPU but cuda.t skips: FAILED, exit $rc" || diag "$tmp/out"

mkbundle "$tmp/r2" "$passer"
PATH=$tmp/smi:$nosmi "$tmp/r2/run.sh" "$tmp/log3" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 0 ] && grep -q '^memcheck, synccheck: SKIPPED: compute-sanitizer not found' "$tmp/log3/summary.txt" &&
     grep -q '^run.sh: every step passed' "$tmp/log3/summary.txt" && grep -q '^# counts' "$tmp/log3/summary.txt" &&
     echo 0 || echo 1) \
    "run.sh: every step passes, compute-sanitizer missing is reported and skipped, exit $rc" || diag "$tmp/out"
printf '#!/bin/sh\necho "========= Error: Target device not supported by this tool"\nexit 1\n' >"$tmp/san-refuses"
chmod +x "$tmp/san-refuses"
PATH=$tmp/smi:$nosmi SANITIZER=$tmp/san-refuses "$tmp/r2/run.sh" "$tmp/log4" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 0 ] && [ "$(grep -c '^[a-z]*check: SKIPPED: compute-sanitizer could not run here: .*not supported' "$tmp/log4/summary.txt")" -eq 2 ] &&
     echo 0 || echo 1) \
    "run.sh: a compute-sanitizer that cannot run here is reported and skipped, exit $rc" || diag "$tmp/out" "$tmp/log4/summary.txt"
printf '#!/bin/sh\necho "ok 1 - x"\necho "========= ERROR SUMMARY: 2 errors"\nexit 3\n' >"$tmp/san-errors"
chmod +x "$tmp/san-errors"
PATH=$tmp/smi:$nosmi SANITIZER=$tmp/san-errors "$tmp/r2/run.sh" "$tmp/log5" >"$tmp/out" 2>&1
rc=$?
ok $([ $rc -eq 1 ] && grep -q '^memcheck: FAILED (exit 3)' "$tmp/log5/summary.txt" && echo 0 || echo 1) \
    "run.sh: sanitizer errors fail the run, exit $rc" || diag "$tmp/out"

# every step cut to what is left of RUN_SECONDS
mkbundle "$tmp/r3" 'case "${MEL_CUDA_TEST_SMOKE:-}" in 1) echo "ok 1 - smoke"; echo "1..1";; *) sleep 30;; esac'
t0=$(date +%s)
PATH=$tmp/smi:$nosmi RUN_SECONDS=6 "$tmp/r3/run.sh" "$tmp/log6" >"$tmp/out" 2>&1
rc=$?
dt=$(($(date +%s) - t0))
ok $([ $rc -eq 1 ] && [ $dt -lt 15 ] && grep -q '^cuda-test: TIMED OUT' "$tmp/log6/summary.txt" &&
     grep -q '^bench: NOT RUN' "$tmp/log6/summary.txt" && echo 0 || echo 1) \
    "run.sh: RUN_SECONDS=6 with a cuda.t of 30 s: cut and reported, the run ends in $dt s, exit $rc" ||
    diag "$tmp/out" "$tmp/log6/summary.txt"

# cuBLAS: a cuda.t needing libcublas.so.99, found through CUBLAS_DIR, named when missing
printf '#include <stdio.h>\nint zz_fake(void);\nint main(void) { printf("1..0 # SKIP no CUDA device (stand-in %%d)\\n", zz_fake()); return 0; }\n' >"$tmp/src/cu.c"
mkdir -p "$tmp/r4"
mkbundle "$tmp/r4" "$skipper"
mkdir -p "$tmp/cublas"
if $cc -o "$tmp/r4/cuda.t" "$tmp/src/cu.c" -L"$tmp/sys" -lcublas 2>>"$tmp/cc.log" && mv "$tmp/sys/libcublas.so.99" "$tmp/cublas/"; then
    PATH=$nosmi "$tmp/r4/run.sh" "$tmp/log7" >"$tmp/out" 2>&1
    rc=$?
    ok $([ $rc -eq 1 ] && grep -q '^run.sh: missing shared libraries: libcublas.so.99' "$tmp/log7/summary.txt" &&
         grep -q 'set CUBLAS_DIR' "$tmp/log7/summary.txt" && echo 0 || echo 1) \
        "run.sh: cuBLAS not found: named, with what was searched, exit $rc" || diag "$tmp/out"
    PATH=$nosmi CUBLAS_DIR=$tmp/cublas "$tmp/r4/run.sh" "$tmp/log8" >"$tmp/out" 2>&1
    rc=$?
    ok $([ $rc -eq 0 ] && grep -q "^run.sh: libcublas.so.99 found in $tmp/cublas" "$tmp/log8/summary.txt" &&
         grep -q '^run.sh: SKIP: no CUDA device (stand-in 7)' "$tmp/log8/summary.txt" && echo 0 || echo 1) \
        "run.sh: cuBLAS found through CUBLAS_DIR and used, exit $rc" || diag "$tmp/out"
else
    ok 1 "a stand-in cuda.t linked to libcublas.so.99 builds" || diag "$tmp/cc.log"
fi
done_testing
