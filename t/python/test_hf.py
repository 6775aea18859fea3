"""libmel.hf against transformers.

Always: fixtures from transformers' own *ForCausalLM.forward(labels=...).loss in
float64 (t/fixtures/hf/gen_hf.py): Llama (mean; num_items_in_batch), Gemma2
(final_logit_softcapping), Cohere (logit_scale, num_items_in_batch).  The loss
and its gradients with respect to the last hidden states and the head weight must
agree (to 1e-6 in float64: transformers upcasts the logits to float32, not
float64, so its own loss carries float32 rounding).  When transformers is importable, also live: a tiny model patched with
libmel.hf.patch against the same model unpatched (loss, every parameter's
gradient; eval mode untouched)."""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tap import run  # noqa: E402

import libmel  # noqa: E402
import libmel.hf  # noqa: E402

FIX = os.path.join(HERE, "..", "fixtures", "hf")


def opt(v, conv=float):
    return None if v == "None" else conv(v)


def main(t):
    import numpy as np
    cases = sorted(c for c in os.listdir(FIX) if os.path.isdir(os.path.join(FIX, c)))
    t.ok(len(cases) == 4, "4 transformers fixture cases", ", ".join(cases))
    for case in cases:
        d = os.path.join(FIX, case)
        kv = dict(line.rstrip("\n").split("=", 1) for line in open(os.path.join(d, "case.txt")))
        a = {f[:-4]: torch.from_numpy(np.load(os.path.join(d, f)))
             for f in os.listdir(d) if f.endswith(".npy")}
        # transformers computes its loss from logits.float(): the fixture itself is
        # float32-accurate even for a float64 model, hence 1e-6 for our float64 run
        for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 2e-5)):
            h = a["hidden"].to(dtype).requires_grad_(True)
            W = a["weight"].to(dtype).requires_grad_(True)
            loss = libmel.hf.causal_lm_loss(
                h, W, a["labels"], num_items_in_batch=opt(kv["num_items_in_batch"]),
                softcap=opt(kv["final_logit_softcapping"]), logit_scale=opt(kv["logit_scale"]),
                chunk_rows=5)
            gh, gw = torch.autograd.grad(loss, (h, W))
            desc = "%s (%s) %s" % (case, kv["model"], str(dtype)[6:])
            t.close(loss, a["loss"], tol, desc + ": loss = transformers")
            t.close(gh, a["dhidden"], tol, desc + ": d(hidden) = transformers")
            t.close(gw, a["dweight"], tol, desc + ": d(lm_head.weight) = transformers")
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("# transformers is not importable here: the live comparison is skipped")
        return
    live(t)


def live(t):
    sys.path.insert(0, FIX)
    import gen_hf
    for kind in ("llama", "gemma2", "cohere"):
        for items in (None, 7):
            torch.manual_seed(17)
            ref = gen_hf.model_of(kind).double().train()
            with torch.no_grad():
                ref.get_output_embeddings().weight.mul_(40.0)
            pat = gen_hf.model_of(kind).double().train()
            pat.load_state_dict(ref.state_dict())
            libmel.hf.patch(pat)
            ids = torch.randint(0, gen_hf.SMALL["vocab_size"], (2, 11))
            labels = ids.clone()
            labels[:, :4] = -100
            kw = {} if items is None else {"num_items_in_batch": torch.tensor(float(items))}
            lr = ref(input_ids=ids, labels=labels, **kw).loss
            out = pat(input_ids=ids, labels=labels, **kw)
            lp = out.loss
            pr = [p for p in ref.parameters()]
            pp = [p for p in pat.parameters()]
            gr = torch.autograd.grad(lr, pr)
            gp = torch.autograd.grad(lp, pp)
            err = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()
                      for a, b in zip(gp, gr))
            d = "live %s num_items=%s" % (kind, items)
            t.close(lp, lr, 1e-6, d + ": patched loss = unpatched")
            t.ok(err <= 1e-5, d + ": every parameter's gradient = unpatched", "max rel %.2g" % err)
            t.ok(out.logits is None, d + ": no logits in training")
            pat.eval()
            with torch.no_grad():
                e1 = pat(input_ids=ids).logits
                e2 = ref.eval()(input_ids=ids).logits
            t.close(e1, e2, 1e-12, d + ": eval mode untouched (logits returned)")


run(main)
