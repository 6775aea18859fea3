"""libmel for PyTorch: f(X·Wᵀ) losses and their gradients without the logits.

    import libmel
    loss = libmel.linear_loss(hidden, lm_head.weight, labels)          # mean CE
    loss.backward()

See doc/python.md.  The C library is loaded through ctypes (libmel._lib says
from where); importing this package imports torch and nothing heavier.
"""
from ._lib import path as library_path
from ._lib import lib as _clib
from ._core import (MelError, MelValueError, MelMemoryError, Transform, builtin, builtins,
                    linear_loss, linear_cross_entropy, last_stats, gradcheck, LOSS_TYPES, VocabParallel)
from ._dsl import Graph, Sym, define_transform
from ._function import MemoryEfficientLinear

__version__ = _clib.mel_version_string().decode()

__all__ = ["linear_loss", "linear_cross_entropy", "MemoryEfficientLinear", "define_transform",
           "builtin", "builtins", "Transform", "Graph", "Sym", "gradcheck", "last_stats", "MelError",
           "MelValueError", "MelMemoryError", "library_path", "LOSS_TYPES", "VocabParallel"]
