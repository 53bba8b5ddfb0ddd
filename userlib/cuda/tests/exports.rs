//! What NVIDIA's libraries look up must be exported by name (they dlsym some directly), and
//! cuGetProcAddress must resolve names by version and per-thread flag.

use cuda::driver::resolve_proc;

#[test]
fn proc_lookup_picks_the_version_asked_for() {
    // cuMemAlloc: the 32-bit v1 before 3.2, cuMemAlloc_v2 after.
    let v2 = resolve_proc("cuMemAlloc", 12090, 0).unwrap();
    let v1 = resolve_proc("cuMemAlloc", 3000, 0).unwrap();
    assert_ne!(v1, v2);
    assert_eq!(v2, cuda::driver::cuMemAlloc_v2 as *const () as *mut std::ffi::c_void);
    // Per-thread default stream variant when asked for, the plain one otherwise.
    let pt = resolve_proc("cuLaunchKernel", 12090, 2).unwrap();
    assert_eq!(pt, cuda::driver::cuLaunchKernel_ptsz as *const () as *mut std::ffi::c_void);
    let legacy = resolve_proc("cuLaunchKernel", 12090, 0).unwrap();
    assert_eq!(legacy, cuda::driver::cuLaunchKernel as *const () as *mut std::ffi::c_void);
    // Too old a version, unknown names.
    assert_eq!(resolve_proc("cuLaunchKernel", 3000, 0), Err(2));
    assert_eq!(resolve_proc("cuNoSuchThing", 12090, 0), Err(1));
    assert_eq!(resolve_proc("", 12090, 0), Err(1));
}

#[test]
fn unimplemented_entry_points_fail_honestly() {
    // Child-graph nodes are not implemented: the entry point exists and says so.
    let f = resolve_proc("cuGraphAddChildGraphNode", 12090, 0).unwrap();
    // SAFETY: every stub is `extern "C" fn() -> CUresult`; extra arguments are not needed for
    // an entry point that ignores them.
    let stub: unsafe extern "C" fn() -> u32 = unsafe { std::mem::transmute(f) };
    assert_eq!(unsafe { stub() }, vgpu_uapi::cuda::CUDA_ERROR_NOT_SUPPORTED);
}

#[test]
fn the_shared_object_exports_the_driver_api() {
    let so = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("libcuda.so");
    if !so.exists() {
        panic!("{} not built: run `cargo build --workspace` first", so.display());
    }
    let out = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output().expect("nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let names: std::collections::HashSet<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    for n in ["cuInit", "cuGetProcAddress_v2", "cuGetExportTable", "cuLaunchKernel", "cuLibraryLoadData", "cuMemAlloc_v2", "cuMemcpyHtoD_v2_ptds", "cuCtxPushCurrent", "cuTensorMapEncodeTiled"] {
        assert!(names.contains(n), "{n} is not exported");
    }
    let count = names.iter().filter(|n| n.starts_with("cu")).count();
    assert!(count >= 600, "only {count} cu* symbols exported");
    let soname = std::process::Command::new("readelf").arg("-d").arg(&so).output().expect("readelf");
    assert!(String::from_utf8_lossy(&soname.stdout).contains("[libcuda.so.1]"), "soname is not libcuda.so.1");
}

