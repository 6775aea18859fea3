#!/bin/sh
# t/cli.t -- the mel tool end to end (TAP).
#
# No Python: the .npy inputs are written byte by byte with printf, outputs
# are read back with od, and every expected value is computed here with awk
# from closed forms of a tiny problem:
#   N = 2, D = 1, V = 2,  X = [[1], [2]],  W = [[1], [0]],  labels = [0, 1]
#   logits z0 = [1, 0], z1 = [2, 0]
#   CE_0 = log(1 + e^-1), CE_1 = log(1 + e^2)
#   dZ = softmax(z) - onehot(label); dX = dZ·W, dW = dZᵀ·X (÷ 2 for mean).
set -u
top_build=${MEL_TOP_BUILDDIR:-.}
top_src=${MEL_TOP_SRCDIR:-.}
MEL=$top_build/tools/mel/mel
if [ ! -x "$MEL" ]; then
    echo "Bail out! $MEL is not built"
    exit 1
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mel-cli.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT

. "$top_src/t/tap.sh" # ok, diag, npy, done_testing

# little-endian bytes of a few exact doubles and integers
F0='\000\000\000\000\000\000\000\000'
F1='\000\000\000\000\000\000\360\077'
F2='\000\000\000\000\000\000\000\100'
I64_0='\000\000\000\000\000\000\000\000'
I64_1='\001\000\000\000\000\000\000\000'
I64_5='\005\000\000\000\000\000\000\000'
I32_0='\000\000\000\000'
I32_1='\001\000\000\000'

# values FILE: the elements of a float64 or float32 .npy file, one a line
values() {
    hl=$(od -A n -t u2 -j 8 -N 2 "$1" | tr -d ' ')
    case $(head -c 64 "$1") in
    *"'<f4'"*) t=f4 ;;
    *) t=f8 ;;
    esac
    od -A n -v -t $t -j $((10 + hl)) "$1" | tr -s ' ' '\n' | sed '/^$/d'
}
# close GOT WANT [RTOL]: |got - want| <= rtol·(1 + |want|)
close() {
    awk -v g="$1" -v w="$2" -v r="${3:-1e-12}" 'BEGIN {
        d = g - w; if (d < 0) d = -d; a = w < 0 ? -w : w
        exit !(g != "" && d <= r * (1 + a)) }'
}
# close_list FILE "W1 W2 ..." [RTOL]: every value of FILE against the list
close_list() {
    got=$(values "$1" | tr '\n' ' ')
    set -- "$got" "$2" "${3:-1e-12}"
    awk -v g="$1" -v w="$2" -v r="$3" 'BEGIN {
        ng = split(g, G, " "); nw = split(w, W, " ")
        if (ng != nw) exit 1
        for (i = 1; i <= ng; i++) {
            d = G[i] - W[i]; if (d < 0) d = -d; a = W[i] < 0 ? -W[i] : W[i]
            if (d > r * (1 + a)) exit 1
        }
        exit 0 }'
}
expect() { awk "BEGIN { e = exp(1); $1 }"; }

# ---- inputs
npy "$tmp/x.npy" '<f8' '(2, 1)' "$F1$F2"
npy "$tmp/w.npy" '<f8' '(2, 1)' "$F1$F0"
npy "$tmp/b.npy" '<f8' '(2,)' "$F0$F1"
npy "$tmp/labels.npy" '<i8' '(2,)' "$I64_0$I64_1"
npy "$tmp/labels32.npy" '<i4' '(2,)' "$I32_0$I32_1"
npy "$tmp/labels_bad.npy" '<i8' '(2,)' "$I64_0$I64_5"
npy "$tmp/labels_f.npy" '<f8' '(2,)' "$F0$F1"
npy "$tmp/labels3.npy" '<i8' '(3,)' "$I64_0$I64_1$I64_0"
npy "$tmp/w_d2.npy" '<f8' '(2, 2)' "$F1$F0$F0$F1"
npy "$tmp/w_v1.npy" '<f8' '(1, 1)' "$F1"
npy "$tmp/labels_v1.npy" '<i8' '(2,)' "$I64_0$I64_0"
npy "$tmp/g2.npy" '<f8' '()' "$F2"
npy "$tmp/ftn2.npy" '<f8' '(2, 2)' "$F1$F2$F1$F2" True
printf 'this is not a .npy file\n' >"$tmp/garbage.npy"
npy "$tmp/u2.npy" '<u2' '(2,)' '\000\000\001\000'

ce0=$(expect 'printf "%.17g", log(1 + exp(-1))')
ce1=$(expect 'printf "%.17g", log(1 + exp(2))')
mean=$(expect 'printf "%.17g", (log(1 + exp(-1)) + log(1 + exp(2))) / 2')
# mean-reduced gradients
p00=$(expect 'printf "%.17g", e / (e + 1)')        # softmax([1, 0])[0]
p10=$(expect 'printf "%.17g", e^2 / (e^2 + 1)')    # softmax([2, 0])[0]
dx=$(awk -v a="$p00" -v b="$p10" 'BEGIN { printf "%.17g %.17g", (a - 1) / 2, b / 2 }')
dw=$(awk -v a="$p00" -v b="$p10" 'BEGIN {
    printf "%.17g %.17g", ((a - 1) * 1 + b * 2) / 2, ((1 - a) * 1 + ((1 - b) - 1) * 2) / 2 }')
