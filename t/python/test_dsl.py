"""Transforms written in Python (libmel.define_transform) against torch autograd of
the same function written with torch ops, and against libmel's finite-difference
checker (mel_gradcheck)."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import run  # noqa: E402

import libmel  # noqa: E402

SEED = 7
torch.manual_seed(SEED)
print("# seed %d" % SEED)


@libmel.define_transform
def focal(g, gamma=2.0):
    z = g.logits()
    y = g.index("labels")
    logp = z.gather(y) - z.logsumexp()
    loss = -((1 - logp.exp()) ** gamma) * logp
    g.count(g.valid(y))
    return g.where(g.valid(y), loss, 0.0)


@libmel.define_transform(name="smoothed_ce")
def smoothed(g, eps=0.1):
    z = g.logits()
    y = g.index("labels")
    lse = z.logsumexp()
    loss = (1 - eps) * (lse - z.gather(y)) + eps * (lse - z.mean())
    return g.where(g.valid(y), loss, 0.0), g.valid(y)


@libmel.define_transform
def weighted_margin(g):
    """A per-row differentiable input: w · softplus-ish margin, with an aux output."""
    z = g.logits()
    y = g.index("labels")
    w = g.input("w", differentiable=True)
    margin = z.max() - z.gather(y)
    g.aux("margin", margin)
    return w * (1 + margin.exp()).log() + 0.5 * w.square()


def ref_focal(z, lab, gamma):
    valid = lab != -100
    logp = torch.log_softmax(z, -1).gather(1, lab.clamp(min=0)[:, None])[:, 0]
    loss = -((1 - logp.exp()) ** gamma) * logp
    return torch.where(valid, loss, torch.zeros_like(loss)), valid.double()


def main(t):
    N, D, V = 11, 5, 23
    for dt, tol in ((torch.float64, 1e-10), (torch.float32, 3e-5)):
        for gamma in (2.0, 0.5, 3.0):
            X = torch.randn(N, D, dtype=dt, requires_grad=True)
            W = torch.randn(V, D, dtype=dt, requires_grad=True)
            lab = torch.randint(0, V, (N,))
            lab[4] = -100
            y = libmel.linear_loss(X, W, lab, transform=focal(gamma=gamma), reduction="none",
                                   chunk_rows=4)
            g = torch.randn(N, dtype=y.dtype)
            gx, gw = torch.autograd.grad(y, (X, W), g)
            Xr = X.detach().double().requires_grad_(True)
            Wr = W.detach().double().requires_grad_(True)
            yr, _ = ref_focal(Xr @ Wr.T, lab, gamma)
            rx, rw = torch.autograd.grad(yr, (Xr, Wr), g.double())
            d = "focal gamma=%g %s" % (gamma, str(dt)[6:])
            t.close(y, yr, tol, d + ": y")
            t.close(gx, rx, tol, d + ": dX")
            t.close(gw, rw, tol, d + ": dW")
    # mean reduction uses the count set by g.count / returned as (y, count)
    X = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    lab = torch.randint(0, V, (N,))
    lab[[1, 6]] = -100
    for eps in (0.0, 0.1, 0.3):
        y = libmel.linear_loss(X, W, lab, transform=smoothed(eps=eps))
        gx, gw = torch.autograd.grad(y, (X, W))
        Xr = X.detach().requires_grad_(True)
        Wr = W.detach().requires_grad_(True)
        yr = F.cross_entropy(Xr @ Wr.T, lab, label_smoothing=eps)
        rx, rw = torch.autograd.grad(yr, (Xr, Wr))
        t.close(y, yr, 1e-12, "smoothed_ce eps=%g = F.cross_entropy(label_smoothing): y" % eps)
        t.close(gx, rx, 1e-12, "smoothed_ce eps=%g: dX" % eps)
        t.close(gw, rw, 1e-12, "smoothed_ce eps=%g: dW" % eps)
    # focal as the default-parameter transform object
    y = libmel.linear_loss(X, W, lab, transform=focal)
    rows, cnt = ref_focal(X.detach() @ W.detach().T, lab, 2.0)
    t.close(y, rows.sum() / cnt.sum(), 1e-12, "focal (defaults) passed as the factory: mean")
    # differentiable per-row input and an aux output
    w = torch.rand(N, dtype=torch.float64, requires_grad=True)
    lab2 = torch.randint(0, V, (N,))
    y, aux = libmel.linear_loss(X, W, lab2, transform=weighted_margin, inputs={"w": w},
                                reduction="sum", return_aux=["margin"])
    gx, gw, gwi = torch.autograd.grad(y, (X, W, w))
    Xr, Wr, wr = (v.detach().requires_grad_(True) for v in (X, W, w))
    z = Xr @ Wr.T
    m = z.max(-1).values - z.gather(1, lab2[:, None])[:, 0]
    yr = (wr * torch.log1p(m.exp()) + 0.5 * wr ** 2).sum()
    rx, rw, rwi = torch.autograd.grad(yr, (Xr, Wr, wr))
    t.close(y, yr, 1e-12, "differentiable input: y")
    t.close(gx, rx, 1e-12, "differentiable input: dX")
    t.close(gw, rw, 1e-12, "differentiable input: dW")
    t.close(gwi, rwi, 1e-12, "differentiable input: d(w)")
    t.close(aux["margin"], m.detach(), 1e-12, "aux output 'margin'")
    # libmel's finite-difference checker on the Python-defined transforms
    for tr, inputs in ((focal(gamma=2.0), None), (smoothed(eps=0.2), None),
                       (weighted_margin.compiled(), {"w": w.detach()})):
        rep = libmel.gradcheck(tr, X.detach(), W.detach(), lab if inputs is None else lab2,
                               inputs=inputs, seed=3)
        t.ok(rep["failed"] == 0 and rep["checked"] > 0, "mel_gradcheck of %s" % tr.name,
             "%d checked, max rel err %.2g" % (rep["checked"], rep["max_rel_err"]))
    # introspection and the dump of the compiled programs
    tr = focal(gamma=2.0)
    t.ok([n for n, _, _ in tr.inputs] == ["labels"] and tr.heads[0] == 2,
         "focal reads labels and a differentiable head 0", repr(tr))
    t.ok("adjoint" in tr.dump().lower() or "backward" in tr.dump().lower(),
         "dump shows the generated adjoint program")
    # builder mistakes are reported, never a crash
    def bad_other_graph():
        keep = {}

        @libmel.define_transform
        def a(g):
            keep["z"] = g.logits()
            return keep["z"].logsumexp()
        a.compiled()

        @libmel.define_transform
        def b(g):
            return keep["z"].logsumexp()
        b.compiled()
    t.raises(ValueError, bad_other_graph, "a value from another graph is refused",
             ("another",))

    @libmel.define_transform
    def vector_out(g):
        return g.logits() * 2
    t.raises(ValueError, vector_out.compiled, "a vector output is refused by the compiler")

    @libmel.define_transform
    def truthy(g):
        z = g.logits()
        return z.max() if z.max() > 0 else z.sum()
    t.raises(TypeError, truthy.compiled, "Python if on a symbolic value is refused",
             ("where",))


run(main)
