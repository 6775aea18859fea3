#!/bin/sh
# tools/gpu/libcheck.sh: the shared libraries of the GPU bundle's programs
# (tools/gpu/bundle.sh, t/gpu_bundle.t).
#
#   libcheck.sh gather LIBDIR EXE...   copy into LIBDIR the libraries of the
#                                      EXEs that a bare CUDA machine lacks
#                                      and the bundle ships (OpenBLAS and the
#                                      Fortran / OpenMP runtimes it needs)
#   libcheck.sh check LIBDIR EXE...    every library an EXE needs (ldd, with
#                                      LD_LIBRARY_PATH=LIBDIR as run.sh sets
#                                      it) resolves inside LIBDIR, except the
#                                      ones the GPU machine provides:
#                                        glibc (libc, libm, libpthread, libdl,
#                                        librt, libutil, libresolv, libmvec,
#                                        the loader), libgcc_s, libstdc++,
#                                        the CUDA driver (libcuda, libnvidia-*),
#                                        cuBLAS and the CUDA runtime (libcublas,
#                                        libcublasLt, libcudart)
#                                      Those may resolve anywhere or not at all
#                                      here.  Prints one line per offending
#                                      library ("NAME => PATH" or "NAME => not
#                                      found", and which EXE needs it) and
#                                      exits 1; exits 0 when there is none.
set -u
what=${1:-}
libdir=${2:-}
[ -n "$what" ] && [ -n "$libdir" ] && [ $# -ge 3 ] ||
  { echo "usage: libcheck.sh gather|check LIBDIR EXE..." >&2; exit 2; }
shift 2

# provided by the GPU machine (see the header)
provided() {
  case $1 in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libutil.so.*|libresolv.so.*|libmvec.so.*) return 0 ;;
    ld-linux*.so.*|linux-vdso.so.*|linux-gate.so.*) return 0 ;;
    libgcc_s.so.*|libstdc++.so.*) return 0 ;;
    libcuda.so*|libnvidia-*) return 0 ;;
    libcublas.so*|libcublasLt.so*|libcudart.so*) return 0 ;;
  esac
  return 1
}

# shipped in the bundle by `gather`
shipped() {
  case $1 in
    libopenblas*|libblas.so*|liblapack.so*|libgfortran.so*|libgomp.so*|libquadmath.so*) return 0 ;;
  esac
  return 1
}

# NAME PATH lines of ldd for EXE ("not found" as PATH when unresolved),
# with the bundle's library path
deps() {
  LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$1" 2>/dev/null | awk '
    /=> not found/ { print $1, "not-found"; next }
    /=> \//        { print $1, $3; next }
    /^[ \t]*\//    { n = split($1, p, "/"); print p[n], $1 }'
}

case $what in
gather)
  mkdir -p "$libdir" || exit 1
  all=$(for exe in "$@"; do deps "$exe"; done | sort -u)
  while read -r name path; do
    [ -n "$name" ] || continue
    if shipped "$name" && [ "$path" != not-found ]; then cp -L "$path" "$libdir/$name" || exit 1; fi
  done <<EOF
$all
EOF
  ;;
check)
  [ -d "$libdir" ] || { echo "libcheck: no directory $libdir" >&2; exit 2; }
  real=$(cd "$libdir" && pwd -P)
  bad=0
  for exe in "$@"; do
    [ -f "$exe" ] || { echo "libcheck: no file $exe" >&2; exit 2; }
    out=$(deps "$exe") # empty for a static program: nothing to resolve
    while read -r name path; do
      [ -n "$name" ] || continue
      provided "$name" && continue
      if [ "$path" = not-found ]; then
        echo "$name => not found (needed by $exe)"
        bad=1
        continue
      fi
      dir=$(cd "$(dirname "$path")" && pwd -P)
      [ "$dir" = "$real" ] && continue
      echo "$name => $path, outside the bundle (needed by $exe)"
      bad=1
    done <<EOF
$out
EOF
  done
  exit $bad
  ;;
*)
  echo "usage: libcheck.sh gather|check LIBDIR EXE..." >&2
  exit 2
  ;;
esac
