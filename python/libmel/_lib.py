"""ctypes bindings of libmel's C API (include/mel.h).

Only what the package uses is declared.  The shared library is found, in
order, from the environment variable MEL_LIBRARY (a path to libmel.so), the
build tree this package sits in (<top>/python/libmel -> <top>/lib/.libs),
the library directory written into _config.py at install time, and the
system's search path.
"""
import ctypes
import ctypes.util
import os

c_int64 = ctypes.c_int64
c_int = ctypes.c_int
c_double = ctypes.c_double
c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p

# enum values pinned in include/mel.h
F64, F32, BF16, F16, I32, I64 = 0, 1, 2, 3, 4, 5
BACKEND_CPU, BACKEND_CUDA = 0, 1
REDUCE_NONE, REDUCE_SUM, REDUCE_MEAN, REDUCE_WEIGHTED = 0, 1, 2, 3
ACCUMULATE_DX, OVERWRITE_DW = 1, 2
OK = 0
STATUS_NAMES = {
    0: "MEL_OK", 1: "MEL_ERR_INVALID_ARGUMENT", 2: "MEL_ERR_SHAPE",
    3: "MEL_ERR_OUT_OF_MEMORY", 4: "MEL_ERR_UNSUPPORTED", 5: "MEL_ERR_GRAPH",
    6: "MEL_ERR_BUDGET", 7: "MEL_ERR_NONFINITE", 8: "MEL_ERR_OVERFLOW",
    9: "MEL_ERR_BACKEND", 10: "MEL_ERR_INTERNAL",
}


class Matrix(ctypes.Structure):
    _fields_ = [("data", c_void_p), ("dtype", c_int), ("rows", c_int64),
                ("cols", c_int64), ("ld", c_int64)]


class Stats(ctypes.Structure):
    _fields_ = [("chunk_rows", c_int64), ("chunks", c_int64),
                ("peak_workspace_bytes", c_int64), ("gemm_flops", c_int64),
                ("seconds", c_double), ("gemm_seconds", c_double)]


class GradcheckOpts(ctypes.Structure):
    _fields_ = [("seed", ctypes.c_uint64), ("samples", c_int), ("step", c_double),
                ("atol", c_double), ("rtol", c_double)]


class GradcheckReport(ctypes.Structure):
    _fields_ = [("checked", c_int), ("failed", c_int), ("max_abs_err", c_double),
                ("max_rel_err", c_double), ("worst", ctypes.c_char * 160)]


def _candidates():
    env = os.environ.get("MEL_LIBRARY")
    if env:
        # an explicit choice is the only one tried: a wrong path is an error
        return [env], True
    here = os.path.dirname(os.path.abspath(__file__))
    out = [os.path.join(here, "..", "..", "lib", ".libs", "libmel.so")]
    try:
        from . import _config  # written by make install
        out.append(os.path.join(_config.LIBDIR, "libmel.so"))
    except ImportError:
        pass
    found = ctypes.util.find_library("mel")
    if found:
        out.append(found)
    return out, False


def _load():
    paths, explicit = _candidates()
    errors = []
    for p in paths:
        if not explicit and os.path.sep in p and not os.path.exists(p):
            continue
        try:
            return ctypes.CDLL(p), p
        except OSError as e:
            errors.append("%s: %s" % (p, e))
    if explicit:
        raise ImportError("libmel: MEL_LIBRARY=%s could not be loaded: %s"
                          % (paths[0], "; ".join(errors)))
    raise ImportError("libmel: libmel.so not found (tried %s%s); build the C library "
                      "(./configure && make), install it (make install), or set "
                      "MEL_LIBRARY to its path"
                      % (", ".join(paths) or "nothing", "; " + "; ".join(errors) if errors else ""))


lib, path = _load()


def _sig(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)


