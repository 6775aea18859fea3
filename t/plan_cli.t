#!/bin/sh
# t/plan_cli.t -- `mel plan` reports the figures `mel run --stats` then
# measures (chunk rows, chunks, active rows, peak workspace), with and
# without labels to count masked rows, row skipping on and off, fused,
# recompute and naive; `mel run --no-skip`; bad usage.  Inputs are tiny
# .npy files written with printf (no Python):
#   N = 4, D = 1, V = 2, X = [1, 2, 3, 4], W = [[1], [0]],
#   labels = [0, -100, 1, -100] (two rows ignored).
set -u
top_build=${MEL_TOP_BUILDDIR:-.}
MEL=$top_build/tools/mel/mel
if [ ! -x "$MEL" ]; then
    echo "Bail out! $MEL is not built"
    exit 1
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mel-plan.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT

top_src=${MEL_TOP_SRCDIR:-.}
. "$top_src/t/tap.sh" # ok, diag, npy, done_testing
F0='\000\000\000\000\000\000\000\000'
F1='\000\000\000\000\000\000\360\077'
F2='\000\000\000\000\000\000\000\100'
F3='\000\000\000\000\000\000\010\100'
F4='\000\000\000\000\000\000\020\100'
I0='\000\000\000\000\000\000\000\000'
I1='\001\000\000\000\000\000\000\000'
IGN='\234\377\377\377\377\377\377\377' # -100
npy "$tmp/x.npy" '<f8' '(4, 1)' "$F1$F2$F3$F4"
npy "$tmp/w.npy" '<f8' '(2, 1)' "$F1$F0"
npy "$tmp/labels.npy" '<i8' '(4,)' "$I0$IGN$I1$IGN"

# field FILE NAME: the first integer value of "NAME": in a JSON file
field() { grep -o "\"$2\": [0-9]*" "$1" | head -n 1 | sed 's/.*: //'; }

RUN="run ce --hidden $tmp/x.npy --weight $tmp/w.npy --labels $tmp/labels.npy --dtype f64 --threads 1"
for mode in fused recompute naive; do
    for skip in on off; do
        for chunk in auto 1; do
            flags="--mode $mode"
            [ $skip = off ] && flags="$flags --no-skip"
            [ $chunk = 1 ] && [ $mode != naive ] && flags="$flags --chunk-rows 1"
            what="$mode, skipping $skip, chunk $chunk"
            $MEL $RUN $flags --grad-hidden "$tmp/dx.npy" --stats "$tmp/st.json" >/dev/null 2>"$tmp/err"
            ok $? "run $what: exits 0" || diag "$tmp/err"
            $MEL plan ce --rows 4 --dim 1 --vocab 2 --dtype f64 --threads 1 --labels "$tmp/labels.npy" \
                $flags --json >"$tmp/plan.json" 2>"$tmp/err"
            ok $? "plan $what: exits 0" || diag "$tmp/err"
            same=0
            for f in chunk_rows chunks peak_workspace_bytes active_rows; do
                a=$(field "$tmp/plan.json" $f)
                b=$(field "$tmp/st.json" $f)
                [ -n "$a" ] && [ "$a" = "$b" ] || same=1
            done
            ok $same "plan = run --stats for $what: $(tr -d '\n' <"$tmp/plan.json" | cut -c1-160)" ||
                { diag "$tmp/plan.json"; diag "$tmp/st.json"; }
            want=2
            [ $skip = off ] || [ $mode = naive ] && want=4
            [ "$(field "$tmp/st.json" active_rows)" = $want ]
            ok $? "run $what: $want active rows"
        done
    done
done
# the table: without labels every row counts
$MEL plan ce --rows 4096 --dim 1024 --vocab 32768 >"$tmp/out" 2>"$tmp/err"
ok $? "plan without labels: exits 0" || diag "$tmp/err"
grep -q '^forward_backward  *4096  *4096 ' "$tmp/out"
ok $? "plan without labels: 4096 rows, all active" || diag "$tmp/out"

# bad usage: exit 2, one line naming the flag
bad() { # bad DESCRIPTION PATTERN ARGS...
    d=$1 p=$2
    shift 2
    $MEL plan "$@" >/dev/null 2>"$tmp/err"
    rc=$?
    [ $rc -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q -- "$p" "$tmp/err"
    ok $? "$d: exit 2, '$p' ($(cat "$tmp/err"))"
}
bad "no --rows" "--rows is required" ce --dim 4 --vocab 8
bad "unknown mode" "unknown mode 'quick'" ce --rows 4 --dim 4 --vocab 8 --mode quick
bad "naive with --chunk-rows" "--chunk-rows: cannot be combined with --mode naive" ce --rows 4 --dim 4 --vocab 8 \
    --mode naive --chunk-rows 2
bad "labels of the wrong length" "--labels" ce --rows 5 --dim 1 --vocab 2 --labels "$tmp/labels.npy"
bad "unknown transform" "unknown transform" cee --rows 4 --dim 4 --vocab 8
bad "budget below one row of one column" "workspace limit" ce --rows 4 --dim 4 --vocab 100000 --workspace-bytes 100

done_testing
