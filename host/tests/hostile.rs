//! A hostile guest against the mediator: every bad request it can make gets an error reply
//! with the right code, the mediator stays up, and another VM sharing the GPU (and the hostile
//! VM's own later work) is unaffected. Prints how many bad inputs were tried.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use support::{Proc, Vadd};
use vgpu_host::config::Config;
use vgpu_host::mediator::Mediator;
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::Op;
use vgpu_uapi::PROTOCOL_VERSION;

fn start(tag: &str) -> (PathBuf, Arc<Mediator>) {
    let dir = std::env::temp_dir().join(format!("vgpu-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg: Config = toml::from_str(&format!(
        "[[gpu]]\nname = \"gpu0\"\nsim_memory_mib = 256\n\
         [[vm]]\nname = \"evil\"\ngpu = \"gpu0\"\nsocket = \"{d}/evil.sock\"\nmemory_quota_mib = 64\nexec_time_limit_ms = 500\n\
         [[vm]]\nname = \"good\"\ngpu = \"gpu0\"\nsocket = \"{d}/good.sock\"\n",
        d = dir.display()
    ))
    .unwrap();
    (dir, Mediator::from_config(&cfg, None).unwrap())
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn launch_raw(p: &Proc, f: u64, grid: [u32; 3], block: [u32; 3], shared: u32, params: &[u8]) -> Result<(), CuResult> {
    let mut dims = Vec::new();
    for v in grid.iter().chain(&block).chain(std::iter::once(&shared)) {
        dims.extend_from_slice(&v.to_le_bytes());
    }
    dims.extend_from_slice(&0u64.to_le_bytes());
    p.call(Op::Launch, &[&f.to_le_bytes(), &dims, params]).map(drop)
}

#[test]
fn every_bad_request_is_refused_and_the_other_vm_is_unaffected() {
    let (dir, m) = start("all");
    let good = Proc::connect(&dir.join("good.sock"), 10).unwrap();
    let gv = Vadd::new(&good, 4096);
    gv.run().unwrap();
    let good_ptr = u64::from_le_bytes(gv.params[16..24].try_into().unwrap());
    let good_fn = good.function("vadd");

    let evil = Proc::connect(&dir.join("evil.sock"), 66).unwrap();
    let mut tried = 0;
    let mut expect = |what: &str, r: Result<(), CuResult>, code: CuResult| {
        tried += 1;
        assert_eq!(r, Err(code), "{what}");
    };
    // Another VM's handles and addresses, before this session has any of its own.
    expect("other VM's function", launch_raw(&evil, good_fn, [1, 1, 1], [32, 1, 1], 0, &[0; 28]), CUDA_ERROR_INVALID_HANDLE);
    expect("other VM's memory", evil.read(good_ptr, 16).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("other VM's memory, freed", evil.free(good_ptr), CUDA_ERROR_INVALID_VALUE);
    expect("other VM's memory, written", evil.write(good_ptr, &[0; 16]), CUDA_ERROR_INVALID_VALUE);

    let v = Vadd::new(&evil, 1024);
    let f = evil.function("vadd");
    let p = evil.alloc(4096).unwrap();
    let q_before_reset = evil.alloc(4096).unwrap();
    // Launch geometry past the device's limits, and parameters of the wrong size.
    for (what, grid, block, shared) in [
        ("grid y > 65535", [1, 65536, 1], [32, 1, 1], 0),
        ("grid x > 2^31-1", [1 << 31, 1, 1], [32, 1, 1], 0),
        ("empty grid", [0, 1, 1], [32, 1, 1], 0),
        ("block of 1025 threads", [1, 1, 1], [1025, 1, 1], 0),
        ("block z > 64", [1, 1, 1], [1, 1, 65], 0),
        ("1 GiB of shared memory", [1, 1, 1], [32, 1, 1], 1 << 30),
    ] {
        expect(what, launch_raw(&evil, f, grid, block, shared, &v.params), CUDA_ERROR_INVALID_VALUE);
    }
    expect("short parameters", launch_raw(&evil, f, [1, 1, 1], [32, 1, 1], 0, &v.params[..20]), CUDA_ERROR_INVALID_VALUE);
    // Memory: out of bounds, wrapping, huge, double free, use after free.
    expect("read past the end", evil.read(p, 4097).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("read wrapping the address space", evil.read(u64::MAX - 8, 16).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("read larger than a chunk", evil.read(p, 1 << 40).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("copy past the end", evil.call(Op::MemcpyDtoD, &[&u64s(&[p, p + 2048, 4096])]).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("memset count overflow", evil.call(Op::Memset, &[&u64s(&[p]), &0u32.to_le_bytes(), &4u32.to_le_bytes(), &u64::MAX.to_le_bytes()]).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("memset of 3-byte elements", evil.call(Op::Memset, &[&u64s(&[p]), &0u32.to_le_bytes(), &3u32.to_le_bytes(), &1u64.to_le_bytes()]).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("allocation past the quota", evil.alloc(65 << 20).map(drop), CUDA_ERROR_OUT_OF_MEMORY);
    expect("allocation of 2^64-1 bytes", evil.alloc(u64::MAX).map(drop), CUDA_ERROR_OUT_OF_MEMORY);
    expect("zero-byte allocation", evil.alloc(0).map(drop), CUDA_ERROR_INVALID_VALUE);
    evil.free(p).unwrap();
    expect("double free", evil.free(p), CUDA_ERROR_INVALID_VALUE);
    expect("use after free", evil.read(p, 4).map(drop), CUDA_ERROR_INVALID_VALUE);
    // Handles never issued, modules that are nothing, requests that are no request.
    expect("unknown stream", evil.call(Op::StreamSynchronize, &[&u64s(&[0xdead])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("unknown event", evil.call(Op::EventQuery, &[&u64s(&[0xbeef])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("unknown module", evil.call(Op::ModuleUnload, &[&u64s(&[0x1234])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("a cubin (or garbage after an ELF magic)", evil.call(Op::ModuleLoad, &[b"\x7fELF garbage"]).map(drop), CUDA_ERROR_NO_BINARY_FOR_GPU);
    expect("garbage module", evil.call(Op::ModuleLoad, &[b"\x00\x01garbage"]).map(drop), CUDA_ERROR_INVALID_IMAGE);
    let cubin_only = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vadd_cubin_only.fatbin")).unwrap();
    expect("module without PTX", evil.call(Op::ModuleLoad, &[&cubin_only]).map(drop), CUDA_ERROR_NO_BINARY_FOR_GPU);
    expect("truncated request", evil.call(Op::MemAlloc, &[&[1, 2, 3]]).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("request with trailing bytes", evil.call(Op::MemFree, &[&[0; 9]]).map(drop), CUDA_ERROR_INVALID_VALUE);
    // Virtual memory: unknown physical handles, ranges that are not reserved or mapped.
    expect("map an unknown physical allocation", evil.call(Op::MemMap, &[&u64s(&[0x2000_0000_0000, 2 << 20, 0, 0x42])]).map(drop), CUDA_ERROR_INVALID_VALUE);
    let va = Proc::u64s(&evil.call(Op::MemAddressReserve, &[&u64s(&[4 << 20, 0, 0])]).unwrap())[0];
    let h = Proc::u64s(&evil.call(Op::MemCreate, &[&u64s(&[2 << 20])]).unwrap())[0];
    expect("map a bogus handle", evil.call(Op::MemMap, &[&u64s(&[va, 2 << 20, 0, h + 1])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("map outside the reservation", evil.call(Op::MemMap, &[&u64s(&[va + (4 << 20), 2 << 20, 0, h])]).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("unmap what is not mapped", evil.call(Op::MemUnmap, &[&u64s(&[va, 2 << 20])]).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("reserve 2^63 bytes", evil.call(Op::MemAddressReserve, &[&u64s(&[1 << 63, 0, 0])]).map(drop), CUDA_ERROR_OUT_OF_MEMORY);
    expect("release twice", evil.call(Op::MemRelease, &[&u64s(&[h])]).and_then(|_| evil.call(Op::MemRelease, &[&u64s(&[h])])).map(drop), CUDA_ERROR_INVALID_HANDLE);
    // The largest legal grid: it would run for hours; the VM's time limit stops it. That leaves
    // the context unusable, as a GPU's watchdog does (CUDA's sticky errors), until a reset.
    let mut none = v.params.clone();
    none[24..28].copy_from_slice(&0i32.to_le_bytes());
    expect("the largest grid", launch_raw(&evil, f, [i32::MAX as u32, 65535, 65535], [1024, 1, 1], 0, &none), CUDA_ERROR_LAUNCH_TIMEOUT);
    expect("an allocation after the stopped kernel", evil.alloc(4096).map(drop), CUDA_ERROR_LAUNCH_TIMEOUT);
    expect("a launch after the stopped kernel", v.run(), CUDA_ERROR_LAUNCH_TIMEOUT);
    expect("a reset with trailing bytes", evil.call(Op::SessionReset, &[&[0]]).map(drop), CUDA_ERROR_INVALID_VALUE);
    eprintln!("hostile inputs tried: {tried}");
    assert!(tried >= 38);
    evil.call(Op::SessionReset, &[]).unwrap();

    // The hostile VM's own session works again after the reset (its kernels kept, its memory
    // freed), and the other VM was never affected, with right results.
    assert_eq!(evil.read(q_before_reset, 4).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "memory held before the reset is gone");
    let v = Vadd::new(&evil, 1024);
    v.run().unwrap();
    let q = evil.alloc(1 << 20).unwrap();
    evil.write(q, &[9; 1000]).unwrap();
    assert_eq!(evil.read(q, 1000).unwrap(), vec![9; 1000]);
    gv.run().unwrap();
    let out = good.read(good_ptr, 4096 * 4).unwrap();
    assert!(out.chunks_exact(4).enumerate().all(|(i, x)| f32::from_le_bytes(x.try_into().unwrap()) == 2.0 * i as f32));
    drop((gv, v));
    drop((good, evil));
    let start = std::time::Instant::now();
    while m.registry.vms().iter().any(|v| v.stats.memory_used.load(std::sync::atomic::Ordering::Relaxed) != 0 || v.client_count() != 0) {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "resources left after the clients went away");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A memfd the mediator can map: `len` bytes, sealed against shrinking if `sealed`.
fn memfd(len: u64, sealed: bool) -> std::fs::File {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a NUL-terminated name and valid flags; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vgpu-test".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    if sealed {
        // SAFETY: fcntl on our descriptor with an integer argument.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) }, 0);
    }
    f
}

/// Pinned host memory shared with the mediator: only a sealed memfd holding what is claimed
/// (from a page-aligned offset) is taken; copies stay inside it; a handle is the client's own.
#[test]
fn shared_host_memory_is_checked() {
    use std::os::fd::AsFd;
    let (dir, _m) = start("host-memory");
    let p = Proc::connect(&dir.join("evil.sock"), 1).unwrap();
    let size = 1u64 << 20;
    let register = |f: &std::fs::File, claimed: u64| p.call_with_fd(Op::HostRegister, &[&claimed.to_le_bytes()], f.as_fd()).map(|r| Proc::u64s(&r)[0]);
    assert_eq!(register(&memfd(size, false), size), Err(CUDA_ERROR_INVALID_VALUE), "a file that could shrink under our mapping");
    assert_eq!(register(&memfd(size, true), size * 2), Err(CUDA_ERROR_INVALID_VALUE), "smaller than claimed");
    assert_eq!(p.call(Op::HostRegister, &[&size.to_le_bytes()]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "no descriptor");
    // From an offset into the file: page-aligned, and all of it inside the file.
    let at = |f: &std::fs::File, claimed: u64, offset: u64| p.call_with_fd(Op::HostRegister, &[&u64s(&[claimed, offset])], f.as_fd()).map(|r| Proc::u64s(&r)[0]);
    let f = memfd(size, true);
    assert_eq!(at(&f, 4096, 100), Err(CUDA_ERROR_INVALID_VALUE), "an offset not on a page");
    assert_eq!(at(&f, size, 4096), Err(CUDA_ERROR_INVALID_VALUE), "past the file's end from its offset");
    assert_eq!(at(&f, 4096, u64::MAX - 4095), Err(CUDA_ERROR_INVALID_VALUE), "offset overflow");
    let tail = at(&f, 8192, size - 8192).unwrap();
    let h = register(&f, size).unwrap();
    // A copy through it: the mediator reads what we wrote into the file.
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[7u8; 4096], 100).unwrap();
    let d = p.alloc(4096).unwrap();
    p.call(Op::MemcpyHtoDHost, &[&u64s(&[d, h, 100, 4096])]).unwrap();
    assert_eq!(p.read(d, 4096).unwrap(), vec![7u8; 4096]);
    p.memset32(d, 0x01010101, 1024).unwrap();
    p.call(Op::MemcpyDtoHHost, &[&u64s(&[d, h, 8192, 4096])]).unwrap();
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, 8192).unwrap();
    assert_eq!(back, vec![1u8; 4096]);
    // The registration from an offset reaches the file from there.
    p.call(Op::MemcpyDtoHHost, &[&u64s(&[d, tail, 4096, 4096])]).unwrap();
    f.read_exact_at(&mut back, size - 4096).unwrap();
    assert_eq!(back, vec![1u8; 4096]);
    assert_eq!(p.call(Op::MemcpyDtoHHost, &[&u64s(&[d, tail, 4097, 4096])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "past its end");
    for (what, args) in [
        ("past the end of the shared memory", [d, h, size - 100, 4096]),
        ("offset overflow", [d, h, u64::MAX, 2]),
        ("unknown handle", [d, h + 1, 0, 16]),
        ("outside device memory", [0x1000, h, 0, 16]),
    ] {
        assert_eq!(p.call(Op::MemcpyHtoDHost, &[&u64s(&args)]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "{what}");
        assert_eq!(p.call(Op::MemcpyDtoHHost, &[&u64s(&args)]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "{what}");
    }
    // The mediator keeps no descriptor per registration once mapped (a client may pin thousands
    // of buffers). Other tests of this binary open descriptors too: the bound leaves them room.
    let fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let before = fds();
    let many: Vec<u64> = (0..128).map(|_| register(&memfd(4096, true), 4096).unwrap()).collect();
    assert!(fds() < before + 64, "{} descriptors held for 128 registrations", fds() - before);
    for h in many {
        p.call(Op::HostUnregister, &[&u64s(&[h])]).unwrap();
    }
    // Another client cannot use this client's handle.
    let other = Proc::connect(&dir.join("good.sock"), 2).unwrap();
    let od = other.alloc(4096).unwrap();
    assert_eq!(other.call(Op::MemcpyHtoDHost, &[&u64s(&[od, h, 0, 16])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE));
    p.call(Op::HostUnregister, &[&u64s(&[h])]).unwrap();
    assert_eq!(p.call(Op::MemcpyHtoDHost, &[&u64s(&[d, h, 0, 16])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "after unregistering");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request over the protocol's size limit is refused with an error reply, its payload read
/// past; the connection and what the client holds live on. Module images over the limit go in
/// parts; parts out of order are refused.
#[test]
fn an_oversize_request_is_refused_and_the_connection_lives_on() {
    let (dir, _m) = start("oversize");
    let p = Proc::connect(&dir.join("good.sock"), 77).unwrap();
    let ptr = p.alloc(4096).unwrap();
    p.write(ptr, &[7u8; 4096]).unwrap();
    let big = vec![1u8; vgpu_uapi::proto::MAX_PAYLOAD as usize + 1];
    assert_eq!(p.call(Op::MemcpyHtoD, &[&ptr.to_le_bytes(), &big]).map(drop), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(p.read(ptr, 4096).unwrap(), vec![7u8; 4096], "the allocation after the refused request");
    // Parts must come in order from offset 0.
    assert_eq!(p.call(Op::ModuleImagePart, &[&8u64.to_le_bytes(), b"abcdefgh"]).map(drop), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(p.call(Op::ModuleLoad, &[]).map(drop), Err(CUDA_ERROR_INVALID_IMAGE));
    // A module in parts (libcuda sends those over MODULE_PART so; 1 KiB parts here) loads.
    let ptx = std::fs::read(support::KERNELS).unwrap();
    for (i, c) in ptx.chunks(1024).enumerate() {
        p.call(Op::ModuleImagePart, &[&((i * 1024) as u64).to_le_bytes(), c]).unwrap();
    }
    let reply = p.call(Op::ModuleLoad, &[]).unwrap();
    assert_eq!(reply.len(), 8, "a module handle");
}

/// CUDA arrays, 3D copies, texture and surface objects from a hostile guest: descriptors,
/// handles, extents and memory of every request are checked; nothing reaches another VM.
#[test]
fn arrays_copies_and_texture_objects_are_checked() {
    use vgpu_uapi::array::*;
    let (dir, _m) = start("arrays");
    let good = Proc::connect(&dir.join("good.sock"), 10).unwrap();
    let evil = Proc::connect(&dir.join("evil.sock"), 66).unwrap();
    let enc = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        v
    };
    let create = |p: &Proc, d: ArrayDesc| p.call(Op::ArrayCreate, &[&enc(&|v| d.encode(v))]).map(|r| Proc::u64s(&r)[0]);
    let float2d = ArrayDesc { width: 16, height: 8, depth: 0, format: FORMAT_FLOAT, channels: 1, flags: 0 };
    let good_array = create(&good, float2d).unwrap();
    let good_mem = good.alloc(4096).unwrap();
    let copy = |p: &Proc, c: Copy3D, data: &[u8]| p.call(Op::Memcpy3D, &[&enc(&|v| c.encode(v)), data]).map(drop);
    let to_array = |a: u64, x: u64, y: u64, w: u64, h: u64| Copy3D {
        src: CopySide { kind: MEM_HOST, ..Default::default() },
        dst: CopySide { kind: MEM_ARRAY, handle: a, x_bytes: x, y, ..Default::default() },
        width_bytes: w,
        height: h,
        depth: 1,
    };
    copy(&good, to_array(good_array, 0, 0, 64, 8), &[7u8; 512]).unwrap();
    let tex = |p: &Proc, r: ResourceDesc, s: SamplerDesc| p.call(Op::TexObjectCreate, &[&enc(&|v| { r.encode(v); s.encode(v) })]).map(|r| Proc::u64s(&r)[0]);

    let mut tried = 0;
    let mut expect = |what: &str, r: Result<(), CuResult>, code: CuResult| {
        tried += 1;
        assert_eq!(r, Err(code), "{what}");
    };
    // Descriptors.
    expect("3 channels", create(&evil, ArrayDesc { channels: 3, ..float2d }).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("width 0", create(&evil, ArrayDesc { width: 0, ..float2d }).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("past the 2D limit", create(&evil, ArrayDesc { width: MAX_TEXTURE2D_WIDTH + 1, ..float2d }).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("a cubemap", create(&evil, ArrayDesc { flags: ARRAY_CUBEMAP, ..float2d }).map(drop), CUDA_ERROR_NOT_SUPPORTED);
    expect("a block-compressed format", create(&evil, ArrayDesc { format: 0x91, ..float2d }).map(drop), CUDA_ERROR_NOT_SUPPORTED);
    expect("over the VM's quota", create(&evil, ArrayDesc { width: 4096, height: 4096, format: FORMAT_FLOAT, channels: 4, ..float2d }).map(drop), CUDA_ERROR_OUT_OF_MEMORY);
    expect("a truncated descriptor", evil.call(Op::ArrayCreate, &[&[1, 2, 3]]).map(drop), CUDA_ERROR_INVALID_VALUE);
    // Handles: another VM's array is not this one's.
    expect("other VM's array destroyed", evil.call(Op::ArrayDestroy, &[&u64s(&[good_array])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("other VM's array written", copy(&evil, to_array(good_array, 0, 0, 4, 1), &[0; 4]), CUDA_ERROR_INVALID_HANDLE);
    expect("other VM's array sampled", tex(&evil, ResourceDesc { kind: RESOURCE_ARRAY, handle: good_array, ..Default::default() }, SamplerDesc::default()).map(drop), CUDA_ERROR_INVALID_HANDLE);
    // Addresses are per session: while this one holds only its array, another VM's
    // allocation's address is nothing of its own.
    let a = create(&evil, float2d).unwrap();
    // Extents and data.
    expect("past the row", copy(&evil, to_array(a, 60, 0, 8, 1), &[0; 8]), CUDA_ERROR_INVALID_VALUE);
    expect("past the rows", copy(&evil, to_array(a, 0, 7, 4, 2), &[0; 8]), CUDA_ERROR_INVALID_VALUE);
    expect("offsets that overflow", copy(&evil, to_array(a, u64::MAX - 2, 0, 4, 1), &[0; 4]), CUDA_ERROR_INVALID_VALUE);
    expect("too little data", copy(&evil, to_array(a, 0, 0, 64, 2), &[0; 100]), CUDA_ERROR_INVALID_VALUE);
    expect("extents that overflow", copy(&evil, Copy3D { depth: u64::MAX, ..to_array(a, 0, 0, 64, 2) }, &[]), CUDA_ERROR_INVALID_VALUE);
    let from_array_to = |dst: u64, pitch: u64, h: u64| Copy3D {
        src: CopySide { kind: MEM_ARRAY, handle: a, ..Default::default() },
        dst: CopySide { kind: MEM_DEVICE, handle: dst, pitch, height: h, ..Default::default() },
        width_bytes: 64,
        height: 8,
        depth: 1,
    };
    let linear = |ptr: u64, size: u64| ResourceDesc { kind: RESOURCE_LINEAR, handle: ptr, format: FORMAT_FLOAT, channels: 1, width: size, height: 0, pitch: 0 };
    let point = SamplerDesc::default();
    expect("into another VM's memory", copy(&evil, from_array_to(good_mem, 64, 8), &[]), CUDA_ERROR_INVALID_VALUE);
    expect("a texture over another VM's memory", tex(&evil, linear(good_mem, 64), point).map(drop), CUDA_ERROR_INVALID_VALUE);
    let mem = evil.alloc(1024).unwrap();
    expect("past its own allocation", copy(&evil, from_array_to(mem, 256, 8), &[]), CUDA_ERROR_INVALID_VALUE);
    expect("a pitch below the width", copy(&evil, from_array_to(mem, 16, 8), &[]), CUDA_ERROR_INVALID_VALUE);
    let mut c = from_array_to(mem, 64, 8);
    c.src.kind = 9;
    expect("an unknown memory type", copy(&evil, c, &[]), CUDA_ERROR_INVALID_VALUE);
    c.src.kind = MEM_HOST;
    c.dst.kind = MEM_HOST;
    expect("host to host", copy(&evil, c, &[0; 512]), CUDA_ERROR_INVALID_VALUE);
    let big = Copy3D { src: CopySide { kind: MEM_HOST, ..Default::default() }, dst: CopySide { kind: MEM_DEVICE, handle: mem, pitch: 1 << 20, height: 9, ..Default::default() }, width_bytes: 1 << 20, height: 9, depth: 1 };
    expect("more host data than a request carries", copy(&evil, big, &[]), CUDA_ERROR_INVALID_VALUE);
    // Texture and surface objects.
    expect("a texture past its buffer", tex(&evil, linear(mem, 2048), point).map(drop), CUDA_ERROR_INVALID_VALUE);
    let pitched = ResourceDesc { kind: RESOURCE_PITCH2D, handle: mem, format: FORMAT_FLOAT, channels: 1, width: 8, height: 4, pitch: 40 };
    expect("an unaligned pitch", tex(&evil, pitched, point).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("an unknown address mode", tex(&evil, linear(mem, 64), SamplerDesc { address: [7, 0, 0], ..point }).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("a mipmapped array", tex(&evil, ResourceDesc { kind: RESOURCE_MIPMAPPED_ARRAY, handle: a, ..Default::default() }, point).map(drop), CUDA_ERROR_NOT_SUPPORTED);
    let int_linear = ResourceDesc { format: FORMAT_SIGNED_INT32, ..linear(mem, 64) };
    expect("linear filtering of integers", tex(&evil, int_linear, SamplerDesc { filter: FILTER_LINEAR, ..point }).map(drop), CUDA_ERROR_INVALID_VALUE);
    let surf = |r: ResourceDesc| evil.call(Op::SurfObjectCreate, &[&enc(&|v| r.encode(v))]).map(|r| Proc::u64s(&r)[0]);
    expect("a surface without surface load/store", surf(ResourceDesc { kind: RESOURCE_ARRAY, handle: a, ..Default::default() }).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("a surface over linear memory", surf(linear(mem, 64)).map(drop), CUDA_ERROR_INVALID_VALUE);
    let t = tex(&evil, ResourceDesc { kind: RESOURCE_ARRAY, handle: a, ..Default::default() }, point).unwrap();
    expect("a texture destroyed as a surface", evil.call(Op::SurfObjectDestroy, &[&u64s(&[t])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    evil.call(Op::TexObjectDestroy, &[&u64s(&[t])]).unwrap();
    expect("a texture destroyed twice", evil.call(Op::TexObjectDestroy, &[&u64s(&[t])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    // The array's memory is the array's: not freed as an allocation.
    evil.call(Op::ArrayDestroy, &[&u64s(&[a])]).unwrap();
    expect("an array destroyed twice", evil.call(Op::ArrayDestroy, &[&u64s(&[a])]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    println!("{tried} bad array, copy and texture requests refused");
    // The other VM's array is intact.
    let back = Copy3D {
        src: CopySide { kind: MEM_ARRAY, handle: good_array, ..Default::default() },
        dst: CopySide { kind: MEM_HOST, ..Default::default() },
        width_bytes: 64,
        height: 8,
        depth: 1,
    };
    assert_eq!(good.call(Op::Memcpy3D, &[&enc(&|v| back.encode(v))]).unwrap(), vec![7u8; 512]);
}

#[test]
fn sharing_is_confined_to_the_vm_and_leaks_nothing() {
    use vgpu_uapi::share::{KIND_EVENT, KIND_MEMORY, KIND_PHYSICAL};
    let (dir, _m) = start("share");
    let good = Proc::connect(&dir.join("good.sock"), 10).unwrap();
    let good2 = Proc::connect(&dir.join("good.sock"), 11).unwrap();
    let evil = Proc::connect(&dir.join("evil.sock"), 66).unwrap();
    let (free_before, _) = good.mem_get_info();
    let export = |p: &Proc, kind: u32, what: u64| p.call(Op::ShareExport, &[&kind.to_le_bytes(), &what.to_le_bytes()]);
    let import = |p: &Proc, kind: u32, token: &[u8]| p.call(Op::ShareImport, &[&kind.to_le_bytes(), token]).map(|r| Proc::u64s(&r));
    let close = |p: &Proc, base: u64| p.call(Op::ShareClose, &[&base.to_le_bytes()]).map(drop);

    // The good VM shares memory, a physical allocation and an event between its processes.
    let mem = good.alloc(8192).unwrap();
    good.write(mem, &[9u8; 8192]).unwrap();
    let mem_token = export(&good, KIND_MEMORY, mem + 100).unwrap();
    assert_eq!(export(&good, KIND_MEMORY, mem).unwrap(), mem_token, "the same allocation, the same token");
    let phys = Proc::u64s(&good.call(Op::MemCreate, &[&u64s(&[2 << 20])]).unwrap())[0];
    let phys_token = export(&good, KIND_PHYSICAL, phys).unwrap();
    let event = Proc::u64s(&good.call(Op::EventCreate, &[&6u32.to_le_bytes()]).unwrap())[0];
    let event_token = export(&good, KIND_EVENT, event).unwrap();

    let mut tried = 0;
    let mut expect = |what: &str, r: Result<(), CuResult>, code: CuResult| {
        tried += 1;
        assert_eq!(r, Err(code), "{what}");
    };
    // Another VM's tokens open nothing, of any kind.
    expect("other VM's memory token", import(&evil, KIND_MEMORY, &mem_token).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("other VM's physical token", import(&evil, KIND_PHYSICAL, &phys_token).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("other VM's event token", import(&evil, KIND_EVENT, &event_token).map(drop), CUDA_ERROR_INVALID_HANDLE);
    // Another VM's objects cannot be exported (before this session has any of its own).
    expect("other VM's memory exported", export(&evil, KIND_MEMORY, mem).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("other VM's physical allocation exported", export(&evil, KIND_PHYSICAL, phys).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("other VM's event exported", export(&evil, KIND_EVENT, event).map(drop), CUDA_ERROR_INVALID_HANDLE);
    // Malformed requests and tokens.
    expect("a token of the wrong kind", import(&good2, KIND_EVENT, &mem_token).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("a made-up token", import(&good2, KIND_MEMORY, &[0x5a; 16]).map(drop), CUDA_ERROR_INVALID_HANDLE);
    expect("a short token", import(&good2, KIND_MEMORY, &mem_token[..15]).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("an unknown kind", export(&good, 9, mem).map(drop), CUDA_ERROR_INVALID_VALUE);
    let timed = Proc::u64s(&good.call(Op::EventCreate, &[&0u32.to_le_bytes()]).unwrap())[0];
    expect("an event without CU_EVENT_INTERPROCESS", export(&good, KIND_EVENT, timed).map(drop), CUDA_ERROR_INVALID_VALUE);
    expect("closing what was not opened", close(&good2, mem), CUDA_ERROR_INVALID_VALUE);

    // Within the VM: the second process maps the first one's memory; writes are seen both ways.
    let opened = import(&good2, KIND_MEMORY, &mem_token).unwrap();
    assert_eq!(opened[1], 8192);
    assert_eq!(import(&good2, KIND_MEMORY, &mem_token).unwrap()[0], opened[0], "opened twice: one mapping");
    assert_eq!(good2.read(opened[0], 8192).unwrap(), vec![9u8; 8192]);
    good2.write(opened[0] + 10, &[1, 2, 3]).unwrap();
    assert_eq!(good.read(mem + 10, 3).unwrap(), [1, 2, 3]);
    expect("freeing opened memory", good2.free(opened[0]), CUDA_ERROR_INVALID_VALUE);
    let ph = import(&good2, KIND_PHYSICAL, &phys_token).unwrap();
    assert_eq!(ph[1], 2 << 20);
    import(&good2, KIND_EVENT, &event_token).unwrap();
    // Freed by its owner: the token opens nothing more, what was opened stays readable.
    good.free(mem).unwrap();
    expect("a token of freed memory", import(&good2, KIND_MEMORY, &mem_token).map(drop), CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(good2.read(opened[0] + 10, 3).unwrap(), [1, 2, 3]);
    close(&good2, opened[0]).unwrap();
    assert!(good2.read(opened[0], 1).is_ok(), "opened twice, closed once: still mapped");
    close(&good2, opened[0]).unwrap();
    assert_eq!(good2.read(opened[0], 1), Err(CUDA_ERROR_INVALID_VALUE), "still mapped after its last close");
    // The owner going away takes its exports with it.
    drop(good);
    std::thread::sleep(std::time::Duration::from_millis(300));
    expect("a token of a process that ended", import(&good2, KIND_PHYSICAL, &phys_token).map(drop), CUDA_ERROR_INVALID_HANDLE);
    good2.call(Op::MemRelease, &[&u64s(&[ph[0]])]).unwrap();
    println!("{tried} bad sharing requests refused");
    // Everything shared went back to the device.
    assert_eq!(good2.mem_get_info().0, free_before, "device memory leaked through sharing");
}

/// The zero-copy guest data path: only the device process's own connection shares the VM's RAM
/// and its pins; a channel's connection reaches only its channel's pinned pages, in pin order,
/// and nothing once they are unpinned, unmapped, or the device process is gone; no other VM
/// reaches them at all.
#[test]
fn guest_pages_are_reached_only_through_the_device_process_pins() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    use vgpu_uapi::proto::{GUEST_UNPIN_ALL, HELLO_GUEST_PINNED};
    const PAGE: u64 = 4096;
    const RAM: u64 = 1 << 20;
    let (dir, m) = start("guest-pages");
    let evil = dir.join("evil.sock");
    let ram = memfd(64 * PAGE, true);
    for i in 0..64u64 {
        ram.write_all_at(&[i as u8; PAGE as usize], i * PAGE).unwrap();
    }
    let control = Proc::bare(&evil);
    let share = |p: &Proc, f: &std::fs::File, gpa: u64, size: u64| p.call_with_fd(Op::GuestMemory, &[&u64s(&[gpa, size, 0])], f.as_fd());
    assert_eq!(share(&control, &memfd(64 * PAGE, false), RAM, 64 * PAGE).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "unsealed RAM");
    assert_eq!(share(&control, &ram, RAM, 65 * PAGE).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "past the file's end");
    assert_eq!(control.call(Op::GuestMemory, &[&u64s(&[RAM, PAGE, 0])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "no descriptor");
    let token = share(&control, &ram, RAM, 64 * PAGE).unwrap();
    assert_eq!(token.len(), 16);

    // Channel 2's connection, as the device process opens it, and its guest process.
    let (chan, attached, flags) = Proc::guest_channel(&evil, &token, 2, 77);
    assert_eq!((attached, flags & HELLO_GUEST_PINNED), (Ok(()), HELLO_GUEST_PINNED));
    let (_, forged, flags) = Proc::guest_channel(&evil, &[9; 16], 2, 78);
    assert_eq!((forged, flags & HELLO_GUEST_PINNED), (Err(CUDA_ERROR_INVALID_VALUE), 0), "a made-up token");
    let (_, other_vm, _) = Proc::guest_channel(&dir.join("good.sock"), &token, 2, 79);
    assert_eq!(other_vm, Err(CUDA_ERROR_INVALID_VALUE), "another VM's device process");
    assert_eq!(chan.call(Op::GuestChannel, &[&token, &3u32.to_le_bytes()]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "not the first request");
    // A guest process cannot pin or share RAM itself.
    let pin_args = |ch: u32, id: u32, flags: u32, offset: u32, len: u64, pages: &[u64]| {
        let mut a: Vec<u8> = [ch, id, flags, offset].iter().flat_map(|w| w.to_le_bytes()).collect();
        a.extend_from_slice(&len.to_le_bytes());
        a.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        a.extend_from_slice(&u64s(pages));
        a
    };
    let page = |i: u64| RAM + i * PAGE;
    let region = pin_args(2, 5, 0, 10, 3 * PAGE - 10, &[page(3), page(1), page(2)]);
    assert_eq!(chan.call(Op::GuestPin, &[&region]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "pinned by the guest");
    assert_eq!(share(&chan, &ram, 0, PAGE).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "RAM shared by the guest");
    for (what, bad) in [
        ("a page outside the VM's RAM", pin_args(2, 6, 0, 0, 10, &[page(64)])),
        ("an unaligned page", pin_args(2, 6, 0, 0, 10, &[page(1) + 8])),
        ("longer than its pages", pin_args(2, 6, 0, 100, PAGE, &[page(1)])),
        ("a channel not attached", pin_args(3, 6, 0, 0, 10, &[page(1)])),
        ("fewer pages than it counts", pin_args(2, 6, 0, 0, 10, &[page(1)])[..32].to_vec()),
        ("unknown flags", pin_args(2, 6, 8, 0, 10, &[page(1)])),
    ] {
        assert_eq!(control.call(Op::GuestPin, &[&bad]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "{what}");
    }
    control.call(Op::GuestPin, &[&region]).unwrap();
    assert_eq!(control.call(Op::GuestPin, &[&region]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "pinned twice");
    control.call(Op::GuestPin, &[&pin_args(2, 6, 1, 0, PAGE, &[page(9)])]).unwrap();

    // Host to device: the bytes of pages 3, 1, 2 from offset 10, in that order.
    let d = chan.alloc(4 * PAGE).unwrap();
    let len = 3 * PAGE - 10;
    chan.call(Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, len])]).unwrap();
    let want: Vec<u8> = [3u8, 1, 2].iter().flat_map(|&b| vec![b; PAGE as usize]).skip(10).collect();
    assert_eq!(chan.read(d, len).unwrap(), want);
    // Device to host: into page 1 (region bytes PAGE - 10 .. 2 PAGE - 10) only.
    chan.memset32(d, 0xabababab, PAGE / 4).unwrap();
    chan.call(Op::MemcpyDtoHHost, &[&u64s(&[d, 5, PAGE - 10, PAGE])]).unwrap();
    let mut back = vec![0u8; 3 * PAGE as usize];
    ram.read_exact_at(&mut back, 0).unwrap();
    assert_eq!((back[..PAGE as usize].iter().all(|&b| b == 0), back[PAGE as usize..2 * PAGE as usize].iter().all(|&b| b == 0xab)), (true, true));
    assert!(back[2 * PAGE as usize..].iter().all(|&b| b == 2), "page 2 untouched");
    for (what, op, args) in [
        ("past the region", Op::MemcpyHtoDHost, [d, 5, 1, len]),
        ("offset overflow", Op::MemcpyDtoHHost, [d, 5, u64::MAX, 2]),
        ("a region never pinned", Op::MemcpyHtoDHost, [d, 7, 0, 16]),
        ("an id past u32", Op::MemcpyHtoDHost, [d, 5 | 1 << 32, 0, 16]),
        ("into a read-only region", Op::MemcpyDtoHHost, [d, 6, 0, 16]),
        ("outside device memory", Op::MemcpyHtoDHost, [0x1000, 5, 0, 16]),
    ] {
        assert_eq!(chan.call(op, &[&u64s(&args)]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "{what}");
    }
    chan.call(Op::MemcpyHtoDHost, &[&u64s(&[d, 6, 0, 16])]).unwrap();
    assert_eq!(chan.read(d, 16).unwrap(), vec![9u8; 16], "read-only regions are read");
    // A plain client of the VM names host memory of its own, never a channel's region.
    let plain = Proc::connect(&evil, 80).unwrap();
    let pd = plain.alloc(PAGE).unwrap();
    assert_eq!(plain.call(Op::MemcpyHtoDHost, &[&u64s(&[pd, 5, 0, 16])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE));

    // Accounted as zero-copy, per VM.
    let report = vgpu_host::admin::vms(&m);
    let evil_report = report.iter().find(|v| v.name == "evil").unwrap();
    assert_eq!(evil_report.bytes_zero_copy, len + PAGE + 16);

    // Unpinned, unmapped, or the device process gone: refused, the pages never touched.
    control.call(Op::GuestUnpin, &[&2u32.to_le_bytes(), &6u32.to_le_bytes()]).unwrap();
    assert_eq!(chan.call(Op::MemcpyHtoDHost, &[&u64s(&[d, 6, 0, 16])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "unpinned");
    control.call(Op::GuestMemoryUnmap, &[&u64s(&[RAM, 64 * PAGE])]).unwrap();
    assert_eq!(chan.call(Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, 16])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "unmapped");
    share(&control, &ram, RAM, 64 * PAGE).unwrap();
    chan.call(Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, 16])]).unwrap();
    control.call(Op::GuestUnpin, &[&2u32.to_le_bytes(), &GUEST_UNPIN_ALL.to_le_bytes()]).unwrap();
    assert_eq!(chan.call(Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, 16])]).map(drop), Err(CUDA_ERROR_INVALID_VALUE), "channel released");
    control.call(Op::GuestPin, &[&region]).unwrap();
    drop(control);
    let gone = (0..200).find(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        chan.call(Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, 16])]) == Err(CUDA_ERROR_INVALID_VALUE)
    });
    assert!(gone.is_some(), "the device process's pins outlived its connection");
    // The channel's own work goes on.
    chan.write(d, &[1, 2, 3]).unwrap();
    assert_eq!(chan.read(d, 3).unwrap(), vec![1, 2, 3]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `ShmRing` for rings of `size` bytes with `fds` attached (whatever they are) on `sock`;
/// the mediator's answer (its status).
fn ask_for_rings(sock: &std::os::unix::net::UnixStream, size: u32, fds: &[std::os::fd::BorrowedFd<'_>]) -> u32 {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use vgpu_uapi::proto::{MsgHeader, HEADER_LEN, MSG_MAGIC};
    let h = MsgHeader { magic: MSG_MAGIC, op: Op::ShmRing as u32, seq: 3, status: 0, payload_len: 4, reserved: 0 };
    let mut msg = h.to_bytes().to_vec();
    msg.extend_from_slice(&size.to_le_bytes());
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &[std::io::IoSlice::new(&msg)], if raw.is_empty() { &[] } else { &cmsg }, MsgFlags::empty(), None).unwrap();
    assert_eq!(sent, msg.len());
    let mut hb = [0u8; HEADER_LEN];
    (&*sock).read_exact(&mut hb).unwrap();
    let r = MsgHeader::from_bytes(&hb);
    assert_eq!((r.op, r.seq), (h.op, h.seq));
    let mut body = vec![0u8; r.payload_len as usize];
    (&*sock).read_exact(&mut body).unwrap();
    r.status
}

/// One request through a device process's end of shared rings: (status, reply payload).
fn ring_call(r: &mut vgpu_client::shm_ring::Ring, op: Op, parts: &[&[u8]]) -> (u32, Vec<u8>) {
    use vgpu_uapi::proto::{MsgHeader, HEADER_LEN, MSG_MAGIC};
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let h = MsgHeader { magic: MSG_MAGIC, op: op as u32, seq: 9, status: 0, payload_len: len as u32, reserved: 0 };
    let spin = std::time::Duration::from_micros(20);
    r.write_all(&h.to_bytes(), spin).unwrap();
    for p in parts {
        r.write_all(p, spin).unwrap();
    }
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb, spin).unwrap();
    let rh = MsgHeader::from_bytes(&hb);
    assert_eq!((rh.op, rh.seq), (h.op, h.seq), "replies in step");
    let mut body = vec![0u8; rh.payload_len as usize];
    r.read_exact(&mut body, spin).unwrap();
    (rh.status, body)
}

/// A connection that moves to shared rings (`Op::ShmRing`, what vgpu-stub's channels do): bad
/// requests for them are refused and the connection goes on over its socket; requests and
/// replies larger than the rings cross them intact; counters that lie end that connection only;
/// a device process that dies while the mediator sleeps on its rings leaves nothing behind.
#[test]
fn shared_rings_are_checked_and_end_with_their_connection() {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::net::UnixStream;
    use vgpu_client::shm_ring::{upgrade, Ring};
    use vgpu_uapi::shm_ring::{file_size, MIN_SIZE, REQ_TAIL};
    let (dir, _m) = start("rings");
    let sock_path = dir.join("evil.sock");
    let hello = |pid: u32| [PROTOCOL_VERSION.to_le_bytes(), pid.to_le_bytes(), 0u32.to_le_bytes()].concat();
    let timeout = std::time::Duration::from_secs(10);
    let s = UnixStream::connect(&sock_path).unwrap();
    {
        let (_dev, fds) = Ring::create(MIN_SIZE, s.as_fd()).unwrap();
        let [file, mb, db] = fds.each_ref().map(|f| f.as_fd());
        let unsealed = memfd(file_size(MIN_SIZE) as u64, false);
        let bad: [(&str, u32, Vec<BorrowedFd<'_>>); 6] = [
            ("a size that is not a power of two", MIN_SIZE + 1, vec![file, mb, db]),
            ("a size larger than the file", MIN_SIZE * 2, vec![file, mb, db]),
            ("two descriptors", MIN_SIZE, vec![file, mb]),
            ("no descriptors", MIN_SIZE, vec![]),
            ("an unsealed file", MIN_SIZE, vec![unsealed.as_fd(), mb, db]),
            ("a doorbell that is a file", MIN_SIZE, vec![file, file.as_fd(), db]),
        ];
        for (what, size, fds) in bad {
            assert_eq!(ask_for_rings(&s, size, &fds), CUDA_ERROR_INVALID_VALUE, "{what}");
        }
    }
    // Refused, the connection goes on over its socket, then moves to the rings.
    let mut ring = upgrade(&s, MIN_SIZE, timeout).unwrap();
    assert_eq!(ring_call(&mut ring, Op::Hello, &[&hello(41)]).0, CUDA_SUCCESS);
    let (st, ptr) = ring_call(&mut ring, Op::MemAlloc, &[&(1u64 << 20).to_le_bytes()]);
    assert_eq!(st, CUDA_SUCCESS);
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert_eq!(ring_call(&mut ring, Op::MemcpyHtoD, &[&ptr, &data]).0, CUDA_SUCCESS);
    let (st, back) = ring_call(&mut ring, Op::MemcpyDtoH, &[&ptr, &(1u64 << 20).to_le_bytes()]);
    assert_eq!(st, CUDA_SUCCESS);
    assert!(back == data, "1 MiB through 64 KiB rings, both ways");
    assert_eq!(ask_for_rings_again(&mut ring), CUDA_ERROR_INVALID_VALUE, "a second upgrade");
    assert_eq!(ring_call(&mut ring, Op::MemGetInfo, &[]).0, CUDA_SUCCESS, "the rings stay after a refused second upgrade");
    let observer = Proc::connect(&sock_path, 43).unwrap();
    assert_eq!(observer.device_memory().1, 1 << 20, "the ring client's allocation");
    // The device process dies while the mediator sleeps on the rings: its session is freed.
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(ring);
    drop(s);
    let t = std::time::Instant::now();
    while observer.device_memory().1 != 0 {
        assert!(t.elapsed() < timeout, "the gone client's memory was not freed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Counters that lie: the mediator ends that connection (the socket closes) and lives on.
    let s = UnixStream::connect(&sock_path).unwrap();
    let (dev, fds) = Ring::create(MIN_SIZE, s.as_fd()).unwrap();
    let (file, mb) = (fds[0].try_clone().unwrap(), fds[1].try_clone().unwrap());
    let [a, b, c] = fds.each_ref().map(|f| f.as_fd());
    assert_eq!(ask_for_rings(&s, MIN_SIZE, &[a, b, c]), CUDA_SUCCESS);
    let map = memmap2::MmapOptions::new().len(file_size(MIN_SIZE)).map_raw(&file).unwrap();
    // SAFETY: REQ_TAIL is a 4-aligned word inside the mapping, which outlives the reference.
    let tail = unsafe { &*(map.as_mut_ptr().add(REQ_TAIL) as *const std::sync::atomic::AtomicU32) };
    tail.store(0xffff_0000, std::sync::atomic::Ordering::Release);
    nix::unistd::write(&mb, &1u64.to_ne_bytes()).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    assert_eq!(std::io::Read::read(&mut &s, &mut [0u8; 16]).unwrap(), 0, "the connection is closed");
    drop(dev);
    let other = Proc::connect(&sock_path, 44).unwrap();
    assert!(other.alloc(4096).is_ok(), "the mediator serves on");
    let _ = std::fs::remove_dir_all(&dir);
}

/// ShmRing sent through the rings themselves (after the upgrade): refused.
fn ask_for_rings_again(ring: &mut vgpu_client::shm_ring::Ring) -> u32 {
    ring_call(ring, Op::ShmRing, &[&vgpu_uapi::shm_ring::MIN_SIZE.to_le_bytes()]).0
}
