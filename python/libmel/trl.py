"""TRL: GRPO's loss with TRL's semantics on libmel's grpo transform.

grpo_loss() takes what TRL's GRPOTrainer._compute_loss has (completion ids and
mask, per-sequence advantages, old and reference per-token log-probs) plus the
policy's hidden states at the positions that predict the completion tokens and
the output weight, and returns TRL's loss without the [B, T, V] logits.
GRPOTrainer() returns a subclass of trl.GRPOTrainer whose _compute_loss uses it
(trl is imported only then).
"""
import ctypes

import torch

from . import _lib as L
from ._core import _check, _cpu_ctx, _param_value, linear_loss

__all__ = ["grpo_loss", "grpo_weights", "GRPOTrainer"]


def grpo_weights(loss_type, mask, max_completion_length=None, num_items_in_batch=None,
                 gradient_accumulation_steps=1):
    """Per-token weights w [B, T] (float64) such that TRL's loss is Σ w·ℓ
    (mel_grpo_weights; include/mel.h)."""
    lt = int(_param_value("loss_type", loss_type))
    m = mask.detach().to(torch.float64).cpu().contiguous()
    if m.dim() != 2:
        raise ValueError("libmel.trl: completion_mask must be [B, T], got %s" % (tuple(m.shape),))
    B, T = m.shape
    if max_completion_length is None:
        max_completion_length = T
    items = 0.0 if num_items_in_batch is None else float(num_items_in_batch)
    w = torch.empty((B, T), dtype=torch.float64)
    ctx = _cpu_ctx()
    _check(ctx, L.lib.mel_grpo_weights(ctx.ptr, lt, B, T, m.data_ptr(), int(max_completion_length),
                                       items, int(gradient_accumulation_steps), w.data_ptr()),
           "loss_type")
    return w.to(mask.device)


def grpo_loss(hidden, weight, completion_ids, completion_mask, advantages, *,
              old_per_token_logps=None, ref_per_token_logps=None, ref_model=None,
              loss_type="dapo", epsilon=0.2, epsilon_high=None, delta=None, beta=0.0,
              importance_sampling_level="token", temperature=1.0, num_items_in_batch=None,
              max_completion_length=None, gradient_accumulation_steps=1, bias=None,
              chunk_rows=None, workspace_bytes=None):
    """TRL's GRPO loss (loss, metrics) from hidden [B, T, D] and weight [V, D].

    old_per_token_logps None is TRL's on-policy case (stop-gradient of the policy's
    own log-probs).  With beta != 0 the reference comes from ref_per_token_logps
    [B, T], or from ref_model=(ref_hidden [B, T, D_r], ref_weight [V, D_r]) through
    libmel's second head.  metrics: 'kl' (mean over the mask, when beta != 0) and
    'clip_ratio' (fraction of masked tokens whose ratio was clipped, TRL's
    region clip)."""
    if hidden.dim() != 3:
        raise ValueError("libmel.trl: hidden must be [B, T, D], got %s" % (tuple(hidden.shape),))
    B, T = hidden.shape[:2]
    if tuple(completion_ids.shape) != (B, T) or tuple(completion_mask.shape) != (B, T):
        raise ValueError("libmel.trl: completion_ids %s and completion_mask %s must be [B, T] "
                         "= [%d, %d]" % (tuple(completion_ids.shape),
                                         tuple(completion_mask.shape), B, T))
    adv = advantages
    if adv.dim() == 1:
        if adv.shape[0] != B:
            raise ValueError("libmel.trl: advantages has %d values for B = %d sequences"
                             % (adv.shape[0], B))
        adv = adv[:, None].expand(B, T)
    params = {"epsilon_low": float(epsilon), "beta": float(beta),
              "importance_sampling_level": importance_sampling_level,
              "temperature": float(temperature)}
    if epsilon_high is not None:
        params["epsilon_high"] = float(epsilon_high)
    if delta is not None:
        params["delta"] = float(delta)
    inputs = {"mask": completion_mask, "advantages": adv}
    if old_per_token_logps is not None:
        params["use_old_logp"] = 1
        inputs["old_logp"] = old_per_token_logps
    teacher = None
    if beta != 0:
        if (ref_per_token_logps is None) == (ref_model is None):
            raise ValueError("libmel.trl: beta=%g needs the reference: ref_per_token_logps or "
                             "ref_model=(hidden, weight), exactly one" % beta)
        if ref_model is not None:
            params["ref_source"] = 1
            teacher = tuple(ref_model)
        else:
            inputs["ref_logp"] = ref_per_token_logps
    elif ref_per_token_logps is not None or ref_model is not None:
        raise ValueError("libmel.trl: a reference is given but beta = 0 does not use it")
    if _param_value("importance_sampling_level", importance_sampling_level) == 1:
        params["seq_len"] = T
    w = grpo_weights(loss_type, completion_mask, max_completion_length, num_items_in_batch,
                     gradient_accumulation_steps)
    aux = ["is_clipped"] + (["kl"] if beta != 0 else [])
    loss, out = linear_loss(hidden, weight, completion_ids, transform="grpo", bias=bias,
                            inputs=inputs, teacher=teacher, params=params,
                            reduction="weighted", weights=w, chunk_rows=chunk_rows,
                            workspace_bytes=workspace_bytes, return_aux=aux)
    m = completion_mask.to(out["is_clipped"].dtype)
    denom = m.sum().clamp(min=1.0)
    metrics = {"clip_ratio": (out["is_clipped"] * m).sum() / denom}
    if beta != 0:
        metrics["kl"] = (out["kl"] * m).sum() / denom
    return loss, metrics


