"""What a forward-only call costs when grad mode is on (an evaluation loop without
torch.no_grad()): libmel's default fused mode computes the gradients in forward, so
such a call does the work of a training step.  Times, in one process, interleaved,
medians of --repeat rounds (the machine is shared: compare the ratios):

  no_grad          libmel.linear_loss under torch.no_grad() (mel_forward)
  grad_fused       libmel.linear_loss with grad enabled, default mode (fused), no backward
  grad_recompute   the same with mode="recompute" (mel_forward; backward would recompute)
  torch_no_grad    F.cross_entropy(X @ W.T, y) under torch.no_grad()
  torch_grad       the same with grad enabled, no backward

    PYTHONPATH=python MEL_LIBRARY=lib/.libs/libmel.so python3 examples/python/bench_eval_grad.py
    options: --rows --dim --vocab --repeat (default 5)
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import libmel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    X = (torch.randn(a.rows, a.dim) * 0.05).requires_grad_(True)
    W = (torch.randn(a.vocab, a.dim) * 0.05).requires_grad_(True)
    y = torch.randint(0, a.vocab, (a.rows,))

    def lm(**kw):
        return libmel.linear_loss(X, W, y, **kw)

    methods = {
        "no_grad": lambda: _nograd(lm),
        "grad_fused": lambda: lm(),
        "grad_recompute": lambda: lm(mode="recompute"),
        "torch_no_grad": lambda: _nograd(lambda: F.cross_entropy(X @ W.T, y)),
        "torch_grad": lambda: F.cross_entropy(X @ W.T, y),
    }
    for f in methods.values():  # warm-up
        f()
    times = {k: [] for k in methods}
    for _ in range(a.repeat):
        for k, f in methods.items():
            t0 = time.perf_counter()
            out = f()
            float(out)
            times[k].append(time.perf_counter() - t0)
            del out
    med = {k: statistics.median(v) for k, v in times.items()}
    print("# N=%d D=%d V=%d f32, torch %s, threads %d, libmel %s, medians of %d"
          % (a.rows, a.dim, a.vocab, torch.__version__, torch.get_num_threads(),
             libmel.__version__, a.repeat))
    for k in methods:
        print("%-15s %8.3f s   %.2f x no_grad   (all: %s)" % (
            k, med[k], med[k] / med["no_grad"], " ".join("%.3f" % v for v in times[k])))


def _nograd(f):
    with torch.no_grad():
        return f()


if __name__ == "__main__":
    main()
