"""The challenge's script (shared/seed) with libmel.MemoryEfficientLinear in place of
its own class, at a size this machine holds: the same loss and gradients as the
plain PyTorch computation (its transformation_function on the whole batch)."""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import run  # noqa: E402

from libmel import MemoryEfficientLinear  # noqa: E402  (the only change: this import)
import libmel  # noqa: E402

SEED = 3407
torch.manual_seed(SEED)
print("# seed %d" % SEED)


def transformation_function(batch, weight, labels):
    # the challenge's function: logits upcast to float32, CE summed
    x = F.linear(batch, weight).float()
    loss_fct = nn.CrossEntropyLoss(reduction="sum")
    return loss_fct(x.view(-1, x.size(-1)), labels.view(-1))


def plain(X, W, labels):
    B, S, _ = X.shape
    return transformation_function(X, W, labels) / (B * S)


def main(t):
    bsz, qlen, hd, vocab = 2, 96, 64, 1000
    for dtype in (torch.float32, torch.bfloat16):
        X = torch.randn(bsz, qlen, hd, dtype=dtype, requires_grad=True)
        W = (torch.randn(vocab, hd) * 0.1).to(dtype).requires_grad_(True)
        labels = torch.randint(0, vocab, (bsz * qlen,))
        for chunks in ((1, 32), (2, 96), (None, None)):
            loss = MemoryEfficientLinear.apply(X, W, labels, "ce", *chunks)
            gX, gW = torch.autograd.grad(loss, (X, W))
            ref = plain(X, W, labels)
            rX, rW = torch.autograd.grad(ref, (X, W))
            # fp64 truth from the same (rounded) inputs
            X64 = X.detach().double().requires_grad_(True)
            W64 = W.detach().double().requires_grad_(True)
            tr = F.cross_entropy((X64 @ W64.T).view(-1, vocab), labels)
            tX, tW = torch.autograd.grad(tr, (X64, W64))
            d = "%s chunks %s" % (str(dtype)[6:], chunks)
            if dtype == torch.float32:
                t.close(loss, ref, 1e-5, d + ": loss = plain PyTorch")
                t.close(gX, rX, 1e-4, d + ": dX = plain PyTorch")
                t.close(gW, rW, 1e-4, d + ": dW = plain PyTorch")
            else:
                # bf16: plain PyTorch rounds the logits to bf16 before its fp32 upcast,
                # libmel keeps them fp32: libmel must be at least as close to fp64
                for name, a, b, c in (("loss", loss, ref, tr), ("dX", gX, rX, tX),
                                      ("dW", gW, rW, tW)):
                    e_lib = (a.double() - c).abs().max().item()
                    e_naive = (b.double() - c).abs().max().item()
                    scale = c.abs().max().item()
                    t.ok(e_lib <= e_naive + 1e-2 * scale,
                         d + ": %s no further from fp64 than plain PyTorch" % name,
                         "libmel %.3g, plain %.3g (scale %.3g)" % (e_lib, e_naive, scale))
            if chunks[0] is not None:
                t.ok(libmel.last_stats()["chunk_rows"] == min(chunks[0], bsz) *
                     min(chunks[1], qlen), d + ": rows per chunk = batch x seq chunk",
                     str(libmel.last_stats()))
    # the challenge's own example call, scaled down: positional arguments, 1 x 1024 chunks
    X = torch.randn(4, 128, 64, dtype=torch.bfloat16, requires_grad=True)
    W = torch.randn(512, 64, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 512, (4 * 128,))
    loss = MemoryEfficientLinear.apply(X, W, labels, "ce", 1, 1024)
    loss.backward()
    t.ok(X.grad is not None and W.grad is not None and X.grad.dtype == torch.bfloat16 and
         W.grad.dtype == torch.bfloat16, "the seed's usage: gradients for X and W computed, "
         "in bf16", "loss %.4f" % loss.item())
    ref = plain(X.detach().float(), W.detach().float(), labels)
    t.close(loss, ref, 1e-4, "the seed's usage: loss = fp32 plain PyTorch on the bf16 inputs")
    # another function through the same interface: a Python-defined transform
    @libmel.define_transform
    def z_squared(g):
        return g.logits().logsumexp().square()
    X = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    W = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    loss = MemoryEfficientLinear.apply(X, W, None, z_squared, 1, 4)
    gX, gW = torch.autograd.grad(loss, (X, W))
    ref = (torch.logsumexp(X @ W.T, -1) ** 2).mean()
    rX, rW = torch.autograd.grad(ref, (X, W))
    t.close(loss, ref, 1e-12, "Python transform through MemoryEfficientLinear: loss")
    t.close(gX, rX, 1e-12, "Python transform through MemoryEfficientLinear: dX")
    t.close(gW, rW, 1e-12, "Python transform through MemoryEfficientLinear: dW")


run(main)
