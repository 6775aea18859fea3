"""PyTorch's autograd contract (issue 24), each point against what plain PyTorch does
with F.cross_entropy(F.linear(h, w, b), y) (and F.kl_div for a teacher head):

1 double backward refused (the gradient penalty's term must never be silently dropped);
2 an in-place change of a tensor backward needs, between forward and backward, refused
  (hidden, weight, bias, teacher, labels, per-row inputs) in every mode;
3 a second backward without retain_graph refused; with retain_graph it adds the same
  gradient again (fp64 reference);
4 torch.autocast: the head does what F.linear does (autocast dtype in, fp32 loss, dW in
  the weight's dtype);
6 empty batches (N = 0) give PyTorch's nan / 0 / empty and zero gradients; D = 0 refused;
7 libmel.linear_cross_entropy = F.cross_entropy(F.linear(...)) with bias, weight=,
  ignore_index, label_smoothing, reductions, unbatched input; ignore_index= and
  label_smoothing= as linear_loss keywords;
8 libmel's messages name hidden/weight/bias, no repeated prefix.
The references are plain torch ops in float64; a silently wrong gradient fails a test.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import run  # noqa: E402

import libmel  # noqa: E402

torch.manual_seed(2024)
print("# seed 2024; torch %s; libmel from %s" % (torch.__version__, libmel.library_path))

N, D, V = 13, 7, 11          # awkward shapes; hidden [B, T, D] below with B*T = N
MODES = [("fused", dict(reduction="mean")), ("recompute", dict(reduction="mean",
                                                               mode="recompute")),
         ("none", dict(reduction="none"))]


def data(dtype=torch.float64, bias=True):
    h = torch.randn(N, D, dtype=dtype, requires_grad=True)
    w = torch.randn(V, D, dtype=dtype, requires_grad=True)
    b = torch.randn(V, dtype=dtype, requires_grad=True) if bias else None
    y = torch.randint(0, V, (N,))
    y[3] = -100
    return h, w, b, y


def ref_loss(h, w, b, y, reduction="mean", **kw):
    return F.cross_entropy(F.linear(h, w, b), y, reduction=reduction, **kw)


def scalar(l):
    """The loss as a scalar: per-row results through a fixed random upstream gradient."""
    if l.dim() == 0:
        return l
    g = torch.linspace(0.3, 1.7, l.numel(), dtype=l.dtype).reshape(l.shape)
    return (l * g).sum()


def grads_of(fn, *ts):
    for t in ts:
        t.grad = None
    scalar(fn()).backward()
    return [t.grad.clone() for t in ts]


def refuses(t, fn, desc, words):
    return t.raises(RuntimeError, fn, desc, words)


def main(t):
    # ---------------------------------------------------------------- 1 double backward
    for name, kw in MODES:
        h, w, b, y = data()
        lm = lambda: scalar(libmel.linear_loss(h, w, y, bias=b, **kw))  # noqa: E731
        rf = lambda: scalar(ref_loss(h, w, b, y, kw["reduction"]))  # noqa: E731
        # create_graph=True alone is fine and gives the right first derivative
        l = lm()
        g, = torch.autograd.grad(l, h, create_graph=True)
        gr, = torch.autograd.grad(rf(), h)
        t.close(g, gr, 1e-12, "%s: grad(create_graph=True) gives dL/dh" % name)
        t.ok(g.requires_grad, "%s: that gradient depends on h and w (has a grad_fn)" % name)

        def penalty():
            l2 = lm()
            g2, = torch.autograd.grad(l2, h, create_graph=True)
            (l2 + 10 * (g2 ** 2).sum()).backward()
        refuses(t, penalty, "%s: a gradient penalty (double backward) is refused" % name,
                ("differentiated", "double backward"))
        # PyTorch itself computes it; the refusal is libmel's, never a silent drop
        w.grad = None
        l3 = rf()
        g3, = torch.autograd.grad(l3, h, create_graph=True)
        (l3 + 10 * (g3 ** 2).sum()).backward()
        t.ok(w.grad is not None and torch.isfinite(w.grad).all(),
             "%s: (PyTorch computes that double backward)" % name)
        # backward(create_graph=True) (some optimizers) works when nothing differentiates it
        for x in (h, w, b):
            x.grad = None
        lm().backward(create_graph=True)
        gw = w.grad.detach().clone()
        w.grad = None
        rf().backward()
        t.close(gw, w.grad, 1e-12, "%s: backward(create_graph=True) gives dL/dw" % name)

    # ---------------------------------------------------------------- 2 in-place changes
    for name, kw in MODES:
        for what in ("hidden", "weight", "bias", "labels"):
            h, w, b, y = data()
            l = libmel.linear_loss(h, w, y, bias=b, **kw)
            with torch.no_grad():
                {"hidden": h, "weight": w, "bias": b}.get(what, y).mul_(2) \
                    if what != "labels" else y.fill_(1)
            refuses(t, lambda: scalar(l).backward(),
                    "%s: %s changed in place before backward is refused" % (name, what),
                    ("modified by an inplace operation",))
        # PyTorch refuses the same (its linear saves weight)
        h, w, b, y = data()
        l = ref_loss(h, w, b, y, kw["reduction"])
        with torch.no_grad():
            w.mul_(1.5)
        refuses(t, lambda: scalar(l).backward(), "%s: (PyTorch refuses weight changed in "
                "place too)" % name, ("modified by an inplace operation",))
        # a teacher head (kl): its hidden and weight
        for what in (0, 1):
            h, w, b, y = data()
            th = torch.randn(N, 5, dtype=torch.float64)
            tw = torch.randn(V, 5, dtype=torch.float64)
            l = libmel.linear_loss(h, w, y, transform="kl", teacher=(th, tw), **kw)
            with torch.no_grad():
                (th, tw)[what].add_(1)
            refuses(t, lambda: scalar(l).backward(),
                    "%s: teacher %s changed in place is refused" % (
                        name, ("hidden", "weight")[what]), ("modified by an inplace",))
        # per-row inputs of grpo (advantages; mask)
        for what in ("advantages", "mask"):
            h3 = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
            w3 = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
            ins = {"mask": torch.ones(2, 5, dtype=torch.float64),
                   "advantages": torch.randn(2, 5, dtype=torch.float64)}
            l = libmel.linear_loss(h3, w3, torch.randint(0, V, (2, 5)), transform="grpo",
                                   inputs=ins, params={"seq_len": 5}, **kw)
            with torch.no_grad():
                ins[what].mul_(0.5)
            refuses(t, lambda: scalar(l).backward(),
                    "%s: grpo's %s changed in place is refused" % (name, what),
                    ("modified by an inplace",))
        # a strided weight (copied for the C call): the caller's tensor is watched
        h, w, b, y = data()
        wt = torch.randn(D, V, dtype=torch.float64, requires_grad=True)
        l = libmel.linear_loss(h, wt.t(), y, **kw)
        with torch.no_grad():
            wt.add_(1)
        refuses(t, lambda: scalar(l).backward(), "%s: a transposed weight view changed in "
                "place is refused" % name, ("modified by an inplace",))
        # an unrelated in-place change is not refused, and the result is right
        h, w, b, y = data()
        other = torch.zeros(3)
        gl = grads_of(lambda: (libmel.linear_loss(h, w, y, bias=b, **kw), other.add_(1))[0],
                      h, w, b)
        gr = grads_of(lambda: ref_loss(h, w, b, y, kw["reduction"]), h, w, b)
        t.ok(all(torch.allclose(a, c, rtol=1e-12, atol=1e-14) for a, c in zip(gl, gr)),
             "%s: gradients without changes match fp64 PyTorch" % name)

    # ---------------------------------------------------------------- 3 second backward
    for name, kw in MODES:
        h, w, b, y = data()
        l = scalar(libmel.linear_loss(h, w, y, bias=b, **kw))
        l.backward()
        refuses(t, l.backward, "%s: a second backward without retain_graph is refused" % name,
                ("second time",))
        l = scalar(ref_loss(h, w, b, y, kw["reduction"]))
        l.backward()
        refuses(t, l.backward, "%s: (PyTorch refuses it too)" % name, ("second time",))
        # retain_graph=True: the same gradient added twice
        for x in (h, w, b):
            x.grad = None
        l = scalar(libmel.linear_loss(h, w, y, bias=b, **kw))
        l.backward(retain_graph=True)
        l.backward()
        gl = [x.grad.clone() for x in (h, w, b)]
        gr = grads_of(lambda: 2 * scalar(ref_loss(h, w, b, y, kw["reduction"])), h, w, b)
        for nm, a, c in zip(("hidden", "weight", "bias"), gl, gr):
            t.close(a, c, 1e-12, "%s: retain_graph: two backwards accumulate 2x d%s" % (
                name, nm))
        # autograd.grad twice with retain_graph, and with a different upstream gradient
        l = libmel.linear_loss(h, w, y, bias=b, **kw)
        up = torch.full_like(l, 0.5)
        g1, = torch.autograd.grad(l, w, up, retain_graph=True)
        g2, = torch.autograd.grad(l, w, 2 * up)
        gr, = torch.autograd.grad(ref_loss(h, w, b, y, kw["reduction"]), w, up)
        t.close(g1, gr, 1e-12, "%s: grad with retain_graph (upstream 0.5)" % name)
        t.close(g2, 2 * gr, 1e-12, "%s: grad again (upstream 1.0)" % name)

    # ---------------------------------------------------------------- 4 autocast
    torch.manual_seed(4)
    body = torch.nn.Linear(D, D)
    head = torch.nn.Linear(D, V, bias=False)
    x = torch.randn(N, D)
    y = torch.randint(0, V, (N,))
    for ac_dtype in (torch.bfloat16, torch.float16):
        if ac_dtype == torch.float16 and tuple(int(v) for v in
                                               torch.__version__.split(".")[:2]) < (2, 1):
            t.ok(True, "autocast float16 on the CPU needs torch >= 2.1 (skipped on %s)"
                 % torch.__version__)
            continue
        for m in (body, head):
            m.zero_grad()
        with torch.autocast("cpu", dtype=ac_dtype):
            hb = body(x)
            l = libmel.linear_loss(hb, head.weight, y)
        t.ok(hb.dtype == ac_dtype and l.dtype == torch.float32,
             "autocast %s: an nn.Linear body's output goes in; the loss is float32 (got %s)"
             % (ac_dtype, l.dtype))
        l.backward()
        t.ok(head.weight.grad.dtype == torch.float32 and body.weight.grad.dtype ==
             torch.float32, "autocast %s: dW in the weight's dtype (float32)" % ac_dtype)
        # reference: F.linear's casts, then fp64 logits from the rounded operands
        hr = hb.detach().double().requires_grad_(True)
        wr = head.weight.detach().to(ac_dtype).double().requires_grad_(True)
        lr = F.cross_entropy(hr @ wr.T, y)
        lr.backward()
        t.close(l, lr, 1e-5, "autocast %s: the loss = fp64 CE of the autocast-rounded "
                "operands" % ac_dtype)
        t.close(head.weight.grad, wr.grad, 2e-2, "autocast %s: dW" % ac_dtype)
        # PyTorch's own head under autocast: logits in the autocast dtype, same dtypes out
        for m in (body, head):
            m.zero_grad()
        with torch.autocast("cpu", dtype=ac_dtype):
            lp = F.cross_entropy(head(body(x)), y)
        lp.backward()
        t.ok(lp.dtype == torch.float32 and head.weight.grad.dtype == torch.float32,
             "autocast %s: (PyTorch: float32 loss, float32 dW)" % ac_dtype)
        t.close(l, lp, 3e-2, "autocast %s: libmel's loss within the 16-bit logits' rounding "
                "of PyTorch's" % ac_dtype)
    t.raises(TypeError, lambda: libmel.linear_loss(torch.randn(3, D).bfloat16(),
                                                   torch.randn(V, D), torch.zeros(3).long()),
             "outside autocast, bf16 hidden with an f32 weight is still refused",
             ("bfloat16", "float32"))

    # ---------------------------------------------------------------- 6 empty batches
    for red in ("mean", "sum", "none"):
        h = torch.randn(0, D, dtype=torch.float64, requires_grad=True)
        w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
        b = torch.randn(V, dtype=torch.float64, requires_grad=True)
        y0 = torch.zeros(0, dtype=torch.long)
        l = libmel.linear_loss(h, w, y0, bias=b, reduction=red)
        r = ref_loss(h, w, b, y0, red)
        same = (l.shape == r.shape and l.dtype == r.dtype and
                torch.equal(torch.isnan(l), torch.isnan(r)) and
                torch.equal(torch.nan_to_num(l), torch.nan_to_num(r)))
        t.ok(same, "N = 0, %s: %s as PyTorch's %s" % (red, l.detach(), r.detach()))
        l.sum().backward()
        t.ok(h.grad.shape == (0, D) and torch.equal(w.grad, torch.zeros_like(w)) and
             torch.equal(b.grad, torch.zeros_like(b)), "N = 0, %s: zero gradients" % red)
        with torch.no_grad():
            l = libmel.linear_loss(h.reshape(2, 0, D), w, y0.reshape(2, 0), reduction=red)
        t.ok(tuple(l.shape) == ((2, 0) if red == "none" else ()),
             "N = 0 as [2, 0, D] under no_grad, %s: shape %s" % (red, tuple(l.shape)))
    t.raises(ValueError, lambda: libmel.linear_loss(torch.randn(3, 0), torch.randn(V, 0),
                                                    torch.zeros(3).long()),
             "D = 0 is refused with a message", ("hidden", "D = 0"))

    # ---------------------------------------------------------------- 7 PyTorch's signature
    for red in ("mean", "sum", "none"):
        for kw in (dict(), dict(ignore_index=5), dict(label_smoothing=0.2),
                   dict(weight=torch.rand(V, dtype=torch.float64) + 0.1),
                   dict(weight=torch.rand(V, dtype=torch.float64) + 0.1, ignore_index=2)):
            h, w, b, y = data()
            y[3] = y[5] = kw.get("ignore_index", -100)
            gl = grads_of(lambda: libmel.linear_cross_entropy(h, w, y, linear_bias=b,
                                                              reduction=red, **kw), h, w, b)
            ll = libmel.linear_cross_entropy(h, w, y, linear_bias=b, reduction=red, **kw)
            gr = grads_of(lambda: ref_loss(h, w, b, y, red, **kw), h, w, b)
            lr = ref_loss(h, w, b, y, red, **kw)
            desc = "linear_cross_entropy %s %s" % (red, ", ".join(sorted(kw)) or "plain")
            t.close(ll, lr, 1e-12, desc + ": loss")
            t.ok(all(torch.allclose(a, c, rtol=1e-12, atol=1e-14) for a, c in zip(gl, gr)),
                 desc + ": dh, dw, db")
    h, w, b, y = data()
    y[:] = -100
    t.ok(torch.isnan(libmel.linear_cross_entropy(h, w, y)).item() and
         torch.isnan(ref_loss(h, w, None, y)).item(),
         "linear_cross_entropy: every target ignored gives nan, as PyTorch")
    h1 = torch.randn(D, dtype=torch.float64)
    w1 = torch.randn(V, D, dtype=torch.float64)
    for red in ("mean", "none"):
        t.close(libmel.linear_cross_entropy(h1, w1, torch.tensor(3), reduction=red),
                F.cross_entropy(F.linear(h1, w1), torch.tensor(3), reduction=red), 1e-12,
                "linear_cross_entropy: unbatched input, %s" % red)
    h, w, b, y = data()
    t.raises(ValueError, lambda: libmel.linear_cross_entropy(h.reshape(1, N, D), w, y[None]),
             "linear_cross_entropy: [B, T, D] input refused (PyTorch's class dim 1)",
             ("dim 1", "flatten"))
    t.raises(NotImplementedError, lambda: libmel.linear_cross_entropy(
        h, w, torch.softmax(torch.randn(N, V, dtype=torch.float64), -1)),
        "linear_cross_entropy: probability targets refused by name", ("probabilities",))
    t.raises(NotImplementedError, lambda: libmel.linear_cross_entropy(
        h, w, y, weight=torch.ones(V, dtype=torch.float64), label_smoothing=0.1),
        "linear_cross_entropy: weight= with label_smoothing refused naming both",
        ("weight=", "label_smoothing"))
    t.raises(ValueError, lambda: libmel.linear_cross_entropy(h, w, y, options=object()),
             "linear_cross_entropy: options= refused", ("options",))
    # linear_loss keywords
    for kw, pr in ((dict(ignore_index=4), dict(ignore_index=4)),
                   (dict(label_smoothing=0.3), dict(label_smoothing=0.3))):
        h, w, b, y = data()
        y[0] = 4
        y[3] = kw.get("ignore_index", -100)
        t.close(libmel.linear_loss(h, w, y, **kw), ref_loss(h, w, None, y, **kw), 1e-12,
                "linear_loss(%s=) keyword" % list(kw)[0])
        t.close(libmel.linear_loss(h, w, y, **kw), libmel.linear_loss(h, w, y, params=pr),
                1e-15, "linear_loss(%s=) = params[%r]" % (list(kw)[0], list(kw)[0]))
    t.raises(ValueError, lambda: libmel.linear_loss(h, w, y, ignore_index=4,
                                                    params={"ignore_index": 5}),
             "ignore_index= and params['ignore_index'] that differ are refused naming both",
             ("ignore_index=4", "params['ignore_index']=5"))
    t.raises(ValueError, lambda: libmel.linear_loss(h, w, y, label_smoothing=0.1,
                                                    transform=libmel.builtin("ce")),
             "label_smoothing= with a compiled transform is refused", ("label_smoothing",))

    # ---------------------------------------------------------------- 8 messages
    X = torch.randn(2, 3, 4)
    W = torch.randn(5, 4)
    lab = torch.randint(0, 5, (2, 3))
    Xn = X.clone()
    Xn[1, 2, 3] = float("nan")
    Wn = W.clone()
    Wn[4, 1] = float("inf")
    for args, kw, words, desc in (
            ((Xn, W, lab), dict(check_finite=True), ("hidden[1, 2, 3] = nan",), "NaN in hidden"),
            ((X, Wn, lab), dict(check_finite=True), ("weight[4, 1] = inf",), "inf in weight"),
            ((X, W, lab), dict(check_finite=True, bias=torch.tensor([0, 0, float("nan"), 0, 0])),
             ("bias[2] = nan",), "NaN in bias"),
            ((X, W, torch.tensor([[0, 1, 2], [3, 9, 0]])), {}, ("labels[1, 1] = 9",),
             "label out of range"),
            ((X, W, lab), dict(transform="grpo", check_finite=True, inputs={
                "mask": torch.ones(2, 3), "advantages": torch.tensor([[0, 1, 2],
                                                                     [3, float("nan"), 0]])}),
             ("advantages[1, 1] = nan",), "NaN in a per-row input"),
            ((X, W, lab), dict(transform="kl", check_finite=True, teacher=(Xn, W)),
             ("teacher hidden[1, 2, 3] = nan",), "NaN in the teacher's hidden")):
        try:
            libmel.linear_loss(*args, **kw)
            t.ok(False, "message: %s" % desc, "no exception")
        except libmel.MelError as e:
            m = str(e)
            t.ok(all(wd in m for wd in words) and " of head " not in m,
                 "message names it in the caller's words: %s" % desc, m)
    try:
        libmel.linear_loss(X, W, lab, params={"label_smoothing": 2})
    except libmel.MelError as e:
        m = str(e)
        t.ok(m.count("transform 'ce'") == 1, "no repeated prefix", m)


run(main)
