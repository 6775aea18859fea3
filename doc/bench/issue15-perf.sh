#!/bin/sh
# doc/bench/issue15-perf.sh NEW BASE -- the runs behind doc/benchmarks.md,
# "Small batches" and "bf16 challenge configuration" (issue 15), output in
# doc/bench/issue15-perf.txt.  NEW and BASE are directories holding the
# `mel` binary and its libmel.so* (copies of tools/mel/.libs/mel and
# lib/.libs/libmel.so* built at two commits).  Calls are interleaved within
# one process (--modes naive,fused,naive,... --repeat 1).
NEW=$1 BASE=$2
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
run() {
    b=$1; shift
    echo "## $b $* | $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    LD_LIBRARY_PATH=$b nice -n 5 "$b/mel" bench --no-skip --repeat 1 "$@" 2>&1 | grep -E '^ +[0-9]|^# machine'
    echo "## end $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
}
A="--rows 64 --dim 2048 --vocab 128256 --warmup 1 --modes naive,fused,naive,fused,naive,fused"
run "$NEW" $A
run "$BASE" $A
run "$NEW" $A --dtype bf16
run "$BASE" $A --dtype bf16
run "$NEW" $A
B="--rows 4096 --dim 4096 --vocab 128000 --dtype bf16 --warmup 0"
run "$NEW" $B --modes naive,fused,naive,fused,naive,fused
run "$BASE" $B --modes naive,fused,naive,fused
