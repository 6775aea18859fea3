#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<harness>/ (run once; the files are
committed).  Each seed follows the byte layout the harness reads, so that
fuzzing starts from inputs that reach the engine: see the harness sources."""
import os, random, struct, sys

top = os.path.dirname(os.path.abspath(__file__))
random.seed(20240601)

def put(h, name, data):
    d = os.path.join(top, "corpus", h)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))

def vals(n):  # n values through the "k < 250, then a byte" path
    out = []
    for _ in range(n):
        out += [0, random.randrange(256)]
    return out

# ---------------------------------------------------------------- fuzz_args
def args_seed(which, N, V, D, heads, inputs, red, call, chunk):
    b = [0, 0, 0, 0, which, 0, N, V, 0 if heads is None else heads]
    nh = 1 if heads is None else bin(heads).count("1")
    for h in range(4):
        b.append(D)
        if h >= nh:
            continue
        b += [0, 0, 0]                    # xr, wr, wc as declared
        b += [0, 0, 0] + vals(N * D)      # x: dtype, ld, data
        b += [0, 0, 0] + vals(V * D)      # w
        b += [200, 0]                     # no bias, head h
        if h == 0:
            b += [0, 0, 0, 0, 0, 100, 0, 0, 0, 0, 100, 200, 2, 0]  # dx, dw, flags
        else:
            b += [200]
    b.append(len(inputs))
    for name, is_index in inputs:
        b += [name, is_index, 0, 0, 0]
        b += [random.randrange(200) for _ in range(N)]
    b += [red, 0, 0, 200, 0, 0, 0, chunk, 0, call, 0]
    return b

put("fuzz_args", "ce_fb", args_seed(0, 4, 5, 2, None, [(0, 1)], 2, 2, 2))
put("fuzz_args", "ce_fwd_none", args_seed(0, 3, 7, 3, None, [(0, 1)], 0, 0, 0))
put("fuzz_args", "kl_two_heads", args_seed(4, 4, 5, 2, 3, [(0, 1)], 1, 2, 3))
put("fuzz_args", "grpo", args_seed(7, 6, 5, 2, None, [(0, 1), (1, 0), (2, 0)], 3, 2, 4))
put("fuzz_args", "entropy", args_seed(2, 5, 6, 1, None, [], 2, 1, 1))
put("fuzz_args", "grpo_weights", [0, 220, 2, 3, 0] + [0, 1] * 6 + [3, 8, 1, 0, 0, 6, 3, 0, 0] + vals(6) + [1])
put("fuzz_args", "random1", [random.randrange(256) for _ in range(300)])

# --------------------------------------------------------------- fuzz_graph
def graph(ops, tail_len=200):
    b = [len(ops) - 1]
    for op in ops:
        b += op
    b += [0]  # compile with a context
    b += [random.randrange(256) for _ in range(tail_len)]
    return b

LOGITS = lambda h, d: [0, 0, 0, 0, h, d]
INDEX = lambda i, ig: [2, 0, 0, 0, i, ig]
INPUT = lambda i, d: [3, 0, 0, 0, i, d]
U = lambda op, a: [op, a, 0, 0]
B = lambda op, a, b: [op, a, b, 0]
# ce: v0 logits, v1 labels, v2 gather, v3 lse, v4 sub; output -v4 (v5), count valid (v6)
put("fuzz_graph", "ce", graph([LOGITS(0, 1), INDEX(0, 0), [45, 0, 1, 0], U(6, 4), U(39, 5),
                               U(30, 1), U(42, 6)]))
# entropy: softmax (v1 lse, v2 sub, v3 exp), p*logp (v4), sum (v5), neg (v6)
put("fuzz_graph", "entropy", graph([LOGITS(0, 1), U(37, 0), B(17, 3, 2), U(25, 4), U(6, 5),
                                    U(39, 6)]))
# two heads: kl-like, sum(softmax(t) * (logsoftmax(t) - logsoftmax(s)))
put("fuzz_graph", "two_heads", graph([LOGITS(0, 1), LOGITS(1, 0), U(36, 0), U(36, 1),
                                      B(16, 3, 2), U(7, 3), B(17, 5, 4), U(25, 6), U(39, 7)]))
# segment sum of a per-row log prob, times a differentiable input, aux output
put("fuzz_graph", "segment", graph([LOGITS(0, 1), INDEX(0, 0), [45, 0, 1, 0], [31, 0, 0, 0, 0, 2],
                                    U(32, 4), INPUT(0, 1), B(17, 5, 6), U(39, 7),
                                    [43, 4, 0, 0, 0]]))
# clamp, softcap, where, comparisons
put("fuzz_graph", "misc", graph([LOGITS(0, 1), [38, 0, 0, 0, 0, 30], U(28, 1), [34, 2, 0, 0, 4, 5],
                                 B(21, 2, 3), [24, 4, 2, 3], U(39, 5), [5, 0, 0, 0], [43, 6, 0, 0, 1]]))
put("fuzz_graph", "random1", [random.randrange(256) for _ in range(400)])

# ----------------------------------------------------------------- fuzz_npy
def npy(descr, shape, data, major=1, fortran="False", pad=True):
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)
    hl = len(d) + 1
    head = 10 if major == 1 else 12
    if pad:
        hl += (64 - (head + hl) % 64) % 64
    d = d + " " * (hl - len(d) - 1) + "\n"
    lenf = struct.pack("<H", hl) if major == 1 else struct.pack("<I", hl)
    return b"\x93NUMPY" + bytes([major, 0]) + lenf + d.encode("latin1") + data

put("fuzz_npy", "f8_2x3", npy("<f8", "(2, 3)", struct.pack("<6d", 1, -2, 3.5, 0, 1e300, -0.0)))
put("fuzz_npy", "f4_vec", npy("<f4", "(4,)", struct.pack("<4f", 1, 2, 3, 4)))
put("fuzz_npy", "i8_scalar", npy("<i8", "()", struct.pack("<q", -7)))
put("fuzz_npy", "i4_3d_v2", npy("<i4", "(2, 1, 2)", struct.pack("<4i", 1, 2, 3, 4), major=2))
put("fuzz_npy", "empty_v3", npy("<f8", "(0, 5)", b"", major=3))
put("fuzz_npy", "fortran", npy("<f8", "(2, 2)", struct.pack("<4d", 1, 2, 3, 4), fortran="True"))
put("fuzz_npy", "truncated", npy("<f8", "(3,)", struct.pack("<2d", 1, 2)))
put("fuzz_npy", "big_endian", npy(">f8", "(1,)", struct.pack(">d", 1)))
