"""CuPy (unmodified, from PyPI) on vgpu's libcuda: elementwise kernels, reductions, a RawKernel
with shared memory, checked against NumPy. Prints `CUPY-CHECK ok|FAIL <name>` per check and
PASS at the end if all passed. CuPy compiles its kernels with NVRTC on the CPU; the test runs it
with CUPY_COMPILE_WITH_PTX=1 so they reach the device as PTX (the sim backend interprets PTX;
on a real GPU either works)."""
import sys

import numpy as np
import cupy as cp

failed = 0


def check(name, ok, detail=""):
    global failed
    if ok:
        print(f"CUPY-CHECK ok {name}")
    else:
        failed += 1
        print(f"CUPY-CHECK FAIL {name}: {detail}")


def close(name, got, want, rtol=0.0, atol=0.0):
    got = cp.asnumpy(got) if isinstance(got, cp.ndarray) else got
    ok = np.allclose(got, want, rtol=rtol, atol=atol) and np.shape(got) == np.shape(want)
    worst = np.max(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))) if np.shape(got) == np.shape(want) else "shape"
    check(name, ok, f"max abs difference {worst}")


dev = cp.cuda.Device(0)
props = cp.cuda.runtime.getDeviceProperties(0)
print("device", props["name"].decode(), "cc", dev.compute_capability)

# Elementwise: arithmetic, math functions, type conversion, broadcasting.
n = 1 << 20
x_np = np.arange(n, dtype=np.float32) * np.float32(1e-3)
x = cp.asarray(x_np)
close("arange", cp.arange(10, dtype=cp.int64), np.arange(10))
close("axpy", 2.5 * x + 1, 2.5 * x_np + 1, rtol=1e-6)
close("sin-exp", cp.sin(x) * cp.exp(-x / 100), np.sin(x_np) * np.exp(-x_np / 100), rtol=1e-5, atol=1e-5)
close("int-cast", (x * 10).astype(cp.int32), (x_np * 10).astype(np.int32))
m_np = np.arange(12, dtype=np.float64).reshape(3, 4)
close("broadcast", cp.asarray(m_np) + cp.arange(4, dtype=cp.float64), m_np + np.arange(4))
sq = cp.ElementwiseKernel("float32 a, float32 b", "float32 c", "c = a * a + b", "vgpu_square_add")
close("elementwise-kernel", sq(x, x), x_np * x_np + x_np, rtol=1e-6)

# Reductions over 1e6 elements (integer-valued doubles: exact in any summation order).
big_np = np.arange(1_000_000, dtype=np.float64)
big = cp.asarray(big_np)
check("sum-1e6", float(big.sum()) == float(big_np.sum()), f"{float(big.sum())} != {float(big_np.sum())}")
check("max-1e6", float(big.max()) == 999_999.0, f"{float(big.max())}")
perm_np = np.random.default_rng(7).permutation(1_000_000).astype(np.int32)
perm = cp.asarray(perm_np)
check("argmax", int(perm.argmax()) == int(perm_np.argmax()), f"{int(perm.argmax())} != {int(perm_np.argmax())}")
check("int-sum", int(perm.sum(dtype=cp.int64)) == int(perm_np.sum(dtype=np.int64)), "")
close("axis-sum", cp.asarray(m_np).sum(axis=0), m_np.sum(axis=0))
close("mean", float(x.mean()), float(x_np.astype(np.float64).mean()), rtol=1e-5)

# A RawKernel with static shared memory and barriers: per-block sums.
block_sum = cp.RawKernel(r"""
extern "C" __global__ void block_sum(const int *in, int *out, int n) {
    __shared__ int s[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? in[i] : 0;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}
""", "block_sum")
vals_np = (np.arange(10_000, dtype=np.int32) * 37) % 101 - 50
blocks = (len(vals_np) + 255) // 256
out = cp.zeros(blocks, dtype=cp.int32)
block_sum((blocks,), (256,), (cp.asarray(vals_np), out, np.int32(len(vals_np))))
want = np.add.reduceat(vals_np, np.arange(0, len(vals_np), 256))
close("rawkernel-shared", out, want)

cp.cuda.Stream.null.synchronize()
print("PASS" if failed == 0 else f"{failed} checks failed")
sys.exit(1 if failed else 0)
