#!/bin/sh
# t/python/run.sh NAME -- run t/python/test_NAME.py with the Python configure found
# (MEL_PYTHON, set by the Makefile), libmel from the build tree, TAP on stdout.
set -u
top_src=${MEL_TOP_SRCDIR:-.}
top_build=${MEL_TOP_BUILDDIR:-.}
py=${MEL_PYTHON:-}
if [ -z "$py" ]; then
    echo "1..0 # SKIP no Python that imports torch (configure checks python3 and /usr/bin/python3; set PYTHON=)"
    exit 0
fi
if [ -n "${MEL_SANITIZED:-}" ]; then
    echo "1..0 # SKIP sanitizer build: libmel.so needs the ASan runtime loaded first, which a Python interpreter does not do"
    exit 0
fi
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    echo "1..0 # SKIP $py cannot import torch"
    exit 0
fi
MEL_LIBRARY=${MEL_LIBRARY:-$(cd "$top_build" && pwd)/lib/.libs/libmel.so}
PYTHONPATH=$(cd "$top_src" && pwd)/python${PYTHONPATH:+:$PYTHONPATH}
export MEL_LIBRARY PYTHONPATH
exec "$py" "$top_src/t/python/test_$1.py"
