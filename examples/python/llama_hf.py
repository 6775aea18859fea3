"""Train a Llama with the Llama-3.2-1B configuration (random initialisation; nothing
is downloaded) for a few steps with transformers' own loss and with libmel's
(libmel.hf.patch), from the same initialisation on the same batches, and print
both losses per step, their relative difference and each head's peak memory.

Needs transformers (a PyPI torch in a virtual environment; doc/python.md):
    PYTHONPATH=python MEL_LIBRARY=lib/.libs/libmel.so \
        /work/venv-trl/bin/python examples/python/llama_hf.py --steps 4 --seq 64
    --tiny       a 2-layer model with a 512-token vocabulary (seconds, for a smoke run)
    --head-only  only the output layer's memory, each head in its own process
"""
import argparse
import gc
import json
import resource
import subprocess
import sys
import time

import torch


def config(tiny):
    from transformers import LlamaConfig
    if tiny:
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           tie_word_embeddings=True)
    # meta-llama/Llama-3.2-1B's config.json, written out
    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                       num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
                       rope_theta=500000.0, tie_word_embeddings=True,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192},
                       bos_token_id=128000, eos_token_id=128001)


def train(patched, a):
    import libmel.hf
    from transformers import LlamaForCausalLM
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(config(a.tiny)).float().train()
    if patched:
        libmel.hf.patch(model)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    g = torch.Generator().manual_seed(a.seed + 1)
    V = model.config.vocab_size
    losses = []
    for step in range(a.steps):
        ids = torch.randint(0, V, (a.batch, a.seq), generator=g)
        labels = ids.clone()
        labels[:, : a.seq // 4] = -100  # a prompt that is not trained on
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append((float(loss.detach()), time.perf_counter() - t0))
    del model, opt
    gc.collect()
    return losses


def _status_kib(key):
    """A "VmRSS" / "VmHWM" line of /proc/self/status in KiB (None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak():
    """Start a new peak (VmHWM) at the current RSS: Linux's clear_refs 5."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def head_child(mode, D, V, N):
    """Peak RSS of the output layer alone (forward + backward), beyond its inputs
    and gradients, in this fresh process.  The peak is VmHWM reset just before
    the call, against the RSS then.  getrusage's ru_maxrss is no measure here:
    Linux carries it over fork and exec, so this child started with the
    training parent's peak (gigabytes) and the head's call never raised it --
    both heads printed -1002.5 MiB, minus the gradients (reproduced with a
    parent holding 3 GiB; --head-only, whose parent is small, was right)."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    h = torch.randn(1, N, D).mul_(0.1).requires_grad_(True)  # in place: no transient copies
    W = torch.randn(V, D).mul_(0.02).requires_grad_(True)
    lab = torch.randint(0, V, (1, N))
    grads_kib = (h.numel() + W.numel()) * 4 / 1024.0  # h.grad and W.grad, made by backward

    def head(h, W, lab):
        if mode == "libmel":
            import libmel.hf
            return libmel.hf.causal_lm_loss(h, W, lab)
        # what LlamaForCausalLM does: logits, upcast, shifted CE
        logits = F.linear(h, W).float()
        sl = F.pad(lab, (0, 1), value=-100)[..., 1:]
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), sl.reshape(-1),
                               ignore_index=-100)
    # a small warm-up call: thread pools and BLAS buffers exist in a training loop
    hs = torch.randn(1, 16, D, requires_grad=True)
    Ws = torch.randn(256, D, requires_grad=True)
    head(hs, Ws, lab[:, :16] % 256).backward()
    del hs, Ws
    gc.collect()
    if _reset_peak():
        base, source = _status_kib("VmRSS"), "VmHWM"
    else:  # no clear_refs: the lifetime maximum, valid only if the call sets it
        base, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    loss = head(h, W, lab)
    loss.backward()
    peak = _status_kib("VmHWM") if source == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"mode": mode, "extra_mib": (peak - base - grads_kib) / 1024.0, "source": source}
    if mode == "libmel":
        import libmel
        out["workspace_mib"] = libmel.last_stats()["peak_workspace_bytes"] / 2**20
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--head-child", nargs=4, metavar=("MODE", "D", "V", "N"))
    ap.add_argument("--head-only", action="store_true",
                    help="only the head memory figures (no training)")
    a = ap.parse_args()
    if a.head_child:
        m, D, V, N = a.head_child
        head_child(m, int(D), int(V), int(N))
        return
    cfg = config(a.tiny)
    print("# Llama config: %s, batch %d x seq %d, SGD lr %g, %d steps, fp32, torch %s, "
          "threads %d" % ("tiny" if a.tiny else "Llama-3.2-1B", a.batch, a.seq, a.lr, a.steps,
                          torch.__version__, torch.get_num_threads()))
    ref = train(False, a) if not a.head_only else []
    mel = train(True, a) if not a.head_only else []
    worst = 0.0
    for k, ((lr_, tr_), (lm_, tm_)) in enumerate(zip(ref, mel)):
        rd = abs(lm_ - lr_) / abs(lr_)
        worst = max(worst, rd)
        print("step %d loss_hf %.7f loss_mel %.7f reldiff %.2e  (s/step %.1f / %.1f)"
              % (k, lr_, lm_, rd, tr_, tm_))
    heads = {}
    for mode in ("naive", "libmel"):
        out = subprocess.run([sys.executable, __file__, "--head-child", mode,
                              str(cfg.hidden_size), str(cfg.vocab_size), str(a.batch * a.seq)],
                             capture_output=True, text=True, check=True)
        heads[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    naive, mel = heads["naive"]["extra_mib"], heads["libmel"]["extra_mib"]
    # a ratio only of figures that mean something: transformers' head holds at
    # least the N x V fp32 logits beyond its inputs and gradients
    logits_mib = a.batch * a.seq * cfg.vocab_size * 4 / 2**20
    ratio = ("= %.1f %%" % (100.0 * mel / naive) if naive >= logits_mib / 2 else
             "(no ratio: transformers' figure is under half its %.1f MiB of logits, so the "
             "measurement (%s) did not see the call)" % (logits_mib, heads["naive"]["source"]))
    print("head peak memory beyond inputs and gradients (N = %d, V = %d): transformers %.1f "
          "MiB, libmel %.1f MiB (its workspace %.1f MiB) %s"
          % (a.batch * a.seq, cfg.vocab_size, naive, mel, heads["libmel"]["workspace_mib"], ratio))
    if not a.head_only:
        print("llama: max reldiff %.2e over %d steps" % (worst, a.steps))


if __name__ == "__main__":
    main()
