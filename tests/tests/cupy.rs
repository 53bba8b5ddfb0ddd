//! CuPy 14 (cupy-cuda12x from PyPI, unmodified) on vgpu's libcuda.so.1 over the socket transport,
//! sim backend: tests/cupy_check.py compares elementwise kernels, reductions and a RawKernel
//! with shared memory against NumPy. Installed by scripts/setup-cuda-wheels.sh into its own
//! virtual environment.

use std::process::Command;
use vgpu_tests::*;

fn cupy_python() -> std::path::PathBuf {
    let py = wheels_dir().parent().unwrap().join("cupy-venv/bin/python");
    assert!(py.exists(), "CuPy missing at {}: run scripts/setup-cuda-wheels.sh (scripts/test.sh does)", py.display());
    py
}

/// Runs cupy_check.py with `accelerators` (CUPY_ACCELERATORS: "" = CuPy's own reduction
/// kernels, "cub" = NVIDIA's CUB, shipped precompiled in CuPy's fatbin).
fn run_cupy_check(accelerators: &str) {
    let m = Mediator::start();
    let cache = TempDir::new("cupy-cache");
    let out = Command::new(cupy_python())
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cupy_check.py"))
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &m.socket)
        .env("CUPY_COMPILE_WITH_PTX", "1")
        .env("CUPY_CACHE_DIR", &cache.0)
        .env("CUPY_ACCELERATORS", accelerators)
        .output()
        .expect("run CuPy's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks = stdout.lines().filter(|l| l.starts_with("CUPY-CHECK ok ")).count();
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS") && checks >= 13,
        "CuPy (CUPY_ACCELERATORS={accelerators:?}) on vgpu:\n{}\n--- mediator log\n{}",
        describe(&out),
        m.log()
    );
}

#[test]
fn cupy_elementwise_reductions_and_raw_kernels_match_numpy() {
    run_cupy_check("");
}

/// CuPy's default: reductions through CUB, whose kernels (warp shuffles, redux.sync, inline
/// asm) come as PTX for sm_100 in CuPy's fatbin; the host side picks CUB's tuning policy by
/// the PTX version the functions report.
#[test]
fn cupy_with_cub_reductions_matches_numpy() {
    run_cupy_check("cub");
}

/// cupy.random's generator: its state is set up by a long PTX kernel (XORWOW skip-ahead, some
/// 10^10 instructions for the sim), so the mediator gets a raised instruction budget; the
/// numbers drawn are checked statistically.
#[test]
fn cupy_random_numbers_have_the_right_distribution() {
    let m = Mediator::start_with(&["--sim-instruction-budget", "200000000000"]);
    let cache = TempDir::new("cupy-cache");
    let out = Command::new(cupy_python())
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cupy_random.py"))
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &m.socket)
        .env("CUPY_COMPILE_WITH_PTX", "1")
        .env("CUPY_CACHE_DIR", &cache.0)
        .output()
        .expect("run CuPy's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks = stdout.lines().filter(|l| l.starts_with("CUPY-RANDOM ok ")).count();
    assert!(out.status.success() && stdout.lines().last() == Some("PASS") && checks == 7, "cupy.random on vgpu:\n{}\n--- mediator log\n{}", describe(&out), m.log());
}
