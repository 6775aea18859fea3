#!/bin/sh
# tools/gpu/bundle.sh SRCDIR OUTDIR: the GPU check bundle (make gpu-bundle).
#
# Builds libmel from the sources of SRCDIR (tracked and untracked files
# that git does not ignore, copied into OUTDIR.build/src so the source
# tree's own build is untouched) with --with-cuda --with-cuda-arch=90,
# static libmel in the programs and the CUDA backend as the module
# libmel-cuda.so that libmel loads at run time (issue 22), then gathers into
# OUTDIR:
#   cuda.t       the CUDA test (t/cuda.c)
#   bench_cuda   the benchmark (examples/bench_cuda.c)
#   lib/         the CUDA module libmel-cuda.so and the shared libraries the
#                programs and it need that a bare CUDA machine lacks
#                (OpenBLAS, gfortran, gomp, quadmath: tools/gpu/libcheck.sh
#                gather; and the CUDA runtime libcudart, so that the programs
#                and the module share one).  run.sh puts lib/ on
#                LD_LIBRARY_PATH, where libmel finds the module.
#   run.sh       the check itself (tools/gpu/run.sh; see doc/gpu-check.md)
#   libcheck.sh  the library check (run.sh runs it on the GPU machine)
#   BUILD.txt    what was built, from which commit, with which toolchain
# The bundle needs on the GPU machine: the NVIDIA driver and cuBLAS of the
# CUDA major version it was built with (libcublas.so.N, libcublasLt.so.N;
# too large to bundle), and a glibc at least as new as this machine's.
# libmel is configured --without-mpi (vocabulary parallelism is not part
# of the check, and Open MPI is not on a bare CUDA machine), and the build
# fails unless every library the two programs need resolves inside lib/
# except glibc, libgcc_s, libstdc++, the CUDA driver, cuBLAS and cudart
# (tools/gpu/libcheck.sh check).
#
# Environment: CUDA_PREFIX (default /usr/local/cuda), CUDA_ARCH (default
# 90), JOBS (default 2).
set -eu
src=$(cd "${1:?usage: bundle.sh SRCDIR OUTDIR}" && pwd)
out=${2:?usage: bundle.sh SRCDIR OUTDIR}
prefix=${CUDA_PREFIX:-/usr/local/cuda}
arch=${CUDA_ARCH:-90}
jobs=${JOBS:-2}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bld=$out.build
say() { echo "gpu-bundle: $*"; }

command -v git >/dev/null 2>&1 && git -C "$src" rev-parse --git-dir >/dev/null 2>&1 ||
  { say "SRCDIR $src is not a git checkout (the file list comes from git ls-files)" >&2; exit 1; }
[ -x "$prefix/bin/nvcc" ] || { say "no nvcc at $prefix/bin/nvcc (set CUDA_PREFIX)" >&2; exit 1; }

# 1. a private copy of the sources (the source tree may be configured in place)
rm -rf "$bld"
mkdir -p "$bld/src"
(cd "$src" && git ls-files -co --exclude-standard -z | xargs -0 tar cf -) | (cd "$bld/src" && tar xf -)
rev=$(git -C "$src" rev-parse --short HEAD)
dirty=$(git -C "$src" status --porcelain --untracked-files=no | grep -q . && echo " + uncommitted changes" || true)

# 2. configure and build the two programs (static libmel: -static-libtool-libs)
#    and the CUDA module
cd "$bld/src"
say "autoreconf, configure --with-cuda=$prefix --with-cuda-arch=$arch --without-mpi (log: $bld/build.log)"
{
  autoreconf -fi &&
  ./configure --with-cuda="$prefix" --with-cuda-arch="$arch" --enable-shared --enable-static --without-mpi &&
  make -j"$jobs" LDFLAGS=-static-libtool-libs examples/bench_cuda t/cuda.t lib/libmel-cuda.la
} >"$bld/build.log" 2>&1 || { tail -30 "$bld/build.log" >&2; say "build failed: $bld/build.log" >&2; exit 1; }

# 3. gather
rm -rf "$out"
mkdir -p "$out/lib"
cp t/cuda.t "$out/cuda.t"
cp examples/bench_cuda "$out/bench_cuda"
cp "$src/tools/gpu/run.sh" "$out/run.sh"
cp "$src/tools/gpu/libcheck.sh" "$out/libcheck.sh"
cp lib/.libs/libmel-cuda.so "$out/lib/libmel-cuda.so"
chmod +x "$out/run.sh" "$out/cuda.t" "$out/bench_cuda"
sh "$src/tools/gpu/libcheck.sh" gather "$out/lib" "$out/cuda.t" "$out/bench_cuda" "$out/lib/libmel-cuda.so" ||
  { say "copying the shared libraries into $out/lib failed" >&2; exit 1; }
# the one CUDA runtime of the programs and the module
for exe in "$out/cuda.t" "$out/bench_cuda" "$out/lib/libmel-cuda.so"; do
  ldd "$exe" | awk '/=> \// { print $1, $3 }'
done | sort -u | while read -r name path; do
  case $name in libcudart*) cp -L "$path" "$out/lib/$name" ;; esac
done
# every library the programs and the module need must now resolve to the
# bundle, but for what the GPU machine provides (glibc, libgcc_s,
# libstdc++, the driver, cuBLAS, cudart)
if ! sh "$src/tools/gpu/libcheck.sh" check "$out/lib" "$out/cuda.t" "$out/bench_cuda" "$out/lib/libmel-cuda.so" \
    >"$bld/libcheck.log" 2>&1; then
  say "the bundle's programs need libraries it does not ship (and a bare CUDA machine lacks):" >&2
  sed 's/^/  /' "$bld/libcheck.log" >&2
  exit 1
fi
{
  echo "libmel GPU bundle, built $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -n)"
  echo "commit: $rev$dirty"
  echo "nvcc: $("$prefix/bin/nvcc" --version | tail -1)"
  echo "configure: --with-cuda=$prefix --with-cuda-arch=$arch --without-mpi (static libmel in the programs, the CUDA module lib/libmel-cuda.so)"
  echo "gencode: $(sed -n 's/^NVCC_GENCODE = //p' Makefile)"
  echo "bundled libraries: $(cd "$out/lib" && ls | tr '\n' ' ')"
  echo "needs on the GPU machine: the NVIDIA driver and, from the CUDA toolkit:"
  for exe in "$out/cuda.t" "$out/bench_cuda" "$out/lib/libmel-cuda.so"; do
    LD_LIBRARY_PATH="$out/lib" ldd "$exe" | awk '/=>/ { print $1 }'
  done | sort -u | grep -E '^libcu' | grep -v '^libcudart' | sed 's/^/  /'
  echo "glibc of this build: $(ldd --version | head -1)"
} >"$out/BUILD.txt"
size=$(du -sk "$out" | cut -f1)
say "bundle in $out: $((size / 1024)) MiB ($size KiB)"
[ "$size" -lt 65536 ] || { say "the bundle is over 64 MiB" >&2; exit 1; }
say "on the GPU machine: $out/run.sh LOGDIR (doc/gpu-check.md)"
