"""A few GRPO steps with TRL on a tiny random Llama (nothing is downloaded), with the
loss computed by libmel (libmel.trl.GRPOTrainer) — and, for comparison, by TRL's
own GRPOTrainer from the same initialisation.  The task: completions are scored by
how many of their tokens are the digit "7".

    PYTHONPATH=python MEL_LIBRARY=lib/.libs/libmel.so \
        /work/venv-trl/bin/python examples/python/grpo_trl.py [--steps 3]
"""
import argparse
import os
import tempfile

import torch


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<pad>", "<eos>", "<bos>"] + list("0123456789") + ["count", "say", "sevens", ":"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                bos_token="<bos>")
    t.padding_side = "left"
    return t


def reward_sevens(completions, **kw):
    return [float(c.split().count("7")) for c in completions]


CHECKS = []


def checked_trainer():
    """libmel's trainer, which also runs TRL's own _compute_loss on every batch it sees
    and records the two losses and the largest relative difference of the gradients
    of every policy parameter."""
    import libmel.trl
    from trl import GRPOTrainer
    base = libmel.trl._trainer_class()

    class Checked(base):
        def _compute_loss(self, model, inputs):
            ours = base._compute_loss(self, model, inputs)
            theirs = GRPOTrainer._compute_loss(self, model, inputs)
            params = [p for p in model.parameters() if p.requires_grad]
            g1 = torch.autograd.grad(ours, params, retain_graph=True, allow_unused=True)
            g2 = torch.autograd.grad(theirs, params, retain_graph=True, allow_unused=True)
            worst = 0.0
            for x, y in zip(g1, g2):
                if x is None or y is None:
                    continue
                worst = max(worst, ((x - y).abs().max() / y.abs().max().clamp(min=1e-30)).item())
            CHECKS.append((ours.item(), theirs.item(), worst))
            # libmel's loss is fused (its gradients are computed in forward and handed
            # out once): evaluated again for the trainer's own backward
            return base._compute_loss(self, model, inputs)
    return Checked


def run(use_libmel, a, tok):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer
    import libmel.trl
    torch.manual_seed(a.seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
    # saved and passed by path, so TRL can load the frozen reference policy (beta != 0)
    path = tempfile.mkdtemp(prefix="grpo_tiny_llama_")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    prompts = ["say sevens :", "count 7 :", "say 7 7 :", "count sevens :"] * 4
    ds = Dataset.from_dict({"prompt": prompts})
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="grpo_trl_"), report_to=[],
                      use_cpu=True, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, max_steps=a.steps, learning_rate=a.lr,
                      logging_steps=1, beta=a.beta, loss_type=a.loss_type, seed=a.seed,
                      num_iterations=2, save_strategy="no", temperature=1.0,
                      use_bias_correction_kl=False,
                      bf16=False)  # fp32: TRL's reference path then has no bf16 autocast either
    cls = checked_trainer() if use_libmel else GRPOTrainer
    tr = cls(model=path, reward_funcs=reward_sevens, args=args, train_dataset=ds,
             processing_class=tok)
    tr.train()
    return [(h.get("loss"), h.get("reward"), h.get("clip_ratio/region_mean"), h.get("kl"))
            for h in tr.state.log_history if "loss" in h]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--loss-type", default="dapo")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = tokenizer()
    ours = run(True, a, tok)
    print("each optimisation step: libmel's loss and TRL's _compute_loss on the same batch")
    print("call  loss_libmel      loss_trl         reldiff   max grad reldiff (all parameters)")
    for k, (m, t, g) in enumerate(CHECKS):
        print("%4d  %15.9f  %15.9f  %.2e  %.2e" % (k, m, t, abs(m - t) / max(abs(t), 1e-30), g))
    print("training log (libmel run): step, loss, reward, clip ratio, kl")
    for k, m in enumerate(ours):
        print("%4d  %11.6f  %8.4f  %8.4f  %9.5f" % (k, float(m[0]), float(m[1] or 0),
                                                   float(m[2] or 0), float(m[3] or 0)))
    worst = max(abs(m - t) / max(abs(t), 1e-30) for m, t, _ in CHECKS)
    gworst = max(g for _, _, g in CHECKS)
    print("grpo_trl: %d loss calls, max loss reldiff %.2e, max gradient reldiff %.2e"
          % (len(CHECKS), worst, gworst))


if __name__ == "__main__":
    main()
