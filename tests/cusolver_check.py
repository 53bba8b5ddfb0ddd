"""cuSOLVER through CuPy on vgpu, checked against NumPy (LAPACK): a linear solve (getrf/getrs)
and a QR factorization's R (geqrf). cuSOLVER's static cudart asks the driver for the stream's
context and device resources first (cuStreamGetCtx_v2, cuCtxGetDevResource) and reads its
tools-callback table by API id; each of these once made it fail or crash. Q (orgqr) is built by
kernels cuSOLVER ships as SASS only: it must fail with a CUSOLVERError, never crash or be wrong.
Prints PASS when every check holds."""
import sys

import numpy as np
import cupy as cp
from cupy_backends.cuda.libs import cusolver

rng = np.random.default_rng(7)
ok = True


def check(name, cond, detail=""):
    global ok
    print(f"{'ok' if cond else 'FAIL'} {name} {detail}")
    ok &= bool(cond)


for dtype in (np.float64, np.float32):
    b = (rng.standard_normal((8, 8)) + 8 * np.eye(8)).astype(dtype)
    y = rng.standard_normal((8, 3)).astype(dtype)
    x = cp.asnumpy(cp.linalg.solve(cp.asarray(b), cp.asarray(y)))
    tol = 1e-10 if dtype == np.float64 else 1e-4
    check(f"solve {np.dtype(dtype).name}", np.allclose(x, np.linalg.solve(b, y), rtol=tol, atol=tol))

a = rng.standard_normal((9, 5))
r = cp.asnumpy(cp.linalg.qr(cp.asarray(a), mode="r"))
rn = np.linalg.qr(a, mode="r")
# R is unique up to the sign of each row.
check("qr mode=r (geqrf)", np.allclose(np.abs(r), np.abs(rn), atol=1e-10), f"max diff {np.abs(np.abs(r) - np.abs(rn)).max():.2e}")

try:
    q, r = cp.linalg.qr(cp.asarray(a))
    q, r = cp.asnumpy(q), cp.asnumpy(r)
    check("qr (orgqr) ran, so it must be right", np.allclose(q @ r, a, atol=1e-10))
except cusolver.CUSOLVERError as e:
    print(f"ok qr (orgqr): {e} (its kernels are SASS only: a GPU runs them)")

print("PASS" if ok else "FAILED")
sys.exit(0 if ok else 1)
