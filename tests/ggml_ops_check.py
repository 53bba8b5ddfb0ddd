"""ggml's ops, one at a time, on its CUDA backend (vgpu) and its CPU backend, compared as ggml's own
test-backend-ops compares backends: the same graph of one op on random inputs, the outputs'
normalized mean squared error within that op's tolerance. The libraries are the ones PyPI's
cyllama-cuda12 ships (unmodified), driven through ggml's C API with ctypes.

    ggml_ops_check.py LIBDIR      # LIBDIR: the wheel's cyllama_cuda12.libs folder

Prints `GGML-OP ok|FAIL|SKIP <case> nmse=...` per case (SKIP: a backend reports it lacks the op, as
on a GPU) and PASS at the end if none failed. A
case whose CUDA kernel exists only as SASS (matrix products that ggml hands to cuBLAS) fails on
the sim backend with CUDA_ERROR_NO_BINARY_FOR_GPU inside ggml, which aborts the process: those
cases are left out here and named in the list below as GPU only.
"""
import ctypes as C
import glob
import os
import sys

import numpy as np

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, I32 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 26
NAMES = {F32: "f32", F16: "f16", Q4_0: "q4_0", Q4_1: "q4_1", Q5_0: "q5_0", Q5_1: "q5_1", Q8_0: "q8_0", Q2_K: "q2_K", Q3_K: "q3_K",
         Q4_K: "q4_K", Q5_K: "q5_K", Q6_K: "q6_K", IQ4_NL: "iq4_nl", I32: "i32"}
# GPU only (cuBLAS, see cases()): F32 products of more than one column, F16 of more than 16.


class InitParams(C.Structure):
    _fields_ = [("mem_size", C.c_size_t), ("mem_buffer", C.c_void_p), ("no_alloc", C.c_bool)]


def load(libdir):
    def one(pattern):
        return C.CDLL(glob.glob(os.path.join(libdir, pattern))[0], mode=C.RTLD_GLOBAL)
    base, cpu, cuda = one("libggml-base-*.so*"), one("libggml-cpu-*.so"), one("libggml-cuda-*.so")
    P, I, F = C.c_void_p, C.c_int64, C.c_float
    sig = {
        "ggml_init": (P, [InitParams]), "ggml_free": (None, [P]),
        "ggml_new_tensor_1d": (P, [P, C.c_int, I]), "ggml_new_tensor_2d": (P, [P, C.c_int, I, I]),
        "ggml_new_tensor_3d": (P, [P, C.c_int, I, I, I]), "ggml_new_tensor_4d": (P, [P, C.c_int, I, I, I, I]),
        "ggml_mul_mat": (P, [P, P, P]), "ggml_get_rows": (P, [P, P, P]), "ggml_rms_norm": (P, [P, P, F]),
        "ggml_soft_max_ext": (P, [P, P, P, F, F]), "ggml_add": (P, [P, P, P]), "ggml_mul": (P, [P, P, P]),
        "ggml_scale": (P, [P, P, F]), "ggml_silu": (P, [P, P]), "ggml_cpy": (P, [P, P, P]),
        "ggml_rope_ext": (P, [P, P, P, P, C.c_int, C.c_int, C.c_int, F, F, F, F, F, F]),
        "ggml_new_graph": (P, [P]), "ggml_build_forward_expand": (None, [P, P]), "ggml_nbytes": (C.c_size_t, [P]),
        "ggml_quantize_chunk": (C.c_size_t, [C.c_int, P, P, I, I, I, P]), "ggml_row_size": (C.c_size_t, [C.c_int, I]),
        "ggml_backend_alloc_ctx_tensors": (P, [P, P]), "ggml_backend_buffer_free": (None, [P]),
        "ggml_backend_tensor_set": (None, [P, P, C.c_size_t, C.c_size_t]), "ggml_backend_tensor_get": (None, [P, P, C.c_size_t, C.c_size_t]),
        "ggml_backend_graph_compute": (C.c_int, [P, P]), "ggml_backend_free": (None, [P]),
        "ggml_backend_supports_op": (C.c_bool, [P, P]),
        "ggml_flash_attn_ext": (P, [P, P, P, P, P, F, F, F]),
    }
    g = {}
    for name, (res, args) in sig.items():
        f = getattr(base, name)
        f.restype, f.argtypes = res, args
        g[name] = f
    cpu.ggml_backend_cpu_init.restype = P
    cpu.ggml_backend_cpu_set_n_threads.argtypes = [P, C.c_int]
    cuda.ggml_backend_cuda_init.restype = P
    cuda.ggml_backend_cuda_init.argtypes = [C.c_int]
    return g, cpu, cuda


