#!/usr/bin/env python3
"""Row skipping benchmark (doc/benchmarks.md, "Skipping ignored rows").

CE f32, N = 4096, D = 1024, V = 32768 by default, with 0 %, 50 % and 90 % of
the labels ignored, at random positions or as a prompt-like prefix of each
sequence of --seq-len rows; libmel fused and recompute (mel bench, one
process per configuration) and, side by side, PyTorch eager CE (F.linear +
F.cross_entropy + backward) and PyTorch's chunked
F.linear_cross_entropy(..., options=LinearCrossEntropyOptions()) when the
installed torch has it.  Configurations are interleaved and repeated: every
round runs each configuration once (one warm-up call, then --calls timed
calls), so slow drifts of the machine hit all of them alike; the summary
gives medians over rounds and ratios to the 0 %-ignored run of the same
round.

Memory beyond inputs and gradients: libmel's own count (mel_stats
peak_workspace_bytes); for PyTorch the growth of the process's peak RSS
during the timed calls over its RSS with inputs and gradients allocated
(VmHWM reset through /proc/self/clear_refs).

    /work/venv-trl/bin/python examples/bench/skip_bench.py --rounds 3 --out skip.json

Used for the documentation only: libmel's build and tests never need it."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def torch_child(impl, n, d, v, ignore, pattern, seq_len, calls, threads, seed):
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    x = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.03).requires_grad_(True)
    y = torch.randint(0, v, (n,))
    k = round(ignore * n)
    if pattern == "prefix":
        pos = torch.arange(n) % seq_len < round(ignore * seq_len)
        y[pos] = -100
    elif k:
        y[torch.randperm(n)[:k]] = -100

    if impl == "eager":
        def step():
            loss = F.cross_entropy(F.linear(x, w).float(), y, ignore_index=-100)
            loss.backward()
            return loss
    else:
        if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            print(json.dumps({"error": "this torch has no F.linear_cross_entropy with options"}))
            return

        def step():
            loss = F.linear_cross_entropy(x, w, y, ignore_index=-100,
                                          options=torch.nn.LinearCrossEntropyOptions())
            loss.backward()
            return loss
    # the gradients exist before the timed calls (as in a training loop);
    # no warm-up call: one call takes tens of seconds on 2 cores
    x.grad = torch.zeros_like(x)
    w.grad = torch.zeros_like(w)
    times = []
    base = vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(calls):
        x.grad.zero_()
        w.grad.zero_()
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    extra = vm("VmHWM") - base
    print(json.dumps({"times": times, "extra_bytes": extra, "loss": float(loss), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


def run_torch(py, impl, a, ignore, pattern):
    cmd = [py, __file__, "--torch-child", impl, str(a.rows), str(a.dim), str(a.vocab), str(ignore), pattern,
           str(a.seq_len), str(a.calls), str(a.threads), str(a.seed)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr.strip()[-300:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_mel(a, mode, ignore, pattern, no_skip):
    cmd = [a.mel, "bench", "--rows", str(a.rows), "--dim", str(a.dim), "--vocab", str(a.vocab), "--modes", mode,
           "--repeat", str(a.calls), "--warmup", str(a.mel_warmup), "--threads", str(a.threads), "--seed", str(a.seed),
           "--ignore", str(ignore), "--ignore-pattern", pattern]
    if pattern == "prefix":
        cmd += ["--seq-len", str(a.seq_len)]
    if no_skip:
        cmd.append("--no-skip")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr.strip()[-300:]}
    header = next(l for l in r.stdout.splitlines() if l.startswith("# machine"))
    row = next(l for l in r.stdout.splitlines() if re.match(r"\s*\d+\s+" + mode + r"\s", l)).split()
    # rows mode median min max GF/s chunk_rows chunks active peak_ws_MiB naive_MiB max_rss_MiB loss
    return {"median": float(row[2]), "min": float(row[3]), "max": float(row[4]), "chunk_rows": int(row[6]),
            "chunks": int(row[7]), "active": int(row[8]), "peak_ws_mib": float(row[9]),
            "max_rss_mib": float(row[11]), "loss": float(row[12]), "header": header}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=1, help="timed calls per configuration and round")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mel", default=os.path.join(TOP, "tools", "mel", "mel"))
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--mel-warmup", type=int, default=0)
    ap.add_argument("--torch-patterns", default="random", help="patterns PyTorch runs (random,prefix)")
    ap.add_argument("--out", default="skip_bench.json")
    ap.add_argument("--torch-child", nargs=10, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_child:
        c = a.torch_child
        torch_child(c[0], int(c[1]), int(c[2]), int(c[3]), float(c[4]), c[5], int(c[6]), int(c[7]), int(c[8]),
                    int(c[9]))
        return
    cfgs = []
    for ig, pat in [(0, "random"), (0.5, "random"), (0.5, "prefix"), (0.9, "random"), (0.9, "prefix")]:
        for impl in ["fused", "recompute"]:
            cfgs.append(("mel", impl, ig, pat, False))
        if ig == 0:
            cfgs.append(("mel", "fused", 0, "random", True))  # skipping off: the no-slowdown check
            cfgs.append(("mel", "recompute", 0, "random", True))
        if not a.no_torch and pat in a.torch_patterns.split(","):
            cfgs.append(("torch", "eager", ig, pat, False))
            cfgs.append(("torch", "chunked", ig, pat, False))
    results = {str(c): [] for c in cfgs}
    loads = []
    for rnd in range(a.rounds):
        for c in cfgs:
            loads.append(os.getloadavg()[0])
            who, impl, ig, pat, ns = c
            r = run_mel(a, impl, ig, pat, ns) if who == "mel" else run_torch(a.torch_python, impl, a, ig, pat)
            r["round"] = rnd
            results[str(c)].append(r)
            t = r.get("median") or (statistics.median(r["times"]) if "times" in r else None)
            print(f"round {rnd} {who} {impl} ignored {ig} {pat}{' no-skip' if ns else ''}: "
                  f"{t if t is None else round(t, 3)} s  load {loads[-1]:.2f}", file=sys.stderr, flush=True)
            with open(a.out + ".partial", "w") as f:
                json.dump({"configs": [list(c) for c in cfgs], "results": results, "loads": loads}, f)
    with open(a.out, "w") as f:
        json.dump({"configs": [list(c) for c in cfgs], "results": results, "loads": loads,
                   "args": vars(a)}, f, indent=1)
    # summary: medians over rounds, ratios within each round to the 0 % run of the same implementation
    def tm(r):
        return r["median"] if "median" in r else statistics.median(r["times"]) if "times" in r else None

    print(f"# {a.rounds} rounds, N={a.rows} D={a.dim} V={a.vocab} f32, threads {a.threads}; "
          f"load avg during the run: min {min(loads):.2f} median {statistics.median(loads):.2f} max {max(loads):.2f}")
    hdr = next((r["header"] for rs in results.values() for r in rs if "header" in r), "")
    print(hdr)
    print(f"{'impl':28s} {'ignored':14s} {'time_s':>8s} {'ratio':>7s} {'extra_MiB':>10s} {'chunks':>7s} {'active':>7s}")
    for c in cfgs:
        who, impl, ig, pat, ns = c
        rs = results[str(c)]
        if any("error" in r for r in rs):
            print(f"{who} {impl}: {rs[0].get('error')}")
            continue
        base = results[str((who, impl, 0, "random", ns))] if (who, impl, 0, "random", ns) in cfgs else None
        ratios = [tm(r) / tm(b) for r, b in zip(rs, base)] if base else []
        extra = rs[0]["peak_ws_mib"] if who == "mel" else statistics.median(r["extra_bytes"] for r in rs) / 2**20
        name = f"{'libmel' if who == 'mel' else 'torch'} {impl}{' --no-skip' if ns else ''}"
        print(f"{name:28s} {str(int(ig * 100)) + '% ' + pat:14s} {statistics.median(tm(r) for r in rs):8.3f} "
              f"{statistics.median(ratios) if ratios else float('nan'):7.3f} {extra:10.1f} "
              f"{rs[0].get('chunks', '')!s:>7s} {rs[0].get('active', '')!s:>7s}")
    # no-skip vs skip at 0 %: per-round ratio
    for impl in ["fused", "recompute"]:
        on = results.get(str(("mel", impl, 0, "random", False)))
        off = results.get(str(("mel", impl, 0, "random", True)))
        if on and off:
            rr = [tm(x) / tm(y) for x, y in zip(on, off)]
            print(f"# libmel {impl}, nothing ignored: skipping on / off per round {[round(r, 3) for r in rr]}, "
                  f"median {statistics.median(rr):.3f}")


if __name__ == "__main__":
    main()
