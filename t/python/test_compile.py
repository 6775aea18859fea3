"""torch.compile(fullgraph=True) and torch.func through libmel's custom operators
(issue 24 point 5; torch >= 2.4, else skipped with the reason).  fullgraph=True
fails on any graph break, so each passing compiled call is a whole graph.  The
numbers are compared with plain torch ops in float64, the gradients included."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import run  # noqa: E402

if not hasattr(getattr(torch, "library", None), "custom_op"):
    print("1..0 # SKIP torch %s has no torch.library.custom_op (torch >= 2.4 is needed for "
          "torch.compile through libmel's custom operators)" % torch.__version__)
    sys.exit(0)

import libmel  # noqa: E402
from libmel import _core  # noqa: E402

torch.manual_seed(5)
print("# seed 5; torch %s; libmel from %s" % (torch.__version__, libmel.library_path))
N, D, V = 13, 7, 11
f64 = torch.float64


def leaf(*shape, dtype=f64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def grads(fn, ts):
    for t in ts:
        t.grad = None
    fn().backward()
    return [t.grad.clone() for t in ts]


def close_all(t, got, ref, tol, desc):
    errs = [((a - b).abs().max() / max(b.abs().max().item(), 1e-30)).item()
            for a, b in zip(got, ref)]
    return t.ok(len(got) == len(ref) and max(errs) <= tol, desc,
                "max rel err %.3g (tol %.0e)" % (max(errs), tol))


def main(t):
    t.ok(_core._OPS is not None, "libmel's custom operators are registered (torch %s)"
         % torch.__version__)
    h, w, b = leaf(N, D), leaf(V, D), leaf(V)
    y = torch.randint(0, V, (N,))
    y[4] = -100
    up = torch.linspace(0.2, 1.9, N, dtype=f64)

    # ce: fused (mean), recompute, per-row; bias
    cases = [
        ("fused mean", lambda h, w, b: libmel.linear_loss(h, w, y, bias=b),
         lambda h, w, b: F.cross_entropy(F.linear(h, w, b), y)),
        ("recompute sum", lambda h, w, b: libmel.linear_loss(h, w, y, bias=b, reduction="sum",
                                                             mode="recompute"),
         lambda h, w, b: F.cross_entropy(F.linear(h, w, b), y, reduction="sum")),
        ("per-row (none)", lambda h, w, b: (libmel.linear_loss(h, w, y, bias=b,
                                                               reduction="none") * up).sum(),
         lambda h, w, b: (F.cross_entropy(F.linear(h, w, b), y, reduction="none") * up).sum()),
        ("label smoothing keyword", lambda h, w, b: libmel.linear_loss(
            h, w, y, bias=b, label_smoothing=0.1),
         lambda h, w, b: F.cross_entropy(F.linear(h, w, b), y, label_smoothing=0.1)),
        ("linear_cross_entropy, class weights", lambda h, w, b: libmel.linear_cross_entropy(
            h, w, y, linear_bias=b, weight=torch.arange(1.0, V + 1, dtype=f64)),
         lambda h, w, b: F.cross_entropy(F.linear(h, w, b), y,
                                         weight=torch.arange(1.0, V + 1, dtype=f64))),
    ]
    for name, fn, ref in cases:
        torch._dynamo.reset()
        cf = torch.compile(fn, fullgraph=True)
        for rep in range(2):
            l = cf(h, w, b)
            got = grads(lambda: cf(h, w, b), (h, w, b))
            want = grads(lambda: ref(h, w, b), (h, w, b))
            t.close(l, ref(h, w, b), 1e-12, "compiled %s, call %d: loss" % (name, rep + 1))
            close_all(t, got, want, 1e-12, "compiled %s, call %d: dh, dw, db" % (name, rep + 1))

    # a training step: nn.Linear body, libmel head, [B, T, D] hidden, one graph
    torch._dynamo.reset()
    body = torch.nn.Linear(D, D).double()
    head = torch.nn.Linear(D, V, bias=False).double()
    x = torch.randn(2, 5, D, dtype=f64)
    yy = torch.randint(0, V, (2, 5))
    params = list(body.parameters()) + list(head.parameters())

    def step(x, yy):
        return libmel.linear_loss(torch.tanh(body(x)), head.weight, yy)

    cstep = torch.compile(step, fullgraph=True)
    counters = torch._dynamo.utils.counters
    counters.clear()
    got = grads(lambda: cstep(x, yy), params)
    want = grads(lambda: F.cross_entropy(head(torch.tanh(body(x))).reshape(-1, V),
                                         yy.reshape(-1)), params)
    close_all(t, got, want, 1e-12, "compiled training step (body + libmel head): every "
              "parameter's gradient")
    x2 = torch.randn(2, 5, D, dtype=f64)
    got = grads(lambda: cstep(x2, yy), params)
    want = grads(lambda: F.cross_entropy(head(torch.tanh(body(x2))).reshape(-1, V),
                                         yy.reshape(-1)), params)
    close_all(t, got, want, 1e-12, "compiled training step, new data")
    t.ok(counters["stats"]["unique_graphs"] == 1, "the second step reuses the compiled graph "
         "(no recompilation)", "graphs compiled: %s" % counters["stats"]["unique_graphs"])

    # grpo: bool mask, per-sequence normalisation from the custom grpo_weights operator, aux
    torch._dynamo.reset()
    hb = leaf(2, 5, D)
    mask = torch.rand(2, 5) > 0.3
    adv = torch.randn(2, 5, dtype=f64)
    lab = torch.randint(0, V, (2, 5))

    def grpo(hb, w):
        return libmel.linear_loss(hb, w, lab, transform="grpo",
                                  inputs={"mask": mask, "advantages": adv},
                                  params={"loss_type": "grpo"}, return_aux=["ratio"])

    l_e, aux_e = grpo(hb, w)
    ge = grads(lambda: grpo(hb, w)[0], (hb, w))
    cg = torch.compile(grpo, fullgraph=True)
    l_c, aux_c = cg(hb, w)
    gc = grads(lambda: cg(hb, w)[0], (hb, w))
    t.close(l_c, l_e, 1e-12, "compiled grpo (loss type grpo, bool mask): the eager loss")
    t.close(aux_c["ratio"], aux_e["ratio"], 1e-12, "compiled grpo: aux output")
    close_all(t, gc, ge, 1e-12, "compiled grpo: the eager gradients")

    # a teacher head (kl), recompute
    torch._dynamo.reset()
    th = torch.randn(N, 5, dtype=f64)
    tw = torch.randn(V, 5, dtype=f64)

    def kl(h, w):
        return libmel.linear_loss(h, w, y, transform="kl", teacher=(th, tw), mode="recompute")

    def kl_ref(h, w):
        lp = torch.log_softmax(F.linear(h, w), -1)
        lq = torch.log_softmax(F.linear(th, tw), -1)
        r = (lq.exp() * (lq - lp)).sum(-1)
        valid = y != -100
        return r[valid].mean()

    ck = torch.compile(kl, fullgraph=True)
    t.close(ck(h, w), kl_ref(h, w), 1e-12, "compiled kl with a teacher head: loss")
    close_all(t, grads(lambda: ck(h, w), (h, w)), grads(lambda: kl_ref(h, w), (h, w)), 1e-12,
              "compiled kl: dh, dw")

    # a transform written in Python (define_transform): its defaults and a parameter set
    @libmel.define_transform
    def focal(g, gamma=2.0):
        z = g.logits()
        lab = g.index("labels")
        logp = z.gather(lab) - z.logsumexp()
        g.count(g.valid(lab))
        return g.where(g.valid(lab), -((1 - logp.exp()) ** gamma) * logp, 0.0)

    def focal_ref(h, w, gamma):
        logp = torch.log_softmax(F.linear(h, w), -1)
        valid = y != -100
        lp = logp.gather(1, torch.where(valid, y, 0)[:, None])[:, 0]
        return (-((1 - lp.exp()) ** gamma) * lp)[valid].mean()

    for tr, gamma in ((focal, 2.0), (None, 3.0)):
        torch._dynamo.reset()

        def fl(h, w):
            return libmel.linear_loss(h, w, y, transform=tr if tr is not None
                                      else focal(gamma=gamma))

        cf = torch.compile(fl, fullgraph=True)
        t.close(cf(h, w), focal_ref(h, w, gamma), 1e-12, "compiled define_transform (gamma "
                "%g%s): loss" % (gamma, ", the factory's defaults" if tr else ""))
        close_all(t, grads(lambda: cf(h, w), (h, w)),
                  grads(lambda: focal_ref(h, w, gamma), (h, w)), 1e-12,
                  "compiled define_transform (gamma %g): dh, dw" % gamma)

    # autocast inside the compiled function
    torch._dynamo.reset()
    hf, wf = leaf(N, D, dtype=torch.float32), leaf(V, D, dtype=torch.float32)

    def ac(hf, wf):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return libmel.linear_loss(hf, wf, y)

    la = torch.compile(ac, fullgraph=True)(hf, wf)
    le = ac(hf, wf)
    t.ok(la.dtype == torch.float32, "compiled under autocast: float32 loss")
    t.close(la, le, 1e-6, "compiled under autocast: the eager autocast loss")

    # torch.func.grad
    gw = torch.func.grad(lambda w_: libmel.linear_loss(h.detach(), w_, y))(w.detach())
    gr, = torch.autograd.grad(F.cross_entropy(F.linear(h, w), y), w)
    t.close(gw, gr, 1e-12, "torch.func.grad through libmel: dw")
    gh = torch.func.grad(lambda h_: libmel.linear_loss(h_, w.detach(), y, reduction="sum",
                                                       mode="recompute"))(h.detach())
    gr, = torch.autograd.grad(F.cross_entropy(F.linear(h, w), y, reduction="sum"), h)
    t.close(gh, gr, 1e-12, "torch.func.grad through libmel (recompute): dh")
    for mode in ("fused", "recompute"):
        t.raises(RuntimeError, lambda: torch.func.grad(lambda h_: torch.func.grad(
            lambda h2: libmel.linear_loss(h2, w.detach(), y, mode=mode))(h_).pow(2).sum())(
                h.detach()), "torch.func: grad of grad (%s) is refused" % mode,
            ("double backward",))

    # PyTorch's own F.linear_cross_entropy, where it exists (torch >= 2.13)
    if hasattr(F, "linear_cross_entropy"):
        for red in ("mean", "sum", "none"):
            for kw in ({}, {"ignore_index": 3, "label_smoothing": 0.2}):
                yk = y.clone()
                yk[4] = kw.get("ignore_index", -100)
                ref = F.linear_cross_entropy(h, w, yk, linear_bias=b, reduction=red, **kw)
                got = libmel.linear_cross_entropy(h, w, yk, linear_bias=b, reduction=red, **kw)
                t.close(got, ref, 1e-12, "libmel.linear_cross_entropy = torch's F.linear_cross_"
                        "entropy, %s %s" % (red, kw))
    else:
        t.ok(True, "torch %s has no F.linear_cross_entropy (compared with F.cross_entropy in "
             "autograd.t)" % torch.__version__)


run(main)