def cases():
    """(name, tolerance, build) where build(g, ctx, rng) returns (output tensor, [(tensor, bytes)]): the
    inputs drawn from `rng`, so that both backends get the same ones."""
    out = []

    def data(g, t, arr):
        return (t, np.ascontiguousarray(arr).tobytes())

    def weights(g, ctx, rng, typ, k, m):
        w = rng.standard_normal((m, k)).astype(np.float32)
        t = g["ggml_new_tensor_2d"](ctx, typ, k, m)
        if typ == F32:
            return t, w.tobytes()
        if typ == F16:
            return t, w.astype(np.float16).tobytes()
        buf = C.create_string_buffer(g["ggml_row_size"](typ, k) * m)
        g["ggml_quantize_chunk"](typ, w.ctypes.data, buf, 0, m, k, None)
        return t, buf.raw

    # Matrix products: the vector path (one column) and ggml's MMQ / mma paths (8 and 32).
    for typ in (F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, F32):
        for n in (1, 8, 32):
            if (typ == F32 and n > 1) or (typ == F16 and n > 16):
                continue  # ggml hands these to cuBLAS (sgemm, GemmEx): SASS only, GPU only
            def build(g, ctx, rng, typ=typ, n=n):
                k, m = 256, 64
                w, wb = weights(g, ctx, rng, typ, k, m)
                x = g["ggml_new_tensor_2d"](ctx, F32, k, n)
                return g["ggml_mul_mat"](ctx, w, x), [(w, wb), data(g, x, rng.standard_normal((n, k)).astype(np.float32))]
            out.append((f"mul_mat({NAMES[typ]},n={n})", 5e-4, build))
    for typ in (F32, F16, Q8_0, Q4_0, Q4_K):
        def build(g, ctx, rng, typ=typ):
            w, wb = weights(g, ctx, rng, typ, 256, 40)
            idx = g["ggml_new_tensor_1d"](ctx, I32, 7)
            return g["ggml_get_rows"](ctx, w, idx), [(w, wb), data(g, idx, np.array([0, 39, 5, 5, 17, 1, 38], np.int32))]
        out.append((f"get_rows({NAMES[typ]})", 1e-7, build))
    def build(g, ctx, rng):
        x = g["ggml_new_tensor_2d"](ctx, F32, 256, 5)
        return g["ggml_rms_norm"](ctx, x, 1e-6), [data(g, x, rng.standard_normal((5, 256)).astype(np.float32) * 3)]
    out.append(("rms_norm", 1e-7, build))
    for masked in (False, True):
        def build(g, ctx, rng, masked=masked):
            x = g["ggml_new_tensor_2d"](ctx, F32, 96, 12)
            ins = [data(g, x, rng.standard_normal((12, 96)).astype(np.float32) * 4)]
            mask = None
            if masked:
                mask = g["ggml_new_tensor_2d"](ctx, F16, 96, 12)
                m = np.where(np.arange(96)[None, :] > np.arange(12)[:, None] + 80, -np.inf, 0).astype(np.float16)
                ins.append(data(g, mask, m))
            return g["ggml_soft_max_ext"](ctx, x, mask, 0.125, 0.0), ins
        out.append((f"soft_max(mask={masked})", 1e-6, build))
    for mode, name in ((0, "norm"), (2, "neox")):
        def build(g, ctx, rng, mode=mode):
            x = g["ggml_new_tensor_3d"](ctx, F32, 64, 4, 6)  # head dim, heads, tokens
            pos = g["ggml_new_tensor_1d"](ctx, I32, 6)
            return (g["ggml_rope_ext"](ctx, x, pos, None, 64, mode, 4096, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0),
                    [data(g, x, rng.standard_normal((6, 4, 64)).astype(np.float32)), data(g, pos, np.array([0, 1, 2, 7, 100, 3000], np.int32))])
        out.append((f"rope({name})", 1e-6, build))
    for op in ("add", "mul"):
        def build(g, ctx, rng, op=op):
            a = g["ggml_new_tensor_2d"](ctx, F32, 128, 9)
            b = g["ggml_new_tensor_2d"](ctx, F32, 128, 1)  # broadcast over rows
            return g[f"ggml_{op}"](ctx, a, b), [data(g, a, rng.standard_normal((9, 128)).astype(np.float32)), data(g, b, rng.standard_normal((1, 128)).astype(np.float32))]
        out.append((op, 1e-7, build))
    def build(g, ctx, rng):
        a = g["ggml_new_tensor_2d"](ctx, F32, 300, 3)
        return g["ggml_silu"](ctx, a), [data(g, a, rng.standard_normal((3, 300)).astype(np.float32) * 5)]
    out.append(("silu", 1e-6, build))
    def build(g, ctx, rng):
        a = g["ggml_new_tensor_2d"](ctx, F32, 300, 3)
        return g["ggml_scale"](ctx, a, -0.37), [data(g, a, rng.standard_normal((3, 300)).astype(np.float32))]
    out.append(("scale", 1e-7, build))
    for typ in (F16, Q8_0, Q4_0):
        def build(g, ctx, rng, typ=typ):
            a = g["ggml_new_tensor_2d"](ctx, F32, 256, 4)
            b = g["ggml_new_tensor_2d"](ctx, typ, 256, 4)
            # The copy converts to `typ`; the check reads it back as f32 through get_rows.
            idx = g["ggml_new_tensor_1d"](ctx, I32, 4)
            c = g["ggml_cpy"](ctx, a, b)
            return g["ggml_get_rows"](ctx, c, idx), [data(g, a, rng.standard_normal((4, 256)).astype(np.float32)), data(g, idx, np.arange(4, dtype=np.int32))]
        out.append((f"cpy(f32->{NAMES[typ]})", 1e-6, build))
    # Flash attention as llama.cpp runs it: f32 queries, f16 K/V (GQA: 4 query heads, 2 KV
    # heads), a causal f16 mask padded to 64 rows.
    for n_q in (1, 8):
        def build(g, ctx, rng, n_q=n_q):
            d, n_kv, h, h_kv, pad = 64, 256, 4, 2, 64
            q = g["ggml_new_tensor_4d"](ctx, F32, d, n_q, h, 1)
            k = g["ggml_new_tensor_4d"](ctx, F16, d, n_kv, h_kv, 1)
            v = g["ggml_new_tensor_4d"](ctx, F16, d, n_kv, h_kv, 1)
            rows = (n_q + pad - 1) // pad * pad
            mask = g["ggml_new_tensor_4d"](ctx, F16, n_kv, rows, 1, 1)
            m = np.where(np.arange(n_kv)[None, :] > 200 + np.arange(rows)[:, None], -np.inf, 0).astype(np.float16)
            out_t = g["ggml_flash_attn_ext"](ctx, q, k, v, mask, 1 / np.sqrt(d), 0.0, 0.0)
            return out_t, [data(g, q, rng.standard_normal((1, h, n_q, d)).astype(np.float32)),
                           data(g, k, rng.standard_normal((1, h_kv, n_kv, d)).astype(np.float16)),
                           data(g, v, rng.standard_normal((1, h_kv, n_kv, d)).astype(np.float16)), data(g, mask, m)]
        out.append((f"flash_attn_ext(f16 KV,n_q={n_q})", 5e-4, build))
    return out


