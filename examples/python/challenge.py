"""The challenge's example script (shared/seed) with libmel's MemoryEfficientLinear in
place of its own: only the import and the transform argument change, and the size is
cut to what a 2-core CPU holds.  It prints the loss, the gradients' agreement with the
plain PyTorch computation (the challenge's transformation_function on the whole batch)
and the memory of both.

    PYTHONPATH=python python3 examples/python/challenge.py [--bsz 4 --qlen 1024 --hd 512 --vocab 32000]
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import libmel
from libmel import MemoryEfficientLinear


def transformation_function(batch, weight, labels):
    """The challenge's function: logits, upcast to float32, CE summed."""
    x = F.linear(batch, weight).float()
    loss_fct = nn.CrossEntropyLoss(reduction="sum")
    loss = loss_fct(x.view(-1, x.size(-1)), labels.view(-1))
    return loss


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bsz", type=int, default=4)
    ap.add_argument("--qlen", type=int, default=1024)
    ap.add_argument("--hd", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args()
    device = "cpu"
    torch.manual_seed(0)
    bsz, qlen, hd, vocab = a.bsz, a.qlen, a.hd, a.vocab
    X = torch.randn(bsz, qlen, hd, dtype=torch.bfloat16, device=device, requires_grad=True)
    W = torch.randn(vocab, hd, dtype=torch.bfloat16, device=device, requires_grad=True)
    labels = torch.randint(0, vocab, (bsz * qlen,), device=device)

    # Call using positional arguments (do not use keyword arguments)
    t0 = time.perf_counter()
    loss = MemoryEfficientLinear.apply(X, W, labels, "ce", 1, 1024)
    loss.backward()
    t_mel = time.perf_counter() - t0
    st = libmel.last_stats()

    print("Loss:", loss.item())
    print("Gradients for X computed:", X.grad is not None)
    print("Gradients for W computed:", W.grad is not None)

    # the plain PyTorch computation of the same loss, on the same bf16 inputs
    Xr = X.detach().clone().requires_grad_(True)
    Wr = W.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    ref = transformation_function(Xr, Wr, labels) / (bsz * qlen)
    ref.backward()
    t_ref = time.perf_counter() - t0
    # and the fp64 truth of both
    X64 = X.detach().double().requires_grad_(True)
    W64 = W.detach().double().requires_grad_(True)
    t64 = F.cross_entropy((X64 @ W64.T).view(-1, vocab), labels)
    t64.backward()

    def err(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
    print("loss: libmel %.6f, plain PyTorch %.6f, fp64 %.6f" % (loss.item(), ref.item(), t64.item()))
    for name, g, r, t in (("dX", X.grad, Xr.grad, X64.grad), ("dW", W.grad, Wr.grad, W64.grad)):
        print("%s: max rel error vs fp64: libmel %.2e, plain PyTorch %.2e; libmel vs plain %.2e"
              % (name, err(g, t), err(r, t), err(g, r)))
    N = bsz * qlen
    print("memory: libmel workspace %.1f MiB (chunks of %d rows) vs the plain path's fp32 "
          "logits and their gradient %.1f MiB (plus its bf16 logits %.1f MiB)"
          % (st["peak_workspace_bytes"] / 2**20, st["chunk_rows"], 2 * N * vocab * 4 / 2**20,
             N * vocab * 2 / 2**20))
    print("time: libmel %.2f s, plain PyTorch %.2f s" % (t_mel, t_ref))
