#!/bin/sh
# Vocabulary parallelism (MPI): t/vp with 1, 2 and 3 processes, each
# against the one-process result (see t/vp.c).  The three runs' TAP is
# renumbered into one stream.  Skips without MPI (configure --with-mpi) or
# mpirun.
top=${MEL_TOP_BUILDDIR:-.}
if [ -z "${MPIRUN:-}" ] || [ ! -x "$top/t/vp" ]; then
    echo "1..0 # SKIP libmel built without MPI or no mpirun (install libopenmpi-dev and openmpi-bin, then configure)"
    exit 0
fi
if [ -n "${MEL_SANITIZED:-}" ]; then
    # AddressSanitizer and UBSan stay on; leak checking is off because Open
    # MPI's dlopen'ed components leak at exit (LeakSanitizer reports them
    # from unknown modules, nothing from libmel)
    echo "# sanitizers: leak checking off for the MPI runs (Open MPI's components leak at exit)"
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fi
opts="--oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && opts="$opts --allow-run-as-root"
# no network: shared memory and self only
export OMPI_MCA_btl=self,vader OMPI_MCA_plm=isolated OMPI_MCA_btl_vader_single_copy_mechanism=none
tmp=${TMPDIR:-/tmp}/mel-vp.$$
trap 'rm -f "$tmp"' EXIT
n=0
for np in 1 2 3; do
    $MPIRUN $opts -np $np "$top/t/vp" >"$tmp" 2>&1
    rc=$?
    failed=0
    while IFS= read -r line; do
        case $line in
        "ok "*|"not ok "*)
            n=$((n + 1))
            case $line in "not ok "*) failed=1 ;; esac
            echo "$line" | sed -E "s/^(not ok|ok) [0-9]+/\1 $n/; s/ - / - np=$np: /" ;;
        1..*) ;;
        *) echo "# $line" | sed 's/^# #/#/' ;;
        esac
    done <"$tmp"
    if [ $rc != 0 ] && [ $failed = 0 ]; then
        n=$((n + 1))
        echo "not ok $n - mpirun -np $np t/vp exited with status $rc"
    fi
done
t_ok() { # t_ok STATUS DESCRIPTION
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

# the Python package: linear_loss(..., vocab_parallel=) against torch autograd
py=${MEL_PYTHON:-}
top_src=${MEL_TOP_SRCDIR:-.}
if [ -z "$py" ]; then
    n=$((n + 1)); echo "ok $n # SKIP Python package: no Python that imports torch"
elif [ -n "${MEL_SANITIZED:-}" ]; then
    n=$((n + 1)); echo "ok $n # SKIP Python package: sanitizer build (libmel.so needs the ASan runtime first)"
elif ! "$py" -c "import torch, mpi4py" >/dev/null 2>&1; then
    n=$((n + 1)); echo "ok $n # SKIP Python package: $py cannot import mpi4py (Debian: python3-mpi4py)"
else
    for np in 2 3; do
        MEL_LIBRARY=$(cd "$top" && pwd)/lib/.libs/libmel.so \
        PYTHONPATH=$(cd "$top_src" && pwd)/python${PYTHONPATH:+:$PYTHONPATH} \
            $MPIRUN $opts -x MEL_LIBRARY -x PYTHONPATH -np $np "$py" "$top_src/t/python/test_vp.py" >"$tmp" 2>&1
        rc=$?
        failed=0
        while IFS= read -r line; do
            case $line in
            "ok "*|"not ok "*)
                n=$((n + 1))
                case $line in "not ok "*) failed=1 ;; esac
                echo "$line" | sed -E "s/^(not ok|ok) [0-9]+/\1 $n/; s/ - / - python: /" ;;
            1..*) ;;
            *) echo "# $line" | sed 's/^# #/#/' ;;
            esac
        done <"$tmp"
        if [ $rc != 0 ] && [ $failed = 0 ]; then
            n=$((n + 1))
            echo "not ok $n - mpirun -np $np python t/python/test_vp.py exited with status $rc"
        fi
    done
fi

