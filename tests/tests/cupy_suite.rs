//! CuPy's own test suite (CuPy 14.2.0's tests from its sdist, run against the cupy-cuda12x
//! wheel, unmodified) on vgpu's libcuda.so.1 over the socket transport, sim backend: the
//! directories of core, math, manipulation, sorting, statistics and CUDA tests, `-m "not slow"`,
//! with CUPY_COMPILE_WITH_PTX=1 (the sim runs PTX, not NVRTC's cubins). Installed by
//! scripts/setup-cuda-wheels.sh.
//!
//! CI runs a fixed slice (every tenth test); `bash scripts/cupy-suite.sh` runs all of it
//! (VGPU_CUPY_SLICE=0/1). Every failure must be listed with its reason in
//! tests/cupy_suite/known_failures.txt: one that is not is a regression and fails this test, as
//! does a pass count below the one recorded in tests/cupy_suite/expected_passes.txt. A test
//! process that crashes is replaced (and its test fails).

use std::path::Path;
use std::process::Command;
use vgpu_tests::*;

const DIRS: [&str; 6] = ["core_tests", "math_tests", "manipulation_tests", "sorting_tests", "statistics_tests", "cuda_tests"];

#[test]
fn cupy_test_suite_passes_as_recorded() {
    let cache = wheels_dir().parent().unwrap().to_path_buf();
    let py = cache.join("cupy-venv/bin/python");
    let tests = cache.join("cupy-tests-14.2.0");
    assert!(py.exists() && tests.join(".complete-v1").exists(), "CuPy or its tests missing under {}: run scripts/setup-cuda-wheels.sh", cache.display());
    let slice = std::env::var("VGPU_CUPY_SLICE").unwrap_or_else(|_| "0/10".to_string());
    let m = Mediator::start();
    let work = TempDir::new("cupy-suite");
    let mut cmd = Command::new(py);
    cmd.args(["-m", "pytest", "-q", "-n", "2", "--max-worker-restart", "1000", "-p", "no:cacheprovider"])
        .args(["-m", "not slow", "--timeout", "600", "-rfE"])
        .args(DIRS.iter().map(|d| format!("cupy_tests/{d}")))
        .current_dir(&tests)
        .env("CUPY_COMPILE_WITH_PTX", "1")
        .env("CUPY_CACHE_DIR", work.0.join("kernel-cache"))
        // One GPU: CuPy's multi-GPU tests skip themselves (CuPy's own setting for this).
        .env("CUPY_TEST_GPU_LIMIT", "1");
    check_peer_suite("CuPy", cmd, &Path::new(env!("CARGO_MANIFEST_DIR")).join("cupy_suite"), &slice, 10, &m);
}
