#!/usr/bin/env bash
# The budget frontier of issue 19: one CE training step (fused: y, dX, dW)
# at a row of workspace budgets, against the naive full-logits call, each
# configuration in its own `mel bench` process (warm-up 1, one timed call),
# configurations interleaved round by round; medians over ROUNDS rounds.
#   examples/bench/frontier.sh [MEL] > out.txt
#   env: ROWS DIM VOCAB DTYPE BUDGETS ROUNDS TILE_COLS (forced width, optional)
# Prints one line per configuration: median seconds, ratio to naive, peak
# workspace, rows per chunk, tile columns (0: whole rows), chunks.
set -euo pipefail
mel=${1:-tools/mel/mel}
N=${ROWS:-4096} D=${DIM:-1024} V=${VOCAB:-32768} DT=${DTYPE:-f32}
BUDGETS=${BUDGETS:-"1M 4M 8M 16M 32M 64M default"}
ROUNDS=${ROUNDS:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
one() { # name, extra args...
    local name=$1
    shift
    "$mel" bench --rows "$N" --dim "$D" --vocab "$V" --dtype "$DT" --repeat 1 --warmup 1 --ignore 0 \
        --csv "$tmp/$name.$r.csv" "$@" >/dev/null
}
echo "# frontier: CE $DT N=$N D=$D V=$V, $(nproc) cores, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}," \
     "commit $(git rev-parse --short HEAD 2>/dev/null || echo ?), $ROUNDS rounds, $(date -u +%FT%TZ)"
for r in $(seq "$ROUNDS"); do
    one naive --modes naive
    for b in $BUDGETS; do
        if [ "$b" = default ]; then one "b_$b" --modes fused
        else one "b_$b" --modes fused --workspace-bytes "$b"; fi
    done
done
# the CSV of mel bench, by column name
field() { # file, column name
    awk -F, -v c="$2" '/^#/ {next} !h {for (i = 1; i <= NF; i++) if ($i == c) k = i; h = 1; next} {v = $k} END {print v}' "$1"
}
printf "%-10s %9s %8s %14s %8s %10s %7s\n" config median_s x_naive workspace_MiB rows tile_cols chunks
naive_t=""
for name in naive $(for b in $BUDGETS; do echo "b_$b"; done); do
    t=$(for x in "$tmp/$name".*.csv; do field "$x" time_median_s; done | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
    f=$(ls "$tmp/$name".*.csv | head -1)
    [ -z "$naive_t" ] && naive_t=$t
    printf "%-10s %9.3f %8.2f %14.1f %8s %10s %7s\n" "${name#b_}" "$t" "$(echo "$t / $naive_t" | bc -l)" \
        "$(echo "$(field "$f" peak_workspace_bytes) / 1048576" | bc -l)" "$(field "$f" chunk_rows)" \
        "$(field "$f" tile_cols)" "$(field "$f" chunks)"
done
