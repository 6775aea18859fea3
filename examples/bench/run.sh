#!/usr/bin/env bash
# Benchmark sweep: each (N, mode) in its own `mel bench` process so that the
# process peak RSS is clean, then an optional PyTorch comparison on the same
# shapes, then a gnuplot plot of time and memory against N.
#
#   examples/bench/run.sh [OUT_DIR]
# Environment: ROWS="1024 2048 4096" DIM=1024 VOCAB=32768 DTYPE=f32 TRANSFORM=ce
#   REPEAT=5 WARMUP=1 MODES="naive recompute fused" TORCH=1 (run torch_bench.py
#   if PyTorch imports) PYTHON=/usr/bin/python3 EXTRA="--workspace-bytes 33554432"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=${1:-bench-out}
mkdir -p "$out"
mel=${MEL:-$top/tools/mel/mel}
ROWS=${ROWS:-"1024 2048 4096"}
DIM=${DIM:-1024}
VOCAB=${VOCAB:-32768}
DTYPE=${DTYPE:-f32}
TRANSFORM=${TRANSFORM:-ce}
REPEAT=${REPEAT:-5}
WARMUP=${WARMUP:-1}
MODES=${MODES:-"naive recompute fused"}
EXTRA=${EXTRA:-}
csv="$out/bench.csv"
rm -f "$csv"
for m in $MODES; do   # modes outer: each mode's rows are contiguous (one line per mode in the plot)
  for n in $ROWS; do
    tmp="$out/.one.csv"
    # shellcheck disable=SC2086
    "$mel" bench --rows "$n" --dim "$DIM" --vocab "$VOCAB" --dtype "$DTYPE" --transform "$TRANSFORM" \
      --modes "$m" --repeat "$REPEAT" --warmup "$WARMUP" --no-skip --csv "$tmp" $([ "$m" != naive ] && echo $EXTRA) >/dev/null
    if [ ! -s "$csv" ]; then cat "$tmp" > "$csv"; else grep -v '^#' "$tmp" | tail -n +2 >> "$csv"; fi
    rm -f "$tmp"
  done
done
if [ "${TORCH:-1}" = 1 ] && ${PYTHON:-/usr/bin/python3} -c "import torch" 2>/dev/null; then
  ${PYTHON:-/usr/bin/python3} "$here/torch_bench.py" --rows $ROWS --dim "$DIM" --vocab "$VOCAB" \
    --repeat "$REPEAT" --warmup "$WARMUP" --csv "$csv" || echo "torch_bench.py failed (continuing)" >&2
fi
column -s, -t < <(grep -v '^#' "$csv") | cut -c1-220
if command -v gnuplot >/dev/null 2>&1; then
  gnuplot -e "csv='$csv'; out='$out/bench.png'; title='$TRANSFORM $DTYPE D=$DIM V=$VOCAB'" "$here/plot.gp"
  echo "plot: $out/bench.png"
fi
echo "csv: $csv"
