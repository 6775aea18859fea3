#!/usr/bin/env python3
"""Write the HF transformers reference fixture for t/llama_hf.t.

Builds the `tiny` configuration of llama-train as transformers'
LlamaForCausalLM, gives it random weights (seeded), runs one batch and
writes, into OUTDIR (default t/fixtures/llama):

  tiny-weights.ckpt   the weights, in llama-train's checkpoint format
  tiny-grads.ckpt     dLoss/dparam in the same format (fp64 reference,
                      rounded to fp32 for storage)
  tiny-batch.bin      tokens, loss, logits of a few positions and the error
                      of HF's own fp32 run against the fp64 reference

The loss is HF's: LlamaForCausalLM(input_ids=ids, labels=ids) shifts the
labels, so a sequence of T+1 tokens yields T predictions, exactly what
llama-train computes from inputs ids[:, :T] and targets ids[:, 1:].

Two runs of the same model:
  fp32   HF as shipped (model(ids, labels=ids).loss.backward()).
  fp64   model.double() with three of HF's fp32 up-casts disabled
         (RMSNorm's, the rotary tables' and the attention softmax's),
         which would otherwise round an fp64 run to fp32 in places; the
         loss is the same shifted cross-entropy computed on fp64 logits
         (HF's forward casts logits to fp32).  This is the "truth".
The C test checks |C − truth| against k·|HF fp32 − truth| (doc/llama.md).

Needs PyTorch and transformers (tested: torch 1.13.1, transformers 4.40.2):
  /usr/bin/python3 -m venv --system-site-packages /work/venv-hf
  /work/venv-hf/bin/pip install transformers==4.40.2
  /work/venv-hf/bin/python examples/llama/gen_hf_fixture.py
Never needed by `make check`: the fixture is committed.
"""
import argparse
import copy
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama as ml

# Must equal llama_config_preset("tiny") in examples/llama/model.c.
TINY = dict(dim=64, layers=2, heads=4, kv_heads=2, ffn=172, vocab=512,
            tied=1, rope_theta=10000.0, rms_eps=1e-5)

CKPT_MAGIC = b"MELLAMA1"
CKPT_HEADER = 128
BATCH_MAGIC = b"MELLBAT1"


def hf_config(c):
    return LlamaConfig(
        hidden_size=c["dim"], num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        intermediate_size=c["ffn"], vocab_size=c["vocab"],
        tie_word_embeddings=bool(c["tied"]), rope_theta=c["rope_theta"],
        rms_norm_eps=c["rms_eps"], hidden_act="silu", attention_bias=False,
        max_position_embeddings=2048, attn_implementation="eager")


def tensors_in_layout_order(model, c):
    """(name, tensor) in llama-train's parameter layout (model.h)."""
    m = model.model
    out = [("tok_emb", m.embed_tokens.weight)]
    for i, layer in enumerate(m.layers):
        a, mlp = layer.self_attn, layer.mlp
        for nm, t in (("attn_norm", layer.input_layernorm.weight),
                      ("wq", a.q_proj.weight), ("wk", a.k_proj.weight),
                      ("wv", a.v_proj.weight), ("wo", a.o_proj.weight),
                      ("mlp_norm", layer.post_attention_layernorm.weight),
                      ("wg", mlp.gate_proj.weight), ("wu", mlp.up_proj.weight),
                      ("wd", mlp.down_proj.weight)):
            out.append((f"layers.{i}.{nm}", t))
    out.append(("final_norm", m.norm.weight))
    if not c["tied"]:
        out.append(("lm_head", model.lm_head.weight))
    return out


def write_ckpt(path, c, arrays, step=0):
    flat = np.concatenate([np.asarray(a, dtype="<f4").ravel() for a in arrays])
    h = bytearray(CKPT_HEADER)
    h[0:8] = CKPT_MAGIC
    struct.pack_into("<II", h, 8, 1, CKPT_HEADER)
    struct.pack_into("<8I", h, 16, c["dim"], c["layers"], c["heads"],
                     c["kv_heads"], c["ffn"], c["vocab"], c["tied"], 0)
    struct.pack_into("<dd", h, 48, c["rope_theta"], c["rms_eps"])
    struct.pack_into("<QQ", h, 64, flat.size, step)
    with open(path, "wb") as f:
        f.write(bytes(h))
        f.write(flat.tobytes())


