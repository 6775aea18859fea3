#!/bin/sh
# Vocabulary parallelism on one machine: CE f32, N = 4096, D = 1024,
# V = 32768, fused, default budget.  1 process × 2 threads against
# 2 processes × 1 thread (mpirun, W split in two), interleaved, ROUNDS
# rounds; the outputs of the two are compared (dX, dW: f32 tolerance).
#   sh doc/bench/vocab-parallel.sh [BUILD_DIR] > doc/bench/vocab-parallel.txt
# Needs /usr/bin/python3 with numpy (to write the inputs) and mpirun.
set -eu
top=${1:-.}
MEL=$top/tools/mel/mel
ROUNDS=${ROUNDS:-3}
dir=$(mktemp -d "${TMPDIR:-/tmp}/mel-vpbench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
/usr/bin/python3 - "$dir" <<'PY'
import sys, numpy as np
d = sys.argv[1]
r = np.random.default_rng(7)
np.save(f"{d}/x.npy", r.standard_normal((4096, 1024), dtype=np.float32))
np.save(f"{d}/w.npy", (0.05 * r.standard_normal((32768, 1024))).astype(np.float32))
np.save(f"{d}/labels.npy", r.integers(0, 32768, 4096))
PY
opts="--oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && opts="$opts --allow-run-as-root"
export OMPI_MCA_btl=self,vader
echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "# OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-unset}; commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo ?)"
echo "round config wall_s peak_workspace_MiB comm_MiB comm_s"
field() { sed -n "s/.*\"$1\": \([0-9.e+-]*\).*/\1/p" "$2" | head -1; }
args="ce --hidden $dir/x.npy --weight $dir/w.npy --labels $dir/labels.npy"
for r in $(seq "$ROUNDS"); do
    "$MEL" run $args --threads 2 --grad-hidden "$dir/dx1.npy" --grad-weight "$dir/dw1.npy" \
        --stats "$dir/s1.json" >/dev/null
    echo "$r 1x2 $(field wall_seconds "$dir/s1.json") \
$(awk "BEGIN{print $(field peak_workspace_bytes "$dir/s1.json")/1048576}") 0 0"
    mpirun $opts -np 2 "$MEL" run $args --threads 1 --vocab-parallel --grad-hidden "$dir/dx2.npy" \
        --grad-weight "$dir/dw2.npy" --stats "$dir/s2.json" >/dev/null
    echo "$r 2x1 $(field wall_seconds_max_process "$dir/s2.json") \
$(awk "BEGIN{print $(field peak_workspace_bytes_max_process "$dir/s2.json")/1048576}") \
$(awk "BEGIN{print $(field comm_bytes "$dir/s2.json")/1048576}") $(field comm_seconds "$dir/s2.json")"
done
if [ -x "$top/t/vp" ]; then
    echo "# dX 2x1 vs 1x2: max rel diff $("$top/t/vp" --compare "$dir/dx2.npy" "$dir/dx1.npy" 1e-5)"
    echo "# dW 2x1 vs 1x2: max rel diff $("$top/t/vp" --compare "$dir/dw2.npy" "$dir/dw1.npy" 1e-5)"
fi
