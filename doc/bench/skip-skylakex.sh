#!/bin/sh
# OPENBLAS_CORETYPE=SkylakeX (OpenBLAS 0.3.21 does not recognise this Xeon and falls back to
# slow kernels); interleaved, 3 rounds, one call each
export OPENBLAS_CORETYPE=SkylakeX
M=/work/wt-row-skip/tools/mel/mel
for r in 1 2 3; do
  for mode in fused recompute; do
  for cfg in "0 random" "0.5 random" "0.5 prefix" "0.9 random" "0.9 prefix" "0 random --no-skip"; do
    set -- $cfg
    l=$(cut -d' ' -f1 /proc/loadavg)
    extra=""; [ "$2" = prefix ] && extra="--seq-len 512"
    t=$($M bench --modes $mode --repeat 1 --warmup 0 --threads 2 --ignore $1 --ignore-pattern $2 $extra $3 | sed -n 3p | awk '{print $3, $8, $9, $10}')
    echo "round $r $mode ignore $1 $2 $3: $t load $l"
  done
  done
done