RUN="run ce --hidden $tmp/x.npy --weight $tmp/w.npy --labels $tmp/labels.npy"

# ---- version, list
version=$(sed -n 's/^AC_INIT(\[[^]]*\], *\[\([^]]*\)\].*/\1/p' "$top_src/configure.ac")
out=$("$MEL" --version)
rc=$?
case $out in *"$version"*) r=$rc ;; *) r=1 ;; esac
ok $r "mel --version prints $version ($out)"
"$MEL" list >"$tmp/list"
rc=$?
grep -q '^ce ' "$tmp/list" && [ $rc -eq 0 ]
ok $? "mel list lists ce"

# ---- run ce, float64, against the closed forms
$MEL $RUN --dtype f64 --output "$tmp/y.npy" 2>"$tmp/err"
ok $? "run ce --dtype f64 exits 0" || diag "$tmp/err"
close_list "$tmp/y.npy" "$mean"
ok $? "mean CE = (log(1+e^-1) + log(1+e^2))/2 = $mean (got $(values "$tmp/y.npy"))"
head -c 128 "$tmp/y.npy" | grep -q "'shape': ()"
ok $? "--output of a reduced y is 0-d"
got=$($MEL $RUN --dtype f64)
close "$got" "$mean"
ok $? "without --output y is printed on stdout ($got)"
$MEL $RUN --dtype f64 --reduction none --output "$tmp/yn.npy"
close_list "$tmp/yn.npy" "$ce0 $ce1"
ok $? "--reduction none gives both rows ($(values "$tmp/yn.npy" | tr '\n' ' '))"
got=$($MEL $RUN --dtype f64 --reduction sum)
close "$got" "$(awk -v a="$ce0" -v b="$ce1" 'BEGIN { printf "%.17g", a + b }')"
ok $? "--reduction sum ($got)"
got=$($MEL run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/labels32.npy" --dtype f64)
close "$got" "$mean"
ok $? "int32 labels ($got)"

# ---- gradients in every mode
for mode in fused recompute naive chunk1; do
    case $mode in
    chunk1) flags="--chunk-rows 1" ;;
    *) flags="--mode $mode" ;;
    esac
    rm -f "$tmp/dx.npy" "$tmp/dw.npy" "$tmp/y.npy"
    $MEL $RUN --dtype f64 $flags --output "$tmp/y.npy" --grad-hidden "$tmp/dx.npy" \
        --grad-weight "$tmp/dw.npy" --stats "$tmp/stats.json" 2>"$tmp/err"
    ok $? "$mode: exits 0" || diag "$tmp/err"
    close_list "$tmp/y.npy" "$mean"
    ok $? "$mode: y"
    close_list "$tmp/dx.npy" "$dx"
    ok $? "$mode: dX = ($dx) (got $(values "$tmp/dx.npy" | tr '\n' ' '))"
    close_list "$tmp/dw.npy" "$dw"
    ok $? "$mode: dW = ($dw) (got $(values "$tmp/dw.npy" | tr '\n' ' '))"
done
grep -q '"chunks": 2,' "$tmp/stats.json" && grep -q '"chunk_rows": 1,' "$tmp/stats.json" &&
    grep -q '"peak_workspace_bytes": [1-9]' "$tmp/stats.json" && grep -q '"seconds": ' "$tmp/stats.json"
ok $? "--stats with --chunk-rows 1: chunk_rows 1, chunks 2, peak_workspace_bytes > 0" ||
    diag "$tmp/stats.json"

# upstream gradient 2 doubles the gradients
$MEL $RUN --dtype f64 --grad-output "$tmp/g2.npy" --grad-hidden "$tmp/dx.npy" >/dev/null
close_list "$tmp/dx.npy" "$(echo "$dx" | awk '{ printf "%.17g %.17g", 2 * $1, 2 * $2 }')"
ok $? "--grad-output 2 doubles dX"

# bias b = [0, 1]: z0 = [1, 1], z1 = [2, 1]; CE_0 = log 2, CE_1 = log(1 + e)
$MEL $RUN --dtype f64 --bias "$tmp/b.npy" --output "$tmp/y.npy" --grad-bias "$tmp/db.npy"
close_list "$tmp/y.npy" "$(expect 'printf "%.17g", (log(2) + log(1 + e)) / 2')"
ok $? "bias: mean CE = (log 2 + log(1+e))/2"
# db = Σ_i dZ_i / 2: dZ_0 = [1/2 - 1, 1/2], dZ_1 = [e/(e+1), 1/(e+1) - 1]
close_list "$tmp/db.npy" "$(expect 'printf "%.17g %.17g", (-0.5 + e / (e + 1)) / 2, (0.5 + 1 / (e + 1) - 1) / 2')"
ok $? "bias: db (got $(values "$tmp/db.npy" | tr '\n' ' '))"

