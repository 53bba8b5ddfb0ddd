//! PyTorch (its current CUDA wheel from PyPI, unmodified, in its own virtual environment made by
//! scripts/setup-cuda-wheels.sh) on vgpu's libcuda.so.1 over the socket transport, sim backend:
//! tests/torch_check.py runs PyTorch's control path (devices, memory and its three allocators,
//! copies, streams, events, graphs, CUDA tensors shared with a child process), cuBLAS's PTX
//! kernels against the CPU, and the clean failure of a PyTorch kernel that has only cubins.

use std::process::Command;
use vgpu_tests::*;

#[test]
fn pytorch_control_path_and_cublas_ptx_on_the_sim() {
    let py = wheels_dir().parent().unwrap().join("torch-venv/bin/python");
    assert!(py.exists(), "PyTorch missing at {}: run scripts/setup-cuda-wheels.sh (scripts/test.sh does)", py.display());
    let m = Mediator::start();
    let out = Command::new(py)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("torch_check.py"))
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &m.socket)
        .output()
        .expect("run PyTorch's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks = stdout.lines().filter(|l| l.starts_with("TORCH-CHECK ok ")).count();
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS") && checks >= 16,
        "PyTorch on vgpu ({checks} checks passed):\n{}\n--- mediator log\n{}",
        describe(&out),
        m.log()
    );
}
