#!/bin/sh
# Vocabulary parallelism (MPI): t/vp with 1, 2 and 3 processes, each
# against the one-process result (see t/vp.c).  The three runs' TAP is
# renumbered into one stream.  Skips without MPI (configure --with-mpi) or
# mpirun.
top=${MEL_TOP_BUILDDIR:-.}
if [ -z "$MPIRUN" ] || [ ! -x "$top/t/vp" ]; then
    echo "1..0 # SKIP libmel built without MPI or no mpirun (install libopenmpi-dev and openmpi-bin, then configure)"
    exit 0
fi
if [ -n "$MEL_SANITIZED" ]; then
    echo "1..0 # SKIP under sanitizers (Open MPI's own allocations are reported as leaks)"
    exit 0
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
echo "1..$n"
