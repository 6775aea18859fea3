"""Contexts, transforms and the autograd Function behind libmel.linear_loss."""
import contextlib
import ctypes
import itertools
import re
import threading
import weakref

import torch

from . import _lib as L

__all__ = ["MelError", "Transform", "builtin", "builtins", "linear_loss", "linear_cross_entropy",
           "last_stats", "gradcheck"]


# ------------------------------------------------------------------ errors

class MelError(RuntimeError):
    """A libmel call failed; .status is the mel_status name, str() libmel's message."""

    def __init__(self, status, message):
        self.status = L.STATUS_NAMES.get(status, str(status))
        RuntimeError.__init__(self, "%s (%s)" % (message, self.status))


class MelValueError(MelError, ValueError):
    """Bad input (invalid argument, shape, budget, non-finite, overflow, graph)."""


class MelMemoryError(MelError, MemoryError):
    """An allocation failed inside libmel."""


def _raise(status, message):
    if status == 3:
        raise MelMemoryError(status, message)
    if status in (1, 2, 5, 6, 7, 8):
        raise MelValueError(status, message)
    raise MelError(status, message)


_HEAD_WORDS = {("x", 0): "hidden", ("w", 0): "weight", ("bias", 0): "bias", ("b", 0): "bias",
               ("x", 1): "teacher hidden", ("w", 1): "teacher weight",
               ("bias", 1): "teacher bias", ("b", 1): "teacher bias",
               ("dx", 0): "hidden's gradient", ("dw", 0): "weight's gradient",
               ("db", 0): "bias's gradient"}
_HEAD_RE = re.compile(r"\b(dx|dw|db|x|w|bias|b) of head (\d+)(: \[(\d+), (\d+)\])?")
_ROW_RE = re.compile(r"\b(\w+)\[(\d+)\] = ")  # labels[i] = ..., advantages[i] = ...


def _unravel(i, lead):
    out = []
    for s in reversed(lead):
        out.append(i % s if s else 0)
        i = i // s if s else 0
    return ", ".join(str(v) for v in reversed(out))


def _caller_words(msg, lead=None):
    """libmel's C message in the caller's words: "x of head 0: [r, c]" is hidden[b, t, c]
    (the leading shape unravelled), "w of head 0" weight, head 1 the teacher's."""
    def head(m):
        word = _HEAD_WORDS.get((m.group(1), int(m.group(2))))
        if word is None:
            return m.group(0)
        if m.group(3) is None:
            return word
        r, c = int(m.group(4)), int(m.group(5))
        if m.group(1) in ("bias", "b"):
            return "%s[%d]" % (word, c)
        if m.group(1) == "x" and lead is not None and len(lead) != 1:
            return "%s[%s, %d]" % (word, _unravel(r, lead), c)
        return "%s[%d, %d]" % (word, r, c)

    def row(m):
        if m.group(1) in ("bias", "weight"):
            return m.group(0)
        return "%s[%s] = " % (m.group(1), _unravel(int(m.group(2)), lead))

    msg = _HEAD_RE.sub(head, msg)
    if lead is not None and len(lead) != 1:
        msg = _ROW_RE.sub(row, msg)
    return msg


_LIB_ARG = {"x": "x", "w": "w", "bias": "bias", "grad_x": "dx", "grad_w": "dw",
            "grad_bias": "db"}


def _detail_words(ctx, msg, lead):
    """The message with the failed argument in the caller's words, the argument and
    element taken from mel_last_error_detail (errors as data), where the library has
    it; None where it does not (then _caller_words reads the message)."""
    detail = getattr(L, "error_detail", None)
    if detail is None or ctx is None:
        return None
    try:
        _s, kind, head, name, row, col = detail(ctx.ptr)
    except Exception:  # noqa: BLE001 -- an older library: read the message instead
        return None
    multi = lead is not None and len(lead) != 1
    rows = (lambda r: _unravel(r, lead)) if multi else (lambda r: str(r))
    if kind in _LIB_ARG and head >= 0:
        word = _HEAD_WORDS.get((_LIB_ARG[kind], head))
        if word is None:
            return msg
        lib = "%s of head %d" % (_LIB_ARG[kind], head)
        if row < 0:
            return msg.replace(lib, word, 1)
        if col < 0:  # a vector (bias): its element
            phrase, words = "%s: [%d]" % (lib, row), "%s[%d]" % (word, row)
        elif kind in ("x", "grad_x"):
            phrase, words = "%s: [%d, %d]" % (lib, row, col), "%s[%s, %d]" % (word, rows(row), col)
        else:
            phrase, words = "%s: [%d, %d]" % (lib, row, col), "%s[%d, %d]" % (word, row, col)
        if phrase in msg:
            return msg.replace(phrase, words, 1)
        return msg.replace(lib, words, 1) if lib in msg else words + ": " + msg
    if kind in ("index", "input") and name and row >= 0:
        phrase = "%s[%d]" % (name, row)
        words = "%s[%s]" % (name, rows(row))  # labels[b, t], mask[b, t]
        if phrase in msg:
            return msg.replace(phrase, words, 1)
        return words + ": " + msg
    return msg


def _check(ctx, status, what=""):
    if status != L.OK:
        msg = (L.lib.mel_last_error(ctx.ptr) or b"").decode() if ctx is not None else ""
        if not msg:
            msg = (L.lib.mel_status_str(status) or b"").decode()
        lead = getattr(ctx, "lead", None)
        worded = _detail_words(ctx, msg, lead)
        msg = worded if worded is not None else _caller_words(msg, lead)
        # the C message may already start with what this call says (no repeated prefix)
        if what and not (msg.startswith(what + ":") or msg.startswith(what + " ")):
            msg = what + ": " + msg
        _raise(status, msg)


# ------------------------------------------------------------------ contexts

class _Ctx:
    """One mel_ctx; kept per thread and device so its workspace is reused."""

    def __init__(self, backend):
        p = ctypes.c_void_p()
        s = L.lib.mel_ctx_create(backend, ctypes.byref(p))
        if s != L.OK:
            _raise(s, (L.lib.mel_ctx_create_error() or b"").decode())
        self.ptr = p
        self.backend = backend

    def __del__(self):
        if getattr(self, "ptr", None) and L is not None and L.lib is not None:
            L.lib.mel_ctx_destroy(self.ptr)
            self.ptr = None


_tls = threading.local()


def _context(device):
    """The calling thread's context for a torch device (CPU or one CUDA device)."""
    cache = getattr(_tls, "ctx", None)
    if cache is None:
        cache = _tls.ctx = {}
    key = (device.type, device.index)
    c = cache.get(key)
    if c is None:
        if device.type == "cpu":
            c = _Ctx(L.BACKEND_CPU)
        elif device.type == "cuda":
            with torch.cuda.device(device):
                try:
                    c = _Ctx(L.BACKEND_CUDA)
                except MelError as e:
                    raise RuntimeError(
                        "libmel: tensors are on %s but this libmel (%s) has no usable CUDA "
                        "backend: %s. Rebuild it with ./configure --with-cuda, or move the "
                        "tensors to the CPU." % (device, L.path, e)) from None
        else:
            raise TypeError("libmel: tensors on device type '%s' are not supported "
                            "(cpu, or cuda with a CUDA build)" % device.type)
        cache[key] = c
    return c


def _cpu_ctx():
    return _context(torch.device("cpu"))


def last_stats():
    """Statistics of this thread's last libmel call (a dict: chunk_rows, chunks,
    peak_workspace_bytes, gemm_flops, seconds, gemm_seconds; executor "rows" or
    "tiles" and tile_cols, the vocabulary columns per tile, 0 for whole rows),
    or None."""
    return getattr(_tls, "stats", None)


# ------------------------------------------------------------------ transforms

_TRANSFORMS = weakref.WeakValueDictionary()
_KEY_COUNTER = itertools.count()
_VPS = {}


class Transform:
    """A compiled libmel transform (immutable; shareable across threads).

    Made by libmel.builtin(name, **params) or libmel.define_transform(fn).
    """

    def __init__(self, ptr, name, params=None):
        self.ptr = ptr
        self.name = name
        self.params = dict(params or {})
        t = ptr
        self.heads = [L.lib.mel_transform_head(t, h) for h in range(4)]
        self.inputs = []
        for i in range(L.lib.mel_transform_num_inputs(t)):
            ix, df = ctypes.c_int(), ctypes.c_int()
            nm = L.lib.mel_transform_input(t, i, ctypes.byref(ix), ctypes.byref(df)).decode()
            self.inputs.append((nm, bool(ix.value), bool(df.value)))
        self.aux = [L.lib.mel_transform_aux(t, i).decode()
                    for i in range(L.lib.mel_transform_num_aux(t))]
        self.param_items = tuple(sorted(self.params.items()))
        # the name the custom operators know it by (doc/python.md, torch.compile)
        with _builtin_lock:
            self.key = "T%d" % next(_KEY_COUNTER)  # never reused, unlike len()
            _TRANSFORMS[self.key] = self
        # plain attributes (not properties): torch.compile reads them as constants
        self.index_inputs = [n for n, ix, _ in self.inputs if ix]
        self.scalar_inputs = [n for n, ix, _ in self.inputs if not ix]


    def dump(self):
        """The forward and adjoint programs as text."""
        p = L.lib.mel_transform_dump(self.ptr)
        if not p:
            raise MemoryError("mel_transform_dump")
        try:
            return ctypes.string_at(p).decode()
        finally:
            L.libc.free(p)

    def __repr__(self):
        return "<libmel.Transform %s heads=%s inputs=%s>" % (
            self.name, [h for h in range(4) if self.heads[h]], [n for n, _, _ in self.inputs])

    def __del__(self):
        if getattr(self, "ptr", None) and L is not None and L.lib is not None:
            L.lib.mel_transform_free(self.ptr)
            self.ptr = None