def patch_for_fp64():
    """Let an fp64 model stay fp64 where HF 4.40 forces fp32."""

    def rms_forward(self, x):
        if x.dtype != torch.float64:
            return rms_orig(self, x)
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        if x.dtype != torch.float64:
            return rope_orig(self, x, position_ids)
        inv = self.inv_freq.to(torch.float64)  # the fp32 values, widened
        freqs = position_ids[:, :, None].to(torch.float64) * inv[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def softmax(x, dim=None, dtype=None, **kw):
        if x.dtype == torch.float64:
            dtype = None
        return softmax_orig(x, dim=dim, dtype=dtype, **kw)

    rms_orig, rope_orig = ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward
    softmax_orig = torch.nn.functional.softmax
    ml.LlamaRMSNorm.forward = rms_forward
    ml.LlamaRotaryEmbedding.forward = rope_forward
    torch.nn.functional.softmax = softmax


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "t",
        "fixtures", "llama"))
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    args = ap.parse_args()
    c = dict(TINY)
    B, T, V = args.batch, args.seq, c["vocab"]
    print(f"seed {args.seed}; torch {torch.__version__}; "
          f"transformers {__import__('transformers').__version__}")

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(hf_config(c)).float()
    named = tensors_in_layout_order(model, c)
    with torch.no_grad():
        for nm, t in named:
            if t.dim() == 1:  # norm weights: around 1, not exactly 1
                t.copy_(1.0 + 0.1 * torch.randn_like(t))
            else:
                t.normal_(0.0, 0.02)
    # Tokens over the whole vocabulary, so every head row is exercised.
    ids = torch.randint(0, V, (B, T + 1), dtype=torch.int64)

    # ---- fp32: HF as shipped
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    loss32 = float(out.loss)
    g32 = [t.grad.detach().double().numpy().copy() for _, t in named]
    logits32 = out.logits.detach().double()

    # ---- fp64 truth
    patch_for_fp64()
    m64 = copy.deepcopy(model).double()
    m64.zero_grad()
    named64 = tensors_in_layout_order(m64, c)
    hidden = m64.model(input_ids=ids).last_hidden_state  # [B, T+1, D] f64
    logits64 = m64.lm_head(hidden)                        # [B, T+1, V] f64
    loss64 = F.cross_entropy(logits64[:, :-1].reshape(-1, V),
                             ids[:, 1:].reshape(-1))
    loss64.backward()
    g64 = [t.grad.detach().numpy().copy() for _, t in named64]
    loss64 = float(loss64)
    logits64 = logits64.detach()

    # Positions whose logits are stored: row n = b*T + t of llama-train.
    rows = [0, T - 1, T, B * T - 1]
    lg64 = np.stack([logits64[n // T, n % T].numpy() for n in rows])
    lg32 = np.stack([logits32[n // T, n % T].numpy() for n in rows])
    logit_err32 = float(np.abs(lg32 - lg64).max() / np.abs(lg64).max())

    rel_l2, rel_max = [], []
    for (nm, _), a, b in zip(named, g32, g64):
        rel_l2.append(float(np.linalg.norm(a - b) / np.linalg.norm(b)))
        rel_max.append(float(np.abs(a - b).max() / np.abs(b).max()))
        print(f"  {nm:20s} |g|={np.linalg.norm(b):.3e}  HF fp32 rel L2 err "
              f"{rel_l2[-1]:.2e}  max err {rel_max[-1]:.2e}")
    print(f"loss fp64 {loss64:.12f} fp32 {loss32:.9f} "
          f"(rel err {abs(loss32 - loss64) / loss64:.2e}); "
          f"logits fp32 max err {logit_err32:.2e}")

    os.makedirs(args.out, exist_ok=True)
    write_ckpt(os.path.join(args.out, "tiny-weights.ckpt"), c,
               [t.detach().numpy() for _, t in named])
    write_ckpt(os.path.join(args.out, "tiny-grads.ckpt"), c, g64)
    with open(os.path.join(args.out, "tiny-batch.bin"), "wb") as f:
        f.write(BATCH_MAGIC)
        f.write(struct.pack("<6I", 1, B, T, len(rows), len(named), 0))
        f.write(ids.numpy().astype("<i4").tobytes())       # [B, T+1]
        f.write(struct.pack("<dd", loss64, loss32))
        f.write(np.asarray(rows, dtype="<i4").tobytes())    # [n_pos]
        f.write(lg64.astype("<f4").tobytes())               # [n_pos, V]
        f.write(struct.pack("<d", logit_err32))
        f.write(np.asarray(rel_l2, dtype="<f8").tobytes())  # [n_tensors]
        f.write(np.asarray(rel_max, dtype="<f8").tobytes())  # [n_tensors]
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in
                ("tiny-weights.ckpt", "tiny-grads.ckpt", "tiny-batch.bin"))
    print(f"wrote {args.out} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
