#!/usr/bin/env python3
"""Wide logits against scaled ones (issue 20): every built-in, f32 and bf16
storage, through `mel run` (fused, one process per call, wall time from
--stats), with PyTorch eager cross-entropy (f32 and bf16) in the same run.

X and W are drawn from N(0, 1).  "wide" uses W as drawn: with D = 512 the
logits have a standard deviation of about 22, so most softmax entries of a
row lie far below float's smallest normal number.  "scaled" divides the
same W by sqrt(D) (logits of standard deviation about 1).  Calls are
interleaved (wide, scaled, wide, scaled, ...) and each figure is the median
of --repeat runs; compare the ratio wide / scaled, taken in one run.

    /usr/bin/python3 examples/bench/subnormal.py --mel tools/mel/mel \
        [--mel-before OTHER/tools/mel/mel] [--repeat 3]

Needs numpy; the PyTorch columns need torch (skipped with a note without it).
Benchmark only: the build and tests never run it."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BUILTINS = ["ce", "logprob", "entropy", "z_loss", "kl", "reverse_kl", "jsd", "grpo"]


def write_inputs(d, n, dim, v, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    w = rng.standard_normal((v, dim), dtype=np.float32)
    files = {
        "x": x, "w_wide": w, "w_scaled": (w / np.sqrt(dim)).astype(np.float32),
        "xt": rng.standard_normal((n, dim), dtype=np.float32),
        "labels": rng.integers(0, v, n).astype(np.int64),
        "mask": np.ones(n, np.float32),
        "adv": rng.standard_normal(n).astype(np.float32),
    }
    # "subw": the scaled W with one entry in 8 replaced by a subnormal
    # (+-1e-39, as weight decay can leave): the cost of subnormal inputs
    subw = files["w_scaled"].copy()
    subw.reshape(-1)[::8] = np.where(subw.reshape(-1)[::8] < 0, -1e-39, 1e-39).astype(np.float32)
    files["w_subw"] = subw
    files["wt_wide"] = rng.standard_normal((v, dim), dtype=np.float32)
    files["wt_scaled"] = (files["wt_wide"] / np.sqrt(dim)).astype(np.float32)
    files["wt_subw"] = files["wt_scaled"]
    for k, a in files.items():
        np.save(os.path.join(d, k + ".npy"), a)


def mel_args(d, name, scale, dtype):
    a = ["run", name, "--hidden", f"{d}/x.npy", "--weight", f"{d}/w_{scale}.npy", "--dtype", dtype,
         "--grad-hidden", f"{d}/dx.npy", "--grad-weight", f"{d}/dw.npy", "--output", f"{d}/y.npy"]
    if name in ("ce", "logprob", "kl", "reverse_kl", "jsd", "grpo"):
        a += ["--labels", f"{d}/labels.npy"]
    if name in ("kl", "reverse_kl", "jsd"):
        a += ["--teacher-hidden", f"{d}/xt.npy", "--teacher-weight", f"{d}/wt_{scale}.npy"]
    if name == "grpo":
        a += ["--input", f"mask={d}/mask.npy", "--input", f"advantages={d}/adv.npy"]
    if name in ("logprob", "entropy", "z_loss"):
        a += ["--reduction", "sum"]
    return a


def run_mel(tool, d, name, scale, dtype, threads):
    st = os.path.join(d, "stats.json")
    cmd = [tool] + mel_args(d, name, scale, dtype) + ["--threads", str(threads), "--stats", st]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    with open(st) as f:
        return json.load(f)["wall_seconds"]


def torch_step(torch, F, x, w, y, dtype):
    x = x.to(dtype).requires_grad_(True)
    w = w.to(dtype).requires_grad_(True)
    t0 = time.perf_counter()
    loss = F.cross_entropy(F.linear(x, w).float(), y)
    loss.backward()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mel", required=True)
    ap.add_argument("--mel-before", help="a second mel tool (an older build) timed alike")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=BUILTINS)
    ap.add_argument("--no-torch", action="store_true")
    o = ap.parse_args()
    tools = [("libmel", o.mel)] + ([("before", o.mel_before)] if o.mel_before else [])
    with tempfile.TemporaryDirectory() as d:
        write_inputs(d, o.rows, o.dim, o.vocab, 20)
        print(f"# N={o.rows} D={o.dim} V={o.vocab} threads={o.threads} repeat={o.repeat} "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
        print("| call | storage | wide s | scaled s | wide/scaled | subnormal W s | subnormal W/scaled |")
        print("|---|---|---|---|---|---|---|")
        for label, tool in tools:
            for name in o.only:
                for dtype in ("f32", "bf16"):
                    t = {"wide": [], "scaled": [], "subw": []}
                    for _ in range(o.repeat):
                        for scale in t:
                            t[scale].append(run_mel(tool, d, name, scale, dtype, o.threads))
                    a, b, c = (statistics.median(t[k]) for k in ("wide", "scaled", "subw"))
                    print(f"| {label} {name} | {dtype} | {a:.3f} | {b:.3f} | {a / b:.2f} | {c:.3f} | {c / b:.2f} |",
                          flush=True)
        if o.no_torch:
            return
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            print("# PyTorch rows skipped: torch is not importable by", sys.executable)
            return
        torch.set_num_threads(o.threads)
        x = torch.from_numpy(np.load(f"{d}/x.npy"))
        y = torch.from_numpy(np.load(f"{d}/labels.npy"))
        ws = {s: torch.from_numpy(np.load(f"{d}/w_{s}.npy")) for s in ("wide", "scaled")}
        for dtype, dn in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            t = {"wide": [], "scaled": []}
            for _ in range(o.repeat):
                for scale in ("wide", "scaled"):
                    t[scale].append(torch_step(torch, F, x, ws[scale], y, dtype))
            a, b = statistics.median(t["wide"]), statistics.median(t["scaled"])
            print(f"| PyTorch {torch.__version__} eager ce | {dn} | {a:.3f} | {b:.3f} | {a / b:.2f} | | |", flush=True)


if __name__ == "__main__":
    main()