# V = 1: the only class has probability 1, CE = 0 and dX = 0
got=$($MEL run ce --hidden "$tmp/x.npy" --weight "$tmp/w_v1.npy" --labels "$tmp/labels_v1.npy" --dtype f64 --grad-hidden "$tmp/dx1.npy")
close "$got" 0 && close_list "$tmp/dx1.npy" "0 0"
ok $? "V = 1: CE = 0, dX = 0 ($got)"

# float32 storage: same values to fp32 accuracy; gradients saved as float32
$MEL $RUN --dtype f32 --output "$tmp/y.npy" --grad-hidden "$tmp/dx.npy" 2>"$tmp/err"
ok $? "--dtype f32 exits 0" || diag "$tmp/err"
close_list "$tmp/y.npy" "$mean" 1e-6 && close_list "$tmp/dx.npy" "$dx" 1e-6
ok $? "--dtype f32: y and dX within 1e-6"
head -c 128 "$tmp/dx.npy" | grep -q "'<f4'"
ok $? "--dtype f32: --grad-hidden is float32"

# ---- an outside reference: the PyTorch fixture t/fixtures/ce_bias (f64, sum)
fx=$top_src/t/fixtures/ce_bias
# close_files GOT WANT RTOL: the values of two .npy files agree
close_files() { close_list "$1" "$(values "$2" | tr '\n' ' ')" "$3"; }
if [ -f "$fx/X.npy" ] && grep -q '^reduction=sum' "$fx/case.txt"; then
    $MEL run ce --hidden "$fx/X.npy" --weight "$fx/W.npy" --bias "$fx/bias.npy" \
        --labels "$fx/labels.npy" --reduction sum --dtype f64 --output "$tmp/fy.npy" \
        --grad-hidden "$tmp/fdx.npy" --grad-weight "$tmp/fdw.npy" --grad-bias "$tmp/fdb.npy" \
        --chunk-rows 5 2>"$tmp/err"
    ok $? "run ce on fixture ce_bias exits 0" || diag "$tmp/err"
    close_files "$tmp/fy.npy" "$fx/y.npy" 1e-10 && close_files "$tmp/fdx.npy" "$fx/dX.npy" 1e-10 &&
        close_files "$tmp/fdw.npy" "$fx/dW.npy" 1e-10 && close_files "$tmp/fdb.npy" "$fx/db.npy" 1e-10
    ok $? "fixture ce_bias (torch F.cross_entropy): y, dX, dW, db agree to 1e-10"
else
    n=$((n + 1))
    echo "ok $n # SKIP fixture t/fixtures/ce_bias not present"
fi

# ---- every CE fixture (PyTorch F.cross_entropy, f64) through `mel run ce`:
# f64 to 1e-12 at chunk sizes 1, 3 and one chunk; f32 to 1e-5 at chunk 7
for fx in "$top_src"/t/fixtures/ce_*; do
    c=$(basename "$fx")
    red=$(sed -n 's/^reduction=//p' "$fx/case.txt")
    params=$(grep '^param\.' "$fx/case.txt" | sed 's/^param\./--param /' | tr '\n' ' ')
    extra=""
    [ -f "$fx/bias.npy" ] && extra="$extra --bias $fx/bias.npy --grad-bias $tmp/cdb.npy"
    [ -f "$fx/grad_output.npy" ] && extra="$extra --grad-output $fx/grad_output.npy"
    for spec in "f64 1 1e-12" "f64 3 1e-12" "f64 100000 1e-12" "f32 7 1e-5"; do
        set -- $spec
        # shellcheck disable=SC2086
        $MEL run ce --hidden "$fx/X.npy" --weight "$fx/W.npy" --labels "$fx/labels.npy" $params \
            --reduction "$red" --dtype "$1" --chunk-rows "$2" $extra --output "$tmp/cy.npy" \
            --grad-hidden "$tmp/cdx.npy" --grad-weight "$tmp/cdw.npy" 2>"$tmp/err" &&
            close_files "$tmp/cy.npy" "$fx/y.npy" "$3" && close_files "$tmp/cdx.npy" "$fx/dX.npy" "$3" &&
            close_files "$tmp/cdw.npy" "$fx/dW.npy" "$3" &&
            { [ ! -f "$fx/bias.npy" ] || close_files "$tmp/cdb.npy" "$fx/db.npy" "$3"; }
        ok $? "run ce on $c ($red) --dtype $1 --chunk-rows $2: y, dX, dW$([ -f "$fx/bias.npy" ] && echo ", db") within $3 of PyTorch" || diag "$tmp/err"
    done
done

