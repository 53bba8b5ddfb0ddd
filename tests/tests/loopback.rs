//! The `cuda` backend in loopback: mediator A runs `--backend cuda` with vgpu's own libcuda.so as
//! its "GPU driver", and that libcuda talks to mediator B (sim). Every line of the backend runs
//! without a GPU, and it cannot tell this driver from NVIDIA's. Each test program runs through A
//! and straight through B: the same exit status and the same output are required.

use vgpu_tests::*;

/// Programs whose output through the cuda backend differs for a reason named here, and what
/// remains of issue 17 for each: device printf reaches the mediator's stdout, not the guest
/// (worker processes will forward it); keep_working runs until it is killed (the fault tests'
/// program, not a result).
const NOT_YET: [(&str, &str); 3] = [
    ("printf_kernel", "device printf is written to the mediator's stdout"),
    ("device_functions", "device printf is written to the mediator's stdout"),
    ("keep_working", "runs until killed"),
];

/// Programs that print measurements (data_path's benchmark figures): only their exit status
/// is compared.
const MEASURES: [&str; 1] = ["data_path"];

/// What a run says, minus what legitimately varies between runs (timings).
fn result_of(name: &str, out: &std::process::Output) -> (Option<i32>, Vec<String>) {
    if MEASURES.contains(&name) {
        return (out.status.code(), Vec::new());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout.lines().filter(|l| !l.contains("elapsed") && !l.contains(" ms")).map(String::from).collect();
    (out.status.code(), lines)
}

fn programs() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".cu").map(String::from))
        .filter(|n| !NOT_YET.iter().any(|(p, _)| p == n))
        .collect();
    v.sort();
    v
}

fn same_through_the_cuda_backend(cudart: Cudart) {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let mut differ = Vec::new();
    let names = programs();
    assert!(names.len() >= 12, "{names:?}");
    for name in &names {
        let exe = build_program(name, cudart);
        let direct = run_program(&exe, cudart, &sim.socket);
        let through = run_program(&exe, cudart, &loopback.socket);
        let (a, b) = (result_of(name, &direct), result_of(name, &through));
        if a != b || !direct.status.success() {
            differ.push(format!("{name}: direct\n{}\nthrough the cuda backend\n{}", describe(&direct), describe(&through)));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} programs differ through the cuda backend ({cudart:?}):\n{}\n--- cuda-backend mediator log (tail)\n{}",
        differ.len(),
        names.len(),
        differ.join("\n"),
        loopback.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn test_programs_give_the_same_results_through_the_cuda_backend_cudart12() {
    same_through_the_cuda_backend(Cudart::V12);
}

#[test]
fn test_programs_give_the_same_results_through_the_cuda_backend_cudart13() {
    same_through_the_cuda_backend(Cudart::V13);
}

/// A client that ends (here: killed mid-run) leaves nothing behind in either mediator: the cuda
/// backend frees what the session held, so the inner mediator's device memory is back to zero.
#[test]
fn a_killed_client_leaves_nothing_in_either_mediator() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let exe = build_program("keep_working", Cudart::V12);
    let mut child = std::process::Command::new(&exe)
        .env("LD_LIBRARY_PATH", format!("{}:{}", libcuda_dir().display(), Cudart::V12.lib_dir().display()))
        .env("VGPU_SOCKET", &loopback.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it works (its first iteration printed), then kill it.
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut out, &mut buf).unwrap();
    assert!(n > 0, "keep_working printed nothing");
    child.kill().unwrap();
    child.wait().unwrap();
    // The inner mediator logs each client's session end with what it freed; the loopback
    // mediator's connection to it stays (one driver per process), so look at B's accounting
    // through a fresh client: NVML's view of the device's used memory.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let q = std::process::Command::new(target_dir().join("vgpu-smi"))
            .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
            .env("LD_LIBRARY_PATH", libcuda_dir())
            .env("VGPU_SOCKET", &sim.socket)
            .output()
            .unwrap();
        let used = String::from_utf8_lossy(&q.stdout).trim().to_string();
        if used == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the sim mediator still holds {used} MiB after the client died:\n{}\n{}", describe(&q), loopback.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// CuPy (its checks and the exactness checks, with CUB) and NVML (pynvml) through the cuda
/// backend: the same answers as straight on the sim (each script compares with NumPy or the
/// device's profile itself and prints PASS).
#[test]
fn cupy_and_nvml_through_the_cuda_backend() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let venv = wheels_dir().parent().unwrap().join("cupy-venv/bin/python");
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for script in ["cupy_check.py", "cupy_exactness.py"] {
        let cache = TempDir::new("cupy-cache");
        let out = std::process::Command::new(&venv)
            .arg(here.join(script))
            .env("LD_LIBRARY_PATH", libcuda_dir())
            .env("VGPU_SOCKET", &loopback.socket)
            .env("CUPY_COMPILE_WITH_PTX", "1")
            .env("CUPY_ACCELERATORS", "cub")
            .env("CUPY_CACHE_DIR", &cache.0)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.lines().last() == Some("PASS"), "{script} through the cuda backend:\n{}\n--- log\n{}", describe(&out), loopback.log());
    }
    let nvml = std::process::Command::new("python3")
        .arg(here.join("nvml_query.py"))
        .env("PYTHONPATH", wheels_dir().parent().unwrap().join("py"))
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &loopback.socket)
        .output()
        .unwrap();
    assert!(nvml.status.success() && String::from_utf8_lossy(&nvml.stdout).lines().last() == Some("PASS"), "pynvml through the cuda backend:\n{}", describe(&nvml));
}
