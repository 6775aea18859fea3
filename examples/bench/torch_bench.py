#!/usr/bin/env python3
"""PyTorch on the CPU, same shapes as `mel bench`: eager F.linear +
F.cross_entropy(logits.float()) + backward, one training step, each N in
its own process (clean peak RSS).  Appends rows to mel bench's CSV:

    torch_bench.py --rows 1024 2048 --dim 1024 --vocab 32768 --csv bench.csv

Used for comparison only; libmel's build and tests never need Python."""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def child(n, d, v, repeat, warmup, threads):
    import torch
    import torch.nn.functional as F
    torch.manual_seed(1)
    torch.set_num_threads(threads or os.cpu_count())  # same thread count as mel bench's default
    x = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.03).requires_grad_(True)
    y = torch.randint(0, v, (n,))
    times, loss = [], None
    for i in range(warmup + repeat):
        x.grad = None
        w.grad = None
        t0 = time.perf_counter()
        logits = F.linear(x, w).float()
        l = F.cross_entropy(logits, y)
        l.backward()
        dt = time.perf_counter() - t0
        loss = float(l)
        del logits, l
        if i >= warmup:
            times.append(dt)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"times": times, "loss": loss, "rss": rss, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", required=True)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--child", nargs=6, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    with open(a.csv, "a") as f:
        for n in a.rows:
            r = subprocess.run([sys.executable, __file__, "--rows", "0", "--csv", "-", "--child",
                                str(n), str(a.dim), str(a.vocab), str(a.repeat), str(a.warmup),
                                str(a.threads)], capture_output=True, text=True)
            if r.returncode:
                print(f"torch_bench: N={n} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            o = json.loads(r.stdout.strip().splitlines()[-1])
            t = o["times"]
            # rows,dim,vocab,transform,dtype,mode,threads,chunk_rows,chunks,time_median_s,time_min_s,
            # time_max_s,gemm_time_median_s,gemm_flops,gemm_gflop_per_s,peak_workspace_bytes,
            # naive_logits_bytes,max_rss_bytes,loss
            f.write(f"{n},{a.dim},{a.vocab},ce,f32,torch_eager,{o['threads']},,,{statistics.median(t):.6g},"
                    f"{min(t):.6g},{max(t):.6g},,,,,{4 * n * a.vocab},{o['rss']},{o['loss']:.17g}\n")
            print(f"torch {o['torch']} eager N={n}: median {statistics.median(t):.3f} s, "
                  f"peak RSS {o['rss'] / 2**20:.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
