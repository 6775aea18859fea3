#!/bin/sh
# llama-train --compare on the tiny config: the libmel head and the naive
# full-logits head, trained from the same initialisation on the same
# batches, must give per-step losses within a relative 1e-5 of each other.
# Short (100 steps) to keep make check fast; the 300-step run is
# `make demo-llama` (doc/llama.md).
top=${MEL_TOP_BUILDDIR:-.}
bin=$top/examples/llama/llama-train
tmp=${TMPDIR:-/tmp}/llama_compare.$$
trap 'rm -f "$tmp".*' EXIT
echo "1..6"
if [ ! -x "$bin" ]; then
    echo "not ok 1 - $bin is built"; exit 1
fi
echo "ok 1 - $bin is built"

export OMP_WAIT_POLICY=passive
"$bin" --config tiny --compare --steps 100 --batch 4 --seq 32 --chunk-rows 24 \
    --seed 1234 --tol 1e-5 --save "$tmp.ckpt" >"$tmp.out" 2>"$tmp.err"
rc=$?
sed 's/^/# /' "$tmp.out" | grep -v '^# step' ; sed 's/^/# /' "$tmp.err"
if [ $rc -eq 0 ]; then echo "ok 2 - --compare exits 0"; else echo "not ok 2 - --compare exits 0 (got $rc)"; fi

n=$(grep -c '^step [0-9]* mel [-0-9.e]* naive [-0-9.e]* reldiff [-0-9.e]*$' "$tmp.out")
if [ "$n" = 100 ]; then echo "ok 3 - 100 machine-readable step lines"; else echo "not ok 3 - 100 step lines (got $n)"; fi

awk '$1 == "step" { if ($8 > m) m = $8 } END { printf "# max reldiff %.3e\n", m; exit !(m <= 1e-5) }' "$tmp.out" \
    && echo "ok 4 - max reldiff <= 1e-5" || echo "not ok 4 - max reldiff <= 1e-5"

awk '$1 == "step" && $2 == 1 { a = $4 } $1 == "step" { b = $4 } END { printf "# loss %.4f -> %.4f\n", a, b; exit !(b < a - 1.0) }' "$tmp.out" \
    && echo "ok 5 - loss falls by more than 1 nat" || echo "not ok 5 - loss falls by more than 1 nat"

# A tolerance nobody can meet must fail with status 3; a bad flag with 2.
"$bin" --config tiny --compare --steps 2 --batch 2 --seq 8 --load "$tmp.ckpt" --tol 0 >/dev/null 2>&1; r3=$?
"$bin" --steps abc >/dev/null 2>"$tmp.err2"; r2=$?
if [ $r3 -eq 3 ] && [ $r2 -eq 2 ] && grep -q -- "--steps" "$tmp.err2"; then
    echo "ok 6 - --tol 0 exits 3 after --load; bad flag exits 2"
else
    echo "not ok 6 - --tol 0 exits 3 (got $r3); bad flag exits 2 (got $r2)"
fi
