"""Every built-in through libmel.linear_loss against fp64 torch autograd.

The references below are written here with plain torch ops (log_softmax,
F.cross_entropy, ...) from the formulas in doc/transforms.md; torch autograd
differentiates them.  libmel's results (y and the gradients of sum(g·y) for a
random upstream g) must agree: f64 1e-10, f32 3e-5, bf16/f16 (inputs rounded to
16 bits, the reference computed in f64 from the rounded values) 2e-2 / 4e-3 on
gradients, which are rounded once to the storage dtype.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import run  # noqa: E402

import libmel  # noqa: E402
from libmel import _core  # noqa: E402

torch.manual_seed(20261130)
print("# seed 20261130; libmel from %s" % libmel.library_path)

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (3e-5, 3e-5),
       torch.bfloat16: (1e-5, 2e-2), torch.float16: (1e-5, 4e-3)}


def logits(X, W, b=None, p=None):
    p = p or {}
    z = X.double() @ W.double().T
    if b is not None:
        z = z + b.double()
    if p.get("logit_scale", 1) != 1:
        z = z * p["logit_scale"]
    if p.get("softcap", 0):
        z = p["softcap"] * torch.tanh(z / p["softcap"])
    if p.get("temperature", 1) != 1:
        z = z / p["temperature"]
    return z


def ref_rows(name, p, X, W, b, labels, inputs, teacher):
    """Per-row y (fp64) and the per-row count, from torch ops."""
    z = logits(X, W, b, p)
    ii = p.get("ignore_index", -100)
    if labels is not None:
        valid = labels != ii
        safe = torch.where(valid, labels, torch.zeros_like(labels))
    else:  # no labels (kl/reverse_kl/jsd with use_labels=0): every row counts
        valid = torch.ones(X.shape[0], dtype=torch.bool)
    if name == "ce":
        y = F.cross_entropy(z, safe, reduction="none",
                            label_smoothing=p.get("label_smoothing", 0.0))
        if p.get("z_loss", 0):
            y = y + p["z_loss"] * torch.logsumexp(z, -1) ** 2
        return torch.where(valid, y, torch.zeros_like(y)), valid.double()
    if name == "logprob":
        y = torch.log_softmax(z, -1).gather(1, safe[:, None])[:, 0]
        return torch.where(valid, y, torch.zeros_like(y)), valid.double()
    if name == "entropy":
        ls = torch.log_softmax(z, -1)
        return -(ls.exp() * ls).sum(-1), torch.ones(z.shape[0], dtype=torch.float64)
    if name == "z_loss":
        return torch.logsumexp(z, -1) ** 2, torch.ones(z.shape[0], dtype=torch.float64)
    if name in ("kl", "reverse_kl", "jsd"):
        s = torch.log_softmax(z, -1)
        t = torch.log_softmax(logits(teacher[0], teacher[1], None, p), -1)

        def kl(a, c):  # KL(a || c) for log-probabilities a, c
            return (a.exp() * (a - c)).sum(-1)
        if name == "kl":
            d = kl(t, s)
        elif name == "reverse_kl":
            d = kl(s, t)
        else:
            beta = p.get("beta", 0.5)
            if beta == 0:
                d = kl(t, s)
            elif beta == 1:
                d = kl(s, t)
            else:
                m = torch.log(beta * t.exp() + (1 - beta) * s.exp())
                d = beta * kl(t, m) + (1 - beta) * kl(s, m)
        if p.get("t2_scale", 0):
            d = d * p.get("temperature", 1) ** 2
        return torch.where(valid, d, torch.zeros_like(d)), valid.double()
    raise KeyError(name)


def ref_grpo(p, X, W, labels, inputs, teacher, B, T):
    """TRL's GRPO per-token loss and the loss type's normalisation, in torch."""
    z = logits(X, W, None, p)
    logp = torch.log_softmax(z, -1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
    on = (inputs["mask"] != 0) & (labels != -100)
    # the effective mask: a token with an ignored label counts nowhere
    mask = torch.where(on, inputs["mask"].double(), torch.zeros(on.shape, dtype=torch.float64))
    A = inputs["advantages"].double()
    old = inputs["old_logp"].double() if p.get("use_old_logp", 0) else logp.detach()
    if p.get("importance_sampling_level", 0) == 1:
        lr = torch.where(on, (logp - old) * mask, torch.zeros_like(logp)).view(B, T)
        s = lr.sum(1) / mask.view(B, T).sum(1).clamp(min=1)
        r = s.exp()[:, None].expand(B, T).reshape(-1)
    else:
        r = (logp - old).exp()
    eps_lo = p.get("epsilon_low", 0.2)
    eps_hi = p.get("epsilon_high", -1)
    eps_hi = eps_lo if eps_hi < 0 else eps_hi
    c1 = torch.clamp(r, max=p["delta"]) if p.get("delta", 0) else r
    c2 = torch.clamp(r, 1 - eps_lo, 1 + eps_hi)
    ell = -torch.min(c1 * A, c2 * A)
    if p.get("beta", 0):
        if p.get("ref_source", 0):
            ref = torch.log_softmax(logits(teacher[0], teacher[1], None, p), -1).gather(
                1, labels.clamp(min=0)[:, None])[:, 0]
        else:
            ref = inputs["ref_logp"].double()
        ell = ell + p["beta"] * ((ref - logp).exp() - (ref - logp) - 1)
    y = torch.where(on, ell, torch.zeros_like(ell))
    lt = p.get("loss_type", "dapo")
    m = mask.view(B, T)
    if lt == "grpo":
        w = (m / m.sum(1, keepdim=True).clamp(min=1) / B).reshape(-1)
    elif lt == "bnpo":
        w = m.reshape(-1) / m.sum().clamp(min=1)
    elif lt == "dr_grpo":
        w = m.reshape(-1) / (B * p.get("max_completion_length", 512))
    else:
        items = p.get("num_items_in_batch", 0)
        w = m.reshape(-1) / (max(items, 1) if items else m.sum().clamp(min=1))
    return y, w


def grads_of(out, tensors, g):
    ts = [t for t in tensors if t is not None and t.requires_grad]
    gs = torch.autograd.grad(out, ts, g, allow_unused=True)
    it = iter(gs)
    return [next(it) if (t is not None and t.requires_grad) else None for t in tensors]


def make(N, D, V, dtype, bias=False, ignore=(), Dt=None, teacher=False, lead=None):
    X = torch.randn(N, D, dtype=torch.float64)
    W = torch.randn(V, D, dtype=torch.float64) * 0.7
    b = torch.randn(V, dtype=torch.float64) * 0.3 if bias else None
    lab = torch.randint(0, V, (N,))
    for i in ignore:
        lab[i] = -100
    th = tw = None
    if teacher:
        Dt = Dt or D
        th = torch.randn(N, Dt, dtype=torch.float64)
        tw = torch.randn(V, Dt, dtype=torch.float64) * 0.7
    # round to the storage dtype once; the reference reads the rounded values
    r = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return r(X), r(W), r(b), lab, r(th), r(tw)


def check_case(t, name, p, dtype, reduction, chunk_rows=None, bias=False, mode=None,
               N=13, D=6, V=37, ignore=(2, 7), teacher=False, Dt=None, tag=""):
    X, W, b, lab, th, tw = make(N, D, V, dtype, bias, ignore, Dt, teacher)
    uses_labels = name not in ("entropy", "z_loss") and p.get("use_labels", 1) != 0
    X.requires_grad_(True)
    W.requires_grad_(True)
    if b is not None:
        b.requires_grad_(True)
    tch = (th.requires_grad_(True), tw.requires_grad_(True)) if teacher else None
    y = libmel.linear_loss(X, W, lab if uses_labels else None, transform=name, bias=b,
                           teacher=tch, params=p, reduction=reduction, chunk_rows=chunk_rows,
                           mode=mode)
    g = torch.randn(y.shape, dtype=y.dtype)
    got = grads_of(y, [X, W, b], g)
    # reference in fp64 from the (rounded) inputs
    Xr, Wr = X.detach().double().requires_grad_(True), W.detach().double().requires_grad_(True)
    br = b.detach().double().requires_grad_(True) if b is not None else None
    tr = (th.detach().double(), tw.detach().double()) if teacher else None
    rows, count = ref_rows(name, p, Xr, Wr, br, lab if uses_labels else None, None, tr)
    if reduction == "none":
        yr = rows
    elif reduction == "sum":
        yr = rows.sum()
    else:
        c = count.sum()
        yr = rows.sum() / c if c > 0 else rows.sum() * 0
    ref = grads_of(yr, [Xr, Wr, br], g.double())
    ty, tg = TOL[dtype]
    desc = "%s %s %s %s chunk=%s mode=%s%s" % (name, p, str(dtype)[6:], reduction, chunk_rows,
                                               mode, tag)
    t.close(y, yr, ty, desc + ": y")
    t.close(got[0], ref[0], tg, desc + ": dX")
    t.close(got[1], ref[1], tg, desc + ": dW")
    if b is not None:
        t.close(got[2], ref[2], tg, desc + ": db")
    if teacher:
        t.ok(th.grad is None and tw.grad is None, desc + ": the teacher gets no gradient")
    if chunk_rows is not None:
        st = libmel.last_stats()
        t.ok(st["chunk_rows"] == min(chunk_rows, N), desc + ": chunk_rows used",
             "stats %s" % st)


def main(t):
    dtypes = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
    # cross-entropy: every option, every reduction, dtypes, chunks, modes
    ce_opts = [{}, {"label_smoothing": 0.1}, {"z_loss": 1e-3}, {"softcap": 3.0},
               {"logit_scale": 1.7, "temperature": 0.8},
               {"label_smoothing": 0.05, "z_loss": 1e-2, "softcap": 5.0, "temperature": 1.3}]
    for p in ce_opts:
        for red in ("mean", "sum", "none"):
            check_case(t, "ce", p, torch.float64, red, chunk_rows=3)
    for dt in dtypes:
        for red in ("mean", "none"):
            check_case(t, "ce", {"label_smoothing": 0.1}, dt, red, bias=True)
    for cr in (1, 4, 13, 100, None):
        check_case(t, "ce", {}, torch.float32, "mean", chunk_rows=cr)
    for mode in ("fused", "recompute"):
        check_case(t, "ce", {}, torch.float64, "sum", mode=mode, bias=True)
    check_case(t, "ce", {}, torch.float64, "mean", ignore=range(13), tag=" all ignored")
    check_case(t, "ce", {}, torch.float64, "mean", N=1, D=1, V=1, ignore=(), tag=" N=D=V=1")
    # the other built-ins
    for name in ("logprob", "entropy", "z_loss"):
        for dt in (torch.float64, torch.float32, torch.bfloat16):
            for red in ("mean", "sum", "none"):
                check_case(t, name, {"temperature": 0.9} if name != "z_loss" else {}, dt, red,
                           chunk_rows=5, ignore=(2, 7) if name == "logprob" else ())
    for name, p in (("kl", {}), ("kl", {"temperature": 2.0, "t2_scale": 1}),
                    ("reverse_kl", {}), ("jsd", {"beta": 0.0}), ("jsd", {"beta": 0.3}),
                    ("jsd", {"beta": 1.0}), ("jsd", {"beta": 0.5, "temperature": 1.5})):
        for dt in (torch.float64, torch.float32):
            for red in ("mean", "none"):
                check_case(t, name, p, dt, red, teacher=True, Dt=4, chunk_rows=4)
    check_case(t, "jsd", {"beta": 0.5}, torch.bfloat16, "mean", teacher=True)
    for name in ("kl", "reverse_kl", "jsd"):  # no labels: every row counts
        for red in ("mean", "none"):
            check_case(t, name, {"use_labels": 0}, torch.float64, red, teacher=True, Dt=5,
                       chunk_rows=4, tag=" (no labels)")

    # grpo: every loss type, token and sequence level, beta with both ref sources
    B, T, D, V = 3, 5, 6, 29
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        for p in ({"use_old_logp": 1},
                  {"use_old_logp": 1, "importance_sampling_level": "sequence",
                   "epsilon_high": 0.28},
                  {"beta": 0.04, "ref_source": 1, "delta": 1.5, "use_old_logp": 1},
                  {"beta": 0.1, "temperature": 0.7}):
            for dt in (torch.float64, torch.float32):
                grpo_case(t, dict(p, loss_type=lt, max_completion_length=7,
                                  num_items_in_batch=11 if lt == "dapo" else 0),
                          dt, B, T, D, V)
    grpo_case(t, {"use_old_logp": 1, "loss_type": "dapo"}, torch.bfloat16, B, T, D, V)

    # strided hidden: a slice of the last dimension is passed with its row stride
    big = torch.randn(4, 5, 9, dtype=torch.float64)
    h = big[..., 2:8]
    x2, ld = _core._rows(h, 6, "hidden")
    t.ok(x2.data_ptr() == h.data_ptr() and ld == 9, "a [B, T, 6] slice of [B, T, 9] is passed "
         "without a copy, row stride 9", "ld %d" % ld)
    for hv, what in ((big[..., 2:8], "last-dim slice"), (big[:, :-1, 2:8], "shifted slice"),
                     (big.transpose(0, 1)[..., :6], "transposed")):
        hv = hv.clone().requires_grad_(False)
        hv = (big[..., 2:8] if what == "last-dim slice" else
              big[:, :-1, 2:8] if what == "shifted slice" else big.transpose(0, 1)[..., :6])
        hv.requires_grad_(False)
        W = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
        Hl = hv.detach().clone()
        src = big.clone().requires_grad_(True)
        view = (src[..., 2:8] if what == "last-dim slice" else
                src[:, :-1, 2:8] if what == "shifted slice" else src.transpose(0, 1)[..., :6])
        lab = torch.randint(0, 11, view.shape[:-1])
        y = libmel.linear_loss(view, W, lab, chunk_rows=3)
        gs, gw = torch.autograd.grad(y, (src, W))
        src2 = big.clone().requires_grad_(True)
        view2 = (src2[..., 2:8] if what == "last-dim slice" else
                 src2[:, :-1, 2:8] if what == "shifted slice" else src2.transpose(0, 1)[..., :6])
        yr = F.cross_entropy((view2 @ W.T).reshape(-1, 11), lab.reshape(-1))
        rs, rw = torch.autograd.grad(yr, (src2, W))
        t.close(y, yr, 1e-12, "strided hidden (%s): y" % what)
        t.close(gs, rs, 1e-12, "strided hidden (%s): d(base tensor)" % what)
        t.close(gw, rw, 1e-12, "strided hidden (%s): dW" % what)
        del Hl

    # gradients only where requires_grad asks
    X = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    W = torch.randn(9, 4, dtype=torch.float64)
    lab = torch.randint(0, 9, (6,))
    libmel.linear_loss(X, W, lab).backward()
    Xr = X.detach().clone().requires_grad_(True)
    F.cross_entropy(Xr @ W.T, lab).backward()
    t.close(X.grad, Xr.grad, 1e-12, "W without requires_grad: dX still right")
    t.ok(W.grad is None, "W without requires_grad gets no gradient")
    with torch.no_grad():
        y = libmel.linear_loss(X, W, lab)
    t.ok(not y.requires_grad, "under torch.no_grad the result has no graph")
    # a scalar upstream gradient is multiplied in (fused mode)
    X.grad = None
    y = libmel.linear_loss(X, W, lab, reduction="sum")
    y.backward(torch.tensor(0.37, dtype=torch.float64))
    Xr.grad = None
    (F.cross_entropy(Xr @ W.T, lab, reduction="sum") * 0.37).backward()
    t.close(X.grad, Xr.grad, 1e-12, "fused: upstream gradient 0.37 multiplied in")
    # the loss used twice accumulates twice
    X.grad = None
    y = libmel.linear_loss(X, W, lab)
    (2 * y + y).backward()
    Xr.grad = None
    (3 * F.cross_entropy(Xr @ W.T, lab)).backward()
    t.close(X.grad, Xr.grad, 1e-12, "fused: a loss used twice, gradient 3x")


def grpo_case(t, p, dtype, B, T, D, V):
    N = B * T
    X = torch.randn(B, T, D, dtype=torch.float64).to(dtype).requires_grad_(True)
    W = (torch.randn(V, D, dtype=torch.float64) * 0.5).to(dtype).requires_grad_(True)
    lab = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[2, 1] = 0
    lab[1, 4] = -100
    with torch.no_grad():
        lp = torch.log_softmax(logits(X.reshape(N, D), W), -1).gather(
            1, lab.reshape(-1).clamp(min=0)[:, None])[:, 0]
    adv = torch.randn(B, 1, dtype=torch.float64).expand(B, T).contiguous()
    inputs = {"mask": mask.bool(), "advantages": adv}
    if p.get("use_old_logp"):
        inputs["old_logp"] = (lp + 0.3 * torch.randn(N, dtype=torch.float64)).view(B, T)
    teacher = None
    if p.get("beta") and p.get("ref_source"):
        teacher = ((X.detach().double() + 0.2 * torch.randn(B, T, D, dtype=torch.float64)
                    ).to(dtype), W.detach().clone())
    elif p.get("beta"):
        inputs["ref_logp"] = (lp + 0.2 * torch.randn(N, dtype=torch.float64)).view(B, T)
    y, aux = libmel.linear_loss(X, W, lab, transform="grpo", inputs=inputs, teacher=teacher,
                                params=p, return_aux=["is_clipped"])
    gx, gw = torch.autograd.grad(y, (X, W), torch.tensor(1.3, dtype=y.dtype))
    Xr = X.detach().double().reshape(N, D).requires_grad_(True)
    Wr = W.detach().double().requires_grad_(True)
    pr = dict(p)
    if isinstance(pr.get("importance_sampling_level"), str):
        pr["importance_sampling_level"] = 1
    tr = (teacher[0].double().reshape(N, D), teacher[1].double()) if teacher else None
    rows, w = ref_grpo(pr, Xr, Wr, lab.reshape(-1),
                       {k: v.reshape(-1) for k, v in inputs.items()}, tr, B, T)
    yr = (rows * w).sum()
    rx, rw = torch.autograd.grad(yr * 1.3, (Xr, Wr))
    ty, tg = TOL[dtype]
    desc = "grpo %s %s" % (p, str(dtype)[6:])
    t.close(y, yr, ty, desc + ": y (loss type's normalisation from [B, T])")
    t.close(gx.reshape(N, D), rx, tg, desc + ": dX")
    t.close(gw, rw, tg, desc + ": dW")
    t.ok(aux["is_clipped"].shape == (B, T), desc + ": is_clipped aux has the leading shape")
    t.ok(not aux["is_clipped"].requires_grad, desc + ": is_clipped carries no gradient")


run(main)
