#!/bin/sh
# interleaved: fused 0% / 50% random / 50% prefix / 0% no-skip, 3 rounds
M=/work/wt-row-skip/tools/mel/mel
for r in 1 2 3; do
  for cfg in "0 random" "0.5 random" "0.5 prefix" "0 random --no-skip"; do
    set -- $cfg
    l=$(cut -d' ' -f1 /proc/loadavg)
    extra=""; [ "$2" = prefix ] && extra="--seq-len 512"
    t=$($M bench --modes fused --repeat 1 --warmup 0 --threads 2 --ignore $1 --ignore-pattern $2 $extra $3 | sed -n 3p | awk '{print $3, $8, $9, $10}')
    echo "round $r ignore $1 $2 $3: $t load $l"
  done
done
