"""Vocabulary tiles through the Python package: linear_loss with a small
workspace_bytes runs the tiled executor (last_stats() says so) and gives the
gradients of plain fp64 torch autograd; the default runs whole rows."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import run  # noqa: E402

import libmel  # noqa: E402


def main(t):
    torch.manual_seed(19)
    N, D, V = 40, 16, 20011
    h = torch.randn(N, D, dtype=torch.float64)
    w = torch.randn(V, D, dtype=torch.float64) * 0.5
    b = torch.randn(V, dtype=torch.float64) * 0.1
    y = torch.randint(0, V, (N,))
    y[::7] = -100
    hr, wr, br = (x.clone().requires_grad_(True) for x in (h, w, b))
    ref = F.cross_entropy(F.linear(hr, wr, br), y, label_smoothing=0.1)
    ref.backward()
    for ws, want in ((64 << 10, "tiles"), (None, "rows")):
        for mode in ("fused", "recompute"):
            hh, ww, bb = (x.clone().requires_grad_(True) for x in (h, w, b))
            loss = libmel.linear_loss(hh, ww, y, bias=bb, label_smoothing=0.1, workspace_bytes=ws, mode=mode)
            loss.backward()
            st = libmel.last_stats()
            what = "workspace_bytes=%s %s" % (ws, mode)
            t.ok(st is not None and st["executor"] == want and (st["tile_cols"] > 0) == (want == "tiles") and
                 (ws is None or st["peak_workspace_bytes"] <= ws),
                 "%s: executor %s" % (what, want), "stats %r" % (st,))
            t.close(loss, ref, 1e-12, "%s: loss" % what)
            t.close(hh.grad, hr.grad, 1e-12, "%s: grad hidden" % what)
            t.close(ww.grad, wr.grad, 1e-12, "%s: grad weight" % what)
            t.close(bb.grad, br.grad, 1e-12, "%s: grad bias" % what)


if __name__ == "__main__":
    run(main)
