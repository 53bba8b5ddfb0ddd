//! The `cuda` backend's own checks, with vgpu's libcuda.so as the driver (talking to a sim
//! mediator served in this process): what a client may not touch never reaches the driver, and a
//! session that ends gives everything back.

use std::sync::Arc;
use vgpu_host::backend::{Backend, LaunchDims};
use vgpu_host::cuda::CudaBackend;
use vgpu_host::profile::DeviceProfile;
use vgpu_host::sim::SimBackend;
use vgpu_uapi::cuda::*;

/// The sim mediator the loaded driver talks to, and the backend on that driver.
fn loopback() -> (Arc<dyn Backend>, CudaBackend) {
    let dir = std::env::temp_dir().join(format!("vgpu-cuda-backend-{}", std::process::id()));
    let sock = dir.join("s.sock");
    let listener = vgpu_host::server::bind(&sock).unwrap();
    let sim: Arc<dyn Backend> = Arc::new(SimBackend::new(DeviceProfile::default(), 256 << 20));
    let inner = sim.clone();
    std::thread::spawn(move || vgpu_host::server::serve_listener(listener, inner));
    // The driver (vgpu's libcuda) finds its mediator through VGPU_SOCKET, read at cuInit.
    std::env::set_var("VGPU_SOCKET", &sock);
    let lib = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("libcuda.so");
    assert!(lib.exists(), "{} not built: run `cargo build --workspace` first (scripts/test.sh does)", lib.display());
    let cuda = CudaBackend::load(Some(&lib), 0).unwrap();
    (sim, cuda)
}

