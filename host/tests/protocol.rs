//! The mediator against hostile or broken clients: every malformed request gets an error reply,
//! the mediator keeps serving, and a client's resources go away with its connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use vgpu_host::backend::Backend;
use vgpu_host::dispatch::Connection;
use vgpu_host::profile::DeviceProfile;
use vgpu_host::sim::SimBackend;
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::*;

fn backend() -> SimBackend {
    SimBackend::new(DeviceProfile::default(), 64 << 20)
}

/// A Hello request's payload: protocol version, client pid, HELLO_* flags.
fn hello_payload(pid: u32, flags: u32) -> Vec<u8> {
    let mut p = PROTOCOL_VERSION_BYTES.to_vec();
    p.extend_from_slice(&pid.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p
}

/// A mediator serving the sim backend on a fresh socket in its own thread: (dir, socket).
fn serve(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("vgpu-proto-{tag}-{}", std::process::id()));
    let sock = dir.join("s.sock");
    let listener = vgpu_host::server::bind(&sock).unwrap();
    let b: Arc<dyn Backend> = Arc::new(backend());
    std::thread::spawn(move || vgpu_host::server::serve_listener(listener, b));
    (dir, sock)
}

fn hello(c: &mut Connection) {
    let p = hello_payload(1234, 0);
    let mut out = Vec::new();
    c.handle(Op::Hello as u32, &p, &mut out).unwrap();
}

const PROTOCOL_VERSION_BYTES: [u8; 4] = vgpu_uapi::PROTOCOL_VERSION.to_le_bytes();

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn every_opcode_rejects_truncated_and_random_payloads_without_panicking() {
    let b = backend();
    let mut c = Connection::new(&b);
    hello(&mut c);
    let mut rejected = 0;
    for op in 0..80u32 {
        for len in [0usize, 1, 3, 7, 8, 15, 16, 23, 24, 31, 40, 64, 200] {
            for seed in 0..4u64 {
                let payload = noise(op as u64 * 1000 + len as u64 * 10 + seed, len);
                let mut out = Vec::new();
                if c.handle(op, &payload, &mut out).is_err() {
                    rejected += 1;
                }
            }
        }
    }
    assert!(rejected > 3000, "only {rejected} rejections");
    // The session still works after all that.
    let mut out = Vec::new();
    c.handle(Op::MemAlloc as u32, &4096u64.to_le_bytes(), &mut out).unwrap();
    assert_eq!(out.len(), 8);
}

#[test]
fn unknown_opcodes_and_requests_before_hello_are_errors() {
    let b = backend();
    let mut c = Connection::new(&b);
    let mut out = Vec::new();
    assert_eq!(c.handle(Op::MemAlloc as u32, &64u64.to_le_bytes(), &mut out).unwrap_err().code, CUDA_ERROR_NOT_INITIALIZED);
    hello(&mut c);
    assert_eq!(c.handle(9999, &[], &mut out).unwrap_err().code, CUDA_ERROR_NOT_SUPPORTED);
    let mut bad = 99u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&1u32.to_le_bytes());
    bad.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(c.handle(Op::Hello as u32, &bad, &mut out).unwrap_err().code, CUDA_ERROR_NOT_SUPPORTED, "wrong protocol version");
}

