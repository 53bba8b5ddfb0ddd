//! NVIDIA's cuFFT, unmodified from PyPI, on vgpu's libcuda.so.1 over the socket transport, sim
//! backend: tests/cufft_check.py plans and runs 98 transforms (complex and real, single and
//! double, 1-3 dimensions, prime and composite sizes, batches) and compares each with NumPy's FFT.
//! Two builds: cuFFT 12.2 of CUDA 13 (PyTorch's venv) and cuFFT 11.4 of CUDA 12.9 (CuPy's);
//! both installed by scripts/setup-cuda-wheels.sh.

use std::path::Path;
use std::process::Command;
use vgpu_tests::*;

fn cufft_matches_numpy(venv: &str, lib: &str) {
    let venv = wheels_dir().parent().unwrap().join(venv);
    let py = venv.join("bin/python");
    let lib = venv.join("lib/python3.11/site-packages/nvidia").join(lib);
    assert!(lib.exists(), "cuFFT missing at {}: run scripts/setup-cuda-wheels.sh (scripts/test.sh does)", lib.display());
    let m = Mediator::start();
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cufft_check.py"))
        .arg(&lib)
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &m.socket)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS") && stdout.contains("98 of 98 transforms match NumPy"),
        "cuFFT {} on vgpu:\n{}\n--- mediator log\n{}",
        lib.display(),
        describe(&out),
        m.log()
    );
}

#[test]
fn cufft_12_of_cuda_13_matches_numpy() {
    cufft_matches_numpy("torch-venv", "cu13/lib/libcufft.so.12");
}

#[test]
fn cufft_11_of_cuda_12_matches_numpy() {
    cufft_matches_numpy("cupy-venv", "cufft/lib/libcufft.so.11");
}
