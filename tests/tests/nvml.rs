//! NVML through NVIDIA's own Python bindings (pynvml) on vgpu's libnvidia-ml.so.1, checked
//! against the mediator's profile and against what CUDA reports for the same device.

use std::collections::HashMap;
use std::process::Command;
use vgpu_tests::*;

fn fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pynvml(socket: &std::path::Path) -> std::process::Output {
    let cache = wheels_dir().parent().unwrap().join("py");
    Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nvml_query.py"))
        .env("PYTHONPATH", &cache)
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", socket)
        .output()
        .expect("python3")
}

#[test]
fn pynvml_sees_the_profile_and_agrees_with_cuda() {
    let m = Mediator::start_with(&["--gpu-name", "NVIDIA H100 80GB HBM3"]);
    let out = pynvml(&m.socket);
    assert!(out.status.success(), "{}\n--- mediator\n{}", describe(&out), m.log());
    let nvml = fields(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(nvml["driver_version"], vgpu_uapi::NVIDIA_DRIVER_VERSION);
    assert_eq!(nvml["cuda_driver"], vgpu_uapi::CUDA_DRIVER_VERSION.to_string());
    assert_eq!(nvml["count"], "1");
    assert_eq!(nvml["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(nvml["memory"], (80u64 << 30).to_string());
    assert_eq!(nvml["memory_v2_total"], (80u64 << 30).to_string());
    assert_eq!(nvml["memory_used"], "0", "no client holds memory");
    assert_eq!(nvml["pci_long"], "00000000:00:05.0");
    assert_eq!(nvml["pci_device_id"], "233110de");
    assert_eq!(nvml["by_uuid_index"], "0");
    assert_eq!(nvml["processes"], "0", "NVML itself is not a GPU process");
    assert_eq!(nvml["temperature"], "not_supported", "no fake sensor readings");

    let exe = build_program("device_query", Cudart::V12);
    let out = run_program(&exe, Cudart::V12, &m.socket);
    assert!(out.status.success(), "{}", describe(&out));
    let cuda = fields(&String::from_utf8_lossy(&out.stdout));
    for k in ["name", "uuid", "pci", "cc", "memory"] {
        assert_eq!(cuda[k].to_ascii_lowercase(), nvml[k].to_ascii_lowercase(), "CUDA and NVML disagree on {k}");
    }
    assert_eq!(cuda["driver"], nvml["cuda_driver"]);
}

/// A raw protocol client holding `bytes` of device memory, standing in for a CUDA process.
fn hold_memory(socket: &std::path::Path, bytes: u64) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut call = |op: u32, payload: Vec<u8>| {
        let h = [0x5550_4756u32, op, 1, 0, payload.len() as u32, 0];
        let hdr: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        s.write_all(&hdr).unwrap();
        s.write_all(&payload).unwrap();
        let mut rh = [0u8; 24];
        s.read_exact(&mut rh).unwrap();
        let status = u32::from_le_bytes(rh[12..16].try_into().unwrap());
        let len = u32::from_le_bytes(rh[16..20].try_into().unwrap());
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).unwrap();
        assert_eq!(status, 0, "op {op} failed");
    };
    let hello: Vec<u8> = [1u32, std::process::id(), 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    call(1, hello);
    call(11, bytes.to_le_bytes().to_vec());
    s
}

fn smi(socket: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(target_dir().join("vgpu-smi")).args(args).env("VGPU_SOCKET", socket).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn smi_lists_devices_memory_and_processes() {
    let m = Mediator::start();
    let list = smi(&m.socket, &["-L"]);
    assert!(list.starts_with("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-"), "{list}");
    let idle = smi(&m.socket, &["--query-gpu=name,memory.total,memory.used,compute_cap", "--format=csv,noheader,nounits"]);
    assert_eq!(idle.trim(), "NVIDIA H100 80GB HBM3, 81920, 0, 9.0");

    let _holder = hold_memory(&m.socket, 300 << 20);
    let busy = smi(&m.socket, &["--query-gpu=memory.used,memory.free", "--format=csv"]);
    assert_eq!(busy, "memory.used [MiB], memory.free [MiB]\n300 MiB, 81620 MiB\n");
    let table = smi(&m.socket, &[]);
    assert!(table.contains("300MiB / 81920MiB"), "{table}");
    let me = std::process::id().to_string();
    assert!(table.lines().any(|l| l.contains(&me) && l.contains("300MiB")), "our pid is not listed:\n{table}");

    let bad = Command::new(target_dir().join("vgpu-smi")).arg("--query-gpu=bogus.field").env("VGPU_SOCKET", &m.socket).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid field"));
}

#[test]
fn smi_without_mediator_says_so() {
    let dir = TempDir::new("nosmi");
    let out = Command::new(target_dir().join("vgpu-smi")).env("VGPU_SOCKET", dir.0.join("none.sock")).output().unwrap();
    assert_eq!(out.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't communicate with the vgpu mediator"));
}

/// Ollama's discovery sequence (dlopen by soname, then the Driver API and NVML calls it makes).
#[test]
fn ollama_style_discovery_finds_the_gpu() {
    let m = Mediator::start();
    let exe = build_c_program("ollama_discovery");
    let out = Command::new(&exe).env("LD_LIBRARY_PATH", libcuda_dir()).env("VGPU_SOCKET", &m.socket).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PASS"), "{}", describe(&out));
}
