#!/bin/sh
# compare_logs.sh MEL.csv NAIVE.csv [TOL]
# Compare two separate llama-train runs, one with --head mel and one with
# --head naive, same flags and --seed otherwise, each with --log-csv.  Use
# it when two copies of a model do not fit in memory for --compare (e.g.
# llama-3.2-1b with AdamW).  Prints `step <k> mel <loss> naive <loss>
# reldiff <x>` per step and exits 1 when a step's relative difference
# exceeds TOL (default 1e-5), 2 on bad input.
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 MEL.csv NAIVE.csv [TOL]" >&2; exit 2
fi
tol=${3:-1e-5}
for f in "$1" "$2"; do
    [ -r "$f" ] || { echo "$0: cannot read $f" >&2; exit 2; }
done
head -1 "$1" | grep -q '^step,loss_mel,' || { echo "$0: $1 is not a --head mel log" >&2; exit 2; }
head -1 "$2" | grep -q '^step,loss_naive,' || { echo "$0: $2 is not a --head naive log" >&2; exit 2; }
awk -F, -v tol="$tol" '
    FNR == 1 { next }
    NR == FNR { mel[$1] = $2; next }
    ($1 in mel) {
        d = mel[$1] - $2; if (d < 0) d = -d
        a = $2 < 0 ? -$2 : $2
        r = d / (a > 1e-30 ? a : 1e-30)
        printf "step %d mel %s naive %s reldiff %.3e\n", $1, mel[$1], $2, r
        if (r > m || r != r) m = r
        if (!(r <= tol)) bad++
        n++
    }
    END {
        if (n == 0) { print "no common steps" > "/dev/stderr"; exit 2 }
        printf "compare: %d steps, max reldiff %.3e (tol %g): %s\n", n, m, tol, bad ? "FAIL" : "PASS"
        exit bad ? 1 : 0
    }' "$1" "$2"