# the training example: vocabulary-parallel SGD steps against one process
for np in 2 3; do
    $MPIRUN $opts -np $np "$top/examples/vocab_parallel" 20 >"$tmp" 2>&1
    rc=$?
    sed 's/^/# /' "$tmp"
    t_ok $rc "np=$np: examples/vocab_parallel: 20 SGD steps, loss equal to one process's within 1e-5"
done

# the tool: mel run --vocab-parallel under mpirun writes what one process writes
MEL=$top/tools/mel/mel
dir=${TMPDIR:-/tmp}/mel-vp-tool.$$
mkdir -p "$dir"
trap 'rm -f "$tmp"; rm -rf "$dir"' EXIT
"$top/t/vp" --write-npy "$dir" || t_ok 1 "t/vp --write-npy"
cmp_npy() { # cmp_npy NAME A B: f64 outputs equal within 1e-12
    e=$("$top/t/vp" --compare "$2" "$3" 1e-12 2>&1)
    t_ok $? "$1: max rel diff $e (tol 1e-12)"
}
for np in 2 3; do
    common="--hidden $dir/x.npy --weight $dir/w.npy --labels $dir/labels.npy"
    # ce with bias, label smoothing, per-row y and upstream gradient
    args="ce $common --bias $dir/b.npy --param label_smoothing=0.1 --reduction none --grad-output $dir/dy.npy"
    "$MEL" run $args --output "$dir/y1.npy" --grad-hidden "$dir/dx1.npy" --grad-weight "$dir/dw1.npy" \
        --grad-bias "$dir/db1.npy" >"$tmp" 2>&1
    r1=$?
    $MPIRUN $opts -np $np "$MEL" run $args --vocab-parallel --output "$dir/yk.npy" --grad-hidden "$dir/dxk.npy" \
        --grad-weight "$dir/dwk.npy" --grad-bias "$dir/dbk.npy" --stats "$dir/stats.json" >>"$tmp" 2>&1
    rk=$?
    [ $r1 = 0 ] && [ $rk = 0 ] || sed 's/^/# /' "$tmp"
    t_ok $((r1 + rk)) "np=$np: mel run ce --vocab-parallel runs (exit $rk; one process: $r1)"
    cmp_npy "np=$np: mel run ce --vocab-parallel: y" "$dir/yk.npy" "$dir/y1.npy"
    cmp_npy "np=$np: mel run ce --vocab-parallel: dX" "$dir/dxk.npy" "$dir/dx1.npy"
    cmp_npy "np=$np: mel run ce --vocab-parallel: dW assembled on process 0" "$dir/dwk.npy" "$dir/dw1.npy"
    cmp_npy "np=$np: mel run ce --vocab-parallel: db assembled on process 0" "$dir/dbk.npy" "$dir/db1.npy"
    grep -q "\"processes\": $np, \"comm_bytes\": [1-9]" "$dir/stats.json"
    t_ok $? "np=$np: --stats has processes = $np and comm_bytes > 0, comm_seconds"
    # kl with a sharded teacher, mean
    args="kl $common --teacher-hidden $dir/tx.npy --teacher-weight $dir/tw.npy --param temperature=1.5"
    "$MEL" run $args --output "$dir/y1.npy" --grad-hidden "$dir/dx1.npy" --grad-weight "$dir/dw1.npy" >"$tmp" 2>&1
    r1=$?
    $MPIRUN $opts -np $np "$MEL" run $args --vocab-parallel --output "$dir/yk.npy" --grad-hidden "$dir/dxk.npy" \
        --grad-weight "$dir/dwk.npy" >>"$tmp" 2>&1
    rk=$?
    [ $r1 = 0 ] && [ $rk = 0 ] || sed 's/^/# /' "$tmp"
    t_ok $((r1 + rk)) "np=$np: mel run kl --vocab-parallel with a sharded teacher runs"
    cmp_npy "np=$np: mel run kl --vocab-parallel: y" "$dir/yk.npy" "$dir/y1.npy"
    cmp_npy "np=$np: mel run kl --vocab-parallel: dX" "$dir/dxk.npy" "$dir/dx1.npy"
    cmp_npy "np=$np: mel run kl --vocab-parallel: dW" "$dir/dwk.npy" "$dir/dw1.npy"
done
echo "1..$n"
