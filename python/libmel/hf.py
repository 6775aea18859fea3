"""Hugging Face transformers: a *ForCausalLM's training loss through libmel.

    import libmel.hf
    libmel.hf.patch(model)        # model.train(); model(input_ids, labels=labels).loss

In training with labels, the patched forward runs the base model, then computes
the loss from the last hidden states and the output layer's weight (and bias)
with libmel: labels shifted by one as transformers does (ignore_index -100), the
mean over the non-ignored tokens, or the sum divided by num_items_in_batch when
given (gradient accumulation); final_logit_softcapping and logit_scale from the
config.  It returns the model's usual output with logits=None.  In eval mode, or
without labels, the original forward runs unchanged.  transformers is imported
only when a model is patched.
"""
import torch
import torch.nn.functional as F

from ._core import linear_loss

__all__ = ["patch", "unpatch", "causal_lm_loss"]


def _cfg(config, name):
    v = getattr(config, name, None)
    if v is None and hasattr(config, "get_text_config"):
        v = getattr(config.get_text_config(), name, None)
    return v


def causal_lm_loss(hidden, weight, labels=None, *, bias=None, num_items_in_batch=None,
                   ignore_index=-100, shift_labels=None, softcap=None, logit_scale=None,
                   chunk_rows=None, workspace_bytes=None):
    """transformers' ForCausalLMLoss on hidden [B, T, D] and the head's weight [V, D],
    without the logits.  labels [B, T] are shifted (the last position ignored), or
    shift_labels [B, T] are used as they are."""
    if (labels is None) == (shift_labels is None):
        raise ValueError("libmel.hf: pass labels (shifted here) or shift_labels (already "
                         "shifted), exactly one of them")
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    params = {"ignore_index": ignore_index}
    if softcap:
        params["softcap"] = float(softcap)
    if logit_scale is not None and float(logit_scale) != 1.0:
        params["logit_scale"] = float(logit_scale)
    if num_items_in_batch is None:
        return linear_loss(hidden, weight, shift_labels, bias=bias, params=params,
                           reduction="mean", chunk_rows=chunk_rows,
                           workspace_bytes=workspace_bytes)
    loss = linear_loss(hidden, weight, shift_labels, bias=bias, params=params, reduction="sum",
                       chunk_rows=chunk_rows, workspace_bytes=workspace_bytes)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def patch(model, chunk_rows=None, workspace_bytes=None):
    """Make model (a transformers *ForCausalLM whose output layer is an nn.Linear)
    compute its training loss through libmel; returns the model."""
    if getattr(model, "_libmel_forward", None) is not None:
        return model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise TypeError("libmel.hf.patch: the model's output layer is %s, not an nn.Linear"
                        % type(head).__name__)
    prefix = getattr(model, "base_model_prefix", "model")
    base = getattr(model, prefix, None)
    if base is None:
        raise TypeError("libmel.hf.patch: %s has no base model attribute %r"
                        % (type(model).__name__, prefix))
    from transformers.modeling_outputs import CausalLMOutputWithPast

    original = model.forward
    config = model.config
    softcap = _cfg(config, "final_logit_softcapping")
    scale = _cfg(config, "logit_scale")

    def forward(input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None,
                shift_labels=None, logits_to_keep=0, return_dict=None, **kwargs):
        if not model.training or (labels is None and shift_labels is None):
            return original(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                            logits_to_keep=logits_to_keep, return_dict=return_dict,
                            **({"num_items_in_batch": num_items_in_batch}
                               if num_items_in_batch is not None else {}),
                            **({"shift_labels": shift_labels}
                               if shift_labels is not None else {}), **kwargs)
        if logits_to_keep not in (0, None):
            raise ValueError("libmel.hf: logits_to_keep=%r in training: the loss covers every "
                             "position" % (logits_to_keep,))
        out = base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        loss = causal_lm_loss(hidden, head.weight, labels, bias=head.bias,
                              num_items_in_batch=num_items_in_batch, shift_labels=shift_labels,
                              softcap=softcap, logit_scale=scale, chunk_rows=chunk_rows,
                              workspace_bytes=workspace_bytes)
        return CausalLMOutputWithPast(loss=loss, logits=None,
                                      past_key_values=getattr(out, "past_key_values", None),
                                      hidden_states=getattr(out, "hidden_states", None),
                                      attentions=getattr(out, "attentions", None))

    model._libmel_forward = original
    model.forward = forward
    return model


def unpatch(model):
    """Restore the original forward."""
    original = getattr(model, "_libmel_forward", None)
    if original is not None:
        del model.forward
        model._libmel_forward = None
    return model