# string values accepted where the CLI accepts them
_PARAM_WORDS = {
    "loss_type": {"grpo": 0, "bnpo": 1, "dr_grpo": 2, "dapo": 3},
    "importance_sampling_level": {"token": 0, "sequence": 1},
}
LOSS_TYPES = {v: k for k, v in _PARAM_WORDS["loss_type"].items()}


def _param_value(name, v):
    if isinstance(v, str):
        words = _PARAM_WORDS.get(name)
        if words is None or v not in words:
            raise ValueError("libmel: parameter %s=%r: a number is expected%s" % (
                name, v, "" if words is None else
                " or one of " + ", ".join(repr(w) for w in words)))
        return float(words[v])
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError("libmel: parameter %s: a tensor of %d elements, a number is "
                             "expected" % (name, v.numel()))
        return float(v.item())
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError("libmel: parameter %s=%r: a number is expected" % (name, v)) from None


_builtin_cache = {}
_builtin_lock = threading.Lock()


def builtins():
    """Names of the built-in transforms."""
    return [L.lib.mel_builtin_name(i).decode() for i in range(L.lib.mel_builtin_count())]


def builtin(name, **params):
    """The built-in transform `name` with parameters (numbers, booleans, or the
    CLI's words for loss_type and importance_sampling_level); cached."""
    if not isinstance(name, str):
        raise TypeError("libmel: transform must be a built-in's name or a libmel.Transform, "
                        "got %r" % (name,))
    vals = {k: _param_value(k, v) for k, v in params.items()}
    key = (name, tuple(sorted(vals.items())))
    with _builtin_lock:
        t = _builtin_cache.get(key)
        if t is not None:
            return t
    ctx = _cpu_ctx()
    p = L.lib.mel_params_new()
    if not p:
        raise MemoryError("mel_params_new")
    try:
        for k, v in vals.items():
            if L.lib.mel_params_set(p, k.encode(), v) != L.OK:
                raise ValueError("libmel: parameter name %r is not valid" % (k,))
        out = ctypes.c_void_p()
        _check(ctx, L.lib.mel_transform_builtin(ctx.ptr, name.encode(), p, ctypes.byref(out)),
               "transform '%s'" % name)
    finally:
        L.lib.mel_params_free(p)
    t = Transform(out, name, vals)
    with _builtin_lock:
        _builtin_cache[key] = t
    return t


def _const(fn):
    """torch.compile runs fn when it traces a call and keeps the result as a constant
    (no graph break at the builtin cache's lock or the ctypes calls); plain fn on torch
    without torch.compiler."""
    comp = getattr(torch, "compiler", None)
    deco = getattr(comp, "assume_constant_result", None) if comp is not None else None
    return deco(fn) if deco is not None else fn


@_const
def _builtin_const(name, items):
    return builtin(name, **dict(items))


@_const
def _compiled_const(factory):
    """A define_transform factory's transform with its default parameters."""
    return factory.compiled()


def _grpo_weights_impl(mask, lt, B, T, max_len, n_items):
    """mel_grpo_weights: the per-token weights of a grpo loss type (float64, mask's device)."""
    m = mask.to("cpu", torch.float64).contiguous()
    w64 = torch.empty((B * T,), dtype=torch.float64)
    ctx = _cpu_ctx()
    _check(ctx, L.lib.mel_grpo_weights(ctx.ptr, lt, B, T, m.data_ptr(), max_len, n_items, 1,
                                       w64.data_ptr()), "loss_type")
    return w64.to(mask.device)


def _grpo_weights(mask, lt, B, T, max_len, n_items):
    if _OPS is not None and _compiling():
        return _OPS.grpo_weights(mask, lt, B, T, max_len, n_items)
    return _grpo_weights_impl(mask, lt, B, T, max_len, n_items)


# ------------------------------------------------------------------ tensors

_DT = {torch.float64: L.F64, torch.float32: L.F32, torch.bfloat16: L.BF16,
       torch.float16: L.F16}
_TORCH_DT = {v: k for k, v in _DT.items()}


def _autocast_dtype(device):
    """The dtype torch.autocast casts F.linear's operands to on `device`, or None."""
    dev = device.type
    try:
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
        return None
    except TypeError:  # torch < 2.4: per-device functions
        pass
    if dev == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    if dev == "cuda":
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    return None


def _autocast(t, dtype):
    """As autocast casts an operand: floating tensors other than float64."""
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64 \
            and t.dtype != dtype:
        return t.to(dtype)
    return t


def _float_dtype(t, what):
    d = _DT.get(t.dtype)
    if d is None:
        raise TypeError("libmel: %s has dtype %s; supported: float64, float32, bfloat16, "
                        "float16" % (what, t.dtype))
    return d


def _rows(t, D, what):
    """t [..., D] as an [N, D] view with a row stride, without a copy when the
    leading dimensions flatten to one stride (as torch's reshape would view it)."""
    x = t.reshape(-1, D)
    if x.shape[0] > 1 and x.stride(1) != 1:
        x = x.contiguous()
    ld = x.stride(0) if x.shape[0] > 1 else D
    if x.shape[0] > 0 and ld < D:
        x = x.contiguous()
        ld = D
    return x, max(ld, D)


def _mat(x, dtype, rows, cols, ld):
    return L.Matrix(x.data_ptr() if x is not None else None, dtype, rows, cols, ld)


def _per_row(t, N, lead, what, device, index=False):
    if not isinstance(t, torch.Tensor):
        raise TypeError("libmel: %s must be a tensor, got %s" % (what, type(t).__name__))
    if tuple(t.shape) != tuple(lead) and t.numel() != N:
        raise ValueError("libmel: %s has shape %s; the leading shape of hidden is %s"
                         % (what, tuple(t.shape), tuple(lead)))
    if tuple(t.shape) != tuple(lead) and t.dim() != 1:
        raise ValueError("libmel: %s has shape %s; the leading shape of hidden is %s (or a "
                         "flat [%d])" % (what, tuple(t.shape), tuple(lead), N))
    if t.device != device:
        raise ValueError("libmel: %s is on %s, hidden on %s" % (what, t.device, device))
    if index:
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError("libmel: %s has dtype %s; supported: int64, int32"
                            % (what, t.dtype))
        return t.reshape(-1).contiguous(), (L.I64 if t.dtype == torch.int64 else L.I32)
    if t.dtype == torch.float64:
        return t.reshape(-1).contiguous(), L.F64
    if t.dtype == torch.float32:
        return t.reshape(-1).contiguous(), L.F32
    if t.dtype in (torch.bool, torch.bfloat16, torch.float16, torch.uint8, torch.int8,
                   torch.int32, torch.int64):
        return t.reshape(-1).to(torch.float32).contiguous(), L.F32
    raise TypeError("libmel: %s has dtype %s; supported: float64, float32 (bool, integer and "
                    "16-bit floats are converted to float32)" % (what, t.dtype))


# ------------------------------------------------------------------ the call

class _Spec:
    """Everything about one linear_loss call that is not a differentiable tensor."""
    __slots__ = ("transform", "reduction", "weights", "chunk_rows", "workspace_bytes",
                 "mode", "aux", "lead", "N", "D", "V", "Dt", "dtype", "device",
                 "input_names", "index_name", "check_finite", "ydtype", "vp")


def _reduction_code(r):
    codes = {"none": L.REDUCE_NONE, "sum": L.REDUCE_SUM, "mean": L.REDUCE_MEAN,
             "weighted": L.REDUCE_WEIGHTED}
    if r not in codes:
        raise ValueError("libmel: reduction=%r: one of 'none', 'sum', 'mean', 'weighted'" % (r,))
    return codes[r]