# ---- GRPO through the CLI: --param loss_type chooses TRL's reduction
# (the fixtures t/fixtures/grpo_loss_* were written by TRL 1.16's loss code)
for lt in grpo bnpo dr_grpo dapo; do
    fx=$top_src/t/fixtures/grpo_loss_$lt
    params=$(grep '^param\.' "$fx/case.txt" | grep -v '^param\.loss_type' | sed 's/^param\./--param /' | tr '\n' ' ')
    # shellcheck disable=SC2086
    $MEL run grpo --hidden "$fx/X.npy" --weight "$fx/W.npy" --labels "$fx/labels.npy" \
        --input mask="$fx/mask.npy" --input advantages="$fx/advantages.npy" \
        --input old_logp="$fx/old_logp.npy" $([ -f "$fx/ref_logp.npy" ] && echo --input ref_logp="$fx/ref_logp.npy") \
        $params --param loss_type=$lt --dtype f64 --output "$tmp/gy.npy" \
        --grad-hidden "$tmp/gdx.npy" --grad-weight "$tmp/gdw.npy" --chunk-rows 5 2>"$tmp/err" &&
        close_files "$tmp/gy.npy" "$fx/y.npy" 1e-10 && close_files "$tmp/gdx.npy" "$fx/dX.npy" 1e-10 &&
        close_files "$tmp/gdw.npy" "$fx/dW.npy" 1e-10
    ok $? "run grpo --param loss_type=$lt: y, dX, dW agree with TRL's fixture to 1e-10" || diag "$tmp/err"
done
"$MEL" gradcheck grpo --param importance_sampling_level=sequence --param seq_len=4 --param beta=0.04 >"$tmp/gc" 2>&1
ok $? "gradcheck grpo (sequence level, beta 0.04) passes" || diag "$tmp/gc"

