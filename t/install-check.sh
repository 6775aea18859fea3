#!/bin/sh
# t/install-check.sh PKGCONFIGDIR BINDIR -- an installed libmel and mel, as a
# user finds them (TAP; run by t/install.t after `make install prefix=TMP`
# and by `make installcheck`):
#   - pkg-config finds mel.pc in PKGCONFIGDIR, and its directories hold mel.h
#     and libmel;
#   - the README's C example (doc/example.c, the same code as the README's
#     block) builds with `pkg-config --cflags --libs mel` and prints the
#     closed-form loss;
#   - BINDIR/mel runs without LD_LIBRARY_PATH and computes.
set -u
pcdir=$1
bindir=$2
top_src=${MEL_TOP_SRCDIR:-.}
CC=${CC:-cc}
. "$top_src/t/tap.sh" # ok, diag, done_testing
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mel-inst.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
PKG_CONFIG_PATH=$pcdir
export PKG_CONFIG_PATH

version=$(sed -n 's/^AC_INIT(\[[^]]*\], *\[\([^]]*\)\].*/\1/p' "$top_src/configure.ac")
got=$(pkg-config --modversion mel 2>"$tmp/err")
[ "$got" = "$version" ]
ok $? "pkg-config --modversion mel = $version (got '$got'; PKG_CONFIG_PATH=$pcdir)"
incdir=$(pkg-config --variable=includedir mel)
libdir=$(pkg-config --variable=libdir mel)
[ -f "$incdir/mel.h" ] && [ -f "$libdir/libmel.so" ] && [ -f "$pcdir/mel.pc" ] &&
    [ "$libdir/pkgconfig" = "$pcdir" ]
ok $? "mel.pc names the installed directories (includedir $incdir, libdir $libdir)"
# one build for CPU and GPU machines: libmel.so links no CUDA library; the
# CUDA module of a --with-cuda build is installed beside it
cuda=$(objdump -p "$libdir/libmel.so" 2>&1 | awk '/NEEDED/ { print $2 }' | grep -E '^libcud|^libcublas' | tr '\n' ' ')
[ -z "$cuda" ]
ok $? "the installed libmel.so links no CUDA library${cuda:+: $cuda}"
if grep -q '^#define HAVE_CUDA 1' "${MEL_TOP_BUILDDIR:-.}/config.h" 2>/dev/null; then
    objdump -p "$libdir/libmel-cuda.so" 2>/dev/null | grep -q 'NEEDED.*libcublas'
    ok $? "the CUDA module is installed beside it ($libdir/libmel-cuda.so, linking cuBLAS)"
fi

# the README's block is doc/example.c, byte for byte
awk '/^```c$/ { on = 1; next } on && /^```$/ { exit } on { print }' "$top_src/README.md" >"$tmp/readme.c"
cmp -s "$tmp/readme.c" "$top_src/doc/example.c"
ok $? "README's C example is doc/example.c"
# shellcheck disable=SC2046
# a sanitizer build's libmel needs the program built with the same runtime
# shellcheck disable=SC2086
$CC ${MEL_SANITIZED:-} $(pkg-config --cflags mel) "$top_src/doc/example.c" -o "$tmp/example" $(pkg-config --libs mel) \
    >"$tmp/cc.log" 2>&1
rc=$?
ok $rc "doc/example.c builds with pkg-config --cflags --libs mel" || sed 's/^/# /' "$tmp/cc.log"
out=$(LD_LIBRARY_PATH=$libdir "$tmp/example" 2>&1)
want=$(awk 'BEGIN { printf "loss %.6f", (log(1 + exp(-1)) + log(1 + exp(2))) / 2 }')
[ "$out" = "$want" ]
ok $? "the example prints '$want' (got '$out')"

out=$(env -u LD_LIBRARY_PATH "$bindir/mel" --version 2>&1)
case $out in "mel $version (libmel $version)") r=0 ;; *) r=1 ;; esac
ok $r "installed mel runs without LD_LIBRARY_PATH: $out"
env -u LD_LIBRARY_PATH "$bindir/mel" gradcheck ce >"$tmp/gc" 2>&1 && grep -q '^PASS' "$tmp/gc"
ok $? "installed mel computes (mel gradcheck ce passes)"

done_testing
