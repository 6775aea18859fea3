#!/bin/sh
# t/docs.t -- the shell examples of the docs that are marked runnable, run
# against the build tree (TAP).
#
# A fenced block whose info string is "sh runnable" or "console runnable"
# (README.md, doc/*.md) is run; other blocks are not (benchmarks that take
# minutes, commands on the reader's own files, a GPU machine).  Words after
# "runnable":
#   needs=numpy   skip the block unless ${PYTHON:-python3} imports numpy
#   cwd=build     run in the build directory (default: a temporary
#                 directory per document, shared by its blocks in order)
# "sh" blocks pass when they exit 0.  In "console" blocks, "$ " lines (with
# "\" continuation lines) are commands, the lines up to the next "$ " their
# expected output (stdout and stderr); numbers compare to within 100 units
# of their last printed digit (BLAS and libm kernels differ between
# machines), other words exactly; a line "..." stands for any lines (what
# precedes it must match the head of the output, what follows the tail).
# A document's sh blocks run first (they set up), then its console blocks.
# `mel` is the build tree's tools/mel/mel.
set -u
top_build=$(cd "${MEL_TOP_BUILDDIR:-.}" && pwd)
top_src=$(cd "${MEL_TOP_SRCDIR:-.}" && pwd)
PATH=$top_build/tools/mel:$PATH
PYTHON=${PYTHON:-python3}
export PATH PYTHON
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mel-docs.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
have_numpy=0
"$PYTHON" -c 'import numpy' >/dev/null 2>&1 && have_numpy=1

n=0
fails=0
# compare GOT WANT: exit 0 when the outputs agree (rules above)
compare() {
    awk -v gotf="$1" -v wantf="$2" '
    function isnum(s) { return s ~ /^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ }
    function unit(s,   m, e, d) {   # the value of one unit in the last printed digit
        e = 0
        if (match(s, /[eE][-+]?[0-9]+$/)) { e = substr(s, RSTART + 1) + 0; s = substr(s, 1, RSTART - 1) }
        d = 0
        if (index(s, ".")) d = length(s) - index(s, ".")
        return 10 ^ (e - d)
    }
    BEGIN {
        ng = 0; while ((getline l < gotf) > 0) G[++ng] = l
        nw = 0; while ((getline l < wantf) > 0) W[++nw] = l
        # "..." stands for any lines: the lines before it match the head of
        # the output, the lines after it its tail
        dots = 0
        for (i = 1; i <= nw; i++) if (W[i] == "...") dots = i
        if (!dots) {
            if (ng != nw) exit 1
            for (i = 1; i <= nw; i++) if (!same(G[i], W[i])) exit 1
            exit 0
        }
        if (ng < nw - 1) exit 1
        for (i = 1; i < dots; i++) if (!same(G[i], W[i])) exit 1
        for (i = dots + 1; i <= nw; i++) if (!same(G[ng - (nw - i)], W[i])) exit 1
        exit 0
    }
    function same(gl, wl,   a, b, g, w, k, d) {
        a = split(gl, g, /[ \t,()=\[\]]+/); b = split(wl, w, /[ \t,()=\[\]]+/)
        if (a != b) return 0
        for (k = 1; k <= b; k++) {
            if (isnum(w[k]) && isnum(g[k])) {
                d = g[k] - w[k]; if (d < 0) d = -d
                if (d > 100 * unit(w[k])) return 0
            } else if (g[k] != w[k]) return 0
        }
        return 1
    }'
}

for doc in "$top_src/README.md" "$top_src"/doc/*.md; do
    name=${doc#"$top_src"/}
    work=$tmp/$(echo "$name" | tr '/.' '__')
    mkdir -p "$work"
    # split the runnable blocks into files: block.K.{sh,console,opts}
    awk -v dir="$work" '
        /^```(sh|console) runnable/ { k++; kind = $1; sub(/^```/, "", kind)
            opts = $0; sub(/^```[a-z]+ runnable */, "", opts)
            f = dir "/block." k "." kind; print opts > (dir "/block." k ".opts"); on = 1; next }
        on && /^```$/ { on = 0; close(f); next }
        on { print > f }' "$doc"
    # the sh blocks (set-up) first, then the console blocks, each in order
    order=$(for f in "$work"/block.*.sh; do [ -f "$f" ] && basename "$f" .sh; done | sed 's/^block\.//' | sort -n
            for f in "$work"/block.*.console; do [ -f "$f" ] && basename "$f" .console; done | sed 's/^block\.//' | sort -n)
    for k in $order; do
        opts=$(cat "$work/block.$k.opts")
        desc="$name runnable block $k"
        case " $opts " in *" needs=numpy "*)
            if [ $have_numpy -eq 0 ]; then
                n=$((n + 1)); echo "ok $n # SKIP $desc: $PYTHON has no numpy"; continue
            fi ;;
        esac
        cwd=$work
        case " $opts " in *" cwd=build "*) cwd=$top_build ;; esac
        if [ -f "$work/block.$k.sh" ]; then
            (cd "$cwd" && sh -e "$work/block.$k.sh") >"$work/out" 2>&1
            rc=$?
            n=$((n + 1))
            if [ $rc -eq 0 ]; then echo "ok $n - $desc (sh) exits 0"; else
                echo "not ok $n - $desc (sh) exits $rc"; sed 's/^/# /' "$work/out"; fails=$((fails + 1))
            fi
        else
            # commands and expected outputs -> one script keeping $? between commands
            awk -v dir="$work" -v k="$k" '
                function flush() { if (cmd != "") { c++; printf "(exit $__st); { %s\n} >\"%s/got.%d.%d\" 2>&1; __st=$?\n", cmd, dir, k, c > (dir "/run.sh"); printf "%s", want > (dir "/want." k "." c); close(dir "/want." k "." c) } cmd = ""; want = "" }
                BEGIN { print "__st=0" > (dir "/run.sh") }
                /^\$ / { flush(); cmd = substr($0, 3); cont = /\\$/; next }
                cont { cmd = cmd "\n" $0; cont = /\\$/; next }
                { want = want $0 "\n" }
                END { flush(); print c > (dir "/count") }' "$work/block.$k.console"
            (cd "$cwd" && sh "$work/run.sh") >/dev/null 2>&1
            c=1
            cnt=$(cat "$work/count")
            while [ "$c" -le "$cnt" ]; do
                first=$(sed -n 1p "$work/want.$k.$c")
                n=$((n + 1))
                if compare "$work/got.$k.$c" "$work/want.$k.$c"; then echo "ok $n - $desc, command $c: output as shown ($first ...)"; else
                    echo "not ok $n - $desc, command $c: output differs"
                    echo "# want:"; sed 's/^/#   /' "$work/want.$k.$c"
                    echo "# got:"; sed 's/^/#   /' "$work/got.$k.$c"
                    fails=$((fails + 1))
                fi
                c=$((c + 1))
            done
            rm -f "$work/run.sh" "$work/count"
        fi
    done
done
echo "1..$n"
[ $fails -eq 0 ]
