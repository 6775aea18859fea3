"""The challenge's interface: MemoryEfficientLinear.apply(X, W, labels, transform,
batch_chunk_size, seq_chunk_size)."""
from ._core import linear_loss

__all__ = ["MemoryEfficientLinear"]


class MemoryEfficientLinear:
    """Drop-in for the challenge's torch.autograd.Function of the same name.

    apply(X, W, labels, transform, batch_chunk_size, seq_chunk_size):
      X [B, S, D], W [V, D], labels [B*S] or [B, S]; transform a built-in's name
      ("ce", ...) or a libmel.define_transform transform; the chunk sizes give
      libmel's rows per chunk, min(batch_chunk_size, B) * min(seq_chunk_size, S)
      (libmel walks the flattened B*S rows); both None means libmel's automatic,
      byte-budget chunking.  Returns the mean of the transform over the rows its
      count includes (for "ce": the non-ignored tokens), differentiable in X and W.
    """

    @staticmethod
    def apply(X, W, labels, transform, batch_chunk_size=None, seq_chunk_size=None):
        if X.dim() != 3:
            raise ValueError("MemoryEfficientLinear: X must be [B, S, D], got %s"
                             % (tuple(X.shape),))
        B, S, _ = X.shape
        if (batch_chunk_size is None) != (seq_chunk_size is None):
            raise ValueError("MemoryEfficientLinear: batch_chunk_size=%r and seq_chunk_size=%r: "
                             "give both, or both None for automatic chunking"
                             % (batch_chunk_size, seq_chunk_size))
        rows = None
        if batch_chunk_size is not None:
            for nm, v in (("batch_chunk_size", batch_chunk_size),
                          ("seq_chunk_size", seq_chunk_size)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError("MemoryEfficientLinear: %s=%r: a positive integer or "
                                     "None" % (nm, v))
            rows = max(1, min(batch_chunk_size, B) * min(seq_chunk_size, S))
        if labels is not None and labels.dim() == 1:
            if labels.numel() != B * S:
                raise ValueError("MemoryEfficientLinear: labels has %d elements; X has B*S = %d "
                                 "rows" % (labels.numel(), B * S))
            labels = labels.view(B, S)
        return linear_loss(X, W, labels, transform=transform, reduction="mean",
                           chunk_rows=rows)