#[test]
fn addresses_handles_and_session_ends() {
    let (sim, cuda) = loopback();
    assert_eq!(cuda.devices()[0].name_str(), "NVIDIA H100 80GB HBM3");
    let missing = CudaBackend::load(Some(std::path::Path::new("/nonexistent/libcuda.so.1")), 0).err().expect("no driver there");
    assert!(missing.contains("cannot load"), "{missing}");
    let mut a = cuda.open_session(0, 10, false).unwrap();
    let mut b = cuda.open_session(0, 11, false).unwrap();
    assert!(cuda.open_session(1, 12, false).is_err(), "only device 0 is served");

    // Each session reaches its own allocations only.
    let pa = a.mem_alloc(4096).unwrap();
    let pb = b.mem_alloc(4096).unwrap();
    a.write(pa, &[7u8; 4096]).unwrap();
    let mut back = vec![0u8; 4096];
    a.read(pa, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 7));
    for (what, e) in [
        ("another session's memory", a.write(pb, &[1u8; 16]).unwrap_err()),
        ("past the end", a.write(pa + 4090, &[1u8; 16]).unwrap_err()),
        ("an overflowing range", a.read(u64::MAX - 4, &mut [0u8; 16]).unwrap_err()),
        ("a copy from another session", a.copy(pa, pb, 16).unwrap_err()),
        ("a memset past the end", a.memset(pa, 0, 4, 1025).unwrap_err()),
        ("freeing what is not an allocation", a.mem_free(pa + 8).unwrap_err()),
    ] {
        assert_eq!(e.code, CUDA_ERROR_INVALID_VALUE, "{what}: {}", e.message);
    }
    // Handles are per session.
    let s = a.stream_create(0, 0).unwrap();
    assert_eq!(b.stream_synchronize(s).unwrap_err().code, CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(b.module_get_function(0x11, "k").unwrap_err().code, CUDA_ERROR_INVALID_HANDLE);
    let dims = LaunchDims { grid: [1, 1, 1], block: [1, 1, 1], dynamic_shared_bytes: 0, stream: 0, cooperative: false };
    assert_eq!(b.launch(0x99, dims, &[]).unwrap_err().code, CUDA_ERROR_INVALID_HANDLE);

    // A kernel through the driver: the sim behind it runs it.
    let ptx = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx")).unwrap();
    let m = a.module_load(&ptx).unwrap();
    let (f, params) = a.module_get_function(m, "vadd").unwrap();
    assert_eq!(params.len(), 4);
    let n = 256u32;
    let (x, y, z) = (a.mem_alloc(4 * n as u64).unwrap(), a.mem_alloc(4 * n as u64).unwrap(), a.mem_alloc(4 * n as u64).unwrap());
    let xs: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let ys: Vec<u8> = (0..n).flat_map(|i| (2.0 * i as f32).to_le_bytes()).collect();
    a.write(x, &xs).unwrap();
    a.write(y, &ys).unwrap();
    let mut p = vec![0u8; f.param_bytes as usize];
    for ((off, size), v) in params.iter().zip([x, y, z, n as u64]) {
        p[*off as usize..(*off + *size) as usize].copy_from_slice(&v.to_le_bytes()[..*size as usize]);
    }
    a.launch(f.handle, LaunchDims { grid: [1, 1, 1], block: [n, 1, 1], dynamic_shared_bytes: 0, stream: s, cooperative: false }, &p).unwrap();
    a.stream_synchronize(s).unwrap();
    let mut out = vec![0u8; 4 * n as usize];
    a.read(z, &mut out).unwrap();
    for i in 0..n as usize {
        assert_eq!(f32::from_le_bytes(out[4 * i..4 * i + 4].try_into().unwrap()), 3.0 * i as f32, "z[{i}]");
    }
    // A parameter buffer shorter than the kernel's parameters is refused before the driver.
    assert_eq!(a.launch(f.handle, dims, &p[..8]).unwrap_err().code, CUDA_ERROR_INVALID_VALUE);

    // VMM: two physical allocations mapped side by side in one reservation; copies may span
    // them once access is set, and nothing outside the mappings is reachable.
    let g = 2u64 << 20;
    let (h1, h2) = (a.vmm_create(g).unwrap(), a.vmm_create(g).unwrap());
    let va = a.vmm_reserve(4 * g, 0, 0).unwrap();
    a.vmm_map(va, g, 0, h1).unwrap();
    a.vmm_map(va + g, g, 0, h2).unwrap();
    assert_eq!(a.write(va, &[1u8; 16]).unwrap_err().code, CUDA_ERROR_INVALID_VALUE, "no access set yet");
    a.vmm_set_access(va, 2 * g).unwrap();
    a.write(va + g - 8, &[9u8; 16]).unwrap();
    let mut across = [0u8; 16];
    a.read(va + g - 8, &mut across).unwrap();
    assert_eq!(across, [9u8; 16]);
    assert_eq!(a.write(va + 2 * g - 8, &[1u8; 16]).unwrap_err().code, CUDA_ERROR_INVALID_VALUE, "past the mappings");
    assert_eq!(b.vmm_map(va + 2 * g, g, 0, h1).unwrap_err().code, CUDA_ERROR_INVALID_VALUE, "another session's reservation");
    assert_eq!(a.vmm_map(va + 2 * g, g, 0, 0x4242).unwrap_err().code, CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(a.vmm_map(va + 2 * g, g, g, h1).unwrap_err().code, CUDA_ERROR_INVALID_VALUE, "offset past the allocation");
    assert_eq!(a.vmm_unreserve(va, g).unwrap_err().code, CUDA_ERROR_INVALID_VALUE, "part of a reservation");
    assert!(a.used_bytes() >= 2 * g);
    // Left mapped on purpose: the session's end must unmap, release and free it all.

    // Both sessions end: the driver (and the sim behind it) gets everything back.
    assert!(sim.memory_usage(0).unwrap().1 > 0);
    drop(a);
    drop(b);
    assert_eq!(cuda.memory_usage(0).unwrap().1, 0);
    assert_eq!(sim.memory_usage(0).unwrap().1, 0, "the driver's mediator still holds memory");
}