def _bind(spec, ctx, hidden2, ld, weight, bias, th2, tld, tweight, labels, inputs):
    """A mel_args with the heads, the per-row inputs and the reduction bound."""
    a = L.lib.mel_args_new()
    if not a:
        raise MemoryError("mel_args_new")
    try:
        dt = spec.dtype
        _check(ctx, L.lib.mel_args_head(a, 0, _mat(hidden2, dt, spec.N, spec.D, ld),
                                        _mat(weight, dt, spec.V, spec.D, weight.stride(0)
                                             if spec.V > 1 else spec.D),
                                        bias.data_ptr() if bias is not None else None),
               "hidden/weight")
        if th2 is not None:
            _check(ctx, L.lib.mel_args_head(a, 1, _mat(th2, dt, spec.N, spec.Dt, tld),
                                            _mat(tweight, dt, spec.V, spec.Dt,
                                                 tweight.stride(0) if spec.V > 1 else spec.Dt),
                                            None), "teacher")
        if labels is not None:
            lab, ldt = labels
            _check(ctx, L.lib.mel_args_index(a, spec.index_name.encode(), lab.data_ptr(), ldt,
                                             spec.N), "labels")
        for name, (v, vdt) in zip(spec.input_names, inputs):
            _check(ctx, L.lib.mel_args_input(a, name.encode(), v.data_ptr(), vdt, spec.N),
                   "inputs[%r]" % name)
        w = spec.weights
        _check(ctx, L.lib.mel_args_reduction(a, spec.reduction,
                                             w.data_ptr() if w is not None else None),
               "reduction")
        return a
    except BaseException:
        L.lib.mel_args_free(a)
        raise


