# cuRAND's host API through CuPy's legacy random functions (cupy.random.rand and friends call
# curandCreateGenerator and curandGenerate*; run by tests/tests/cupy.rs): the numbers must have
# the right distribution. Where the sim cannot run cuRAND's kernels (CUDA 13's cuRAND ships
# them as SASS only, with PTX that cannot be matched to them), cuRAND must fail with an error:
# prints "CURAND-HOST refused <error>" and exits 3. Numbers that are wrong fail (exit 1).
import sys
import cupy as cp
import numpy as np
from cupy_backends.cuda.libs import curand

n = 100_000
try:
    rs = cp.random.RandomState(7)
    u = cp.asnumpy(rs.random_sample(n))
    f = cp.asnumpy(rs.random_sample(n, dtype=cp.float32)).astype(np.float64)
    x = cp.asnumpy(rs.standard_normal(n))
except curand.CURANDError as e:
    print(f"CURAND-HOST refused {e}")
    sys.exit(3)
failed = 0

def check(name, ok, detail):
    global failed
    print(f"CURAND-HOST {'ok' if ok else 'FAILED'} {name} {detail}")
    failed += 0 if ok else 1

for name, v in (("uniform-f64", u), ("uniform-f32", f)):
    check(f"{name}-range", v.min() >= 0 and v.max() <= 1, (v.min(), v.max()))
    check(f"{name}-mean", abs(v.mean() - 0.5) < 0.01, v.mean())
    check(f"{name}-deciles", np.all(np.abs(np.histogram(v, bins=10, range=(0, 1))[0] / n - 0.1) < 0.01), np.histogram(v, bins=10, range=(0, 1))[0])
check("normal-mean", abs(x.mean()) < 0.02, x.mean())
check("normal-std", abs(x.std() - 1) < 0.02, x.std())
check("draws-differ", not np.array_equal(u[: n // 2], u[n // 2 :]), "")
print("PASS" if failed == 0 else f"{failed} checks failed")
sys.exit(1 if failed else 0)
