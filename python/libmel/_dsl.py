"""Row programs written in Python, built through libmel's public C builder.

    @libmel.define_transform
    def focal(g, gamma=2.0):
        z = g.logits()                      # head 0, differentiable
        y = g.index("labels")               # per-row class index
        logp = z.gather(y) - z.logsumexp()
        loss = -((1 - logp.exp()) ** gamma) * logp
        g.count(g.valid(y))                 # rows counted by reduction='mean'
        return g.where(g.valid(y), loss, 0.0)

Every operation calls the C builder at once (mel_g_*); nothing here computes a
value or a derivative: mel_graph_compile differentiates the program (one VJP
rule per primitive, lib/autodiff.c).
"""
import ctypes
import functools
import numbers

from . import _lib as L
from ._core import Transform, _check, _const, _cpu_ctx, MelValueError

__all__ = ["Sym", "Graph", "define_transform"]


class Sym:
    """A per-row value of a row program: a vector (length V), a scalar or an index."""
    __slots__ = ("g", "v")

    def __init__(self, g, v):
        self.g = g
        self.v = v

    # arithmetic (Python numbers become constants)
    def __add__(self, o): return self.g._bin(L.lib.mel_g_add, self, o)
    def __radd__(self, o): return self.g._bin(L.lib.mel_g_add, o, self)
    def __sub__(self, o): return self.g._bin(L.lib.mel_g_sub, self, o)
    def __rsub__(self, o): return self.g._bin(L.lib.mel_g_sub, o, self)
    def __mul__(self, o): return self.g._bin(L.lib.mel_g_mul, self, o)
    def __rmul__(self, o): return self.g._bin(L.lib.mel_g_mul, o, self)
    def __truediv__(self, o): return self.g._bin(L.lib.mel_g_div, self, o)
    def __rtruediv__(self, o): return self.g._bin(L.lib.mel_g_div, o, self)
    def __neg__(self): return self.g._un(L.lib.mel_g_neg, self)
    def __pos__(self): return self

    def __pow__(self, p):
        """x ** p: p = 2 is square, 0.5 sqrt, 1 x; otherwise exp(p·log x) (x > 0)."""
        if not isinstance(p, numbers.Real):
            raise TypeError("libmel: ** takes a number exponent, got %r" % (p,))
        if p == 1:
            return self
        if p == 2:
            return self.square()
        if p == 0.5:
            return self.sqrt()
        return (self.log() * float(p)).exp()

    # comparisons give 1.0 / 0.0 and carry no gradient
    def __lt__(self, o): return self.g._bin(L.lib.mel_g_lt, self, o)
    def __le__(self, o): return self.g._bin(L.lib.mel_g_le, self, o)
    def __gt__(self, o): return self.g._bin(L.lib.mel_g_lt, o, self)
    def __ge__(self, o): return self.g._bin(L.lib.mel_g_le, o, self)

    def eq(self, o):
        """1.0 where equal (== is left to Python identity)."""
        return self.g._bin(L.lib.mel_g_eq, self, o)

    def __bool__(self):
        raise TypeError("libmel: a row-program value has no truth value at build time; "
                        "use g.where(cond, a, b)")

    # elementwise
    def exp(self): return self.g._un(L.lib.mel_g_exp, self)
    def log(self): return self.g._un(L.lib.mel_g_log, self)
    def tanh(self): return self.g._un(L.lib.mel_g_tanh, self)
    def sigmoid(self): return self.g._un(L.lib.mel_g_sigmoid, self)
    def square(self): return self.g._un(L.lib.mel_g_square, self)
    def sqrt(self): return self.g._un(L.lib.mel_g_sqrt, self)
    def log1p(self): return self.g._un(L.lib.mel_g_log1p, self)
    def abs(self): return self.g._un(L.lib.mel_g_abs, self)
    def clamp(self, lo, hi): return self.g._wrap(L.lib.mel_g_clamp(self.g.ptr, self.v,
                                                                   float(lo), float(hi)))
    def softcap(self, cap): return self.g._wrap(L.lib.mel_g_softcap(self.g.ptr, self.v,
                                                                    float(cap)))
    def log_softmax(self): return self.g._un(L.lib.mel_g_log_softmax, self)
    def softmax(self): return self.g._un(L.lib.mel_g_softmax, self)
    # vector -> scalar reductions over the vocabulary
    def sum(self): return self.g._un(L.lib.mel_g_sum, self)
    def mean(self): return self.g._un(L.lib.mel_g_mean, self)
    def max(self): return self.g._un(L.lib.mel_g_rmax, self)
    def logsumexp(self): return self.g._un(L.lib.mel_g_logsumexp, self)
    def gather(self, idx): return self.g._bin(L.lib.mel_g_gather, self, idx)
    def stop_gradient(self): return self.g._un(L.lib.mel_g_stop_gradient, self)
    def segment_sum(self): return self.g._un(L.lib.mel_g_segment_sum, self)