def compute(g, backend, build):
    ctx = g["ggml_init"](InitParams(64 << 20, None, True))
    try:
        t, inputs = build(g, ctx)
        if not g["ggml_backend_supports_op"](backend, t):
            return None, "unsupported"  # as test-backend-ops: the backend says it lacks the op
        graph = g["ggml_new_graph"](ctx)
        g["ggml_build_forward_expand"](graph, t)
        buf = g["ggml_backend_alloc_ctx_tensors"](ctx, backend)
        try:
            for tensor, raw in inputs:
                g["ggml_backend_tensor_set"](tensor, raw, 0, len(raw))
            status = g["ggml_backend_graph_compute"](backend, graph)
            if status != 0:
                return None, f"graph compute failed ({status})"
            n = g["ggml_nbytes"](t)
            out = C.create_string_buffer(n)
            g["ggml_backend_tensor_get"](t, out, 0, n)
            return np.frombuffer(out.raw, dtype=np.float32).copy(), None
        finally:
            g["ggml_backend_buffer_free"](buf)
    finally:
        g["ggml_free"](ctx)


def main():
    g, cpu_lib, cuda_lib = load(sys.argv[1])
    cpu = cpu_lib.ggml_backend_cpu_init()
    cpu_lib.ggml_backend_cpu_set_n_threads(cpu, 1)
    gpu = cuda_lib.ggml_backend_cuda_init(0)
    if not gpu:
        print("GGML-OP FAIL no CUDA backend (is the mediator reachable?)")
        return 1
    failed = 0
    for k, (name, tol, build) in enumerate(cases()):
        results = [compute(g, backend, lambda g_, ctx: build(g_, ctx, np.random.default_rng(18 + k))) for backend in (cpu, gpu)]
        (a, ea), (b, eb) = results
        if "unsupported" in (ea, eb):
            print(f"GGML-OP SKIP {name}: not supported by ggml's {'CPU' if ea else 'CUDA'} backend")
            continue
        if a is None or b is None:
            failed += 1
            print(f"GGML-OP FAIL {name}: {ea or eb}")
            continue
        nmse = float(np.sum((a.astype(np.float64) - b) ** 2) / max(np.sum(a.astype(np.float64) ** 2), 1e-300))
        ok = np.all(np.isfinite(b) == np.isfinite(a)) and nmse <= tol
        failed += not ok
        print(f"GGML-OP {'ok' if ok else 'FAIL'} {name} nmse={nmse:.3g} (max {tol:g})")
    print("PASS" if failed == 0 else f"FAILED {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
