#!/bin/sh
# t/python/pip.t -- the Python package through pip (python/pyproject.toml,
# issue 22), each in a fresh virtual environment made without the network
# (--system-site-packages for torch, setuptools and wheel; pip with
# --no-build-isolation --no-index):
#   1. pip install ./python against an installed libmel (the library and
#      mel.pc installed into a temporary prefix; found through pkg-config);
#   2. make wheel, and pip install of that wheel: the package loads the
#      libmel.so it carries (and finds the CUDA module beside it in a CUDA
#      build), with no libmel installed anywhere.
# Each runs t/python/test_builtins.py with the installed package.  Skips
# without a Python that imports torch, in sanitizer builds, and where a
# virtual environment with pip, setuptools and wheel cannot be made.
set -u
top_build=$(cd "${MEL_TOP_BUILDDIR:-.}" && pwd)
top_src=$(cd "${MEL_TOP_SRCDIR:-.}" && pwd)
MAKE=${MAKE:-make}
py=${MEL_PYTHON:-}
. "$top_src/t/tap.sh"
[ -n "$py" ] || { echo "1..0 # SKIP no Python that imports torch (configure checks python3 and /usr/bin/python3)"; exit 0; }
[ -z "${MEL_SANITIZED:-}" ] ||
    { echo "1..0 # SKIP sanitizer build: libmel.so needs the ASan runtime loaded first"; exit 0; }
