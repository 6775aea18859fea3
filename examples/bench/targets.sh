#!/usr/bin/env bash
# The issue-4 targets on this machine: CE, f32, N = 4096, D = 1024, V = 32768,
# default budget, each mode in its own process, medians of REPEAT runs.
# Prints a markdown table of the measured ratios.
#   examples/bench/targets.sh [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-bench-targets}
ROWS=${ROWS:-4096} DIM=${DIM:-1024} VOCAB=${VOCAB:-32768} REPEAT=${REPEAT:-5} TORCH=${TORCH:-1} \
  "$here/run.sh" "$out" >/dev/null
csv="$out/bench.csv"
awk -F, -v D="${DIM:-1024}" -v V="${VOCAB:-32768}" -v N="${ROWS:-4096}" '
  /^#/ { print "<!-- " $0 " -->"; next }
  $1 == "rows" { next }
  { t[$6] = $10; g[$6] = $13; ws[$6] = $16; rss[$6] = $18; loss[$6] = $19; cr[$6] = $8; ch[$6] = $9 }
  END {
    io = 4 * (2 * N * D + 2 * V * D)   # X, W, dX, dW in f32
    printf "| quantity | measured | target |\n|---|---|---|\n"
    printf "| fused / naive time | %.3f (%.2f s / %.2f s) | <= 1.10 |\n", t["fused"] / t["naive"], t["fused"], t["naive"]
    printf "| recompute / naive time | %.3f (%.2f s) | <= 1.45 |\n", t["recompute"] / t["naive"], t["recompute"]
    printf "| non-GEMM share of fused time | %.1f%% | <= 15%% |\n", 100 * (1 - g["fused"] / t["fused"])
    printf "| fused peak workspace / naive | %.3f (%.1f MiB / %.1f MiB; %s rows x %s chunks) | <= 0.10 |\n", ws["fused"] / ws["naive"], ws["fused"] / 1048576, ws["naive"] / 1048576, cr["fused"], ch["fused"]
    printf "| fused (peak RSS - inputs/outputs) / naive | %.3f (%.1f MiB / %.1f MiB) | <= 0.10 |\n", (rss["fused"] - io) / (rss["naive"] - io), (rss["fused"] - io) / 1048576, (rss["naive"] - io) / 1048576
    if ("torch_eager" in t) printf "| PyTorch eager (same shapes, CPU) | %.2f s, peak RSS %.0f MiB | - |\n", t["torch_eager"], rss["torch_eager"] / 1048576
    printf "| losses (naive / recompute / fused) | %s / %s / %s | equal |\n", loss["naive"], loss["recompute"], loss["fused"]
  }' "$csv"
