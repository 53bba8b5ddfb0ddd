"""NVIDIA's cuFFT (unmodified, from PyPI) on vgpu's libcuda.so.1, against NumPy's FFT.

Usage: python cufft_check.py LIBCUFFT  (e.g. .../nvidia/cu13/lib/libcufft.so.12, .../nvidia/cufft/lib/libcufft.so.11)

cuFFT plans and runs its transforms through the Driver API: its own module loads, the tools
table 6e163fbe (a module's functions), buffer ids. On the sim it ships kernels vgpu runs as the
PTX of the same kernel (SASS-only images: userlib/cuda/src/driver/ptx_twin.rs). Each transform
(complex and real, single and double precision, 1-3 dimensions, prime and composite sizes,
batches) is compared with numpy.fft in float64: relative error (max |got - want| / max |want|)
under 1e-5 in single and 1e-12 in double precision. Prints PASS.
"""
import ctypes
import sys

import numpy as np

C2C, Z2Z, R2C, D2Z, C2R, Z2D = 0x29, 0x69, 0x2A, 0x6A, 0x2C, 0x6C
FORWARD, INVERSE = -1, 1
# Sizes with kernels in every build tried, and one that has none on the sim (see main()).
SHAPES = [(2,), (3,), (7,), (16,), (100,), (127,), (1009,), (2048,), (6000,), (65536,), (8, 8), (64, 48), (17, 31), (256, 256), (8, 8, 8), (20, 30, 40)]

cu = ctypes.CDLL("libcuda.so.1")
cu.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
cu.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
cu.cuMemFree_v2.argtypes = [ctypes.c_uint64]
ff = ctypes.CDLL(sys.argv[1])
ff.cufftPlanMany.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
for f in ("cufftExecC2C", "cufftExecZ2Z"):
    getattr(ff, f).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
for f in ("cufftExecR2C", "cufftExecD2Z", "cufftExecC2R", "cufftExecZ2D"):
    getattr(ff, f).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def check(r, what):
    if r != 0:
        raise RuntimeError(f"{what} returned {r}")


def device(nbytes):
    d = ctypes.c_uint64()
    check(cu.cuMemAlloc_v2(ctypes.byref(d), nbytes), "cuMemAlloc")
    return d.value


def plan(shape, kind, batch):
    p = ctypes.c_int(0)
    dims = (ctypes.c_int * len(shape))(*shape)
    check(ff.cufftPlanMany(ctypes.byref(p), len(shape), dims, None, 1, 0, None, 1, 0, kind, batch), f"cufftPlanMany({shape}, {kind:#x}, batch {batch})")
    return p.value


def transform(kind, shape, batch, rng):
    """One transform on the device and its NumPy reference; returns the relative error."""
    single = kind in (C2C, R2C, C2R)
    real_t, cplx_t = (np.float32, np.complex64) if single else (np.float64, np.complex128)
    full = (batch,) + shape
    axes = tuple(range(1, len(full)))
    if kind in (C2C, Z2Z):
        x = (rng.standard_normal(full) + 1j * rng.standard_normal(full)).astype(cplx_t)
        want = np.fft.fftn(x.astype(np.complex128), axes=axes)
        out = np.empty(full, cplx_t)
    elif kind in (R2C, D2Z):
        x = rng.standard_normal(full).astype(real_t)
        want = np.fft.rfftn(x.astype(np.float64), axes=axes)
        out = np.empty(want.shape, cplx_t)
    else:  # C2R / Z2D: the inverse of a real transform, unnormalized as cuFFT's
        half = np.fft.rfftn(rng.standard_normal(full), axes=axes)
        x = half.astype(cplx_t)
        want = np.fft.irfftn(x.astype(np.complex128), s=shape, axes=axes) * np.prod(shape)
        out = np.empty(full, real_t)
    di, do = device(x.nbytes), device(out.nbytes)
    try:
        check(cu.cuMemcpyHtoD_v2(di, x.ctypes.data, x.nbytes), "cuMemcpyHtoD")
        p = plan(shape, kind, batch)
        try:
            if kind == C2C:
                check(ff.cufftExecC2C(p, di, do, FORWARD), "cufftExecC2C")
            elif kind == Z2Z:
                check(ff.cufftExecZ2Z(p, di, do, FORWARD), "cufftExecZ2Z")
            else:
                name = {R2C: "cufftExecR2C", D2Z: "cufftExecD2Z", C2R: "cufftExecC2R", Z2D: "cufftExecZ2D"}[kind]
                check(getattr(ff, name)(p, di, do), name)
            check(cu.cuCtxSynchronize(), "cuCtxSynchronize")
        finally:
            ff.cufftDestroy(p)
        check(cu.cuMemcpyDtoH_v2(out.ctypes.data, do, out.nbytes), "cuMemcpyDtoH")
    finally:
        cu.cuMemFree_v2(di)
        cu.cuMemFree_v2(do)
    return float(np.abs(out - want).max() / np.abs(want).max())


def main():
    check(cu.cuInit(0), "cuInit")
    ctx = ctypes.c_void_p()
    check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "cuDevicePrimaryCtxRetain")
    check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    version = ctypes.c_int()
    check(ff.cufftGetVersion(ctypes.byref(version)), "cufftGetVersion")
    print(f"cuFFT {version.value}")
    rng = np.random.default_rng(2026)
    failed = 0
    cases = [(k, s, 1) for k in (C2C, Z2Z, R2C, D2Z, C2R, Z2D) for s in SHAPES] + [(C2C, (96,), 5), (D2Z, (30, 20), 3)]
    for kind, shape, batch in cases:
        tol = 1e-5 if kind in (C2C, R2C, C2R) else 1e-12
        try:
            err = transform(kind, shape, batch, rng)
            ok = err < tol
            print(f"{'ok' if ok else 'WRONG'} {kind:#x} {shape} x{batch}: relative error {err:.1e} (limit {tol:.0e})", flush=True)
        except RuntimeError as e:
            ok = False
            print(f"FAILED {kind:#x} {shape} x{batch}: {e}", flush=True)
        failed += not ok
    # A plan whose kernels ship only as SASS (cuFFT's 2^20-point kernels for sm_90) cannot run
    # on the sim: it must fail as a cuFFT error, not crash or hang.
    p = ctypes.c_int(0)
    dims = (ctypes.c_int * 1)(1 << 20)
    r = ff.cufftPlanMany(ctypes.byref(p), 1, dims, None, 1, 0, None, 1, 0, C2C, 1)
    print(f"a 2^20-point plan: cufftPlanMany returned {r}")
    if r == 0:
        ff.cufftDestroy(p)
    print(f"{len(cases) - failed} of {len(cases)} transforms match NumPy")
    if failed:
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