class VocabParallel:
    """W split by vocabulary rows across MPI processes (doc/distributed.md).

    VocabParallel(comm, v_offset, v_total, partial_dx=False): this process holds rows
    [v_offset, v_offset + V_r) of a vocabulary of v_total; pass it as
    linear_loss(..., vocab_parallel=vp) with weight (and bias, a teacher's weight) this
    process's rows and labels as global column ids.  The call is then collective: every
    process makes it with the same hidden, labels and inputs; the loss and hidden's
    gradient come out the same on every process (dX summed over the processes unless
    partial_dx=True), weight's gradient is the shard's.  comm: an mpi4py communicator
    (mpi4py.MPI.Comm), or the integer address of an MPI_Comm.  CPU tensors only; needs a
    libmel built with MPI (configure --with-mpi)."""

    __slots__ = ("comm", "addr", "v_offset", "v_total", "partial_dx", "key")

    def __init__(self, comm, v_offset, v_total, partial_dx=False):
        if hasattr(comm, "Get_rank") and hasattr(comm, "Get_size"):
            from mpi4py import MPI  # the communicator is mpi4py's: it is importable
            addr = MPI._addressof(comm)
        elif isinstance(comm, int) and not isinstance(comm, bool):
            addr = comm
        else:
            raise TypeError("libmel: VocabParallel's comm must be an mpi4py communicator or the "
                            "address of an MPI_Comm, got %s" % type(comm).__name__)
        for nm, v in (("v_offset", v_offset), ("v_total", v_total)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError("libmel: VocabParallel's %s must be an int, got %r" % (nm, v))
        if v_total < 1 or not 0 <= v_offset < v_total:
            raise ValueError("libmel: VocabParallel: v_offset=%d, v_total=%d: want "
                             "0 <= v_offset < v_total" % (v_offset, v_total))
        self.comm = comm  # kept alive while in use
        self.addr = addr
        self.v_offset = v_offset
        self.v_total = v_total
        self.partial_dx = bool(partial_dx)
        with _builtin_lock:
            self.key = "VP%d" % next(_KEY_COUNTER)
            _VPS[self.key] = self

    def _key(self):
        return (self.addr, self.v_offset, self.v_total, self.partial_dx)

    def __repr__(self):
        return "VocabParallel(v_offset=%d, v_total=%d%s)" % (
            self.v_offset, self.v_total, ", partial_dx=True" if self.partial_dx else "")


def _apply_vocab_parallel(ctx, vp):
    """Switch the context's vocabulary parallelism to vp (None: off) when it differs;
    mel_set_vocab_parallel is collective, and every process switches at the same call."""
    want = vp._key() if vp is not None else None
    if getattr(ctx, "vp_key", None) == want:
        return
    c = ctx.ptr
    if getattr(ctx, "vp_key", None) is not None:
        _check(ctx, L.lib.mel_set_vocab_parallel(c, None, 0, 0, 0), "vocab_parallel")
        ctx.vp_key = None
    if vp is not None:
        holder = ctypes.c_void_p(vp.addr)
        _check(ctx, L.lib.mel_set_vocab_parallel(c, holder, vp.v_offset, vp.v_total,
                                                 1 if vp.partial_dx else 0), "vocab_parallel")
        ctx.vp_key = want


def _prepare_ctx(spec):
    ctx = _context(spec.device)
    ctx.lead = spec.lead  # for messages in the caller's words
    c = ctx.ptr
    if spec.device.type == "cpu":
        _apply_vocab_parallel(ctx, spec.vp)
        _check(ctx, L.lib.mel_set_threads(c, max(1, min(4096, torch.get_num_threads()))),
               "threads")
    else:
        _check(ctx, L.lib.mel_set_cuda_stream(c, torch.cuda.current_stream(spec.device).cuda_stream),
               "CUDA stream")
    _check(ctx, L.lib.mel_set_chunk_rows(c, spec.chunk_rows or 0), "chunk_rows")
    _check(ctx, L.lib.mel_set_workspace_limit(c, spec.workspace_bytes or 0), "workspace_bytes")
    _check(ctx, L.lib.mel_set_check_finite(c, 1 if spec.check_finite else 0), "check_finite")
    return ctx


def _record_stats(ctx):
    s = L.Stats()
    L.lib.mel_get_stats(ctx.ptr, ctypes.byref(s))
    _tls.stats = {f: getattr(s, f) for f, _ in L.Stats._fields_}
    tiles = L.lib.mel_get_tile_cols(ctx.ptr)
    _tls.stats["executor"] = "tiles" if tiles > 0 else "rows"
    _tls.stats["tile_cols"] = tiles
    if getattr(ctx, "vp_key", None) is not None:
        b, sec = ctypes.c_int64(), ctypes.c_double()
        L.lib.mel_get_comm_stats(ctx.ptr, ctypes.byref(b), ctypes.byref(sec))
        _tls.stats["comm_bytes"] = b.value
        _tls.stats["comm_seconds"] = sec.value


def _grad_buffers(spec, ctx, a, need, inputs_req):
    """Allocate and bind the gradient buffers that are needed; returns them."""
    dev = spec.device
    dx = dw = db = None
    if need[0]:
        dx = torch.empty((spec.N, spec.D), dtype=_TORCH_DT[spec.dtype], device=dev)
    wdt = torch.float64 if spec.dtype == L.F64 else torch.float32
    if need[1]:
        dw = torch.empty((spec.V, spec.D), dtype=wdt, device=dev)
    if need[2]:
        db = torch.empty((spec.V,), dtype=wdt, device=dev)
    gdt = L.F64 if spec.dtype == L.F64 else L.F32
    if dx is not None or dw is not None or db is not None:
        _check(ctx, L.lib.mel_args_grad_head(
            a, 0, _mat(dx, spec.dtype, spec.N, spec.D, spec.D),
            _mat(dw, gdt, spec.V, spec.D, spec.D),
            db.data_ptr() if db is not None else None, L.OVERWRITE_DW), "gradients")
    dins = []
    for name, req in zip(spec.input_names, inputs_req):
        g = None
        if req:
            g = torch.empty((spec.N,), dtype=wdt, device=dev)
            _check(ctx, L.lib.mel_args_grad_input(a, name.encode(), g.data_ptr(), gdt),
                   "gradient of inputs[%r]" % name)
        dins.append(g)
    return dx, dw, db, dins


class _Extra:
    """The parts of a call autograd does not see: the converted (possibly copied)
    teacher, labels and per-row inputs the C call binds, and the caller's own
    tensors behind them (detached: they share the caller's version counters), which
    are saved with save_for_backward so that an in-place change between forward and
    backward is refused as torch refuses it."""
    __slots__ = ("th2", "tld", "tw", "lab", "in_conv", "watch")

    def __init__(self, th2=None, tld=0, tw=None, lab=None, in_conv=(), watch=()):
        self.th2, self.tld, self.tw, self.lab = th2, tld, tw, lab
        self.in_conv = list(in_conv)
        self.watch = [t.detach() for t in watch if isinstance(t, torch.Tensor)]


def _weight_rows(weight, V, D):
    if weight.stride(1) != 1 and V > 0 and D > 1:
        return weight.contiguous()
    return weight


def _run_forward(spec, hidden, weight, bias, ex, need, in_req, fused):
    """One C forward (fused: forward and backward with dL/dy = 1).  Returns
    (y, aux, grads) with grads (dx [N, D], dw, db, dins) or None."""
    hidden2, ld = _rows(hidden, spec.D, "hidden")
    weight = _weight_rows(weight, spec.V, spec.D)
    ctx = _prepare_ctx(spec)
    ydt = torch.float64 if spec.dtype == L.F64 else torch.float32
    ymdt = L.F64 if spec.dtype == L.F64 else L.F32
    y = torch.empty((spec.N,) if spec.reduction == L.REDUCE_NONE else (),
                    dtype=ydt, device=spec.device)
    aux_out = [torch.empty((spec.N,), dtype=ydt, device=spec.device) for _ in spec.aux]
    grads = None
    a = _bind(spec, ctx, hidden2, ld, weight, bias, ex.th2, ex.tld, ex.tw, ex.lab, ex.in_conv)
    try:
        _check(ctx, L.lib.mel_args_output(a, y.data_ptr(), ymdt), "output")
        for name, buf in zip(spec.aux, aux_out):
            _check(ctx, L.lib.mel_args_aux(a, name.encode(), buf.data_ptr(), ymdt),
                   "aux %r" % name)
        if fused:
            grads = _grad_buffers(spec, ctx, a, need, in_req)
            _check(ctx, L.lib.mel_forward_backward(ctx.ptr, spec.transform.ptr, a),
                   spec.transform.name)
        else:
            _check(ctx, L.lib.mel_forward(ctx.ptr, spec.transform.ptr, a), spec.transform.name)
        _record_stats(ctx)
    finally:
        L.lib.mel_args_free(a)
    return y, aux_out, grads


def _run_backward(spec, hidden, weight, bias, ex, gy, need, in_req):
    """mel_backward with the upstream gradient gy (the reduced [1] or per-row [N])."""
    gdt = torch.float64 if spec.dtype == L.F64 else torch.float32
    hidden2, ld = _rows(hidden, spec.D, "hidden")
    weight = _weight_rows(weight, spec.V, spec.D)
    ctx = _prepare_ctx(spec)
    g = gy.reshape(-1).to(gdt).contiguous()
    a = _bind(spec, ctx, hidden2, ld, weight, bias, ex.th2, ex.tld, ex.tw, ex.lab, ex.in_conv)
    try:
        _check(ctx, L.lib.mel_args_grad_output(
            a, g.data_ptr(), L.F64 if gdt == torch.float64 else L.F32), "upstream gradient")
        grads = _grad_buffers(spec, ctx, a, need, in_req)
        _check(ctx, L.lib.mel_backward(ctx.ptr, spec.transform.ptr, a), spec.transform.name)
        _record_stats(ctx)
    finally:
        L.lib.mel_args_free(a)
    return grads


def _scale_grads(spec, grads, gy):
    """Fused mode: the gradients were computed with dL/dy = 1; the upstream gradient
    (a scalar) is multiplied in here, in place."""
    gdt = torch.float64 if spec.dtype == L.F64 else torch.float32
    if spec.device.type == "cpu" and float(gy) == 1.0:
        return grads
    g = gy.reshape(()).to(gdt)
    dx, dw, db, dins = grads
    for t in (dx, dw, db, *dins):
        if t is not None:
            t.mul_(g)
    return grads


_DOUBLE_BACKWARD = (
    "libmel: the gradient of linear_loss was differentiated (double backward: "
    "torch.autograd.grad(..., create_graph=True) and a loss built from that gradient), which "
    "libmel does not implement: its backward is not itself differentiable. Compute that term "
    "with plain torch ops, or leave it out")


class _NoDoubleBackward(torch.autograd.Function):
    """Under create_graph=True: hands out linear_loss's gradients as depending on
    the tensors they are functions of, with a backward that refuses (rather than
    leaving them constants, which would silently drop a gradient penalty's term)."""

    @staticmethod
    def forward(fctx, grads, *deps):
        return tuple(g.clone() for g in grads)

    @staticmethod
    def backward(fctx, *g):
        raise RuntimeError(_DOUBLE_BACKWARD)


def _finish_grads(spec, fctx_like, grads, deps):
    """Shapes and dtypes of the returned gradients; wrapped under create_graph."""
    dx, dw, db, dins = grads
    if dx is not None:
        dx = dx.view(fctx_like.hidden_shape)
    if dw is not None and dw.dtype != fctx_like.wdtype:
        dw = dw.to(fctx_like.wdtype)
    if db is not None and db.dtype != fctx_like.wdtype:
        db = db.to(fctx_like.wdtype)
    gin = [t.view(spec.lead).to(fctx_like.in_dtypes[i]) if t is not None else None
           for i, t in enumerate(dins)]
    out = [dx, dw, db, *gin]
    if torch.is_grad_enabled() and any(isinstance(d, torch.Tensor) and d.requires_grad
                                       for d in deps):
        present = [i for i, t in enumerate(out) if t is not None]
        wrapped = _NoDoubleBackward.apply([out[i] for i in present],
                                          *[d for d in deps if isinstance(d, torch.Tensor)])
        for i, t in zip(present, wrapped):
            out[i] = t
    return out


class _LinearLoss(torch.autograd.Function):
    """forward(spec, ex, hidden, weight, bias, *fn_inputs).

    Positions in needs_input_grad: 2 hidden, 3 weight, 4 bias, 5 + i the i-th
    per-row input (passed as itself when it can carry a gradient, else None);
    the teacher (in ex) is detached and never gets a gradient.

    Everything backward reads is saved with save_for_backward (the caller's hidden,
    weight, bias, teacher, labels, inputs and reduction weights), so torch's own
    checks apply: an in-place change between forward and backward raises "modified by
    an inplace operation", and a second backward without retain_graph raises "Trying
    to backward through the graph a second time"."""

    @staticmethod
    def forward(fctx, spec, ex, hidden, weight, bias, *fn_inputs):
        grads_on = spec.mode != "forward"
        nig = fctx.needs_input_grad
        need = (grads_on and nig[2], grads_on and nig[3],
                grads_on and bias is not None and nig[4])
        in_req = [grads_on and fn_inputs[i] is not None and nig[5 + i]
                  for i in range(len(fn_inputs))]
        wanted = any(need) or any(in_req)
        fused = spec.mode == "fused" and wanted
        y, aux_out, grads = _run_forward(spec, hidden, weight, bias, ex, need, in_req, fused)
        fctx.spec = spec
        fctx.hidden_shape = hidden.shape
        fctx.wdtype = weight.dtype
        fctx.in_dtypes = [t.dtype if t is not None else None for t in fn_inputs]
        fctx.fused = fused
        fctx.need = need
        fctx.in_req = in_req
        fctx.grads = grads
        fctx.ex = ex if wanted else None
        fctx.n_fn = len(fn_inputs)
        if wanted:
            fctx.save_for_backward(hidden, weight, bias, *fn_inputs, *ex.watch)
        if spec.reduction == L.REDUCE_NONE:
            y = y.view(spec.lead)
        aux_out = [t.view(spec.lead) for t in aux_out]
        for t in aux_out:
            fctx.mark_non_differentiable(t)
        return (y, *aux_out)

    @staticmethod
    def backward(fctx, gy, *gaux):
        spec = fctx.spec
        nothing = (None, None, None, None, None) + (None,) * fctx.n_fn
        if fctx.ex is None:
            return nothing
        # unpacking runs torch's checks: the version of every saved tensor, and
        # whether the graph was freed by an earlier backward without retain_graph
        saved = fctx.saved_tensors
        hidden, weight, bias = saved[:3]
        fn_inputs = saved[3:3 + fctx.n_fn]
        with torch.no_grad():
            if fctx.fused and fctx.grads is not None:
                grads = _scale_grads(spec, fctx.grads, gy)
                fctx.grads = None  # handed out once; a retained graph recomputes
            else:
                grads = _run_backward(spec, hidden, weight, bias, fctx.ex, gy, fctx.need,
                                      fctx.in_req)
        out = _finish_grads(spec, fctx, grads, (gy, hidden, weight, bias, *fn_inputs))
        return (None, None, *out)


# ------------------------------------------------------------------ custom operators

def _compiling():
    """True while torch.compile traces: there the call goes through the custom
    operators below (torch >= 2.4), not through _LinearLoss."""
    comp = getattr(torch, "compiler", None)
    f = getattr(comp, "is_compiling", None) if comp is not None else None
    return bool(f is not None and f())


class _OpConfig:
    """What a custom-operator call fixes besides its tensors, registered under a
    string key (the operator's schema takes the key; equal configurations share it,
    so a compiled graph does not recompile for a new call)."""

    def __init__(self, tr, red, chunk_rows, workspace_bytes, aux, check_finite, vp, mode):
        self.tr, self.red, self.chunk_rows = tr, red, chunk_rows
        self.workspace_bytes, self.aux, self.check_finite = workspace_bytes, list(aux), check_finite
        self.vp, self.mode = vp, mode


_OP_CONFIGS = {}


def _tparam(tr, name, default):
    """tr.params.get(name, default), in a form torch.compile traces without a guard."""
    for k, v in tr.param_items:
        if k == name:
            return v
    return default


def _op_key(tr, red, chunk_rows, workspace_bytes, aux, check_finite, vp, mode):
    """The configuration as the operators' string argument (built from constants where
    torch.compile traces it: equal calls give equal strings, and no recompilation)."""
    return "|".join([tr.key, str(red), str(chunk_rows or 0), str(workspace_bytes or 0),
                     ",".join(aux), "1" if check_finite else "0",
                     vp.key if vp is not None else "", mode])


def _op_config(key):
    cfg = _OP_CONFIGS.get(key)
    if cfg is None:
        tk, red, cr, wb, aux, cf, vpk, mode = key.split("|")
        cfg = _OpConfig(_TRANSFORMS[tk], int(red), int(cr) or None, int(wb) or None,
                        [a for a in aux.split(",") if a], cf == "1",
                        _VPS[vpk] if vpk else None, mode)
        with _builtin_lock:
            _OP_CONFIGS[key] = cfg
    return cfg


def _op_prepare(key, hidden, weight, teacher_h, teacher_w, labels, inputs, weights):
    cfg = _op_config(key)
    tr = cfg.tr
    spec = _Spec()
    spec.transform, spec.reduction, spec.weights = tr, cfg.red, weights
    spec.chunk_rows, spec.workspace_bytes = cfg.chunk_rows, cfg.workspace_bytes
    spec.mode, spec.aux, spec.check_finite, spec.vp = cfg.mode, cfg.aux, cfg.check_finite, cfg.vp
    spec.lead = tuple(hidden.shape[:-1])
    N = 1
    for v in spec.lead:
        N *= v
    spec.N, spec.D, spec.V = N, hidden.shape[-1], weight.shape[0]
    spec.Dt = teacher_h.shape[-1] if teacher_h is not None else 0
    spec.dtype, spec.device = _DT[hidden.dtype], hidden.device
    spec.input_names = tr.scalar_inputs
    spec.index_name = tr.index_inputs[0] if tr.index_inputs else None
    th2, tld, tw = None, 0, None
    if teacher_h is not None:
        th2, tld = _rows(teacher_h, spec.Dt, "teacher hidden")
        tw = _weight_rows(teacher_w, spec.V, spec.Dt)
    lab = _per_row(labels, N, spec.lead, "labels", spec.device, index=True) \
        if labels is not None else None
    conv = [_per_row(t, N, spec.lead, "inputs[%r]" % s, spec.device)
            for s, t in zip(spec.input_names, inputs)]
    return spec, _Extra(th2, tld, tw, lab, conv)


def _op_grads(spec, hidden_shape, grads):
    dx, dw, db, dins = grads
    out = []
    if dx is not None:
        out.append(dx.view(hidden_shape))
    out += [t for t in (dw, db) if t is not None]
    out += [t.view(spec.lead) for t in dins if t is not None]
    return out


def _fake_grads(key, hidden, weight, need):
    gdt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    lead = hidden.shape[:-1]
    out = []
    if need[0]:
        out.append(hidden.new_empty(hidden.shape))
    if need[1]:
        out.append(weight.new_empty(weight.shape, dtype=gdt))
    if len(need) > 2 and need[2]:
        out.append(weight.new_empty((weight.shape[0],), dtype=gdt))
    out += [hidden.new_empty(lead, dtype=gdt) for r in need[3:] if r]
    return out


def _refuse_double(ctx, *grads):
    raise RuntimeError(_DOUBLE_BACKWARD)


def _no_setup(ctx, inputs, output):
    pass


def _make_ops():
    """libmel::linear_loss (forward; fused: with the gradients for dL/dy = 1),
    libmel::linear_loss_backward (recompute), libmel::scale_grads (fused backward) and
    libmel::grpo_weights, with fake implementations and autograd registration, so that
    torch.compile(fullgraph=True) traces a training step without a graph break.  The
    backward operators refuse to be differentiated (double backward)."""
    lib = getattr(torch, "library", None)
    if lib is None or not hasattr(lib, "custom_op") or not hasattr(lib, "register_autograd"):
        return None
    from typing import List, Optional
    Tensor = torch.Tensor
    ns = {}

    @lib.custom_op("libmel::linear_loss", mutates_args=())
    def fwd(key: str, hidden: Tensor, weight: Tensor, bias: Optional[Tensor],
            teacher_h: Optional[Tensor], teacher_w: Optional[Tensor], labels: Optional[Tensor],
            inputs: List[Tensor], weights: Optional[Tensor], need: List[bool],
            fused: bool) -> List[Tensor]:
        spec, ex = _op_prepare(key, hidden, weight, teacher_h, teacher_w, labels, inputs,
                               weights)
        y, aux, grads = _run_forward(spec, hidden, weight, bias, ex, tuple(need[:3]),
                                     list(need[3:]), fused)
        out = [y.view(spec.lead) if spec.reduction == L.REDUCE_NONE else y]
        out += [t.view(spec.lead) for t in aux]
        if fused:
            out += _op_grads(spec, hidden.shape, grads)
        return out

    @fwd.register_fake
    def _(key, hidden, weight, bias, teacher_h, teacher_w, labels, inputs, weights, need,
          fused):
        cfg = _op_config(key)
        ydt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        lead = hidden.shape[:-1]
        out = [hidden.new_empty(lead if cfg.red == L.REDUCE_NONE else (), dtype=ydt)]
        out += [hidden.new_empty(lead, dtype=ydt) for _ in cfg.aux]
        if fused:
            out += _fake_grads(key, hidden, weight, need)
        return out

    @lib.custom_op("libmel::linear_loss_backward", mutates_args=())
    def bwd(key: str, gy: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor],
            teacher_h: Optional[Tensor], teacher_w: Optional[Tensor], labels: Optional[Tensor],
            inputs: List[Tensor], weights: Optional[Tensor], need: List[bool]) -> List[Tensor]:
        spec, ex = _op_prepare(key, hidden, weight, teacher_h, teacher_w, labels, inputs,
                               weights)
        grads = _run_backward(spec, hidden, weight, bias, ex, gy, tuple(need[:3]),
                              list(need[3:]))
        return _op_grads(spec, hidden.shape, grads)

    @bwd.register_fake
    def _(key, gy, hidden, weight, bias, teacher_h, teacher_w, labels, inputs, weights, need):
        return _fake_grads(key, hidden, weight, need)

    @lib.custom_op("libmel::scale_grads", mutates_args=())
    def scale(grads: List[Tensor], gy: Tensor) -> List[Tensor]:
        g = gy.reshape(())
        return [t * g.to(t.dtype) for t in grads]

    @scale.register_fake
    def _(grads, gy):
        return [torch.empty_like(t) for t in grads]

    @lib.custom_op("libmel::grpo_weights", mutates_args=())
    def grpo_weights(mask: Tensor, loss_type: int, B: int, T: int, max_len: int,
                     n_items: float) -> Tensor:
        return _grpo_weights_impl(mask, loss_type, B, T, max_len, n_items)

    @grpo_weights.register_fake
    def _(mask, loss_type, B, T, max_len, n_items):
        return mask.new_empty((B * T,), dtype=torch.float64)

    def setup(ctx, inputs, output):
        key, hidden, weight, bias, th, tw, labels, ins, weights, need, fused = inputs
        cfg = _op_config(key)
        ctx.key, ctx.need, ctx.fused = key, list(need), fused
        ctx.n_in = len(ins)
        ctx.wdtype = weight.dtype
        ctx.in_dtypes = [t.dtype for t in ins]
        kept = list(output[1 + len(cfg.aux):]) if fused else []
        ctx.save_for_backward(hidden, weight, bias, th, tw, labels, weights, *ins, *kept)

    def backward(ctx, grads):
        gy = grads[0]  # a List[Tensor] output: one list of gradients
        saved = ctx.saved_tensors
        hidden, weight, bias, th, tw, labels, weights = saved[:7]
        ins = list(saved[7:7 + ctx.n_in])
        kept = list(saved[7 + ctx.n_in:])
        need = ctx.need
        if ctx.fused:
            res = scale(kept, gy)
        elif any(need):
            res = bwd(ctx.key, gy, hidden, weight, bias, th, tw, labels, ins, weights, need)
        else:
            res = []
        it = iter(res)
        dx = next(it) if need[0] else None
        dw = next(it).to(ctx.wdtype) if need[1] else None
        db = next(it).to(ctx.wdtype) if need[2] else None
        dins = [next(it).to(ctx.in_dtypes[i]) if need[3 + i] else None
                for i in range(ctx.n_in)]
        return None, dx, dw, db, None, None, None, dins, None, None, None

    lib.register_autograd("libmel::linear_loss", backward, setup_context=setup)
    lib.register_autograd("libmel::linear_loss_backward", _refuse_double,
                          setup_context=_no_setup)
    lib.register_autograd("libmel::scale_grads", _refuse_double, setup_context=_no_setup)
    ns.update(linear_loss=fwd, linear_loss_backward=bwd, scale_grads=scale,
              grpo_weights=grpo_weights)
    return type("_Ops", (), {k: staticmethod(v) for k, v in ns.items()})


