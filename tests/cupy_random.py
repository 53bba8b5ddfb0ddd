# CuPy's random numbers on vgpu (run by tests/tests/cupy.rs): cupy.random.default_rng's
# XORWOW generator is set up by a PTX kernel (a long one for the sim: it needs a raised
# instruction budget), then draws normal and uniform numbers whose statistics are checked.
import sys
import cupy as cp
import numpy as np

g = cp.random.default_rng(1)
n = 200_000
x = cp.asnumpy(g.standard_normal(n, dtype=cp.float32)).astype(np.float64)
u = cp.asnumpy(g.random(n, dtype=cp.float64))
failed = 0

def check(name, ok, detail):
    global failed
    print(f"CUPY-RANDOM {'ok' if ok else 'FAILED'} {name} {detail}")
    failed += 0 if ok else 1

check("normal-mean", abs(x.mean()) < 0.01, x.mean())
check("normal-std", abs(x.std() - 1) < 0.01, x.std())
check("normal-1sigma", abs(np.mean(np.abs(x) < 1) - 0.6827) < 0.01, np.mean(np.abs(x) < 1))
check("uniform-range", u.min() >= 0 and u.max() < 1, (u.min(), u.max()))
check("uniform-mean", abs(u.mean() - 0.5) < 0.005, u.mean())
check("uniform-deciles", np.all(np.abs(np.histogram(u, bins=10, range=(0, 1))[0] / n - 0.1) < 0.005), np.histogram(u, bins=10, range=(0, 1))[0])
check("draws-differ", not np.array_equal(x[: n // 2], x[n // 2 :]), "")
print("PASS" if failed == 0 else f"{failed} checks failed")
sys.exit(1 if failed else 0)