def GRPOTrainer(*args, **kwargs):
    """A trl.GRPOTrainer whose loss goes through libmel (same arguments)."""
    return _trainer_class()(*args, **kwargs)


_cls = None


def _trainer_class():
    global _cls
    if _cls is not None:
        return _cls
    import trl

    class LibmelGRPOTrainer(trl.GRPOTrainer):
        """_compute_loss from the policy's last hidden states and output weight."""

        def _compute_loss(self, model, inputs):
            prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
            completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
            K = completion_ids.size(1)
            unwrapped = self.accelerator.unwrap_model(model)
            base = getattr(unwrapped, unwrapped.base_model_prefix)
            head = unwrapped.get_output_embeddings()
            # the backbone under the trainer's autocast, as TRL runs it (mixed precision
            # applies to the backbone; libmel's logits are fp32 whatever the dtype)
            with self.accelerator.autocast():
                h = base(input_ids=input_ids, attention_mask=attention_mask,
                         use_cache=False).last_hidden_state
            h = h[:, -K - 1:-1, :]  # positions that predict the completion tokens
            if h.dtype != head.weight.dtype:
                h = h.to(head.weight.dtype)
            items = inputs.get("num_items_in_batch")
            if items is not None and self.loss_type == "dapo":
                items = float(items) / self.accelerator.num_processes
            loss, metrics = grpo_loss(
                h, head.weight, completion_ids, completion_mask, inputs["advantages"],
                old_per_token_logps=inputs.get("old_per_token_logps"),
                ref_per_token_logps=inputs.get("ref_per_token_logps") if self.beta else None,
                loss_type=self.loss_type, epsilon=self.epsilon_low,
                epsilon_high=self.epsilon_high, delta=getattr(self.args, "delta", None),
                beta=self.beta, importance_sampling_level=self.importance_sampling_level,
                temperature=self.temperature, num_items_in_batch=items,
                max_completion_length=self.max_completion_length,
                gradient_accumulation_steps=self.current_gradient_accumulation_steps,
                bias=head.bias)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["clip_ratio/region_mean"].append(metrics["clip_ratio"].item())
            if self.beta:
                self._metrics[mode]["kl"].append(metrics["kl"].item())
            return loss

    _cls = LibmelGRPOTrainer
    return _cls