_OPS = _make_ops()


def _functorch_active():
    fa = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(fa is not None and fa())


class _LinearLossFn(torch.autograd.Function):
    """linear_loss under torch.func transforms (torch.func.grad, ...), which need an
    autograd.Function with setup_context (torch >= 2.0).  apply(key, need, hidden,
    weight, bias, teacher_h, teacher_w, labels, weights, *inputs), as the custom
    operator (every tensor an input, so that the transforms unwrap it).  Always
    recompute (the transforms hand backward a gradient for every output, so gradients
    kept as outputs could not tell a first from a second derivative); differentiating
    the gradient (grad of grad) finds backward's tensors wrapped by the outer
    transform, and is refused."""

    @staticmethod
    def forward(key, need, hidden, weight, bias, th, tw, labels, weights, *ins):
        spec, ex = _op_prepare(key, hidden, weight, th, tw, labels, ins, weights)
        y, aux, _ = _run_forward(spec, hidden, weight, bias, ex, tuple(need[:3]),
                                 list(need[3:]), False)
        out = [y.view(spec.lead) if spec.reduction == L.REDUCE_NONE else y]
        out += [t.view(spec.lead) for t in aux]
        return tuple(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        key, need = inputs[:2]
        ctx.key, ctx.need = key, list(need)
        ins = inputs[9:]
        ctx.n_in = len(ins)
        ctx.wdtype = inputs[3].dtype
        ctx.in_dtypes = [t.dtype for t in ins]
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*inputs[2:])

    @staticmethod
    def backward(ctx, gy, *rest):
        saved = ctx.saved_tensors
        hidden, weight, bias, th, tw, labels, weights = saved[:7]
        ins = list(saved[7:7 + ctx.n_in])
        need = ctx.need
        ft = getattr(torch._C, "_functorch", None)
        if ft is not None and hasattr(ft, "is_gradtrackingtensor"):
            # one level of the transform's wrapping is this derivative's own; a tensor
            # still wrapped below it means the gradient is being differentiated
            def unwrap(t):
                if t is not None and ft.is_gradtrackingtensor(t):
                    t = ft.get_unwrapped(t)
                    if ft.is_gradtrackingtensor(t):
                        raise RuntimeError(_DOUBLE_BACKWARD)
                return t
            hidden, weight, bias, th, tw, labels, weights, gy = (
                unwrap(t) for t in (hidden, weight, bias, th, tw, labels, weights, gy))
            ins = [unwrap(t) for t in ins]
        off = getattr(torch._C, "_DisableFuncTorch", None)
        with (off() if off is not None else contextlib.nullcontext()):
            # the C call's tensors stay plain (no transform wraps their temporaries)
            spec, ex = _op_prepare(ctx.key, hidden, weight, th, tw, labels, ins, weights)
            res = _op_grads(spec, hidden.shape, _run_backward(
                spec, hidden, weight, bias, ex, gy, tuple(need[:3]), list(need[3:])))
        it = iter(res)
        dx = next(it) if need[0] else None
        dw = next(it).to(ctx.wdtype) if need[1] else None
        db = next(it).to(ctx.wdtype) if need[2] else None
        dins = [next(it).to(ctx.in_dtypes[i]) if need[3 + i] else None
                for i in range(ctx.n_in)]
        return (None, None, dx, dw, db, None, None, None, None, *dins)


