#!/bin/sh
# t/install.t -- `make install prefix=DIR` (GNU convention) into a temporary
# directory, t/install-check.sh on it, then `make uninstall prefix=DIR`
# leaves no file behind (TAP).
set -u
top_build=${MEL_TOP_BUILDDIR:-.}
top_src=${MEL_TOP_SRCDIR:-.}
MAKE=${MAKE:-make}
if ! command -v pkg-config >/dev/null 2>&1; then
    echo "1..0 # SKIP pkg-config not found"
    exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mel-install.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
# a make of its own (not the jobserver of the make check running this)
env -u MAKEFLAGS -u MFLAGS $MAKE -C "$top_build" install prefix="$prefix" >"$tmp/install.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    echo "not ok 1 - make install prefix=$prefix (exit $rc)"
    sed 's/^/# /' "$tmp/install.log" | tail -20
    echo "1..1"
    exit 1
fi
echo "ok 1 - make install prefix=$prefix"
# the checks, numbered after this one
MEL_TOP_SRCDIR=$top_src sh "$top_src/t/install-check.sh" "$prefix/lib/pkgconfig" "$prefix/bin" \
    >"$tmp/check.tap"
rc=$?
m=1
while IFS= read -r line; do
    case $line in
    "ok "*) m=$((m + 1)); echo "ok $m -${line#*-}" ;;
    "not ok "*) m=$((m + 1)); echo "not ok $m -${line#*-}" ;;
    "1.."*) ;;
    *) echo "$line" ;;
    esac
done <"$tmp/check.tap"
# the Python package, installed beside the library, loads the installed libmel
m=$((m + 1))
if [ -z "${MEL_PYTHON:-}" ] || [ -n "${MEL_SANITIZED:-}" ]; then
    echo "ok $m # SKIP the Python package: no Python with torch, or a sanitizer build"
else
    pkg=$(find "$prefix" -type f -name _lib.py -path '*/libmel/*' | head -1)
    site=${pkg%/libmel/_lib.py}
    out=$(cd "$tmp" && env -u MEL_LIBRARY PYTHONPATH="$site" "$MEL_PYTHON" -c '
import torch, libmel
X = torch.randn(5, 3, dtype=torch.float64); W = torch.randn(7, 3, dtype=torch.float64)
lab = torch.tensor([0, 6, 2, 3, 1])
d = (libmel.linear_loss(X, W, lab) - torch.nn.functional.cross_entropy(X @ W.T, lab)).abs().item()
print(libmel.library_path, d)' 2>&1)
    path=${out% *}
    if [ "$path" = "$prefix/lib/libmel.so" ] && awk -v d="${out##* }" 'BEGIN { exit !(d + 0 < 1e-12) }'; then
        echo "ok $m - the installed Python package ($site) loads the installed libmel and computes: $out"
    else
        echo "not ok $m - the installed Python package: $out"; rc=1
    fi
fi
env -u MAKEFLAGS -u MFLAGS $MAKE -C "$top_build" uninstall prefix="$prefix" >"$tmp/uninstall.log" 2>&1
left=$(find "$prefix" -type f 2>/dev/null | wc -l)
m=$((m + 1))
if [ "$left" -eq 0 ]; then echo "ok $m - make uninstall prefix=DIR removes every file"; else
    echo "not ok $m - make uninstall left $left files"
    find "$prefix" -type f | sed 's/^/# /'
    rc=1
fi
echo "1..$m"
exit $rc
