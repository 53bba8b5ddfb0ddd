//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the tests that replay what
//! the fuzzers found (`host/tests/fuzz_regressions.rs`): each takes arbitrary bytes, as a guest
//! could send them, and must neither panic nor hang.

use crate::backend::Backend;
use crate::dispatch::Connection;
use crate::profile::DeviceProfile;
use crate::sim::SimBackend;
use vgpu_uapi::proto::Op;

/// A small sim device: allocations the fuzzer asks for stay cheap.
fn backend() -> SimBackend {
    SimBackend::new(DeviceProfile::default(), 64 << 20)
}

/// A connection past its Hello.
fn connected(b: &SimBackend) -> Connection<'_> {
    let mut c = Connection::new(b);
    let mut hello = vgpu_uapi::PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    let _ = c.handle(Op::Hello as u32, &hello, &mut Vec::new());
    c
}

/// Requests as a client sends them, after a valid Hello: the input is a sequence of
/// (opcode u8, payload length u16 LE, payload). Kernel launches are left out (a launch of a
/// valid endless kernel runs to the sim's budget: a hang for a fuzzer, not a bug); module images
/// come from the input too.
pub fn mediator_requests(data: &[u8]) {
    let b = backend();
    let mut c = connected(&b);
    let mut rest = data;
    let mut out = Vec::new();
    while rest.len() >= 3 {
        let op = rest[0] as u32;
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let payload = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        if op == Op::Launch as u32 {
            continue;
        }
        out.clear();
        let _ = c.handle(op, payload, &mut out);
    }
    drop(c);
    // Whatever was done, the client's session is gone with it.
    assert_eq!(b.memory_usage(0).map(|u| u.1), Ok(0), "memory left after the session ended");
}

/// A module image (fatbin, ELF, PTX text) as cuModuleLoadData passes it, then every kernel's
/// lookup.
pub fn module_image(data: &[u8]) {
    let b = backend();
    let mut c = connected(&b);
    let mut out = Vec::new();
    if c.handle(Op::ModuleLoad as u32, data, &mut out).is_err() {
        return;
    }
    let module = out.clone();
    let mut names = Vec::new();
    if c.handle(Op::ModuleEnumerateFunctions as u32, &module, &mut names).is_ok() {
        let mut r = vgpu_uapi::wire::Reader::new(&names);
        let n = r.u32().unwrap_or(0);
        for _ in 0..n.min(64) {
            let Ok(len) = r.u32() else { break };
            let Ok(name) = r.bytes(len as usize) else { break };
            let mut req = module.clone();
            req.extend_from_slice(name);
            let _ = c.handle(Op::ModuleGetFunction as u32, &req, &mut Vec::new());
        }
    }
}

/// PTX text through the parser (the part of module loading that sees the most structure).
pub fn ptx_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::sim::ptx::Module::parse(text);
    }
}

