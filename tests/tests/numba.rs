//! numba-cuda's own test suite (numba-cuda 0.30.4 from PyPI, unmodified: `numba.cuda.tests`, some
//! 2,100 tests of kernels, arrays, the Driver API's semantics) on vgpu's libcuda.so.1 over the
//! socket transport, sim backend; installed by scripts/setup-cuda-wheels.sh.
//!
//! CI runs a fixed slice (every third test); `bash scripts/numba-suite.sh` runs all of it
//! (VGPU_NUMBA_SLICE=0/1). Every failure must be listed, with its reason, in
//! tests/numba/known_failures.txt: one that is not is a regression and fails this test, as does
//! a pass count below the one recorded for the slice in tests/numba/expected_passes.txt.

use std::path::Path;
use std::process::Command;
use vgpu_tests::*;

#[test]
fn numba_cuda_test_suite_passes_as_recorded() {
    let py = wheels_dir().parent().unwrap().join("numba-venv/bin/python");
    assert!(py.exists(), "numba-cuda missing at {}: run scripts/setup-cuda-wheels.sh (scripts/test.sh does)", py.display());
    let slice = std::env::var("VGPU_NUMBA_SLICE").unwrap_or_else(|_| "0/3".to_string());
    let m = Mediator::start();
    let work = TempDir::new("numba");
    let mut cmd = Command::new(py);
    cmd.args(["-m", "pytest", "--pyargs", "numba.cuda.tests", "-q", "-n", "2", "-p", "no:cacheprovider", "--timeout", "300", "-rfE"])
        // numba_cuda/numba is a namespace package: without this, test modules get the wrong
        // names ("cuda.tests...") and the processes some tests spawn cannot import them.
        .args(["--import-mode=importlib", "-o", "consider_namespace_packages=true"])
        // CuPy (the interop tests) compiles its own kernels: with PTX, which the sim runs.
        .env("CUPY_COMPILE_WITH_PTX", "1")
        .env("CUPY_CACHE_DIR", work.0.join("cupy-kernels"))
        .current_dir(&work.0);
    check_peer_suite("numba-cuda", cmd, &Path::new(env!("CARGO_MANIFEST_DIR")).join("numba"), &slice, 3, &m);
}
