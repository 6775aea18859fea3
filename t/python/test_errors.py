"""Bad input raises ValueError / TypeError naming the argument and the value; nothing
aborts the interpreter; libmel's own messages come through."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import run  # noqa: E402

import libmel  # noqa: E402

torch.manual_seed(11)


def main(t):
    # importing the package (and libmel.hf / libmel.trl) pulls in nothing heavier than torch
    import libmel.hf  # noqa: F401
    import libmel.trl  # noqa: F401
    heavy = [m for m in ("transformers", "trl", "accelerate", "datasets") if m in sys.modules]
    t.ok(not heavy, "import libmel, libmel.hf, libmel.trl import no transformers/TRL",
         "imported: %s" % heavy)
    X = torch.randn(2, 3, 4)
    W = torch.randn(7, 4)
    lab = torch.randint(0, 7, (2, 3))
    L = libmel.linear_loss
    cases = [
        (ValueError, lambda: L(X, W, torch.full((2, 3), 9)), "label out of range",
         ("labels", "9")),
        (TypeError, lambda: L(X, W, lab.float()), "float labels", ("labels", "int64")),
        (ValueError, lambda: L(X, W, lab[:, :2]), "labels of the wrong shape", ("labels",)),
        (ValueError, lambda: L(X, torch.randn(7, 5), lab), "D mismatch", ("weight", "D = 4")),
        (TypeError, lambda: L(X, W.double(), lab), "dtype mismatch", ("float64", "float32")),
        (TypeError, lambda: L(X.int(), W.int(), lab), "integer hidden", ("int32",)),
        (ValueError, lambda: L(X, W, lab, transform="nope"), "unknown transform", ("nope",)),
        (TypeError, lambda: L(X, W, lab, transform=3), "transform not a name", ("transform",)),
        (ValueError, lambda: L(X, W, lab, params={"label_smoothing": 2}), "parameter out of "
         "bounds", ("label_smoothing",)),
        (ValueError, lambda: L(X, W, lab, params={"bogus": 1}), "unknown parameter",
         ("bogus",)),
        (ValueError, lambda: L(X, W, lab, reduction="avg"), "unknown reduction", ("avg",)),
        (ValueError, lambda: L(X, W), "missing labels", ("labels",)),
        (ValueError, lambda: L(X, W, lab, transform="entropy"), "labels for entropy",
         ("labels", "entropy")),
        (ValueError, lambda: L(X, W, lab, transform="kl"), "kl without teacher", ("teacher",)),
        (ValueError, lambda: L(X, W, lab, teacher=(X, W)), "teacher for ce", ("teacher",)),
        (ValueError, lambda: L(X, W, lab, chunk_rows=2, workspace_bytes=1 << 20),
         "chunk_rows with workspace_bytes", ("chunk_rows", "workspace_bytes")),
        (ValueError, lambda: L(X, W, lab, chunk_rows=0), "chunk_rows 0", ("chunk_rows",)),
        (ValueError, lambda: L(X, W, lab, workspace_bytes=64), "budget below one row",
         ("MEL_ERR_BUDGET",)),
        (ValueError, lambda: L(X, W, lab, mode="fast"), "unknown mode", ("fast",)),
        (ValueError, lambda: L(X, W, lab, reduction="none", mode="fused"), "fused with none",
         ("fused", "none")),
        (ValueError, lambda: L(X, W, lab, weights=torch.ones(2, 3)), "weights without "
         "reduction='weighted'", ("weights",)),
        (ValueError, lambda: L(X, W, lab, reduction="weighted"), "weighted without weights",
         ("weights",)),
        (ValueError, lambda: L(X, W, lab, inputs={"mask": torch.ones(2, 3)}), "an input ce "
         "does not read", ("mask",)),
        (ValueError, lambda: L(X, W, lab, transform="grpo", inputs={"mask": torch.ones(2, 3)}),
         "grpo without advantages", ("advantages",)),
        (ValueError, lambda: L(X, W, lab, transform="grpo", reduction="sum",
                               params={"loss_type": "bnpo"},
                               inputs={"mask": torch.ones(2, 3),
                                       "advantages": torch.ones(2, 3)}),
         "reduction with grpo's loss_type", ("reduction", "loss_type")),
        (ValueError, lambda: L(X, W, lab, transform="grpo", params={"loss_type": "ppo"},
                               inputs={"mask": torch.ones(2, 3),
                                       "advantages": torch.ones(2, 3)}),
         "unknown loss_type word", ("loss_type", "ppo", "dapo")),
        (ValueError, lambda: L(X.reshape(6, 4), W, lab.reshape(6), transform="grpo",
                               inputs={"mask": torch.ones(6), "advantages": torch.ones(6)}),
         "grpo loss type without [B, T]", ("[B, T, D]",)),
        (ValueError, lambda: L(X, W, lab, transform="grpo", params={"seq_len": 5},
                               inputs={"mask": torch.ones(2, 3),
                                       "advantages": torch.ones(2, 3)}),
         "seq_len contradicting T", ("seq_len", "T = 3")),
        (ValueError, lambda: L(X, W, lab, return_aux=["kl"]), "aux the transform lacks",
         ("kl",)),
        (ValueError, lambda: L(X, W, lab, transform=libmel.builtin("ce"),
                               params={"z_loss": 1}), "params with a compiled transform",
         ("params",)),
        (ValueError, lambda: L(X.clone().index_put_((torch.tensor(0), torch.tensor(1),
                                                     torch.tensor(2)), torch.tensor(float("nan"))),
                               W, lab, check_finite=True), "NaN with check_finite",
         ("nan", "MEL_ERR_NONFINITE")),
        (ValueError, lambda: libmel.MemoryEfficientLinear.apply(X, W, lab, "ce", 1, None),
         "one chunk size None", ("batch_chunk_size", "seq_chunk_size")),
        (ValueError, lambda: libmel.MemoryEfficientLinear.apply(X[0], W, lab, "ce", 1, 1),
         "2-d X to MemoryEfficientLinear", ("[B, S, D]",)),
    ]
    for exc, fn, desc, match in cases:
        t.raises(exc, fn, desc, match)
    # the error classes: ValueError / MemoryError subclasses carrying the status
    try:
        L(X, W, torch.full((2, 3), 9))
    except libmel.MelError as e:
        t.ok(e.status == "MEL_ERR_INVALID_ARGUMENT" and isinstance(e, ValueError),
             "MelError carries the status name", e.status)
    # CUDA tensors without a CUDA device or build: a clear error, not a crash
    if not torch.cuda.is_available():
        t.ok(True, "no CUDA device: the CUDA path is tested by t/cuda.t on a GPU machine "
             "(skipped here)")
    # after all of that the library still computes correctly
    Xr = X.clone().requires_grad_(True)
    y = L(Xr, W, lab)
    r = torch.nn.functional.cross_entropy((X @ W.T).reshape(6, 7), lab.reshape(6))
    t.close(y, r, 1e-6, "a good call after the bad ones")


run(main)
