#!/bin/sh
# llama-train --task grpo from the command line: a few steps of --compare
# --lockstep and of --compare (two trained copies) print the documented
# step lines and the final line, agree within --tol, and bad or
# contradictory flags exit 2 naming them.  The numerical checks of the
# GRPO heads are in t/llama_grpo.t.
top=${MEL_TOP_BUILDDIR:-.}
bin=$top/examples/llama/llama-train
tmp=${TMPDIR:-/tmp}/llama_grpo_cli.$$
trap 'rm -f "$tmp".*' EXIT
echo "1..7"
if [ ! -x "$bin" ]; then
    echo "not ok 1 - $bin is built"; exit 1
fi
echo "ok 1 - $bin is built"
export OMP_WAIT_POLICY=passive

"$bin" --task grpo --compare --lockstep --steps 12 --prompts 16 --group 8 --chunk-rows 100 \
    --seed 7 --log-csv "$tmp.csv" >"$tmp.out" 2>"$tmp.err"
rc=$?
grep -v '^step ' "$tmp.out" | sed 's/^/# /'; sed 's/^/# /' "$tmp.err"
n=$(grep -c '^step [0-9]* reward [0-9.]* loss_mel [-0-9.e]* loss_naive [-0-9.e]* reldiff [-0-9.e+]* clip [0-9.]* kl [-0-9.e]*$' "$tmp.out")
if [ $rc -eq 0 ] && [ "$n" = 12 ]; then echo "ok 2 - --lockstep: exit 0, 12 step lines"
else echo "not ok 2 - --lockstep: exit 0 (got $rc), 12 step lines (got $n)"; fi
if grep -q '^grpo: reward [0-9.]* -> [0-9.]*, max reldiff [0-9.e+-]*$' "$tmp.out" &&
   [ "$(wc -l < "$tmp.csv")" = 13 ] && head -1 "$tmp.csv" | grep -q '^step,reward,loss_mel,loss_naive,reldiff,'; then
    echo "ok 3 - final grpo: line and a 12-row CSV"
else echo "not ok 3 - final grpo: line and a 12-row CSV"; fi
awk '$1 == "step" { if ($10 > m) m = $10 } END { printf "# max reldiff %.3e\n", m; exit !(m <= 1e-5) }' "$tmp.out" \
    && echo "ok 4 - --lockstep max reldiff <= 1e-5" || echo "not ok 4 - --lockstep max reldiff <= 1e-5"

# two trained copies, sequence level, grpo loss type, over a few steps
"$bin" --task grpo --compare --steps 6 --prompts 16 --group 8 --loss-type grpo \
    --importance-sampling sequence --seed 7 >"$tmp.out2" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q '^compare: .*PASS$' "$tmp.out2"; then echo "ok 5 - --compare (two copies) 6 steps PASS"
else echo "not ok 5 - --compare (two copies) exits 0 and passes (got $rc)"; sed 's/^/# /' "$tmp.out2"; fi

# bad and contradictory flags
"$bin" --task grpo --batch 4 >/dev/null 2>"$tmp.e1"; r1=$?
"$bin" --beta 0.1 >/dev/null 2>"$tmp.e2"; r2=$?
"$bin" --task grpo --lockstep >/dev/null 2>"$tmp.e3"; r3=$?
"$bin" --task grpo --loss-type foo >/dev/null 2>"$tmp.e4"; r4=$?
cat "$tmp.e1" "$tmp.e2" "$tmp.e3" "$tmp.e4" | sed 's/^/# /'
if [ $r1 -eq 2 ] && grep -q -- '--batch' "$tmp.e1" && [ $r2 -eq 2 ] && grep -q -- '--beta' "$tmp.e2" &&
   [ $r3 -eq 2 ] && grep -q -- '--compare' "$tmp.e3" && [ $r4 -eq 2 ] && grep -q "'foo'" "$tmp.e4"; then
    echo "ok 6 - bad or contradictory GRPO flags exit 2 naming them"
else echo "not ok 6 - bad flags exit 2 (got $r1 $r2 $r3 $r4)"; fi
"$bin" --task grpo --group 1 >/dev/null 2>"$tmp.e5"; r5=$?
if [ $r5 -eq 2 ] && grep -q -- '--group' "$tmp.e5"; then echo "ok 7 - --group 1 with scaled rewards exits 2"
else echo "not ok 7 - --group 1 exits 2 (got $r5)"; fi
