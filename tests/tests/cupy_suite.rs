//! CuPy's own test suite (CuPy 14.2.0's tests from its sdist, run against the cupy-cuda12x
//! wheel and against the cupy-cuda13x one, unmodified) on vgpu's libcuda.so.1 over the socket
//! transport, sim backend: the directories of core, math, manipulation, sorting, statistics and
//! CUDA tests, `-m "not slow"`,
//! with CUPY_COMPILE_WITH_PTX=1 (the sim runs PTX, not NVRTC's cubins). Installed by
//! scripts/setup-cuda-wheels.sh.
//!
//! CI runs a fixed slice of each (every tenth test with CUDA 12, every twentieth with CUDA 13);
//! `bash scripts/cupy-suite.sh` runs all of it (VGPU_CUPY_SLICE=0/1, VGPU_CUPY13_SLICE=0/1).
//! Every failure must be listed with its reason in tests/cupy_suite/known_failures.txt (CUDA 13:
//! tests/cupy_suite/cuda13/): one that is not is a regression and fails the test, as does a pass
//! count below the one recorded in expected_passes.txt beside it. A test process that crashes is
//! replaced (and its test fails).

use std::path::Path;
use std::process::Command;
use vgpu_tests::*;

const DIRS: [&str; 6] = ["core_tests", "math_tests", "manipulation_tests", "sorting_tests", "statistics_tests", "cuda_tests"];

/// Runs CuPy's suite (the tests of `cache/cupy-tests-14.2.0`) with the python of `venv`, slice
/// `slice` (every N-th test), against the lists in tests/`lists`.
fn run_suite(venv: &str, dirs: &[&str], lists: &str, slice: &str, record: u32) {
    let cache = wheels_dir().parent().unwrap().to_path_buf();
    let py = cache.join(venv).join("bin/python");
    let tests = cache.join("cupy-tests-14.2.0");
    assert!(py.exists() && tests.join(".complete-v1").exists(), "CuPy ({venv}) or its tests missing under {}: run scripts/setup-cuda-wheels.sh", cache.display());
    let m = Mediator::start();
    let work = TempDir::new("cupy-suite");
    let mut cmd = Command::new(py);
    cmd.args(["-m", "pytest", "-q", "-n", "2", "--max-worker-restart", "1000", "-p", "no:cacheprovider"])
        .args(["-m", "not slow", "--timeout", "600", "-rfE"])
        .args(dirs.iter().map(|d| format!("cupy_tests/{d}")))
        .current_dir(&tests)
        .env("CUPY_COMPILE_WITH_PTX", "1")
        .env("CUPY_CACHE_DIR", work.0.join("kernel-cache"))
        // One GPU: CuPy's multi-GPU tests skip themselves (CuPy's own setting for this).
        .env("CUPY_TEST_GPU_LIMIT", "1")
        // nvcc 13 (NVIDIA's PyPI wheel, which the CUDA programs of the tests build with): CuPy's
        // raw-module tests ask its version when imported and are not collected without it. What
        // CuPy has nvcc build is SASS (code=sm_90), which the sim cannot run: those tests are
        // listed; their NVRTC twins run.
        .env("NVCC", wheels_dir().join("cu13/nvidia/cu13/bin/nvcc"));
    check_peer_suite("CuPy", cmd, &Path::new(env!("CARGO_MANIFEST_DIR")).join(lists), slice, record, &m);
}

/// cupy-cuda12x with NVIDIA's CUDA 12.9 libraries; CI runs every tenth test.
#[test]
fn cupy_test_suite_passes_as_recorded() {
    let slice = std::env::var("VGPU_CUPY_SLICE").unwrap_or_else(|_| "0/10".to_string());
    run_suite("cupy-venv", &DIRS, "cupy_suite", &slice, 10);
}

/// cupy-cuda13x as `pip install "cupy-cuda13x[ctk]"` gives it, with CUDA 13.5's libraries (cuBLAS
/// 13 among them, which ships PTX). CI runs every twentieth test from the fifth, none of which is
/// in the CUDA 12 test's slice.
#[test]
fn cupy_for_cuda13_test_suite_passes_as_recorded() {
    let slice = std::env::var("VGPU_CUPY13_SLICE").unwrap_or_else(|_| "5/20".to_string());
    // And the FFT tests: cuBLAS 13 (asfortranarray's geam) runs there, which CUDA 12's venv lacks.
    let dirs: Vec<&str> = DIRS.iter().copied().chain(["fft_tests"]).collect();
    run_suite("cupy13-venv", &dirs, "cupy_suite/cuda13", &slice, 20);
}
