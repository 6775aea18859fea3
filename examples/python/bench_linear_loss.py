"""Time and memory of a CE training step (forward + backward of the output layer)
at N = 4096, D = 1024, V = 32768, f32: libmel.linear_loss against the C call it
makes, PyTorch eager CE, and PyTorch's chunked linear_cross_entropy where the
installed torch has it.  Each (method, repeat) runs in its own process so peak
RSS is that method's; memory is reported beyond the inputs and the gradients the step
produces (peak RSS growth during the step minus the size of X.grad and W.grad).

    PYTHONPATH=python MEL_LIBRARY=lib/.libs/libmel.so python3 examples/python/bench_linear_loss.py
    options: --rows --dim --vocab --repeat (default 3) --csv FILE
             --ws-mib M [M ...]   also libmel with workspace budgets of M MiB
                                  ("libmel_wsM"; the frontier table of doc/benchmarks.md)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(method, N, D, V, threads):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)  # libmel follows torch's thread count
    torch.manual_seed(0)
    X = torch.randn(N, D).mul_(0.05)  # in place: no transient copy raises the RSS mark
    W = torch.randn(V, D).mul_(0.05)
    lab = torch.randint(0, V, (N,))
    X.requires_grad_(True)
    W.requires_grad_(True)
    # memory beyond inputs and gradients: the gradients this step produces (X.grad,
    # W.grad, as after zero_grad(set_to_none=True)) are subtracted below
    grads_mib = (X.numel() + W.numel()) * 4 / 2**20
    extra = {}
    opts = None
    if method.startswith("libmel"):
        import libmel
        budget = int(float(method[len("libmel_ws"):]) * 2**20) if method.startswith("libmel_ws") else None

        def step():
            return libmel.linear_loss(X, W, lab, workspace_bytes=budget)
    elif method == "torch_eager":
        def step():
            return F.cross_entropy(X @ W.T, lab)
    elif method == "torch_chunked":
        opts = torch.nn.LinearCrossEntropyOptions()

        def step():
            return F.linear_cross_entropy(X, W, lab, options=opts)
    else:
        raise SystemExit("unknown method " + method)
    # a warm-up step at a small size first: thread pools and BLAS buffers exist in a
    # training loop already and are not the method's memory
    Xs = torch.randn(64, D, requires_grad=True)
    Ws = W.detach()[:512].clone().requires_grad_(True)
    ls = lab[:64] % 512
    if method.startswith("libmel"):
        libmel.linear_loss(Xs, Ws, ls).backward()
    else:
        step_small = {"torch_eager": lambda: F.cross_entropy(Xs @ Ws.T, ls),
                      "torch_chunked": lambda: F.linear_cross_entropy(Xs, Ws, ls, options=opts)}
        step_small[method]().backward()
    del Xs, Ws
    base = rss_mib()
    t0 = time.perf_counter()
    loss = step()
    loss.backward()
    wall = time.perf_counter() - t0
    peak = rss_mib()
    if method.startswith("libmel"):
        st = libmel.last_stats()
        extra = {"lib_seconds": st["seconds"], "peak_workspace_mib": st["peak_workspace_bytes"] / 2**20,
                 "chunk_rows": st["chunk_rows"], "tile_cols": st.get("tile_cols", 0)}
    print(json.dumps(dict(method=method, wall_s=wall, extra_rss_mib=peak - base - grads_mib,
                          loss=float(loss.detach()), **extra)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--csv")
    ap.add_argument("--child")
    ap.add_argument("--ws-mib", type=float, nargs="*", default=[])
    a = ap.parse_args()
    if a.child:
        child(a.child, a.rows, a.dim, a.vocab, a.threads)
        return
    import torch
    methods = ["libmel"] + ["libmel_ws%g" % m for m in a.ws_mib] + ["torch_eager"]
    if hasattr(torch.nn, "LinearCrossEntropyOptions"):
        methods.append("torch_chunked")
    res = {m: [] for m in methods}
    for r in range(a.repeat):
        for m in methods:  # interleaved, so machine noise hits every method alike
            out = subprocess.run([sys.executable, __file__, "--child", m, "--rows", str(a.rows),
                                  "--dim", str(a.dim), "--vocab", str(a.vocab),
                                  "--threads", str(a.threads)],
                                 capture_output=True, text=True, check=True)
            res[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("# N=%d D=%d V=%d f32, torch %s, threads %d, OPENBLAS_CORETYPE=%s, %d repeats "
          "(medians)%s" % (a.rows, a.dim, a.vocab, torch.__version__, a.threads,
                           os.environ.get("OPENBLAS_CORETYPE", ""), a.repeat,
                           "; libmel_wsM: workspace_bytes = M MiB" if a.ws_mib else ""))
    print("# load average before: %s" % open("/proc/loadavg").read().split()[:3])
    print("%-14s %10s %14s %10s %10s %10s" % ("method", "time_s", "extra_rss_MiB", "loss", "rows", "tile_cols"))
    rows = []
    for m in methods:
        med = lambda k: statistics.median(x[k] for x in res[m])  # noqa: E731
        rows.append((m, med("wall_s"), med("extra_rss_mib"), res[m][0]["loss"]))
        print("%-14s %10.3f %14.1f %10.5f %10s %10s" % (rows[-1] + (res[m][0].get("chunk_rows", "-"),
                                                         res[m][0].get("tile_cols", "-"))))
    lm = res["libmel"]
    ratio = statistics.median(x["wall_s"] / x["lib_seconds"] for x in lm)
    ws = lm[0]["peak_workspace_mib"]
    over = statistics.median(x["extra_rss_mib"] for x in lm) - ws
    print("libmel: linear_loss wall / C library time of the same call = %.4f (median of "
          "per-run ratios); peak workspace %.1f MiB, chunk rows %d; extra RSS - workspace = "
          "%.1f MiB" % (ratio, ws, lm[0]["chunk_rows"], over))
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("method,time_s,extra_rss_MiB,loss\n")
            for r in rows:
                f.write("%s,%.4f,%.2f,%.6f\n" % r)


if __name__ == "__main__":
    main()
