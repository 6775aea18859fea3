"""ctypes bindings of libmel's C API (include/mel.h).

Only what the package uses is declared.  The shared library is found, in
order, from the environment variable MEL_LIBRARY (a path to libmel.so), the
package's own directory (a wheel made by `make wheel` carries libmel.so
there, and the CUDA module libmel-cuda.so beside it when built), the build
tree this package sits in (<top>/python/libmel -> <top>/lib/.libs), the
library directory written into _config.py by `make install`, pkg-config's
libdir of mel (an installed libmel under `pip install ./python`:
PKG_CONFIG_PATH as for a C program), and the system's search path.
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
# mel_arg_kind (mel_last_error_detail), pinned in include/mel.h
ARG_KINDS = ("none", "x", "w", "bias", "head", "index", "input", "reduction", "output", "aux",
             "grad_output", "grad_x", "grad_w", "grad_bias", "grad_input", "param")
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
    """The places to look, in order, each computed only when reached."""
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libmel.so")
    yield os.path.join(here, "..", "..", "lib", ".libs", "libmel.so")
    try:
        from . import _config  # written by make install
        yield os.path.join(_config.LIBDIR, "libmel.so")
    except ImportError:
        pass
    libdir = _pkg_config_libdir()
    if libdir:
        yield os.path.join(libdir, "libmel.so")
    found = ctypes.util.find_library("mel")
    if found:
        yield found


def _pkg_config_libdir():
    """`pkg-config --variable=libdir mel`, or None (no pkg-config, no mel.pc)."""
    import shutil
    import subprocess
    exe = shutil.which(os.environ.get("PKG_CONFIG") or "pkg-config")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "--variable=libdir", "mel"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    d = r.stdout.decode().strip() if r.returncode == 0 else ""
    return d or None


def _load():
    env = os.environ.get("MEL_LIBRARY")
    if env:
        # an explicit choice is the only one tried: a wrong path is an error
        try:
            return ctypes.CDLL(env), env
        except OSError as e:
            raise ImportError("libmel: MEL_LIBRARY=%s could not be loaded: %s" % (env, e))
    tried, errors = [], []
    for p in _candidates():
        tried.append(p)
        if os.path.sep in p and not os.path.exists(p):
            continue
        try:
            return ctypes.CDLL(p), p
        except OSError as e:
            errors.append("%s: %s" % (p, e))
    raise ImportError("libmel: libmel.so not found (tried %s%s); build the C library "
                      "(./configure && make), install it (make install, then PKG_CONFIG_PATH "
                      "as for a C program when not in a standard place), or set MEL_LIBRARY "
                      "to its path"
                      % (", ".join(tried), "; " + "; ".join(errors) if errors else ""))


lib, path = _load()


def _sig(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)


P = c_void_p
_sig("mel_version", c_int)
_sig("mel_version_string", c_char_p)
_sig("mel_info", c_char_p, c_char_p)
_sig("mel_info_key", c_char_p, c_int)
_sig("mel_status_str", c_char_p, c_int)
_sig("mel_ctx_create", c_int, c_int, ctypes.POINTER(P))
_sig("mel_ctx_create_error", c_char_p)
_sig("mel_ctx_destroy", None, P)
_sig("mel_ctx_held_bytes", c_int64, P)
_sig("mel_ctx_trim", None, P)
_sig("mel_last_error", c_char_p, P)
_sig("mel_last_error_detail", c_int, P, ctypes.POINTER(c_int), ctypes.POINTER(c_int),
     ctypes.POINTER(c_char_p), ctypes.POINTER(c_int64), ctypes.POINTER(c_int64))
_sig("mel_param_word", c_char_p, c_char_p, c_int, ctypes.POINTER(c_double))
_sig("mel_grpo_loss_weights", c_int, P, P, c_int64, P, P, c_int, c_int64, P)
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


def config():
    """The C library's facts (mel_info in include/mel.h) as a dict of strings:
    its version, the BLAS it calls ("blas", "blas_file", "blas_config"), the
    kernel OpenBLAS chose for this CPU ("blas_kernel"; OPENBLAS_CORETYPE
    overrides it), the BLAS's threads and threading ("blas_threads",
    "blas_parallel"), whether the build has the CUDA module ("cuda"), and
    "library", the path of the libmel.so loaded."""
    out = {}
    i = 0
    while True:
        k = lib.mel_info_key(i)
        if k is None:
            break
        v = lib.mel_info(k)
        out[k.decode()] = v.decode() if v is not None else ""
        i += 1
    out["library"] = path
    return out


def error_detail(ctx):
    """mel_last_error_detail of context pointer ctx: (status, kind, head, name,
    row, col), kind one of ARG_KINDS, name None when the argument has none."""
    k, h, r, c = c_int(), c_int(), c_int64(), c_int64()
    n = c_char_p()
    s = lib.mel_last_error_detail(ctx, ctypes.byref(k), ctypes.byref(h), ctypes.byref(n),
                                  ctypes.byref(r), ctypes.byref(c))
    kind = ARG_KINDS[k.value] if 0 <= k.value < len(ARG_KINDS) else str(k.value)
    return s, kind, h.value, n.value.decode() if n.value else None, r.value, c.value


def param_words(name):
    """The library's words of parameter `name` (mel_param_word): {word: value}."""
    out, i, v = {}, 0, c_double()
    while True:
        w = lib.mel_param_word(name.encode(), i, ctypes.byref(v))
        if w is None:
            return out
        out[w.decode()] = v.value
        i += 1