command -v pkg-config >/dev/null 2>&1 || { echo "1..0 # SKIP pkg-config not found"; exit 0; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mel-pip.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
venv() { # venv DIR: a virtual environment seeing the system's packages; 1 when it cannot be had
    "$py" -m venv --system-site-packages "$1" >"$tmp/venv.log" 2>&1 &&
        "$1/bin/python" -m pip --version >>"$tmp/venv.log" 2>&1 &&
        "$1/bin/python" -c "import setuptools, wheel, torch" >>"$tmp/venv.log" 2>&1
}
if ! venv "$tmp/va"; then
    echo "1..0 # SKIP no virtual environment with pip, setuptools, wheel and torch without the network: $(tail -1 "$tmp/venv.log")"
    exit 0
fi
pip_install() { # pip_install VENV WHAT
    "$1/bin/python" -m pip install --no-deps --no-build-isolation --no-index "$2" >"$tmp/pip.log" 2>&1
}
# the package, the library path and the version, seen from VENV with no build tree in sight
where() { # where VENV [ENV...]
    v=$1
    shift
    (cd "$tmp" && env -u MEL_LIBRARY -u PYTHONPATH "$@" "$v/bin/python" -c '
import libmel
print(libmel.__file__, libmel.library_path, libmel.__version__)' 2>&1)
}
builtins() { # builtins VENV [ENV...]: t/python/test_builtins.py with the installed package
    v=$1
    shift
    (cd "$tmp" && env -u MEL_LIBRARY -u PYTHONPATH "$@" "$v/bin/python" "$top_src/t/python/test_builtins.py") \
        >"$tmp/builtins.log" 2>&1 &&
        ! grep -q '^not ok' "$tmp/builtins.log" && grep -q '^1\.\.[1-9]' "$tmp/builtins.log"
}
version=$(sed -n 's/^#define PACKAGE_VERSION "\(.*\)"$/\1/p' "$top_build/config.h")
# a make of its own (not the jobserver of the make check running this)
mk() { env -u MAKEFLAGS -u MFLAGS $MAKE -C "$top_build" "$@"; }

# ---- 1. pip install ./python against an installed libmel
prefix=$tmp/prefix
mk install-libLTLIBRARIES install-data-local prefix="$prefix" >"$tmp/install.log" 2>&1
ok $? "the library and mel.pc installed into $prefix" || diag "$tmp/install.log"
cp -R "$top_src/python" "$tmp/src" && chmod -R u+w "$tmp/src" # pip builds in the directory it is given
pip_install "$tmp/va" "$tmp/src"
ok $? "pip install --no-build-isolation ./python into a fresh virtual environment" || diag "$tmp/pip.log"
site=$("$tmp/va/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
out=$(where "$tmp/va" PKG_CONFIG_PATH="$prefix/lib/pkgconfig")
[ "$out" = "$site/libmel/__init__.py $prefix/lib/libmel.so $version" ]
ok $? "the pip-installed package ($site) loads the installed libmel through pkg-config: $out"
meta=$(cd "$tmp" && "$tmp/va/bin/python" -c 'import importlib.metadata as m; print(m.version("libmel"))' 2>&1)
[ "$meta" = "$version" ]
ok $? "python/pyproject.toml's version is configure.ac's: $meta"
out=$(where "$tmp/va" PKG_CONFIG_PATH="$tmp/none")
case $out in *"libmel.so not found"*PKG_CONFIG_PATH*) r=0 ;; *) r=1 ;; esac
ok $r "with no libmel to be found, the import says where it looked and what to set: $(echo "$out" | tail -1 | cut -c1-300)"
builtins "$tmp/va" PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
ok $? "t/python/test_builtins.py with the pip-installed package: $(tail -1 "$tmp/builtins.log")" ||
    { grep '^not ok' "$tmp/builtins.log"; tail -5 "$tmp/builtins.log"; } | sed 's/^/# /' | head -20

# ---- 2. make wheel, installed into another fresh virtual environment
mk wheel WHEEL_DIR="$tmp/wheel" WHEEL_STAGE="$tmp/stage" >"$tmp/wheel.log" 2>&1
whl=$(ls "$tmp"/wheel/libmel-*.whl 2>/dev/null | head -1)
[ -n "$whl" ]
ok $? "make wheel: ${whl##*/}" || diag "$tmp/wheel.log"
want="libmel/libmel.so"
[ -f "$top_build/lib/.libs/libmel-cuda.so" ] && want="libmel/libmel-cuda.so $want"
got=$("$py" -c 'import sys, zipfile; print(" ".join(sorted(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".so"))))' "$whl" 2>&1)
[ "$got" = "$want" ]
ok $? "the wheel carries $want: $got"
venv "$tmp/vb" && pip_install "$tmp/vb" "$whl"
ok $? "pip install of the wheel into a fresh virtual environment" || diag "$tmp/venv.log" "$tmp/pip.log"
site=$("$tmp/vb/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
out=$(where "$tmp/vb" PKG_CONFIG_PATH="$tmp/none")
[ "$out" = "$site/libmel/__init__.py $site/libmel/libmel.so $version" ]
ok $? "the wheel's package loads the libmel.so it carries: $out"
cuda=no
[ -f "$top_build/lib/.libs/libmel-cuda.so" ] && cuda=module
out=$(cd "$tmp" && env -u MEL_LIBRARY -u PYTHONPATH OPENBLAS_CORETYPE=Prescott "$tmp/vb/bin/python" -c '
import sys, libmel
c = libmel.config()
want = "Prescott" if "DYNAMIC_ARCH" in c["blas_config"] else c["blas_kernel"]
print(c["library"] == libmel.library_path and c["blas_kernel"] == want and c["cuda"] == sys.argv[1]
      and c["blas"].startswith("OpenBLAS"), c["blas"], c["blas_kernel"], c["cuda"])' "$cuda" 2>&1)
case $out in "True "*) r=0 ;; *) r=1 ;; esac
ok $r "libmel.config(): the library loaded, the BLAS and the kernel OPENBLAS_CORETYPE chose, CUDA $cuda: $out"
out=$(cd "$tmp" && env -u MEL_LIBRARY -u PYTHONPATH "$tmp/vb/bin/python" -c '
import ctypes
from libmel import _lib as L
c, t, p = ctypes.c_void_p(), ctypes.c_void_p(), L.lib.mel_params_new()
L.lib.mel_ctx_create(L.BACKEND_CPU, ctypes.byref(c))
L.lib.mel_params_set(p, b"label_smothing", 0.1)
s = L.lib.mel_transform_builtin(c, b"ce", p, ctypes.byref(t))
print(L.error_detail(c)[:4] == (s, "param", -1, "label_smothing") and s != 0,
      L.param_words("loss_type") == {"grpo": 0, "bnpo": 1, "dr_grpo": 2, "dapo": 3, "cispo": 4, "sapo": 5})' 2>&1)
[ "$out" = "True True" ]
ok $? "libmel._lib: error_detail names the parameter refused, param_words has the loss types: $out"
builtins "$tmp/vb" PKG_CONFIG_PATH="$tmp/none"
ok $? "t/python/test_builtins.py with the wheel: $(tail -1 "$tmp/builtins.log")" ||
    { grep '^not ok' "$tmp/builtins.log"; tail -5 "$tmp/builtins.log"; } | sed 's/^/# /' | head -20
if [ -f "$top_build/lib/.libs/libmel-cuda.so" ]; then
    # the module beside the wheel's libmel.so is found: a CUDA context, or
    # the driver / device named (not "module not found")
    out=$(cd "$tmp" && env -u MEL_LIBRARY -u MEL_CUDA_MODULE -u PYTHONPATH "$tmp/vb/bin/python" -c '
import ctypes, libmel._lib as L
c = ctypes.c_void_p()
s = L.lib.mel_ctx_create(L.BACKEND_CUDA, ctypes.byref(c))
print(s, L.lib.mel_ctx_create_error().decode() if s else "a CUDA context")' 2>&1)
    case $out in "0 "*|*"NVIDIA driver"*|*"CUDA device"*) r=0 ;; *) r=1 ;; esac
    ok $r "the wheel's CUDA module is found beside its libmel.so: $out"
fi
done_testing
