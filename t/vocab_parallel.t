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
top_src=${MEL_TOP_SRCDIR:-.}
. "$top_src/t/tap.sh" # ok, done_testing
# mpi_tap PREFIX NP COMMAND...: run COMMAND under mpirun -np NP; its TAP (from
# process 0) renumbered into this stream, descriptions prefixed, other lines
# as comments; a failed exit without a failed check is one more failure
mpi_tap() {
    prefix=$1 np=$2
    shift 2
    $MPIRUN $opts -np "$np" "$@" >"$tmp" 2>&1
    rc=$?
    failed=0
    while IFS= read -r line; do
        case $line in
        "ok "*|"not ok "*)
            n=$((n + 1))
            case $line in "not ok "*) failed=1 fails=$((fails + 1)) ;; esac
            echo "$line" | sed -E "s/^(not ok|ok) [0-9]+/\1 $n/; s/ - / - $prefix: /" ;;
        1..*) ;;
        *) echo "# $line" | sed 's/^# #/#/' ;;
        esac
    done <"$tmp"
    if [ $rc != 0 ] && [ $failed = 0 ]; then
        ok 1 "mpirun -np $np $* exited with status $rc"
    fi
}
for np in 1 2 3; do
    mpi_tap "np=$np" $np "$top/t/vp"
done

# the Python package: linear_loss(..., vocab_parallel=) against torch autograd
py=${MEL_PYTHON:-}
if [ -z "$py" ]; then
    n=$((n + 1)); echo "ok $n # SKIP Python package: no Python that imports torch"
elif [ -n "${MEL_SANITIZED:-}" ]; then
    n=$((n + 1)); echo "ok $n # SKIP Python package: sanitizer build (libmel.so needs the ASan runtime first)"
elif ! "$py" -c "import torch, mpi4py" >/dev/null 2>&1; then
    n=$((n + 1)); echo "ok $n # SKIP Python package: $py cannot import mpi4py (Debian: python3-mpi4py)"
else
    MEL_LIBRARY=$(cd "$top" && pwd)/lib/.libs/libmel.so
    PYTHONPATH=$(cd "$top_src" && pwd)/python${PYTHONPATH:+:$PYTHONPATH}
    export MEL_LIBRARY PYTHONPATH
    for np in 2 3; do
        mpi_tap python $np -x MEL_LIBRARY -x PYTHONPATH "$py" "$top_src/t/python/test_vp.py"
    done
fi

# the training example: vocabulary-parallel SGD steps against one process
for np in 2 3; do
    $MPIRUN $opts -np $np "$top/examples/vocab_parallel" 20 >"$tmp" 2>&1
    rc=$?
    sed 's/^/# /' "$tmp"
    ok $rc "np=$np: examples/vocab_parallel: 20 SGD steps, loss equal to one process's within 1e-5"
done

# the tool: mel run --vocab-parallel under mpirun writes what one process writes
MEL=$top/tools/mel/mel
dir=${TMPDIR:-/tmp}/mel-vp-tool.$$
mkdir -p "$dir"
trap 'rm -f "$tmp"; rm -rf "$dir"' EXIT
"$top/t/vp" --write-npy "$dir" || ok 1 "t/vp --write-npy"
cmp_npy() { # cmp_npy NAME A B: f64 outputs equal within 1e-12
    e=$("$top/t/vp" --compare "$2" "$3" 1e-12 2>&1)
    ok $? "$1: max rel diff $e (tol 1e-12)"
}
# tool_pair NP NAME OUTS ARGS...: mel run ARGS on one process and under
# mpirun --vocab-parallel, writing the outputs OUTS (of y dx dw db) to
# DIR/o1.npy and DIR/ok.npy, then compares them file by file
tool_pair() {
    np=$1 name=$2 outs=$3
    shift 3
    f1="" fk=""
    for o in $outs; do
        case $o in y) flag=--output ;; dx) flag=--grad-hidden ;; dw) flag=--grad-weight ;; db) flag=--grad-bias ;; esac
        f1="$f1 $flag $dir/${o}1.npy" fk="$fk $flag $dir/${o}k.npy"
    done
    "$MEL" run "$@" $f1 >"$tmp" 2>&1
    r1=$?
    $MPIRUN $opts -np "$np" "$MEL" run "$@" --vocab-parallel $fk --stats "$dir/stats.json" >>"$tmp" 2>&1
    rk=$?
    [ $r1 = 0 ] && [ $rk = 0 ] || sed 's/^/# /' "$tmp"
    ok $((r1 + rk)) "np=$np: mel run $name --vocab-parallel runs (exit $rk; one process: $r1)"
    for o in $outs; do
        cmp_npy "np=$np: mel run $name --vocab-parallel: $o (process 0's file)" "$dir/${o}k.npy" "$dir/${o}1.npy"
    done
}
for np in 2 3; do
    common="--hidden $dir/x.npy --weight $dir/w.npy --labels $dir/labels.npy"
    # ce with bias, label smoothing, per-row y and upstream gradient
    tool_pair $np ce "y dx dw db" ce $common --bias "$dir/b.npy" --param label_smoothing=0.1 \
        --reduction none --grad-output "$dir/dy.npy"
    grep -q "\"processes\": $np, \"comm_bytes\": [1-9]" "$dir/stats.json"
    ok $? "np=$np: --stats has processes = $np and comm_bytes > 0, comm_seconds"
    # kl with a sharded teacher, mean
    tool_pair $np "kl (sharded teacher)" "y dx dw" kl $common --teacher-hidden "$dir/tx.npy" \
        --teacher-weight "$dir/tw.npy" --param temperature=1.5
done
done_testing