class Graph:
    """The builder handed to a transform function: leaves, functions, outputs."""

    def __init__(self):
        self.ptr = L.lib.mel_graph_new()
        if not self.ptr:
            raise MemoryError("mel_graph_new")
        self._count = None
        self._aux = []

    def close(self):
        if self.ptr:
            L.lib.mel_graph_free(self.ptr)
            self.ptr = None

    def _wrap(self, v):
        return Sym(self, v)

    def _as(self, x):
        if isinstance(x, Sym):
            if x.g is not self:
                raise ValueError("libmel: a value from another transform's graph")
            return x.v
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError("libmel: a row-program value or a number is expected, got %r"
                            % (x,))
        return L.lib.mel_g_const(self.ptr, float(x))

    def _un(self, f, a):
        return Sym(self, f(self.ptr, self._as(a)))

    def _bin(self, f, a, b):
        return Sym(self, f(self.ptr, self._as(a), self._as(b)))

    # leaves
    def logits(self, head=0, differentiable=None):
        """z of head h (x·Wᵀ + b after nothing else); head 0 is differentiable by
        default, other heads (teacher, reference) are not."""
        if differentiable is None:
            differentiable = head == 0
        return Sym(self, L.lib.mel_g_logits(self.ptr, int(head), 1 if differentiable else 0))

    def index(self, name="labels", ignore_index=-100):
        """A per-row index input (labels= of linear_loss)."""
        return Sym(self, L.lib.mel_g_index(self.ptr, name.encode(), int(ignore_index)))

    def input(self, name, differentiable=False):
        """A per-row scalar input (inputs={name: ...} of linear_loss)."""
        return Sym(self, L.lib.mel_g_input(self.ptr, name.encode(), 1 if differentiable else 0))

    def const(self, c): return Sym(self, L.lib.mel_g_const(self.ptr, float(c)))
    def vocab(self): return Sym(self, L.lib.mel_g_vocab(self.ptr))
    def iota(self): return Sym(self, L.lib.mel_g_iota(self.ptr))

    # functions (also available as methods of values)
    def valid(self, idx): return self._un(L.lib.mel_g_valid, idx)
    def where(self, cond, a, b):
        return Sym(self, L.lib.mel_g_where(self.ptr, self._as(cond), self._as(a), self._as(b)))
    def minimum(self, a, b): return self._bin(L.lib.mel_g_min, a, b)
    def maximum(self, a, b): return self._bin(L.lib.mel_g_max, a, b)
    def stop_gradient(self, a): return self._un(L.lib.mel_g_stop_gradient, a)

    def segment(self, rows):
        """Rows come in segments of `rows` consecutive rows (e.g. T tokens)."""
        _check(None, L.lib.mel_g_set_segment(self.ptr, int(rows)), "segment")

    # outputs
    def count(self, c):
        """The per-row count used by reduction='mean' (must not depend on logits)."""
        self._count = c

    def aux(self, name, v):
        """An extra per-row output (linear_loss(..., return_aux=[name]))."""
        self._aux.append((name, v))


def _compile(fn, name, kwargs):
    g = Graph()
    try:
        y = fn(g, **kwargs)
        count = g._count
        if isinstance(y, tuple):
            if len(y) != 2 or count is not None:
                raise ValueError("libmel: transform %s returned %d values; return y, or "
                                 "(y, count) without calling g.count" % (name, len(y)))
            y, count = y
        if not isinstance(y, Sym):
            raise TypeError("libmel: transform %s must return a row-program value, got %r"
                            % (name, y))
        ctx = _cpu_ctx()
        L.lib.mel_g_set_output(g.ptr, g._as(y))
        if count is not None:
            L.lib.mel_g_set_count(g.ptr, g._as(count))
        for nm, v in g._aux:
            L.lib.mel_g_add_aux(g.ptr, nm.encode(), g._as(v))
        out = ctypes.c_void_p()
        _check(ctx, L.lib.mel_graph_compile(ctx.ptr, g.ptr, name.encode(), ctypes.byref(out)),
               "transform '%s'" % name)
        return Transform(out, name, kwargs)
    finally:
        g.close()


def define_transform(fn=None, *, name=None):
    """Make a transform from fn(g, **params) -> y (or (y, count)).

    Used as a decorator, it returns a factory: calling it with keyword
    parameters compiles (and caches) the transform for those values;
    `focal` itself (no call) is the transform with the defaults."""
    def wrap(f):
        nm = name or f.__name__
        cache = {}

        @functools.wraps(f)
        def factory(**kwargs):
            key = tuple(sorted(kwargs.items()))
            t = cache.get(key)
            if t is None:
                t = cache[key] = _compile(f, nm, kwargs)
            return t
        factory.transform_name = nm
        return _Factory(factory)
    if fn is not None:
        return wrap(fn)
    return wrap


@_const
def _factory_call(factory, items):
    """factory(**params) as a constant under torch.compile (the C builder is not traced)."""
    return factory._factory(**dict(items))


class _Factory:
    """A Python-defined transform: call with parameters to get a Transform; the
    object itself may be passed as transform= (default parameters)."""

    def __init__(self, factory):
        self._factory = factory
        self.name = factory.transform_name
        functools.update_wrapper(self, factory)

    def __call__(self, **kwargs):
        return _factory_call(self, tuple(sorted(kwargs.items())))

    def compiled(self):
        return self._factory()
