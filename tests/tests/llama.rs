//! llama.cpp's prebuilt CUDA backend (PyPI's cyllama-cuda12, unmodified: ggml's CUDA kernels
//! as compute_75 PTX) on vgpu's libcuda, sim backend, against llama.cpp's own CPU backend:
//! tests/llama_check.py makes tiny random-weight models in each weight type and compares
//! greedy decoding and logits; tests/ggml_ops_check.py compares ggml's ops one by one, as
//! ggml's test-backend-ops does. Installed by scripts/setup-cuda-wheels.sh.

use std::path::PathBuf;
use std::process::Command;
use vgpu_tests::*;

fn llama_python() -> PathBuf {
    let venv = wheels_dir().parent().unwrap().join("llama-venv");
    assert!(venv.join(".complete-v1").exists(), "llama.cpp missing at {}: run scripts/setup-cuda-wheels.sh (scripts/test.sh does)", venv.display());
    venv.join("bin/python")
}

/// The libraries ggml's CUDA backend links against: NVIDIA's cudart and cuBLAS from the venv,
/// and vgpu's libcuda.so.1.
fn library_path(python: &std::path::Path) -> String {
    let site = python.parent().unwrap().parent().unwrap().join("lib/python3.11/site-packages/nvidia");
    format!("{}:{}:{}", site.join("cuda_runtime/lib").display(), site.join("cublas/lib").display(), libcuda_dir().display())
}

/// Every weight type, both KV cache types, the prompt a token at a time and as one batch (the
/// batched quantized path is ggml's MMQ: int8 mma.sync and ldmatrix). F32 weights with a
/// prompt batch go to cuBLAS, whose kernels are SASS only: GPU only.
const CONFIGS: [&str; 11] = [
    "F32:f32:one",
    "F32:f16:one",
    "F16:f16:one",
    "F16:f32:prompt",
    "F16:f16:prompt",
    "Q8_0:f16:one",
    "Q8_0:f32:prompt",
    "Q4_0:f32:one",
    "Q4_0:f16:prompt",
    "Q4_K:f16:one",
    "Q4_K:f32:prompt",
];

/// Runs llama_check.py's comparison of `configs` (`tokens` each) against the mediator `m`.
fn llama_matches_cpu(m: &Mediator, configs: &[&str], tokens: u32) {
    let py = llama_python();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("llama_check.py");
    let models = TempDir::new("llama-models");
    let make = Command::new(&py).arg(&script).arg("make").arg(&models.0).env("LD_LIBRARY_PATH", library_path(&py)).env("VGPU_SOCKET", "/nonexistent").output().unwrap();
    assert!(make.status.success(), "making the models:\n{}", describe(&make));
    let out = Command::new(&py)
        .arg(&script)
        .arg("compare")
        .arg(&models.0)
        .args(configs)
        .env("LD_LIBRARY_PATH", library_path(&py))
        .env("VGPU_SOCKET", &m.socket)
        .env("LLAMA_CHECK_TOKENS", tokens.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let ok = stdout.lines().filter(|l| l.starts_with("LLAMA-CHECK ok ")).count();
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS") && ok == configs.len(),
        "llama.cpp on vgpu:\n{}\n--- mediator log (tail)\n{}",
        describe(&out),
        m.log().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn llama_cpp_cuda_backend_on_vgpu_equals_its_cpu_backend() {
    llama_matches_cpu(&Mediator::start(), &CONFIGS, 16);
}

/// The same through the mediator's cuda backend in loopback (its "driver" vgpu's own libcuda
/// talking to a sim mediator): one float and one quantized prompt-batch config.
#[test]
fn llama_cpp_through_the_cuda_backend_equals_its_cpu_backend() {
    let sim = Mediator::start();
    llama_matches_cpu(&Mediator::start_loopback(&sim), &["F16:f16:one", "Q4_0:f16:prompt"], 8);
}

/// ggml's ops one at a time on both backends (matrix products of 13 weight types by 1, 8 and 32
/// columns, get_rows, rms_norm, soft_max, rope, add, mul, silu, scale, cpy to f16/q8_0/q4_0,
/// flash attention), each within test-backend-ops' tolerance.
#[test]
fn ggml_ops_on_vgpu_equal_ggml_cpu_backend() {
    ggml_ops_match_cpu(&Mediator::start());
}

/// The same through the cuda backend in loopback.
#[test]
fn ggml_ops_through_the_cuda_backend_equal_ggml_cpu_backend() {
    let sim = Mediator::start();
    ggml_ops_match_cpu(&Mediator::start_loopback(&sim));
}

fn ggml_ops_match_cpu(m: &Mediator) {
    let py = llama_python();
    let libs = py.parent().unwrap().parent().unwrap().join("lib/python3.11/site-packages/cyllama_cuda12.libs");
    let out = Command::new(&py)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ggml_ops_check.py"))
        .arg(&libs)
        .env("LD_LIBRARY_PATH", library_path(&py))
        .env("VGPU_SOCKET", &m.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.lines().filter(|l| l.starts_with("GGML-OP ok ")).count();
    assert!(out.status.success() && stdout.lines().last() == Some("PASS") && ok >= 50, "ggml ops on vgpu ({ok} ok):\n{}\n--- mediator log (tail)\n{}", describe(&out), m.log().lines().rev().take(40).collect::<Vec<_>>().join("\n"));
}
