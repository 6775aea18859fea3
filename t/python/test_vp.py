"""linear_loss with vocab_parallel under mpirun (run by t/vocab_parallel.t with 2 and 3
processes): every process holds uneven rows of W; the loss, hidden's gradient and the
shard's rows of weight's (and bias's) gradient must equal those of an fp64 torch autograd
computation with the whole W (f64 <= 1e-12, f32 <= 1e-5 relative), on every process.
Process 0 prints TAP; each check is decided over all processes."""
import sys

import torch
from mpi4py import MPI

import libmel
from tap import Tap

comm = MPI.COMM_WORLD
rank, K = comm.Get_rank(), comm.Get_size()
t = Tap()
B, T, D, V = 3, 5, 7, 23
N = B * T


def shard(k):
    # uneven: the last process holds the rest
    base = V // (K + 1)
    off = k * base
    rows = base if k < K - 1 else V - off
    return off, rows


off, rows = shard(rank)
vp = libmel.VocabParallel(comm, off, V)


def check(err, tol, desc):
    worst = comm.allreduce(err if err == err else float("inf"), op=MPI.MAX)
    if rank == 0:
        t.ok(worst <= tol, "K=%d: %s: max rel err %.2e (tol %.0e)" % (K, desc, worst, tol))


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    s = b.abs().max().item()
    return (a - b).abs().max().item() / (s if s > 0 else 1.0)


def reference(kind, h, w, bias, lab, th, tw, inputs, red):
    """fp64 torch autograd with the whole W (independent of libmel)."""
    h = h.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    b = bias.detach().double().requires_grad_() if bias is not None else None
    z = h.reshape(N, D) @ w.t() + (b if b is not None else 0)
    y = lab.reshape(N)
    valid = y != -100
    if kind == "ce":
        lp = torch.log_softmax(z, -1)
        per = -lp.gather(1, y.clamp(min=0)[:, None])[:, 0] * valid
        loss = per.sum() / valid.sum() if red == "mean" else per.reshape(B, T)
    elif kind == "kl":
        zt = th.double().reshape(N, D) @ tw.double().t()
        pt = torch.softmax(zt, -1)
        per = (pt * (torch.log_softmax(zt, -1) - torch.log_softmax(z, -1))).sum(-1) * valid
        loss = per.sum() / valid.sum()
    elif kind == "entropy":
        p = torch.softmax(z, -1)
        per = -(p * torch.log_softmax(z, -1)).sum(-1)
        loss = per.mean()
    elif kind == "grpo":  # token level, no clipping active (old_logp = logp), beta = 0, dapo
        lp = torch.log_softmax(z, -1).gather(1, y.clamp(min=0)[:, None])[:, 0]
        m = inputs["mask"].double().reshape(N) * valid
        adv = inputs["advantages"].double().reshape(N)
        ratio = torch.exp(lp - lp.detach())
        per = -ratio * adv
        loss = (per * m).sum() / m.sum()
    return loss, h, w, b


g = torch.Generator().manual_seed(11)
for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
    H = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    W = 0.7 * torch.randn(V, D, generator=g, dtype=torch.float64)
    Bi = 0.3 * torch.randn(V, generator=g, dtype=torch.float64)
    TH = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    TW = torch.randn(V, D, generator=g, dtype=torch.float64)
    lab = torch.randint(0, V, (B, T), generator=g)
    lab[0, 0] = lab[2, 4] = -100
    mask = (torch.rand(B, T, generator=g) < 0.8).double()
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    inputs = {"mask": mask, "advantages": adv}
    for kind, red, mode in (("ce", "mean", "fused"), ("ce", "mean", "recompute"),
                            ("ce", "none", None), ("kl", "mean", "fused"),
                            ("entropy", "mean", "recompute"), ("grpo", None, "fused")):
        use_bias = kind == "ce"
        h = H.to(dt).clone().requires_grad_()
        w = W[off:off + rows].to(dt).clone().requires_grad_()
        b = Bi[off:off + rows].to(dt).clone().requires_grad_() if use_bias else None
        kw = dict(vocab_parallel=vp, mode=mode)
        if kind == "kl":
            kw["teacher"] = (TH.to(dt), TW[off:off + rows].to(dt).contiguous())
        if kind == "grpo":
            kw["inputs"] = {"mask": mask.to(dt), "advantages": adv.to(dt)}
            kw["params"] = {"loss_type": "dapo"}
        if red is not None:
            kw["reduction"] = red
        loss = libmel.linear_loss(h, w, None if kind == "entropy" else lab,
                                  transform=kind, bias=b, **kw)
        up = torch.randn(loss.shape, generator=torch.Generator().manual_seed(5),
                         dtype=torch.float64)
        (loss * up.to(loss.dtype)).sum().backward()
        rl, rh, rw, rb = reference(kind, H, W, Bi if use_bias else None, lab, TH, TW, inputs,
                                   red)
        (rl * up).sum().backward()
        name = "%s %s reduction=%s mode=%s" % (kind, str(dt).replace("torch.", ""), red, mode)
        check(rel(loss, rl), tol, name + ": loss")
        check(rel(h.grad, rh.grad), tol, name + ": hidden's gradient (summed over processes)")
        check(rel(w.grad, rw.grad[off:off + rows]), tol, name + ": weight's gradient (the shard)")
        if use_bias:
            check(rel(b.grad, rb.grad[off:off + rows]), tol, name + ": bias's gradient (the shard)")
        same = comm.allgather(loss.detach().double().reshape(-1).tolist())
        if rank == 0:
            t.ok(all(x == same[0] for x in same), "K=%d: %s: loss bitwise equal on every process"
                 % (K, name))

st = libmel.last_stats()
comm_ok = st is not None and st.get("comm_bytes", 0) > 0
comm_ok = comm.allreduce(1 if comm_ok else 0, op=MPI.MIN)
if rank == 0:
    t.ok(comm_ok == 1, "K=%d: last_stats() reports comm_bytes and comm_seconds" % K)

# partial_dx: hidden's gradient is this process's part; their sum is the whole
h = H.clone().requires_grad_()
w = W[off:off + rows].clone().requires_grad_()
libmel.linear_loss(h, w, lab, vocab_parallel=libmel.VocabParallel(comm, off, V, partial_dx=True)
                   ).backward()
total = torch.zeros_like(h.grad)
comm.Allreduce(h.grad.detach().numpy(), total.numpy(), op=MPI.SUM)
rl, rh, _, _ = reference("ce", H, W, None, lab, None, None, None, "mean")
rl.backward()
check(rel(total, rh.grad), 1e-12, "partial_dx=True: the processes' parts of hidden's gradient "
      "add up to it")

# errors
try:
    libmel.linear_loss(H, W[off:off + rows].contiguous(), lab,
                       vocab_parallel=libmel.VocabParallel(comm, V - 1, V))
    bad = "no error"
except ValueError as e:
    bad = "" if "past v_total" in str(e) else str(e)
if rank == 0:
    t.ok(bad == "", "K=%d: a shard past v_total is refused naming it" % K, bad or None)
try:
    libmel.VocabParallel("world", 0, V)
    bad = "no error"
except TypeError as e:
    bad = "" if "mpi4py communicator" in str(e) else str(e)
if rank == 0:
    t.ok(bad == "", "K=%d: a comm that is not a communicator is refused" % K, bad or None)
    print("1..%d" % t.n)
sys.exit(1 if (rank == 0 and t.failed) else 0)
