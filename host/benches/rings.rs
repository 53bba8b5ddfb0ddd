//! The mediator's transports side by side, in one run: a null call (MemGetInfo) from a client
//! thread over the Unix socket and over shared rings (what vgpu-stub's channels use), each
//! beside its floor: the same 24-byte ping-pong between two bare threads with no mediator.
//! Prints `key value` lines. `cargo bench -p vgpu-host --bench rings`

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_client::shm_ring::{upgrade, Ring};
use vgpu_host::profile::DeviceProfile;
use vgpu_host::sim::SimBackend;
use vgpu_uapi::proto::{MsgHeader, Op, HEADER_LEN, MSG_MAGIC};

const N: usize = 20000;
/// What a waiting client thread spins before it sleeps (vgpu-stub's own figure).
const SPIN: Duration = Duration::from_micros(50);

fn header(op: Op, len: usize) -> [u8; HEADER_LEN] {
    MsgHeader { magic: MSG_MAGIC, op: op as u32, seq: 1, status: 0, payload_len: len as u32, reserved: 0 }.to_bytes()
}

/// A request and its reply through `send`/`recv`.
fn call(send: &mut dyn FnMut(&[u8]), recv: &mut dyn FnMut(&mut [u8]), op: Op, payload: &[u8]) -> Vec<u8> {
    let mut msg = header(op, payload.len()).to_vec();
    msg.extend_from_slice(payload);
    send(&msg);
    let mut h = [0u8; HEADER_LEN];
    recv(&mut h);
    let h = MsgHeader::from_bytes(&h);
    assert_eq!(h.status, 0, "{op:?} failed");
    let mut body = vec![0u8; h.payload_len as usize];
    recv(&mut body);
    body
}

fn us_per(n: usize, t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn hello() -> Vec<u8> {
    [vgpu_uapi::PROTOCOL_VERSION.to_le_bytes(), 7u32.to_le_bytes(), 0u32.to_le_bytes()].concat()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vgpu-bench-rings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hostd.sock");
    let listener = vgpu_host::server::bind(&path).unwrap();
    let backend = Arc::new(SimBackend::new(DeviceProfile::default(), 1 << 30));
    std::thread::spawn(move || vgpu_host::server::serve_listener(listener, backend));

    // Floors: a bare echo thread, over a socket pair and over a pair of rings.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut m = [0u8; 24];
        while b.read_exact(&mut m).is_ok() && b.write_all(&m).is_ok() {}
    });
    let mut m = [0u8; 24];
    let t = Instant::now();
    for _ in 0..N {
        a.write_all(&m).unwrap();
        a.read_exact(&mut m).unwrap();
    }
    println!("socket_floor_us {:.3}", us_per(N, t));
    drop(a);
    echo.join().unwrap();

    let (a, b) = UnixStream::pair().unwrap();
    let (mut dev, [file, mb, db]) = Ring::create(vgpu_uapi::shm_ring::MIN_SIZE, a.as_fd()).unwrap();
    let mut med = Ring::attach(vgpu_uapi::shm_ring::MIN_SIZE, file, mb, db, b.as_fd()).unwrap();
    let echo = std::thread::spawn(move || {
        let mut m = [0u8; 24];
        while med.read_exact(&mut m, SPIN).is_ok() && med.write_all(&m, SPIN).is_ok() {}
    });
    let t = Instant::now();
    for _ in 0..N {
        dev.write_all(&m, SPIN).unwrap();
        dev.read_exact(&mut m, SPIN).unwrap();
    }
    println!("ring_floor_us {:.3}", us_per(N, t));
    drop(dev);
    drop(a);
    echo.join().unwrap();

    // The mediator: a null call over its socket, then over rings.
    let s = UnixStream::connect(&path).unwrap();
    let (mut w, mut r) = (s.try_clone().unwrap(), s.try_clone().unwrap());
    let mut send = |b: &[u8]| w.write_all(b).unwrap();
    let mut recv = |b: &mut [u8]| r.read_exact(b).unwrap();
    call(&mut send, &mut recv, Op::Hello, &hello());
    let t = Instant::now();
    for _ in 0..N {
        call(&mut send, &mut recv, Op::MemGetInfo, &[]);
    }
    println!("socket_null_call_us {:.3}", us_per(N, t));

    let s = UnixStream::connect(&path).unwrap();
    let ring = std::cell::RefCell::new(upgrade(&s, vgpu_uapi::shm_ring::DEFAULT_SIZE, Duration::from_secs(10)).unwrap());
    let mut send = |b: &[u8]| ring.borrow_mut().write_all(b, SPIN).unwrap();
    let mut recv = |b: &mut [u8]| ring.borrow_mut().read_exact(b, SPIN).unwrap();
    call(&mut send, &mut recv, Op::Hello, &hello());
    let t = Instant::now();
    for _ in 0..N {
        call(&mut send, &mut recv, Op::MemGetInfo, &[]);
    }
    println!("ring_null_call_us {:.3}", us_per(N, t));
    let _ = std::fs::remove_dir_all(&dir);
}