/// The zero-copy guest data path (crate::guest) as a device process and its guest could drive
/// it: a VM whose RAM is 32 pages at 1 MiB (a sealed memfd), channel 0 attached on a second
/// connection with a device allocation of 16 pages. The input is a sequence of steps, each a
/// selector byte and its fields (missing bytes read as 0): pins of up to 8 pages (in the RAM,
/// or anywhere), unpins, unmaps and maps of RAM, copies both ways between the allocation (or
/// any address) and a region, a channel attaching anew, and raw requests. Nothing may panic,
/// and once both connections are gone the device holds no memory and the VM no guest memory.
pub fn guest_pages(data: &[u8]) {
    use crate::config::{SchedulerConfig, VmConfig};
    use crate::dispatch::Share;
    use crate::vms::{Gpu, Vm};
    use std::sync::Arc;
    const PAGE: u64 = 4096;
    const RAM: u64 = 1 << 20;
    let backend: Arc<dyn Backend> = Arc::new(backend());
    let s = SchedulerConfig::default();
    let gpu = Arc::new(Gpu {
        name: "gpu0".into(),
        backend: backend.clone(),
        sched: crate::sched::Scheduler::new(std::time::Duration::from_millis(s.time_slice_ms), std::time::Duration::from_micros(s.anticipation_us)),
    });
    let vm = Arc::new(Vm::new(&VmConfig::unlimited("fuzz", "gpu0", std::path::Path::new("")), gpu.clone()));
    let Ok((a, _b)) = std::os::unix::net::UnixStream::pair() else { return };
    let connection = |vm: &Arc<Vm>| {
        let client = vm.register(&a, Default::default()).ok()?;
        Some(Connection::shared(backend.as_ref(), Share { vm: vm.clone(), gpu: gpu.clone(), client }))
    };
    let (Some(mut control), Some(mut chan)) = (connection(&vm), connection(&vm)) else { return };
    let Some(ram) = sealed_memfd(32 * PAGE) else { return };
    let share = |c: &mut Connection<'_>| {
        let Ok(fd) = ram.try_clone() else { return Vec::new() };
        c.attach_fds(&mut vec![fd.into()]);
        let mut token = Vec::new();
        let args: Vec<u8> = [RAM, 32 * PAGE, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let _ = c.handle(Op::GuestMemory as u32, &args, &mut token);
        token
    };
    let token = share(&mut control);
    let mut attach = token.clone();
    attach.extend_from_slice(&0u32.to_le_bytes());
    let _ = chan.handle(Op::GuestChannel as u32, &attach, &mut Vec::new());
    let mut hello = vgpu_uapi::PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    let _ = chan.handle(Op::Hello as u32, &hello, &mut Vec::new());
    let mut dev = Vec::new();
    let _ = chan.handle(Op::MemAlloc as u32, &(16 * PAGE).to_le_bytes(), &mut dev);
    let dev = dev.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));

    let rest = std::cell::Cell::new(data);
    // The next `n` bytes as a little-endian number (0 past the end).
    let take = |n: usize| {
        let (head, tail) = rest.get().split_at(n.min(rest.get().len()));
        rest.set(tail);
        let mut b = [0u8; 8];
        b[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(b)
    };
    let mut out = Vec::new();
    for _ in 0..256 {
        if rest.get().is_empty() {
            break;
        }
        let sel = take(1);
        out.clear();
        let (c, op, args): (&mut Connection<'_>, Op, Vec<u8>) = match sel % 8 {
            0 => {
                let (channel, id, flags, offset, len, n) = (take(1) % 3, take(1), take(1) % 3, take(2), take(3), take(1) % 9);
                let mut a: Vec<u8> = [channel, id, flags, offset].iter().flat_map(|&v| (v as u32).to_le_bytes()).collect();
                a.extend_from_slice(&len.to_le_bytes());
                a.extend_from_slice(&(n as u32).to_le_bytes());
                for _ in 0..n {
                    let p = take(1);
                    let gpa = if p & 0x80 != 0 { take(8) } else { RAM + (p % 40) * PAGE };
                    a.extend_from_slice(&gpa.to_le_bytes());
                }
                (&mut control, Op::GuestPin, a)
            }
            1 => {
                let id = if take(1) == 0xff { u32::MAX } else { take(1) as u32 };
                (&mut control, Op::GuestUnpin, [(take(1) % 3) as u32, id].iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            2 => (&mut control, Op::GuestMemoryUnmap, [RAM + (take(1) % 40) * PAGE, take(2) * PAGE].iter().flat_map(|v| v.to_le_bytes()).collect()),
            3 => {
                share(&mut control);
                continue;
            }
            sel @ (4 | 5) => {
                let at = if take(1) & 1 == 0 { dev + take(2) } else { take(8) };
                let op = if sel == 4 { Op::MemcpyHtoDHost } else { Op::MemcpyDtoHHost };
                (&mut chan, op, [at, take(1), take(3), take(3)].iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            6 => (&mut chan, Op::GuestChannel, attach.clone()),
            _ => {
                let (op, len) = (take(1) as u32 + 80, take(1) as usize);
                let payload: Vec<u8> = (0..len).map(|_| take(1) as u8).collect();
                let c = if op % 2 == 0 { &mut control } else { &mut chan };
                let _ = c.handle(op, &payload, &mut out);
                continue;
            }
        };
        let _ = c.handle(op as u32, &args, &mut out);
    }
    drop(chan);
    drop(control);
    assert_eq!(backend.memory_usage(0).map(|u| u.1), Ok(0), "device memory left after the connections ended");
    let token: Result<crate::share::Token, _> = token.as_slice().try_into();
    if let Ok(t) = token {
        assert!(vm.guests.find(&t).is_none(), "guest memory outlived its control connection");
    }
}

fn sealed_memfd(size: u64) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is ours.
    let fd = unsafe { libc::memfd_create(c"vgpu-fuzz-ram".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(size).ok()?;
    // SAFETY: F_ADD_SEALS on a descriptor we own.
    (unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) } == 0).then_some(f)
}

/// A device process's requests through the shared rings (`Op::ShmRing`, the smallest: 64 KiB,
/// which the input wraps soonest) into the mediator's own serving loop
/// (`server::serve_requests`) and its framing: headers and payloads split across the ring's
/// wrap, over-long payloads skipped, a bad magic closing the connection, a second ShmRing over
/// the rings. The input is the bytes the device process writes (its kernel launches dropped
/// where the framing can be followed, as in `mediator_requests`); it reads and drops the
/// replies as they come, then goes away. The mediator must end the connection (no hang), never
/// panic, and leave no memory held.
pub fn shm_ring_requests(data: &[u8]) {
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    use vgpu_client::shm_ring;
    use vgpu_uapi::proto::{MsgHeader, HEADER_LEN};
    // The launches, where the frames can be followed; after a header that does not validate,
    // the rest goes as it is.
    let mut bytes = Vec::with_capacity(data.len());
    let mut rest = data;
    while rest.len() >= HEADER_LEN {
        let h = MsgHeader::from_bytes(rest[..HEADER_LEN].try_into().unwrap());
        if h.validate().is_err() {
            break;
        }
        let end = (HEADER_LEN + h.payload_len as usize).min(rest.len());
        if h.op != Op::Launch as u32 && h.op != Op::LaunchCooperative as u32 {
            bytes.extend_from_slice(&rest[..end]);
        }
        rest = &rest[end..];
    }
    bytes.extend_from_slice(rest);

    let b = backend();
    let Ok((device, mediator)) = UnixStream::pair() else { return };
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let mut c = connected(&b);
            let _ = crate::server::serve_requests(mediator, &mut c, "fuzz", false);
        });
        if let Ok(mut ring) = shm_ring::upgrade(&device, vgpu_uapi::shm_ring::MIN_SIZE, Duration::from_secs(10)) {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut sent = 0;
            let mut sink = vec![0u8; 64 << 10];
            // Until all is written, or the mediator ended the connection (a bad magic).
            while sent < bytes.len() && Instant::now() < deadline && !server.is_finished() {
                let Ok(n) = ring.write(&bytes[sent..]) else { break };
                sent += n;
                let Ok(m) = ring.read(&mut sink) else { break };
                if n == 0 && m == 0 {
                    std::thread::yield_now();
                }
            }
        }
        // The device process is gone: the mediator still serves what it wrote (a reader gets a
        // ring's last bytes before the hang-up), then ends the connection.
        drop(device);
        server.join().expect("the mediator's serving loop panicked");
    });
    // Whatever was done, the client's session is gone with it.
    assert_eq!(b.memory_usage(0).map(|u| u.1), Ok(0), "memory left after the session ended");
}
