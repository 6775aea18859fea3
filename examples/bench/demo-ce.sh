#!/bin/sh
# examples/bench/demo-ce.sh MEL CSV -- the CE part of `make demo`: one
# training step (y = mean CE, dX, dW) at N = 4096, D = 1024, V = 32768, f32,
# naive vs recompute vs fused, each mode in its own `mel bench` process so
# that the peak-RSS column is that mode's own (a process's peak never goes
# down), with a warm-up and repeats so that the median time is stable.
# Environment: REPEAT (3), WARMUP (1), ROWS (4096), DIM (1024), VOCAB (32768).
set -eu
mel=$1
csv=$2
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-1}
rm -f "$csv"
for m in naive recompute fused; do
    "$mel" bench --transform ce --rows "${ROWS:-4096}" --dim "${DIM:-1024}" --vocab "${VOCAB:-32768}" \
        --dtype f32 --modes "$m" --repeat "$REPEAT" --warmup "$WARMUP" --no-skip --csv "$csv.$m" >/dev/null
    if [ ! -f "$csv" ]; then cat "$csv.$m" >"$csv"; else grep -v '^#' "$csv.$m" | tail -n +2 >>"$csv"; fi
    rm -f "$csv.$m"
done
# columns: 6 mode, 8 chunk_rows, 9 chunks, 10-12 time median/min/max, 16 peak_workspace_bytes,
# 17 naive_logits_bytes, 18 max_rss_bytes, 19 loss
awk -F, -v rep="$REPEAT" -v warm="$WARMUP" '
    /^#/ { print; next }
    $1 == "rows" { next }
    { n++; mode[n] = $6; t[n] = $10; tmin[n] = $11; tmax[n] = $12; ws[n] = $16 / 1048576
      rss[n] = $18 / 1048576; loss[n] = $19; rows[n] = $8 "x" $9; N = $1; D = $2; V = $3 }
    END {
        printf "CE training step, f32, N = %d, D = %d, V = %d; median of %d after %d warm-up, each mode in its own process\n", N, D, V, rep, warm
        printf "%-10s %16s %20s %18s %14s %20s\n", "mode", "time s (min-max)", "rows/chunk x chunks", "peak workspace MiB", "peak RSS MiB", "loss"
        for (i = 1; i <= n; i++)
            printf "%-10s %6.2f (%.2f-%.2f) %20s %18.1f %14.1f %20.17g\n", mode[i], t[i], tmin[i], tmax[i], rows[i], ws[i], rss[i], loss[i]
        for (i = 1; i <= n; i++) if (mode[i] == "naive") b = i
        for (i = 1; i <= n; i++) if (mode[i] == "fused" && b)
            printf "fused vs naive: time x%.2f, peak workspace x%.3f (%.1f vs %.1f MiB), peak RSS x%.2f (%.1f vs %.1f MiB)\n", t[i] / t[b], ws[i] / ws[b], ws[i], ws[b], rss[i] / rss[b], rss[i], rss[b]
        printf "peak RSS: the process peak since the inputs were built (X, W, dX, dW: %.1f MiB) plus the workspace and the process itself\n", (N * D * 2 + V * D * 2) * 4 / 1048576
    }' "$csv"