# ---- preference losses through the CLI: the sequence ids as --input seq_ids=FILE, the loss
# type as a word (t/fixtures/dpo_*, cpo_*: TRL 1.16's own loss code)
for c in dpo_ipo:ipo dpo_rpo:sigmoid dpo_ref_input:sigmoid cpo_simpo:simpo; do
    case_=${c%%:*} word=${c#*:} tn=${c%%_*}
    fx=$top_src/t/fixtures/$case_
    params=$(grep '^param\.' "$fx/case.txt" | grep -v '^param\.loss_type\|^param\.ref_source' | sed 's/^param\./--param /' | tr '\n' ' ')
    # shellcheck disable=SC2086
    $MEL run "$tn" --hidden "$fx/X.npy" --weight "$fx/W.npy" --labels "$fx/labels.npy" \
        --input seq_ids="$fx/seq_ids.npy" $([ -f "$fx/ref_logp.npy" ] && echo --input ref_logp="$fx/ref_logp.npy") \
        $([ -f "$fx/Xt.npy" ] && echo --teacher-hidden "$fx/Xt.npy" --teacher-weight "$fx/Wt.npy") \
        $([ -f "$fx/bias.npy" ] && echo --bias "$fx/bias.npy") \
        $params --param loss_type=$word --dtype f64 --output "$tmp/py.npy" \
        --grad-hidden "$tmp/pdx.npy" --grad-weight "$tmp/pdw.npy" --chunk-rows 5 2>"$tmp/err" &&
        close_files "$tmp/py.npy" "$fx/y.npy" 1e-10 && close_files "$tmp/pdx.npy" "$fx/dX.npy" 1e-10 &&
        close_files "$tmp/pdw.npy" "$fx/dW.npy" 1e-10
    ok $? "run $tn --param loss_type=$word ($case_): y, dX, dW agree with TRL's fixture to 1e-10" || diag "$tmp/err"
done
for t in dpo cpo simpo orpo kto; do
    "$MEL" gradcheck $t >"$tmp/gc" 2>&1
    ok $? "gradcheck $t passes on the inputs it draws (whole pairs, reference log-probs)" || diag "$tmp/gc"
done
"$MEL" run dpo --hidden "$top_src/t/fixtures/dpo_ipo/X.npy" --weight "$top_src/t/fixtures/dpo_ipo/W.npy" \
    --labels "$top_src/t/fixtures/dpo_ipo/labels.npy" --input seq_ids="$top_src/t/fixtures/dpo_ipo/seq_ids.npy" \
    --param loss_type=ipoo >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "loss_type = 'ipoo' is not one of" "$tmp/err"
ok $? "run dpo --param loss_type=ipoo: refused naming the word (exit 2)" || diag "$tmp/err"

# ---- gradcheck
"$MEL" gradcheck ce >"$tmp/gc" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -q '^PASS' "$tmp/gc" && grep -q 'failed 0' "$tmp/gc"
ok $? "mel gradcheck ce passes (exit $rc)" || diag "$tmp/gc"
"$MEL" gradcheck ce --rows 5 --vocab 3 --reduction none --seed 7 --param label_smoothing=0.1 >"$tmp/gc" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -q '^PASS' "$tmp/gc"
ok $? "mel gradcheck ce --reduction none --param label_smoothing=0.1 passes (exit $rc)" ||
    diag "$tmp/gc"

# ---- no extra copies (issue 12): inputs whose dtype is the compute dtype are
# used in place; converted ones replace the loaded data
json_num() { sed -n "s/.*\"$2\": \([-0-9]*\).*/\1/p" "$1" | head -1; }
$MEL $RUN --dtype f64 --grad-hidden "$tmp/dx.npy" --stats "$tmp/st.json" >/dev/null 2>"$tmp/err"
[ "$(json_num "$tmp/st.json" input_bytes_converted)" = 0 ] &&
    [ "$(json_num "$tmp/st.json" input_bytes_held)" = 48 ]
ok $? "--dtype f64 on float64 files: nothing converted, X, W, labels held once (48 bytes)" ||
    diag "$tmp/st.json" "$tmp/err"
$MEL $RUN --dtype f32 --grad-hidden "$tmp/dx.npy" --stats "$tmp/st.json" >/dev/null 2>"$tmp/err"
[ "$(json_num "$tmp/st.json" input_bytes_converted)" = 16 ] &&
    [ "$(json_num "$tmp/st.json" input_bytes_held)" = 32 ]
ok $? "--dtype f32 on float64 files: X and W converted once (16 bytes), the float64 data released (32 bytes held)" ||
    diag "$tmp/st.json" "$tmp/err"
# peak RSS at a moderate shape: X = 0 [1024, 256], W = 0 [16384, 256] float32
# (files of zeros), so CE = log V exactly; peak RSS <= inputs + outputs +
# libmel's peak workspace + 64 MiB (the bound of issue 12)
npy_zeros() { # npy_zeros FILE DESCR SHAPE BYTES
    npy "$1" "$2" "$3" ''
    head -c "$4" /dev/zero >>"$1"
}
npy_zeros "$tmp/zx.npy" '<f4' '(1024, 256)' $((1024 * 256 * 4))
npy_zeros "$tmp/zw.npy" '<f4' '(16384, 256)' $((16384 * 256 * 4))
npy_zeros "$tmp/zl.npy" '<i4' '(1024,)' $((1024 * 4))
$MEL run ce --hidden "$tmp/zx.npy" --weight "$tmp/zw.npy" --labels "$tmp/zl.npy" --threads 2 \
    --output "$tmp/zy.npy" --grad-hidden "$tmp/zdx.npy" --grad-weight "$tmp/zdw.npy" \
    --stats "$tmp/zst.json" 2>"$tmp/err"
ok $? "run ce on 1024 x 256 x 16384 float32 zeros exits 0" || diag "$tmp/err"
close_list "$tmp/zy.npy" "$(expect 'printf "%.17g", log(16384)')" 1e-6
ok $? "zeros: CE = log V ($(values "$tmp/zy.npy"))"
rss=$(json_num "$tmp/zst.json" max_rss_bytes)
ws=$(json_num "$tmp/zst.json" peak_workspace_bytes)
io=$(( (1024 * 256 + 16384 * 256 + 1024) * 4 + (1024 * 256 + 16384 * 256) * 4 ))
[ -n "$rss" ] && [ -n "$ws" ] && [ "$rss" -le $((io + ws + (64 << 20))) ] &&
    [ "$(json_num "$tmp/zst.json" input_bytes_converted)" = 0 ]
ok $? "peak RSS $((${rss:-0} >> 20)) MiB <= inputs + outputs $((io >> 20)) MiB + workspace $((${ws:-0} >> 20)) MiB + 64 MiB" ||
    diag "$tmp/zst.json"
rm -f "$tmp"/z*.npy

# the BLAS in view (issue 22): its name, file, kernel and threads in --stats and in
# mel bench's header; OPENBLAS_CORETYPE changes the kernel a DYNAMIC_ARCH OpenBLAS
# reports (the kernel shown is OpenBLAS's live choice, not a build-time string)
json_str() { sed -n "s/.*\"$2\": \"\([^\"]*\)\".*/\1/p" "$1" | head -1; }
$MEL $RUN --threads 2 --stats "$tmp/st.json" >/dev/null 2>"$tmp/err"
kernel=$(json_str "$tmp/st.json" blas_kernel)
[ -n "$(json_str "$tmp/st.json" blas)" ] && [ -f "$(json_str "$tmp/st.json" blas_file)" ] &&
    [ "$(json_str "$tmp/st.json" blas_threads)" = 2 ]
ok $? "--stats names the BLAS, its file and its threads during the call (2): $(json_str "$tmp/st.json" blas), kernel '$kernel'" ||
    diag "$tmp/st.json" "$tmp/err"
"$MEL" bench --rows 8 --dim 4 --vocab 16 --repeat 1 --warmup 0 --modes fused >"$tmp/out" 2>"$tmp/err"
head -1 "$tmp/out" | grep -q "; blas $(json_str "$tmp/st.json" blas), kernel ${kernel:-unknown}, "
ok $? "mel bench's header names the BLAS and its kernel: $(head -1 "$tmp/out" | sed 's/.*; blas \([^;]*\);.*/\1/')" ||
    diag "$tmp/out" "$tmp/err"
case $(json_str "$tmp/st.json" blas_config) in
*DYNAMIC_ARCH*)
    OPENBLAS_CORETYPE=Prescott $MEL $RUN --stats "$tmp/st2.json" >/dev/null 2>"$tmp/err"
    [ "$(json_str "$tmp/st2.json" blas_kernel)" = Prescott ]
    ok $? "OPENBLAS_CORETYPE=Prescott: --stats reports the kernel Prescott ($(json_str "$tmp/st2.json" blas_kernel))" ||
        diag "$tmp/st2.json" "$tmp/err" ;;
