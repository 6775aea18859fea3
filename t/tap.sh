# t/tap.sh -- shared by the shell TAP tests (sourced: . "$top_src/t/tap.sh").
#   ok STATUS DESCRIPTION   "ok N - ..." when STATUS is 0, else "not ok N - ..."
#   diag FILE...            the files as TAP comments
#   npy FILE DESCR SHAPE DATA [FORTRAN]   a version 1.0 .npy file; DATA is a printf
#                           format of octal escapes (little-endian element bytes)
#   done_testing            the trailing plan; the exit status is 1 after a failure
n=0
fails=0
ok() {
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else
        echo "not ok $n - $2"
        fails=$((fails + 1))
    fi
    return "$1"
}
diag() { sed 's/^/# /' "$@"; }
npy() {
    dict="{'descr': '$2', 'fortran_order': ${5:-False}, 'shape': $3, }"
    len=$((${#dict} + 1))
    pad=$(((64 - (10 + len) % 64) % 64))
    hl=$((len + pad))
    {
        printf '\223NUMPY\001\000'
        printf "\\$(printf %03o $((hl % 256)))\\$(printf %03o $((hl / 256)))"
        printf '%s' "$dict"
        printf "%${pad}s" ''
        printf '\n'
        printf "$4"
    } >"$1"
}
done_testing() {
    echo "1..$n"
    [ "$fails" -eq 0 ]
}