P = c_void_p
_sig("mel_version", c_int)
_sig("mel_version_string", c_char_p)
_sig("mel_status_str", c_char_p, c_int)
_sig("mel_ctx_create", c_int, c_int, ctypes.POINTER(P))
_sig("mel_ctx_create_error", c_char_p)
_sig("mel_ctx_destroy", None, P)
_sig("mel_ctx_held_bytes", c_int64, P)
_sig("mel_ctx_trim", None, P)
_sig("mel_last_error", c_char_p, P)
_sig("mel_set_threads", c_int, P, c_int)
_sig("mel_set_chunk_rows", c_int, P, c_int64)
_sig("mel_set_workspace_limit", c_int, P, c_int64)
_sig("mel_set_check_finite", c_int, P, c_int)
_sig("mel_set_cuda_stream", c_int, P, P)
_sig("mel_get_stats", None, P, ctypes.POINTER(Stats))
_sig("mel_get_tile_cols", ctypes.c_int64, P)
_sig("mel_set_vocab_parallel", c_int, P, P, c_int64, c_int64, ctypes.c_uint)
_sig("mel_get_comm_stats", None, P, ctypes.POINTER(c_int64), ctypes.POINTER(c_double))
_sig("mel_graph_new", P)
_sig("mel_graph_free", None, P)
_sig("mel_g_logits", c_int, P, c_int, c_int)
_sig("mel_g_index", c_int, P, c_char_p, c_int64)
_sig("mel_g_input", c_int, P, c_char_p, c_int)
_sig("mel_g_const", c_int, P, c_double)
_sig("mel_g_vocab", c_int, P)
_sig("mel_g_iota", c_int, P)
for _n in ("neg", "exp", "log", "tanh", "sigmoid", "square", "sqrt", "log1p", "abs",
           "sum", "mean", "rmax", "logsumexp", "log_softmax", "softmax", "stop_gradient",
           "segment_sum"):
    _sig("mel_g_" + _n, c_int, P, c_int)
for _n in ("add", "sub", "mul", "div", "min", "max", "lt", "le", "eq", "gather"):
    _sig("mel_g_" + _n, c_int, P, c_int, c_int)
_sig("mel_g_valid", c_int, P, c_int)
_sig("mel_g_where", c_int, P, c_int, c_int, c_int)
_sig("mel_g_clamp", c_int, P, c_int, c_double, c_double)
_sig("mel_g_scale", c_int, P, c_int, c_double)
_sig("mel_g_softcap", c_int, P, c_int, c_double)
_sig("mel_g_set_segment", c_int, P, c_int64)
_sig("mel_g_set_output", c_int, P, c_int)
_sig("mel_g_set_count", c_int, P, c_int)
_sig("mel_g_add_aux", c_int, P, c_char_p, c_int)
_sig("mel_graph_compile", c_int, P, P, c_char_p, ctypes.POINTER(P))
_sig("mel_transform_free", None, P)
_sig("mel_transform_name", c_char_p, P)
_sig("mel_transform_dump", P, P)
_sig("mel_transform_num_heads", c_int, P)
_sig("mel_transform_head", c_int, P, c_int)
_sig("mel_transform_num_inputs", c_int, P)
_sig("mel_transform_input", c_char_p, P, c_int, ctypes.POINTER(c_int), ctypes.POINTER(c_int))
_sig("mel_transform_num_aux", c_int, P)
_sig("mel_transform_aux", c_char_p, P, c_int)
_sig("mel_params_new", P)
_sig("mel_params_free", None, P)
_sig("mel_params_set", c_int, P, c_char_p, c_double)
_sig("mel_transform_builtin", c_int, P, c_char_p, P, ctypes.POINTER(P))
_sig("mel_builtin_count", c_int)
_sig("mel_builtin_name", c_char_p, c_int)
_sig("mel_builtin_help", c_char_p, c_int)
_sig("mel_grpo_weights", c_int, P, c_int, c_int64, c_int64, P, c_int64, c_double, c_int64, P)
_sig("mel_group_advantages", c_int, P, P, c_int64, c_int64, c_int, P)
_sig("mel_args_new", P)
_sig("mel_args_free", None, P)
_sig("mel_args_head", c_int, P, c_int, Matrix, Matrix, P)
_sig("mel_args_index", c_int, P, c_char_p, P, c_int, c_int64)
_sig("mel_args_input", c_int, P, c_char_p, P, c_int, c_int64)
_sig("mel_args_reduction", c_int, P, c_int, P)
_sig("mel_args_output", c_int, P, P, c_int)
_sig("mel_args_aux", c_int, P, c_char_p, P, c_int)
_sig("mel_args_grad_output", c_int, P, P, c_int)
_sig("mel_args_grad_head", c_int, P, c_int, Matrix, Matrix, P, ctypes.c_uint)
_sig("mel_args_grad_input", c_int, P, c_char_p, P, c_int)
_sig("mel_forward", c_int, P, P, P)
_sig("mel_backward", c_int, P, P, P)
_sig("mel_forward_backward", c_int, P, P, P)
_sig("mel_gradcheck", c_int, P, P, P, ctypes.POINTER(GradcheckOpts),
     ctypes.POINTER(GradcheckReport))

libc = ctypes.CDLL(None)
libc.free.argtypes = [P]
libc.free.restype = None