#[test]
fn handles_and_addresses_are_validated() {
    let b = backend();
    let mut c = Connection::new(&b);
    hello(&mut c);
    let mut out = Vec::new();
    c.handle(Op::MemAlloc as u32, &256u64.to_le_bytes(), &mut out).unwrap();
    let p = u64::from_le_bytes(out[..8].try_into().unwrap());
    let call = |c: &mut Connection, op: Op, args: &[u64]| {
        let bytes: Vec<u8> = args.iter().flat_map(|a| a.to_le_bytes()).collect();
        c.handle(op as u32, &bytes, &mut Vec::new()).map_err(|e| e.code)
    };
    // Reads/writes past the allocation, in the gap, or at wild addresses.
    assert!(call(&mut c, Op::MemcpyDtoH, &[p, 257]).is_err());
    assert!(call(&mut c, Op::MemcpyDtoH, &[p + 256, 1]).is_err());
    assert!(call(&mut c, Op::MemcpyDtoH, &[0, 8]).is_err());
    assert!(call(&mut c, Op::MemcpyDtoH, &[u64::MAX - 3, 8]).is_err());
    assert!(call(&mut c, Op::MemcpyDtoD, &[p, p + 128, 129]).is_err());
    assert!(call(&mut c, Op::MemcpyDtoH, &[p, u64::MAX]).is_err(), "huge read");
    assert_eq!(call(&mut c, Op::Memset, &[p, 0]).unwrap_err(), CUDA_ERROR_INVALID_VALUE, "short memset");
    // Handles that were never issued.
    assert_eq!(call(&mut c, Op::StreamDestroy, &[0xdead]).unwrap_err(), CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(call(&mut c, Op::EventRecord, &[0xdead, 0]).unwrap_err(), CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(call(&mut c, Op::ModuleUnload, &[0xdead]).unwrap_err(), CUDA_ERROR_INVALID_HANDLE);
    // Double free.
    call(&mut c, Op::MemFree, &[p]).unwrap();
    assert_eq!(call(&mut c, Op::MemFree, &[p]).unwrap_err(), CUDA_ERROR_INVALID_VALUE);
    // A module image that is nothing.
    assert!(c.handle(Op::ModuleLoad as u32, b"garbage", &mut Vec::new()).is_err());
}

#[test]
fn another_clients_allocation_is_out_of_reach() {
    let b = backend();
    let (mut c1, mut c2) = (Connection::new(&b), Connection::new(&b));
    hello(&mut c1);
    hello(&mut c2);
    let mut out = Vec::new();
    c1.handle(Op::MemAlloc as u32, &4096u64.to_le_bytes(), &mut out).unwrap();
    let p = u64::from_le_bytes(out[..8].try_into().unwrap());
    let mut args = p.to_le_bytes().to_vec();
    args.extend_from_slice(&16u64.to_le_bytes());
    assert!(c2.handle(Op::MemcpyDtoH as u32, &args, &mut Vec::new()).is_err());
    assert!(c2.handle(Op::MemFree as u32, &p.to_le_bytes(), &mut Vec::new()).is_err());
    assert!(c1.handle(Op::MemcpyDtoH as u32, &args, &mut Vec::new()).is_ok());
}

fn send(s: &mut UnixStream, op: u32, payload: &[u8]) -> (MsgHeader, Vec<u8>) {
    let h = MsgHeader { magic: MSG_MAGIC, op, seq: 7, status: 0, payload_len: payload.len() as u32, reserved: 0 };
    s.write_all(&h.to_bytes()).unwrap();
    s.write_all(payload).unwrap();
    recv(s)
}

fn recv(s: &mut UnixStream) -> (MsgHeader, Vec<u8>) {
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).unwrap();
    let h = MsgHeader::from_bytes(&hb);
    let mut p = vec![0u8; h.payload_len as usize];
    s.read_exact(&mut p).unwrap();
    (h, p)
}

#[test]
fn framing_errors_close_only_that_connection() {
    let (dir, sock) = serve("framing");

    // Bad magic: an error reply, then the connection is closed.
    let mut bad = UnixStream::connect(&sock).unwrap();
    bad.write_all(&[0xAB; HEADER_LEN]).unwrap();
    let (h, msg) = recv(&mut bad);
    assert_eq!(h.status, CUDA_ERROR_INVALID_VALUE);
    assert!(String::from_utf8_lossy(&msg).contains("magic"));
    assert_eq!(bad.read(&mut [0u8; 1]).unwrap(), 0, "connection closed");

    // Oversized payload announced: rejected at once, before anything is allocated (the
    // connection would go on after the payload; this client never sends it).
    let mut big = UnixStream::connect(&sock).unwrap();
    let h = MsgHeader { magic: MSG_MAGIC, op: Op::MemcpyHtoD as u32, seq: 1, status: 0, payload_len: u32::MAX, reserved: 0 };
    big.write_all(&h.to_bytes()).unwrap();
    let (h, _) = recv(&mut big);
    assert_eq!(h.status, CUDA_ERROR_INVALID_VALUE);

    // A well-behaved client is unaffected; an error reply carries the request's seq and op.
    let mut good = UnixStream::connect(&sock).unwrap();
    let (h, body) = send(&mut good, Op::Hello as u32, &hello_payload(1, 0));
    assert_eq!((h.status, h.seq, h.op), (CUDA_SUCCESS, 7, Op::Hello as u32));
    // version, device count, flags: the sim puts device printf in launch replies (no
    // HELLO_OUTPUT_AFTER_SYNC) and runs PTX only (HELLO_PTX_ONLY).
    assert_eq!(body.len(), 12);
    assert_eq!(u32::from_le_bytes(body[8..12].try_into().unwrap()), vgpu_uapi::proto::HELLO_PTX_ONLY);
    let (h, _) = send(&mut good, Op::MemFree as u32, &[1, 2, 3]);
    assert_eq!(h.status, CUDA_ERROR_INVALID_VALUE);
    let (h, _) = send(&mut good, Op::MemGetInfo as u32, &[]);
    assert_eq!(h.status, CUDA_SUCCESS);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn device_usage_counts_every_client_and_returns_to_zero() {
    let b = backend();
    let usage = |b: &SimBackend| b.memory_usage(0).unwrap().1;
    {
        let (mut c1, mut c2) = (Connection::new(&b), Connection::new(&b));
        hello(&mut c1);
        hello(&mut c2);
        let mut observer = Connection::new(&b);
        observer.handle(Op::Hello as u32, &hello_payload(77, HELLO_OBSERVER), &mut Vec::new()).unwrap();
        c1.handle(Op::MemAlloc as u32, &(1u64 << 20).to_le_bytes(), &mut Vec::new()).unwrap();
        c2.handle(Op::MemAlloc as u32, &(3u64 << 20).to_le_bytes(), &mut Vec::new()).unwrap();
        assert_eq!(usage(&b), 4 << 20);
        let mut out = Vec::new();
        observer.handle(Op::DeviceProcesses as u32, &0u32.to_le_bytes(), &mut out).unwrap();
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 2, "the observer is not a GPU process");
        assert_eq!(b.processes(0).unwrap().iter().map(|p| p.used_bytes).sum::<u64>(), 4 << 20);
        assert!(b.memory_usage(1).is_err());
    }
    assert_eq!(usage(&b), 0, "closed sessions hold nothing");
    assert!(b.processes(0).unwrap().is_empty());
}

/// A client killed while its kernel runs: the mediator stops the kernel (it would otherwise run
/// to the sim's instruction budget, minutes) and frees the client's session.
#[test]
fn a_disconnected_clients_kernel_stops_and_its_session_is_freed() {
    let (dir, sock) = serve("hangup");
    let hello_as = |s: &mut UnixStream, flags: u32| assert_eq!(send(s, Op::Hello as u32, &hello_payload(1, flags)).0.status, CUDA_SUCCESS);

    let mut client = UnixStream::connect(&sock).unwrap();
    hello_as(&mut client, 0);
    let ptx = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx")).unwrap();
    let (h, m) = send(&mut client, Op::ModuleLoad as u32, &ptx);
    assert_eq!(h.status, CUDA_SUCCESS, "{}", String::from_utf8_lossy(&m));
    let mut req = m[..8].to_vec();
    req.extend_from_slice(b"spin");
    let (h, f) = send(&mut client, Op::ModuleGetFunction as u32, &req);
    assert_eq!(h.status, CUDA_SUCCESS, "{}", String::from_utf8_lossy(&f));
    let (h, flag) = send(&mut client, Op::MemAlloc as u32, &4u64.to_le_bytes());
    assert_eq!(h.status, CUDA_SUCCESS);
    let (h, _) = send(&mut client, Op::Memset as u32, &[&flag[..8], &0u32.to_le_bytes(), &4u32.to_le_bytes(), &1u64.to_le_bytes()].concat());
    assert_eq!(h.status, CUDA_SUCCESS);
    // spin(flag) with *flag == 0 loops until the instruction budget: launch, then hang up.
    let mut launch = f[..8].to_vec();
    for v in [1u32, 1, 1, 32, 1, 1, 0] {
        launch.extend_from_slice(&v.to_le_bytes());
    }
    launch.extend_from_slice(&0u64.to_le_bytes());
    launch.extend_from_slice(&flag[..8]);
    let h = MsgHeader { magic: MSG_MAGIC, op: Op::Launch as u32, seq: 9, status: 0, payload_len: launch.len() as u32, reserved: 0 };
    client.write_all(&h.to_bytes()).unwrap();
    client.write_all(&launch).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(client);

    let mut observer = UnixStream::connect(&sock).unwrap();
    hello_as(&mut observer, HELLO_OBSERVER);
    let start = std::time::Instant::now();
    loop {
        let (h, p) = send(&mut observer, Op::DeviceProcesses as u32, &0u32.to_le_bytes());
        assert_eq!(h.status, CUDA_SUCCESS);
        if u32::from_le_bytes(p[..4].try_into().unwrap()) == 0 {
            break;
        }
        // Without the stop it would take the whole budget (4e9 instructions, a minute or more).
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the killed client's session is still alive");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