#[test]
fn cublaslt_context_identity_table_answers_like_cu_ctx_get_id() {
    // cuBLASLt asks for this table before each gemm and calls slot 4 (context, u64 *id); without
    // it cublasSgemm answers CUBLAS_STATUS_NOT_SUPPORTED.
    let id: [u8; 16] = [0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2];
    let mut table: *const std::ffi::c_void = std::ptr::null();
    // SAFETY: valid out-pointer and a 16-byte id.
    assert_eq!(unsafe { cuda::driver::cuGetExportTable(&mut table, &id) }, 0);
    // SAFETY: the table's first word is its size in bytes: NVIDIA's 96 slots.
    let slots = unsafe { std::slice::from_raw_parts(table.cast::<usize>(), 96) };
    assert_eq!(slots[0], 96 * std::mem::size_of::<usize>());
    for &s in &slots[1..4] {
        // SAFETY: unknown slots are `extern "C" fn() -> CUresult` stubs.
        let f: unsafe extern "C" fn() -> u32 = unsafe { std::mem::transmute(s) };
        assert_eq!(unsafe { f() }, vgpu_uapi::cuda::CUDA_ERROR_NOT_SUPPORTED);
    }
    // SAFETY: slot 4 has cuCtxGetId's signature.
    let get_id: unsafe extern "C" fn(*mut std::ffi::c_void, *mut u64) -> u32 = unsafe { std::mem::transmute(slots[4]) };
    let (mut a, mut b) = (7u64, 7u64);
    // No driver initialised in this test process: both refuse the same way and write nothing.
    let via_table = unsafe { get_id(std::ptr::null_mut(), &mut a) };
    let direct = unsafe { cuda::driver::cuCtxGetId(std::ptr::null_mut(), &mut b) };
    assert_eq!(via_table, direct);
    assert_ne!(via_table, 0);
    assert_eq!((a, b), (7, 7));
}

/// Every table is as long as its size word says NVIDIA's is, with no null slot (an unknown one
/// fails with NOT_SUPPORTED); cudart 13.2+ calls CUDART_INTERFACE[12] first, and it succeeds. A
/// table vgpu lacks is CUDA_ERROR_NOT_FOUND, as NVIDIA's driver answers.
#[test]
fn export_tables_are_full_length_and_unknown_ones_are_not_found() {
    let get = |id: [u8; 16]| {
        let mut table: *const std::ffi::c_void = std::ptr::null();
        // SAFETY: valid out-pointer and a 16-byte id.
        let r = unsafe { cuda::driver::cuGetExportTable(&mut table, &id) };
        (r, table.cast::<usize>())
    };
    let hex = |s: &str| -> [u8; 16] { std::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()) };
    for (uuid, slots) in [
        ("6bd5fb6c5bf4e74a8987d93912fd9df9", 13),
        ("a094798c2e742e7493f20800200c0a66", 7),
        ("42d85a8123f6cb478298f6e78a3aecdc", 4),
        ("263e88607cd2614392f6bbd5006dfa7e", 16),
        ("d4082055bde6704b8d34ba123c66e1f2", 3),
        ("21318c60971432488ca641ff7324c8f2", 96),
    ] {
        let (r, t) = get(hex(uuid));
        assert_eq!(r, 0, "{uuid}");
        // SAFETY: the first word of these tables is their size in bytes.
        let size = unsafe { *t };
        assert_eq!(size, slots * std::mem::size_of::<usize>(), "{uuid}");
        // SAFETY: `slots` words, as the size says.
        let words = unsafe { std::slice::from_raw_parts(t, slots) };
        assert!(words[1..].iter().all(|&w| w != 0), "{uuid} has a null slot");
    }
    let (_, cudart) = get(hex("6bd5fb6c5bf4e74a8987d93912fd9df9"));
    // SAFETY: slot 12 is `CUresult (void)`.
    let load_compilers: unsafe extern "C" fn() -> u32 = unsafe { std::mem::transmute(*cudart.add(12)) };
    assert_eq!(unsafe { load_compilers() }, 0);
    // SAFETY: slot 10 is an unknown-slot stub, `CUresult (void)`.
    let unknown: unsafe extern "C" fn() -> u32 = unsafe { std::mem::transmute(*cudart.add(10)) };
    assert_eq!(unsafe { unknown() }, vgpu_uapi::cuda::CUDA_ERROR_NOT_SUPPORTED);
    let (r, t) = get(hex("f8cff95121468b4eb9e2fb469e7c0dd9"));
    assert_eq!((r, t), (vgpu_uapi::cuda::CUDA_ERROR_NOT_FOUND, std::ptr::null()));
}