def _need(mode, hidden, weight, bias, fn_inputs):
    """Which gradients are computed: hidden, weight, bias, then each per-row input."""
    on = mode != "forward"
    need = [on and hidden.requires_grad, on and weight.requires_grad,
            on and bias is not None and bias.requires_grad]
    return need + [on and f is not None and f.requires_grad for f in fn_inputs]


def _op_call(tr, red, wts, chunk_rows, workspace_bytes, aux, check_finite, vp, mode, hidden,
             weight, bias, teacher_raw, labels, in_raw, fn_inputs):
    """linear_loss through libmel::linear_loss (under torch.compile or torch.func)."""
    key = _op_key(tr, red, chunk_rows, workspace_bytes, tuple(aux), bool(check_finite), vp,
                  mode)
    need = _need(mode, hidden, weight, bias, fn_inputs)
    fused = mode == "fused" and any(need)
    th, tw = (teacher_raw[0].detach(), teacher_raw[1].detach()) if teacher_raw else (None, None)
    out = _OPS.linear_loss(key, hidden, weight, bias, th, tw, labels, list(in_raw), wts, need,
                           fused)
    y = out[0]
    if aux:
        return y, dict(zip(aux, [t.detach() for t in out[1:1 + len(aux)]]))
    return y


def linear_loss(hidden, weight, labels=None, *, transform="ce", bias=None, inputs=None,
                teacher=None, params=None, reduction=None, weights=None, chunk_rows=None,
                workspace_bytes=None, mode=None, return_aux=None, check_finite=False,
                vocab_parallel=None, ignore_index=None, label_smoothing=None):
    """y = f(hidden · weightᵀ + bias) reduced, differentiable in hidden, weight and
    bias, without the [..., V] logits.  See doc/python.md."""
    # --- the transform
    params = dict(params or {})
    for nm, v in (("ignore_index", ignore_index), ("label_smoothing", label_smoothing)):
        if v is None:
            continue
        if nm in params and _param_value(nm, params[nm]) != _param_value(nm, v):
            raise ValueError("libmel: %s=%r and params[%r]=%r contradict each other; pass "
                             "one of them" % (nm, v, nm, params[nm]))
        if isinstance(transform, Transform):
            if _param_value(nm, v) != transform.params.get(nm, _param_value(nm, v)) or \
                    nm not in transform.params:
                raise ValueError("libmel: %s=%r given with a compiled transform %r: parameters "
                                 "are fixed when a transform is built" % (nm, v, transform.name))
            continue
        params[nm] = v
    if not isinstance(transform, (Transform, str)) and \
            callable(getattr(transform, "compiled", None)):  # a define_transform factory
        transform = _compiled_const(transform)
    if isinstance(transform, Transform):
        if params:
            raise ValueError("libmel: params=%r given with a compiled transform %r: parameters "
                             "are fixed when a transform is built" % (params, transform.name))
        tr = transform
    elif isinstance(transform, str):
        tr = None  # built below, once seq_len is known
    else:
        raise TypeError("libmel: transform must be a built-in's name or a libmel.Transform, "
                        "got %s" % type(transform).__name__)

    # --- hidden, weight
    for nm, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("libmel: %s must be a tensor, got %s" % (nm, type(t).__name__))
    if hidden.dim() < 1:
        raise ValueError("libmel: hidden must have shape [..., D], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError("libmel: weight must have shape [V, D], got %s" % (tuple(weight.shape),))
    # --- autocast: what the caller's lm_head (F.linear) would do under torch.autocast:
    # hidden, weight, bias (and a teacher) in the autocast dtype; logits and the
    # result stay fp32 in libmel, and the casts' backward returns dW in weight's dtype
    cast = _autocast_dtype(hidden.device)
    if cast is not None:
        hidden, weight, bias = (_autocast(t, cast) for t in (hidden, weight, bias))
        if teacher is not None and isinstance(teacher, (tuple, list)) and len(teacher) == 2:
            teacher = tuple(_autocast(t, cast) for t in teacher)
    dt = _float_dtype(hidden, "hidden")
    if weight.dtype != hidden.dtype:
        raise TypeError("libmel: weight has dtype %s, hidden %s: they must be the same"
                        % (weight.dtype, hidden.dtype))
    D = hidden.shape[-1]
    V = weight.shape[0]
    if weight.shape[1] != D:
        raise ValueError("libmel: weight has shape %s; hidden's last dimension is D = %d"
                         % (tuple(weight.shape), D))
    if D == 0:
        raise ValueError("libmel: hidden has shape %s: D = 0 features (logits that are only "
                         "the bias) is not supported" % (tuple(hidden.shape),))
    if V == 0:
        raise ValueError("libmel: weight has shape %s: a vocabulary of V = 0 classes"
                         % (tuple(weight.shape),))
    device = hidden.device
    if weight.device != device:
        raise ValueError("libmel: weight is on %s, hidden on %s" % (weight.device, device))
    if vocab_parallel is not None:
        if not isinstance(vocab_parallel, VocabParallel):
            raise TypeError("libmel: vocab_parallel must be a libmel.VocabParallel, got %s"
                            % type(vocab_parallel).__name__)
        if device.type != "cpu":
            raise ValueError("libmel: vocab_parallel runs on the CPU backend; hidden is on %s"
                             % device)
        if vocab_parallel.v_offset + weight.shape[0] > vocab_parallel.v_total:
            raise ValueError("libmel: weight holds %d vocabulary rows from v_offset=%d, past "
                             "v_total=%d" % (weight.shape[0], vocab_parallel.v_offset,
                                             vocab_parallel.v_total))
    lead = tuple(hidden.shape[:-1])
    N = 1
    for s in lead:
        N *= s
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (V,):
            raise ValueError("libmel: bias must be a tensor of shape [V] = [%d], got %s" % (
                V, tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__))
        if bias.dtype != hidden.dtype or bias.device != device:
            raise TypeError("libmel: bias is %s on %s; hidden is %s on %s" % (
                bias.dtype, bias.device, hidden.dtype, device))

    # --- GRPO: seq_len and the loss type's normalisation from hidden's [B, T]
    name = tr.name if tr is not None else transform
    grpo_weights = False
    if name == "grpo":
        if "loss_type" in params and reduction is not None:
            raise ValueError("libmel: reduction=%r and params['loss_type']=%r contradict each "
                             "other: grpo's loss type is a reduction; pass one of them"
                             % (reduction, params["loss_type"]))
        if reduction is None:
            grpo_weights = True
        if (grpo_weights or _param_value("importance_sampling_level",
                                         params.get("importance_sampling_level", 0)) == 1) \
                and tr is None:
            if len(lead) != 2:
                raise ValueError("libmel: grpo needs hidden as [B, T, D] (got %s) for its loss "
                                 "type's normalisation and sequence-level ratios; or pass "
                                 "reduction= and params['seq_len']" % (tuple(hidden.shape),))
            T = lead[1]
            if "seq_len" in params and _param_value("seq_len", params["seq_len"]) != T:
                raise ValueError("libmel: params['seq_len']=%r contradicts hidden's T = %d"
                                 % (params["seq_len"], T))
            params["seq_len"] = T
    if reduction is None:
        reduction = "mean"
    if tr is None:
        tr = _builtin_const(transform, tuple(sorted(params.items())))
    red = _reduction_code(reduction)
    if grpo_weights:
        red = L.REDUCE_WEIGHTED
    if red == L.REDUCE_WEIGHTED and not grpo_weights:
        if weights is None:
            raise ValueError("libmel: reduction='weighted' needs weights= (a tensor of the "
                             "leading shape %s)" % (lead,))
    elif weights is not None:
        raise ValueError("libmel: weights= is given but reduction=%r does not use it (use "
                         "reduction='weighted')" % (reduction,))

    # --- heads the transform reads
    if tr.heads[1]:
        if teacher is None:
            raise ValueError("libmel: transform '%s' reads head 1: pass teacher=(hidden_t, "
                             "weight_t)" % tr.name)
        if not (isinstance(teacher, (tuple, list)) and len(teacher) == 2):
            raise TypeError("libmel: teacher must be a pair (hidden_t, weight_t)")
        th, tw = teacher
        if th.dtype != hidden.dtype or tw.dtype != hidden.dtype:
            raise TypeError("libmel: teacher tensors are %s/%s; hidden is %s (all heads share "
                            "one dtype)" % (th.dtype, tw.dtype, hidden.dtype))
        if th.device != device or tw.device != device:
            raise ValueError("libmel: teacher tensors must be on %s" % device)
        if tuple(th.shape[:-1]) != lead or tw.dim() != 2 or tw.shape[0] != V \
                or tw.shape[1] != th.shape[-1]:
            raise ValueError("libmel: teacher shapes %s and %s do not match hidden %s and "
                             "weight %s (leading shape %s, [V, D_t] with V = %d)" % (
                                 tuple(th.shape), tuple(tw.shape), tuple(hidden.shape),
                                 tuple(weight.shape), lead, V))
        Dt = th.shape[-1]
        if Dt == 0:
            raise ValueError("libmel: the teacher's hidden has shape %s: D_t = 0 features is "
                             "not supported" % (tuple(th.shape),))
        teacher_raw = (th, tw)
        th2, tld = (_rows(th.detach(), Dt, "teacher hidden") if N > 0 else (None, Dt))
        tw = _weight_rows(tw.detach(), V, Dt)
    else:
        if teacher is not None:
            raise ValueError("libmel: teacher= is given but transform '%s' does not read head "
                             "1" % tr.name)
        th2 = tw = None
        tld = Dt = 0
        teacher_raw = ()

    # --- per-row inputs
    idx_names = tr.index_inputs
    if len(idx_names) > 1:
        raise NotImplementedError("libmel: transform '%s' reads %d index inputs; linear_loss "
                                  "binds one (labels)" % (tr.name, len(idx_names)))
    lab = None
    if idx_names:
        if labels is None:
            raise ValueError("libmel: transform '%s' reads the index input '%s': pass labels="
                             % (tr.name, idx_names[0]))
        lab = _per_row(labels, N, lead, "labels", device, index=True)
    elif labels is not None:
        raise ValueError("libmel: labels= is given but transform '%s' reads no labels"
                         % tr.name)
    inputs = dict(inputs or {})
    scalar_names = tr.scalar_inputs
    for k in inputs:
        if k not in scalar_names:
            raise ValueError("libmel: inputs[%r] is given but transform '%s' reads %s" % (
                k, tr.name, ("the per-row inputs " + ", ".join(repr(s) for s in scalar_names))
                if scalar_names else "no per-row inputs"))
    missing = [s for s in scalar_names if s not in inputs]
    if missing:
        raise ValueError("libmel: transform '%s' reads the per-row input%s %s: pass inputs={%s}"
                         % (tr.name, "s" if len(missing) > 1 else "",
                            ", ".join(repr(s) for s in missing),
                            ", ".join("%r: ..." % s for s in missing)))
    in_raw = [inputs[s] for s in scalar_names]
    in_conv = [_per_row(t, N, lead, "inputs[%r]" % s, device) for s, t in zip(scalar_names,
                                                                              in_raw)]

    # --- reduction weights
    wts = None
    if grpo_weights:
        if "mask" not in inputs:
            raise ValueError("libmel: grpo's loss type needs inputs['mask']")
        if N == 0:
            raise ValueError("libmel: grpo's loss type normalisation of an empty batch (hidden "
                             "%s): TRL's loss types differ there (0 or nan); pass reduction= "
                             "and params['seq_len'] for an explicit empty result"
                             % (tuple(hidden.shape),))
        B, T = lead
        lt = int(_tparam(tr, "loss_type", 3))
        # the effective mask, as the transform uses it for counts and sequence means:
        # a token whose label is ignore_index counts nowhere
        mask = in_conv[scalar_names.index("mask")][0].to(torch.float64)
        if lab is not None:
            ign = int(_tparam(tr, "ignore_index", -100))
            mask = torch.where(lab[0] != ign, mask, torch.zeros_like(mask))
        wts = _grpo_weights(mask.detach(), lt, B, T,
                            int(_tparam(tr, "max_completion_length", 512)),
                            float(_tparam(tr, "num_items_in_batch", 0)))
    elif red == L.REDUCE_WEIGHTED:
        wts, _ = _per_row(weights, N, lead, "weights", device)
        wts = wts.to(torch.float64).contiguous()

    # --- mode
    if mode not in (None, "fused", "recompute"):
        raise ValueError("libmel: mode=%r: one of None (automatic), 'fused', 'recompute'"
                         % (mode,))
    if mode == "fused" and red == L.REDUCE_NONE:
        raise ValueError("libmel: mode='fused' with reduction='none': a per-row upstream "
                         "gradient is only known in backward; use mode='recompute' or None")
    if chunk_rows is not None and workspace_bytes is not None:
        raise ValueError("libmel: chunk_rows=%r and workspace_bytes=%r contradict each other: "
                         "fixed chunks ignore the budget; pass one" % (chunk_rows, workspace_bytes))
    for nm, v in (("chunk_rows", chunk_rows), ("workspace_bytes", workspace_bytes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError("libmel: %s=%r: a positive integer or None (automatic)" % (nm, v))
    aux = list(return_aux or [])
    for nm in aux:
        if nm not in tr.aux:
            raise ValueError("libmel: return_aux names %r; transform '%s' has %s" % (
                nm, tr.name, ", ".join(repr(x) for x in tr.aux) if tr.aux else "no aux outputs"))

    grads_wanted = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or
        (bias is not None and bias.requires_grad) or
        any(t.requires_grad for t in in_raw if t.is_floating_point()))
    # per-row inputs that may carry a gradient go to the Function as themselves
    fn_inputs = [raw if (diff and raw.is_floating_point()) else None
                 for (_s, _ix, diff), raw in zip([i for i in tr.inputs if not i[1]], in_raw)]
    if N == 0:
        return _empty_result(red, lead, dt, device, aux, grads_wanted,
                             (hidden, weight, bias, *fn_inputs))
    if not grads_wanted:
        mode = "forward"
    elif mode is None:
        mode = "recompute" if red == L.REDUCE_NONE else "fused"
    if _OPS is not None and _compiling():
        return _op_call(tr, red, wts, chunk_rows, workspace_bytes, aux, check_finite,
                        vocab_parallel, mode, hidden, weight, bias, teacher_raw, labels, in_raw,
                        fn_inputs)
    spec = _Spec()
    spec.transform = tr
    spec.reduction = red
    spec.weights = wts
    spec.chunk_rows = chunk_rows
    spec.workspace_bytes = workspace_bytes
    spec.mode = mode
    spec.aux = aux
    spec.lead = lead
    spec.N, spec.D, spec.V, spec.Dt = N, D, V, Dt
    spec.dtype = dt
    spec.device = device
    spec.input_names = scalar_names
    spec.index_name = idx_names[0] if idx_names else None
    spec.check_finite = bool(check_finite)
    spec.vp = vocab_parallel

    ex = _Extra(th2, tld, tw, lab, in_conv,
                watch=(*teacher_raw, labels, weights,
                       *[t for t, f in zip(in_raw, fn_inputs) if f is None]))
    if _functorch_active() and hasattr(torch.autograd.Function, "setup_context"):
        if mode == "fused":
            mode = "recompute"
        key = _op_key(tr, red, chunk_rows, workspace_bytes, tuple(aux), bool(check_finite),
                      vocab_parallel, mode)
        need = _need(mode, hidden, weight, bias, fn_inputs)
        th, tw = (teacher_raw[0].detach(), teacher_raw[1].detach()) if teacher_raw \
            else (None, None)
        out = _LinearLossFn.apply(key, need, hidden, weight, bias, th, tw, labels, wts,
                                  *in_raw)[:1 + len(aux)]
    else:
        out = _LinearLoss.apply(spec, ex, hidden, weight, bias, *fn_inputs)
    if aux:
        return out[0], dict(zip(aux, out[1:]))
    return out[0]


class _Empty(torch.autograd.Function):
    """The result of an empty batch (N = 0), as PyTorch's: the gradients are zeros."""

    @staticmethod
    def forward(fctx, value, *deps):
        fctx.save_for_backward(*deps)
        return value

    @staticmethod
    def backward(fctx, g):
        deps = fctx.saved_tensors
        return (None, *[torch.zeros_like(d) if d is not None and d.requires_grad else None
                        for d in deps])


def _empty_result(red, lead, dt, device, aux, grads_wanted, deps):
    """PyTorch's results for N = 0: mean nan (0/0), sum 0, none an empty tensor."""
    ydt = torch.float64 if dt == L.F64 else torch.float32
    if red == L.REDUCE_NONE:
        y = torch.empty(lead, dtype=ydt, device=device)
    else:
        y = torch.full((), float("nan") if red == L.REDUCE_MEAN else 0.0, dtype=ydt,
                       device=device)
    if grads_wanted:
        y = _Empty.apply(y, *deps)
    if aux:
        return y, {nm: torch.empty(lead, dtype=ydt, device=device) for nm in aux}
    return y


def gradcheck(transform, hidden, weight, labels=None, *, inputs=None, teacher=None,
              bias=None, reduction="none", seed=1, samples=0, step=0.0, atol=0.0, rtol=0.0):
    """libmel's finite-difference check (mel_gradcheck) of a transform on CPU tensors.
    Returns a dict: checked, failed, max_abs_err, max_rel_err, worst."""
    if callable(getattr(transform, "compiled", None)):
        transform = transform.compiled()
    tr = transform if isinstance(transform, Transform) else builtin(transform)
    red = _reduction_code(reduction)
    hidden = hidden.detach().cpu()
    weight = weight.detach().cpu().contiguous()
    dt = _float_dtype(hidden, "hidden")
    lead = tuple(hidden.shape[:-1])
    N = 1
    for s in lead:
        N *= s
    spec = _Spec()
    spec.transform, spec.reduction, spec.weights = tr, red, None
    spec.N, spec.D, spec.V = N, hidden.shape[-1], weight.shape[0]
    spec.dtype, spec.device = dt, torch.device("cpu")
    spec.input_names = tr.scalar_inputs
    spec.index_name = tr.index_inputs[0] if tr.index_inputs else None
    spec.Dt = 0
    h2, ld = _rows(hidden, spec.D, "hidden")
    th2 = tw = None
    tld = 0
    if teacher is not None:
        th, tw = teacher[0].detach().cpu(), teacher[1].detach().cpu().contiguous()
        spec.Dt = th.shape[-1]
        th2, tld = _rows(th, spec.Dt, "teacher hidden")
    lab = _per_row(labels, N, lead, "labels", spec.device, index=True) \
        if labels is not None else None
    inputs = dict(inputs or {})
    conv = [_per_row(inputs[s].detach().cpu(), N, lead, "inputs[%r]" % s, spec.device)
            for s in spec.input_names]
    ctx = _cpu_ctx()
    if getattr(ctx, "vp_key", None) is not None:
        ctx = _Ctx(L.BACKEND_CPU)  # the check runs on one process, not on the shared context
    a = _bind(spec, ctx, h2, ld, weight, bias.detach().cpu() if bias is not None else None,
              th2, tld, tw, lab, conv)
    try:
        opts = L.GradcheckOpts(seed, samples, step, atol, rtol)
        rep = L.GradcheckReport()
        _check(ctx, L.lib.mel_gradcheck(ctx.ptr, tr.ptr, a, ctypes.byref(opts),
                                        ctypes.byref(rep)), "gradcheck")
    finally:
        L.lib.mel_args_free(a)
    return {"checked": rep.checked, "failed": rep.failed, "max_abs_err": rep.max_abs_err,
            "max_rel_err": rep.max_rel_err, "worst": rep.worst.decode()}


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=None, label_smoothing=0.0, options=None):
    """PyTorch's torch.nn.functional.linear_cross_entropy (2.13+) with its signature and
    meaning, through libmel: cross_entropy(linear(input, linear_weight, linear_bias),
    target, weight=, reduction=, ignore_index=, label_smoothing=).  input [N, D] (or
    unbatched [D]), target class indices [N].  See doc/python.md."""
    if options is not None:
        raise ValueError("libmel: linear_cross_entropy: options=%r: libmel chunks by its own "
                         "byte budget (linear_loss's chunk_rows= / workspace_bytes=); pass "
                         "options=None" % (options,))
    for nm, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("libmel: linear_cross_entropy: %s must be a tensor, got %s"
                            % (nm, type(t).__name__))
    if linear_weight.dim() != 2:
        raise ValueError("libmel: linear_cross_entropy: linear_weight has shape %s; libmel "
                         "takes [C, D] (no K-dimensional out_features)"
                         % (tuple(linear_weight.shape),))
    if input.dim() > 2:
        raise ValueError(
            "libmel: linear_cross_entropy: input has shape %s; PyTorch's function reads dim 1 "
            "of the logits as the classes (cross_entropy's convention), which for [B, T, D] "
            "input is T, not the vocabulary: flatten to input [B*T, D] and target [B*T], or "
            "call libmel.linear_loss, which takes any leading shape" % (tuple(input.shape),))
    if target.is_floating_point():
        raise NotImplementedError("libmel: linear_cross_entropy: target is %s: class "
                                  "probabilities are not supported, only class indices"
                                  % target.dtype)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError("libmel: linear_cross_entropy: reduction=%r: one of 'none', 'mean', "
                         "'sum'" % (reduction,))
    ii = -100 if ignore_index is None else ignore_index
    unbatched = input.dim() == 1
    if unbatched:
        if target.dim() != 0:
            raise ValueError("libmel: linear_cross_entropy: unbatched input [D] needs a 0-d "
                             "target, got %s" % (tuple(target.shape),))
        input, target = input[None], target[None]
    elif target.dim() != 1 or target.shape[0] != input.shape[0]:
        raise ValueError("libmel: linear_cross_entropy: target has shape %s; input %s wants "
                         "[%d]" % (tuple(target.shape), tuple(input.shape), input.shape[0]))
    kw = dict(bias=linear_bias, ignore_index=ii, label_smoothing=label_smoothing)
    if weight is None:
        y = linear_loss(input, linear_weight, target, reduction=reduction, **kw)
        if reduction == "mean":
            # PyTorch: every target ignored is 0/0 = nan (libmel's mean gives 0)
            y = torch.where((target != ii).any(), y, torch.full_like(y, float("nan")))
    else:
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != \
                (linear_weight.shape[0],):
            raise ValueError("libmel: linear_cross_entropy: weight= (class weights) must be a "
                             "tensor of shape [C] = [%d], got %s" % (
                                 linear_weight.shape[0], tuple(weight.shape)
                                 if isinstance(weight, torch.Tensor) else type(weight).__name__))
        if float(label_smoothing) != 0.0:
            raise NotImplementedError("libmel: linear_cross_entropy: class weights (weight=) "
                                      "together with label_smoothing=%r are not supported"
                                      % (label_smoothing,))
        # -w[target_i] log softmax(z_i)[target_i]: per-row weights w[target_i], 0 when
        # ignored; the mean divides by their sum (PyTorch's weighted mean)
        valid = target != ii
        wrow = torch.where(valid, weight.detach().to(input.device, torch.float64)[
            torch.where(valid, target, torch.zeros_like(target))],
            torch.zeros((), dtype=torch.float64, device=input.device))
        if reduction == "none":
            y = linear_loss(input, linear_weight, target, reduction="none", **kw)
            y = y * wrow.to(y.dtype)
        else:
            y = linear_loss(input, linear_weight, target, reduction="weighted", weights=wrow,
                            **kw)
            if reduction == "mean":
                y = y / wrow.sum().to(y.dtype)
    if unbatched and reduction == "none":
        y = y[0]
    return y
