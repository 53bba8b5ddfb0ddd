//! CuPy 14 (cupy-cuda12x from PyPI, unmodified) on vgpu's libcuda.so.1 over the socket transport,
//! sim backend: tests/cupy_check.py compares elementwise kernels, reductions and a RawKernel
//! with shared memory against NumPy. Installed by scripts/setup-cuda-wheels.sh into its own
//! virtual environment.

use std::process::Command;
use vgpu_tests::*;

fn cupy_python() -> std::path::PathBuf {
    venv_python("cupy-venv")
}

/// The python of one of the CuPy venvs setup-cuda-wheels.sh makes (cupy-venv: cupy-cuda12x;
/// cupy13-venv: cupy-cuda13x with CUDA 13's libraries).
fn venv_python(venv: &str) -> std::path::PathBuf {
    let py = wheels_dir().parent().unwrap().join(venv).join("bin/python");
    assert!(py.exists(), "CuPy missing at {}: run scripts/setup-cuda-wheels.sh (scripts/test.sh does)", py.display());
    py
}

/// Runs `script` (in tests/) with CuPy's python on vgpu: a mediator started with
/// `mediator_args`, CUPY_ACCELERATORS = `accelerators` if given (else CuPy's default). Returns the run and the mediator (for
/// its log).
fn run_cupy(script: &str, mediator_args: &[&str], accelerators: Option<&str>) -> (std::process::Output, Mediator) {
    run_cupy_in(cupy_python(), script, mediator_args, accelerators)
}

fn run_cupy_in(python: std::path::PathBuf, script: &str, mediator_args: &[&str], accelerators: Option<&str>) -> (std::process::Output, Mediator) {
    let m = Mediator::start_with(mediator_args);
    let cache = TempDir::new("cupy-cache");
    let mut cmd = Command::new(python);
    cmd.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &m.socket)
        .env("CUPY_COMPILE_WITH_PTX", "1")
        .env("CUPY_CACHE_DIR", &cache.0);
    if let Some(a) = accelerators {
        cmd.env("CUPY_ACCELERATORS", a);
    }
    (cmd.output().expect("run CuPy's python"), m)
}

/// Runs cupy_check.py with `accelerators` (CUPY_ACCELERATORS: "" = CuPy's own reduction
/// kernels, "cub" = NVIDIA's CUB, shipped precompiled in CuPy's fatbin).
fn run_cupy_check(accelerators: &str) {
    let (out, m) = run_cupy("cupy_check.py", &[], Some(accelerators));
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
    let (out, m) = run_cupy("cupy_random.py", &["--sim-instruction-budget", "200000000000"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks = stdout.lines().filter(|l| l.starts_with("CUPY-RANDOM ok ")).count();
    assert!(out.status.success() && stdout.lines().last() == Some("PASS") && checks == 7, "cupy.random on vgpu:\n{}\n--- mediator log\n{}", describe(&out), m.log());
}

/// cuRAND's host API (CuPy's legacy cupy.random.rand): with CUDA 12's cuRAND the numbers have
/// the right distribution. CUDA 13's cuRAND ships its generators as SASS only, beside 174 PTX
/// images that all name their kernel `pseudo_random_sequence_generator`: libcuda once loaded
/// one of those in place of the SASS and cuRAND drew garbage (values of 1e+300 and zeros) with
/// no error. It must now refuse (cuRAND reports an error), unless its numbers are right.
#[test]
fn curand_host_api_gives_right_numbers_or_an_error_never_wrong_ones() {
    let (out, m) = run_cupy_in(cupy_python(), "curand_host.py", &[], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.lines().last() == Some("PASS"), "cuRAND 12's host API on vgpu:\n{}\n--- mediator log\n{}", describe(&out), m.log());
    let (out, m) = run_cupy_in(venv_python("cupy13-venv"), "curand_host.py", &[], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let right = out.status.success() && stdout.lines().last() == Some("PASS");
    let refused = out.status.code() == Some(3) && stdout.lines().any(|l| l.starts_with("CURAND-HOST refused CURAND_STATUS_"));
    assert!(right || refused, "cuRAND 13's host API on vgpu drew wrong numbers or crashed:\n{}\n--- mediator log\n{}", describe(&out), m.log());
}

/// cuSOLVER through CuPy (tests/cusolver_check.py) against NumPy, with CUDA 12's cuSOLVER 11 and
/// CUDA 13's cuSOLVER 12: a solve and QR's R run on the sim; Q, built by SASS-only kernels, fails
/// with cuSOLVER's error. CUDA 13's failed at the first call (cuStreamGetCtx_v2 and
/// cuCtxGetDevResource missing), then crashed in its static cudart (a tools-callback table read
/// past the buffer libcuda handed out).
#[test]
fn cusolver_solve_and_qr_match_numpy_with_cuda_12_and_13() {
    for venv in ["cupy-venv", "cupy13-venv"] {
        let (out, m) = run_cupy_in(venv_python(venv), "cusolver_check.py", &[], None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.lines().last() == Some("PASS"), "cuSOLVER ({venv}) on vgpu:\n{}\n--- mediator log\n{}", describe(&out), m.log());
    }
}

/// The wrong results CuPy's own suite once found on the sim (int8 signs, float16 halves, CUB's
/// float16 min/max, wraparound, mixed-type integer arithmetic, conversions, transposed sums,
/// clip, partition and unique through thrust), each against NumPy; with CUB reductions, as CuPy
/// uses them by default.
#[test]
fn cupy_results_once_silently_wrong_on_the_sim_equal_numpy() {
    let (out, m) = run_cupy("cupy_exactness.py", &[], Some("cub"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks = stdout.lines().filter(|l| l.starts_with("CUPY-EXACT ok ")).count();
    assert!(out.status.success() && stdout.lines().last() == Some("PASS") && checks >= 25, "CuPy exactness on vgpu:\n{}\n--- mediator log\n{}", describe(&out), m.log());
    for name in ["partition-20000-kth", "partition-20000-sides", "unique-values", "unique-index", "unique-inverse", "unique-counts"] {
        assert!(stdout.lines().any(|l| l == format!("CUPY-EXACT ok {name}")), "{name} did not pass:\n{stdout}");
    }
}