*) echo "ok $((n += 1)) # SKIP the OpenBLAS is not a DYNAMIC_ARCH build: OPENBLAS_CORETYPE does not apply" ;;
esac

# ---- bad usage / bad input: exit 2, one line "mel: ..." naming the culprit
expect_fail() { # expect_fail DESCRIPTION NEEDLE ARGS...
    desc=$1
    needle=$2
    shift 2
    "$MEL" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    lines=$(wc -l <"$tmp/err")
    if [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && grep -q '^mel: ' "$tmp/err" &&
        grep -qF -- "$needle" "$tmp/err"; then
        ok 0 "$desc: $(cat "$tmp/err")"
    else
        ok 1 "$desc (exit $rc, $lines lines on stderr, want 2 and 1 naming '$needle')"
        diag "$tmp/err"
    fi
}
expect_fail "missing file" "$tmp/nope.npy" \
    run ce --hidden "$tmp/nope.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
expect_fail "unknown flag" "--frobnicate" $RUN --frobnicate 3
expect_fail "flag without its value" "--output" $RUN --output
expect_fail "unknown transform" "nosuch" \
    run nosuch --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
expect_fail "unknown command" "frob" frob
expect_fail "unknown --param" "no_such_param" $RUN --param no_such_param=1
expect_fail "--param without =" "--param" $RUN --param temperature
expect_fail "non-numeric --param" "temperature" $RUN --param temperature=warm
expect_fail "unknown loss_type word" "loss_type" $RUN --param loss_type=ppo
expect_fail "labels out of range" "labels" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/labels_bad.npy"
expect_fail "float labels" "--labels" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/labels_f.npy"
expect_fail "unsupported dtype <u2" "'<u2'" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/u2.npy"
expect_fail "labels of the wrong length" "--labels" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/labels3.npy"
expect_fail "shape mismatch X [2,1] vs W [2,2]" "--weight" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w_d2.npy" --labels "$tmp/labels.npy"
expect_fail "X given as a 1-d array" "--hidden" \
    run ce --hidden "$tmp/labels_f.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
expect_fail "malformed npy" "garbage.npy" \
    run ce --hidden "$tmp/garbage.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
expect_fail "Fortran-order npy" "Fortran" \
    run ce --hidden "$tmp/ftn2.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
expect_fail "bad --reduction" "--reduction" $RUN --reduction avg
expect_fail "bad --mode" "--mode" $RUN --mode turbo --grad-hidden "$tmp/dx.npy"
expect_fail "bad --chunk-rows" "--chunk-rows" $RUN --chunk-rows zero
expect_fail "bad --dtype" "--dtype" $RUN --dtype f8
expect_fail "--grad-output of the wrong shape" "--grad-output" \
    $RUN --grad-output "$tmp/b.npy" --grad-hidden "$tmp/dx.npy"
expect_fail "--grad-bias without --bias" "--grad-bias" $RUN --grad-bias "$tmp/db.npy"
expect_fail "missing --hidden" "--hidden" run ce --weight "$tmp/w.npy"
expect_fail "gradcheck of an unknown transform" "nosuch" gradcheck nosuch
expect_fail "gradcheck with a bad --rows" "--rows" gradcheck ce --rows -3

expect_fail "grpo without seq_len for its loss_type" "seq_len" \
    run grpo --hidden "$top_src/t/fixtures/grpo_loss_dapo/X.npy" --weight "$top_src/t/fixtures/grpo_loss_dapo/W.npy" \
    --labels "$top_src/t/fixtures/grpo_loss_dapo/labels.npy" --input mask="$top_src/t/fixtures/grpo_loss_dapo/mask.npy" \
    --input advantages="$top_src/t/fixtures/grpo_loss_dapo/advantages.npy"

# ---- non-finite input: --check-finite names the element; without it NaN
# propagates (exit 0) and a note says so
FNAN='\000\000\000\000\000\000\370\177'
npy "$tmp/xnan.npy" '<f8' '(2, 1)' "$F1$FNAN"
npy "$tmp/bnan.npy" '<f8' '(2,)' "$F0$FNAN"
expect_fail "--check-finite: NaN in X named by flag, file and element" \
    "--check-finite: --hidden $tmp/xnan.npy: x of head 0: [1, 0] = nan" \
    run ce --hidden "$tmp/xnan.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy" --check-finite
expect_fail "--check-finite: NaN in the bias" "--check-finite: --bias $tmp/bnan.npy: bias of head 0: [1] = nan" \
    $RUN --bias "$tmp/bnan.npy" --check-finite --grad-hidden "$tmp/dx.npy" --dtype f32
got=$("$MEL" run ce --hidden "$tmp/xnan.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy" --reduction none 2>"$tmp/err")
rc=$?
[ $rc -eq 0 ] && close "$(echo "$got" | sed -n 1p)" "$ce0" && [ "$(echo "$got" | sed -n 2p)" = nan ] &&
    grep -q '^mel: note: 1 of 2 values of y are NaN or Inf' "$tmp/err"
ok $? "without --check-finite: row 1 is nan, row 0 exact, exit 0, a note on stderr ($(echo $got))" || diag "$tmp/err"
$MEL $RUN --check-finite --dtype f64 --output "$tmp/y.npy" 2>"$tmp/err"
ok $? "--check-finite on finite input exits 0" || diag "$tmp/err"
close_list "$tmp/y.npy" "$mean"
ok $? "--check-finite on finite input: same y"

# ---- messages in the caller's words (issue 12): required inputs by flag,
# the dtypes each flag takes; float16 X/W and a bool mask are read
expect_fail "missing --labels names the flag" "--labels: input 'labels' of transform 'ce' is not bound (it is required" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy"
G=$top_src/t/fixtures/grpo_loss_dapo
expect_fail "missing --input advantages names the flag" "--input advantages: input 'advantages' of transform 'grpo' is not bound (it is required" \
    run grpo --hidden "$G/X.npy" --weight "$G/W.npy" --labels "$G/labels.npy" --input mask="$G/mask.npy" \
    --param seq_len=6
expect_fail "float labels: the dtypes --labels takes" "dtype float64 is not supported (--labels takes int32 or int64)" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/labels_f.npy"
expect_fail "int64 X: the dtypes --hidden takes" "(--hidden takes float32, float64 or float16" \
    run ce --hidden "$tmp/labels3.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
expect_fail "uint16 labels: the dtypes --labels takes" "dtype '<u2' (uint16) is not supported (--labels takes int32 or int64)" \
    run ce --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/u2.npy"
npy "$tmp/v2.npy" '|V2' '(2, 1)' '\000\077\000\100'
expect_fail "bfloat16-like X (|V2): how to pass it" "save float32 (or float16) and pass --dtype bf16" \
    run ce --hidden "$tmp/v2.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
# float16 X = [[1], [2]], W = [[1], [0]] (0x3C00, 0x4000, 0x3C00, 0x0000): the closed forms
npy "$tmp/x16.npy" '<f2' '(2, 1)' '\000\074\000\100'
npy "$tmp/w16.npy" '<f2' '(2, 1)' '\000\074\000\000'
$MEL run ce --hidden "$tmp/x16.npy" --weight "$tmp/w16.npy" --labels "$tmp/labels.npy" --output "$tmp/y.npy" \
    --grad-hidden "$tmp/dx.npy" --stats "$tmp/st.json" 2>"$tmp/err"
ok $? "float16 X and W are read (f16 storage, the default --dtype of a float16 --hidden)" || diag "$tmp/err"
close_list "$tmp/y.npy" "$mean" 1e-6 && close_list "$tmp/dx.npy" "$dx" 1e-3 &&
    grep -q '"dtype": "f16"' "$tmp/st.json" && [ "$(json_num "$tmp/st.json" input_bytes_converted)" = 0 ]
ok $? "float16: y within 1e-6, dX within 1e-3 (rounded once to f16), used in place" || diag "$tmp/st.json"
npy "$tmp/mask16.npy" '<f2' '(2,)' '\000\074\000\074'
expect_fail "float16 per-row input: the dtypes --input takes" "(--input mask takes float32, float64, int32, int64 or bool)" \
    run grpo --hidden "$G/X.npy" --weight "$G/W.npy" --labels "$G/labels.npy" --input mask="$tmp/mask16.npy" --input advantages="$G/advantages.npy" --param seq_len=6
# a bool mask gives the same result as the float64 one (grpo, dapo fixture)
bmask=$(values "$G/mask.npy" | awk '{ printf "\\%03o", ($1 != 0) }')
nrow=$(values "$G/mask.npy" | wc -l)
npy "$tmp/maskb.npy" '|b1' "($nrow,)" "$bmask"
for m in "$G/mask.npy" "$tmp/maskb.npy"; do
    $MEL run grpo --hidden "$G/X.npy" --weight "$G/W.npy" --labels "$G/labels.npy" --input mask="$m" \
        --input advantages="$G/advantages.npy" --input old_logp="$G/old_logp.npy" --param seq_len=6 \
        --param epsilon_high=0.28 --param num_items_in_batch=37 --dtype f64 --output "$tmp/ym.npy" 2>"$tmp/err"
    ok $? "grpo with mask $(basename "$m") exits 0" || diag "$tmp/err"
    close_files "$tmp/ym.npy" "$G/y.npy" 1e-10
    ok $? "grpo with mask $(basename "$m"): y agrees with TRL's fixture"
done

# ---- nothing silently ignored (issue 12): contradictory or unused flags
# exit 2 with one line naming both
GRPO="run grpo --hidden $G/X.npy --weight $G/W.npy --labels $G/labels.npy --input mask=$G/mask.npy --input advantages=$G/advantages.npy"
expect_fail "--reduction with grpo's loss_type" "--reduction and --param loss_type" \
    $GRPO --reduction mean --param loss_type=bnpo
expect_fail "--reduction with grpo's num_items_in_batch" "--reduction and --param num_items_in_batch" \
    $GRPO --reduction sum --param num_items_in_batch=7
expect_fail "--reduction with seq_len at token level" "--reduction and --param seq_len" \
    $GRPO --reduction sum --param seq_len=6
expect_fail "num_items_in_batch with loss_type bnpo" "--param num_items_in_batch: num_items_in_batch and loss_type = bnpo: only loss_types dapo and cispo" \
    $GRPO --param seq_len=6 --param loss_type=bnpo --param num_items_in_batch=7
expect_fail "max_completion_length with loss_type dapo" "--param max_completion_length: max_completion_length and loss_type = dapo: only loss_type dr_grpo" \
    $GRPO --param seq_len=6 --param loss_type=dapo --param max_completion_length=10
expect_fail "max_completion_length with the default loss_type (dapo)" "--param max_completion_length: max_completion_length and loss_type = dapo: only loss_type dr_grpo" \
    $GRPO --param seq_len=6 --param max_completion_length=10
expect_fail "num_items_in_batch with loss_type grpo" "--param num_items_in_batch: num_items_in_batch and loss_type = grpo: only loss_types dapo and cispo" \
    $GRPO --param seq_len=6 --param loss_type=grpo --param num_items_in_batch=7
expect_fail "--chunk-rows with --workspace-bytes" "--chunk-rows and --workspace-bytes" \
    $RUN --chunk-rows 1 --workspace-bytes 1M
expect_fail "--mode naive with --workspace-bytes" "--workspace-bytes: cannot be combined with --mode naive" \
    $RUN --mode naive --workspace-bytes 1M --grad-hidden "$tmp/dx.npy"
expect_fail "a flag given twice" "--output: given twice" $RUN --output "$tmp/a.npy" --output "$tmp/b.npy"
expect_fail "a flag given twice (--name=value)" "--dtype: given twice" $RUN --dtype f32 --dtype=f64
expect_fail "a --param given twice" "--param temperature: given twice" \
    $RUN --param temperature=2 --param temperature=3
expect_fail "--labels for a transform without labels" "--labels $tmp/labels.npy: index 'labels' is bound but is not an index input of transform 'entropy' (it reads no index input)" \
    run entropy --hidden "$tmp/x.npy" --weight "$tmp/w.npy" --labels "$tmp/labels.npy"
expect_fail "--input the transform does not read" "--input advantages $tmp/b.npy: input 'advantages' is bound but is not a scalar input of transform 'ce' (it reads no per-row input)" \
    $RUN --input advantages="$tmp/b.npy"
expect_fail "grpo's old_logp with use_old_logp=0" "--input old_logp $G/old_logp.npy: input 'old_logp' is bound but is not a scalar input of transform 'grpo' (it reads the per-row inputs mask, advantages)" \
    $GRPO --input old_logp="$G/old_logp.npy" --param use_old_logp=0 --param seq_len=6
expect_fail "--teacher-hidden for a transform without head 1" "--teacher-hidden/--teacher-weight: head 1 is bound but transform 'ce' reads no head 1" \
    $RUN --teacher-hidden "$tmp/x.npy" --teacher-weight "$tmp/w.npy"
expect_fail "gradcheck with grpo's loss_type" "gradcheck and --param loss_type" \
    gradcheck grpo --param loss_type=bnpo
expect_fail "bench with --chunk-rows and --workspace-bytes" "--chunk-rows and --workspace-bytes" \
    bench --rows 4 --dim 2 --vocab 8 --chunk-rows 2 --workspace-bytes 1M
expect_fail "bench --repeat twice" "--repeat: given twice" bench --repeat 1 --repeat 2

# ---- --backend cuda: without CUDA (or without a device) a usage error, one
# line naming the backend; with a device, the closed forms through device
# buffers (mel_alloc / mel_to_device / mel_to_host)
"$MEL" $RUN --dtype f64 --backend cuda --output "$tmp/yc.npy" --grad-hidden "$tmp/dxc.npy" \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 0 ]; then
    close_list "$tmp/yc.npy" "$mean" && close_list "$tmp/dxc.npy" "$dx"
    ok $? "run ce --backend cuda on a device: y and dX match the closed forms"
else
    lines=$(wc -l <"$tmp/err")
    [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && grep -q '^mel: --backend cuda: ' "$tmp/err"
    ok $? "run ce --backend cuda without a CUDA device: exit 2, one line naming the backend: $(cat "$tmp/err")" ||
        diag "$tmp/err"
    "$MEL" bench --backend cuda --rows 4 --dim 2 --vocab 8 >"$tmp/out" 2>"$tmp/err"
    rc=$?
    lines=$(wc -l <"$tmp/err")
    [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && grep -q '^mel: --backend cuda: ' "$tmp/err"
    ok $? "bench --backend cuda without a CUDA device: exit 2, one line naming the backend" || diag "$tmp/err"
fi

done_testing
