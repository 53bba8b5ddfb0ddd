//! The mediator with no transport at all (requests handed to its dispatcher in-process): the
//! upper bound for vgpu's data path. Prints `key value` lines in the format of
//! tests/cuda/data_path.cu, which measures the same things through libcuda over the socket and
//! in a guest; `scripts/bench-data-path.sh` puts the three side by side.
//! `cargo bench -p vgpu-host --bench data_path [-- --max-mib N]`

use std::time::Instant;
use vgpu_host::dispatch::Connection;
use vgpu_host::profile::DeviceProfile;
use vgpu_host::sim::SimBackend;
use vgpu_uapi::proto::{Op, COPY_CHUNK};

/// One request; `out` is reused, as the server reuses its reply buffer.
fn call_into(c: &mut Connection, op: Op, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    c.handle(op as u32, payload, out).unwrap_or_else(|e| panic!("{op:?}: {}", e.message));
}

fn call(c: &mut Connection, op: Op, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    call_into(c, op, &parts.concat(), &mut out);
    out
}

fn u64_at(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let max_mib: usize = args.iter().position(|a| a == "--max-mib").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(256);
    let b = SimBackend::new(DeviceProfile::default(), 2 << 30);
    let mut c = Connection::new(&b);
    let mut hello = vgpu_uapi::PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    call(&mut c, Op::Hello, &[&hello]);

    let n = 20000;
    let t = Instant::now();
    for _ in 0..n {
        call(&mut c, Op::MemGetInfo, &[]);
    }
    println!("null_call_us {:.3}", t.elapsed().as_secs_f64() * 1e6 / n as f64);

    let ptx = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx")).unwrap();
    let m = call(&mut c, Op::ModuleLoad, &[&ptx]);
    let f = u64_at(&call(&mut c, Op::ModuleGetFunction, &[&m[..8], b"vadd"]));
    // vadd with n = 0: one block of one thread that does nothing, as an empty kernel.
    let mut launch = f.to_le_bytes().to_vec();
    for v in [1u32, 1, 1, 1, 1, 1, 0] {
        launch.extend_from_slice(&v.to_le_bytes());
    }
    launch.extend_from_slice(&0u64.to_le_bytes());
    launch.extend_from_slice(&[0u8; 28]);
    let t = Instant::now();
    for _ in 0..n {
        call(&mut c, Op::Launch, &[&launch]);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    // In-process every launch completes when handed over: both rates are the same.
    println!("launch_sync_per_s {rate:.0}");
    println!("launch_async_per_s {rate:.0}");

    let mut size = 4usize << 10;
    while size <= max_mib << 20 {
        let d = u64_at(&call(&mut c, Op::MemAlloc, &[&(size as u64).to_le_bytes()]));
        let host = vec![0x5au8; size];
        let mut back = vec![0u8; size];
        let reps = ((256usize << 20) / size).clamp(3, 2000);
        // The request buffer as the server holds it: header fields, then the data.
        let mut req = Vec::with_capacity(8 + COPY_CHUNK);
        let mut out = Vec::with_capacity(COPY_CHUNK);
        // Touch everything once first (the sim commits device memory lazily).
        call_into(&mut c, Op::Memset, &[&d.to_le_bytes()[..], &0u32.to_le_bytes(), &1u32.to_le_bytes(), &(size as u64).to_le_bytes()].concat(), &mut out);
        let t = Instant::now();
        for _ in 0..reps {
            for (i, chunk) in host.chunks(COPY_CHUNK).enumerate() {
                req.clear();
                req.extend_from_slice(&(d + (i * COPY_CHUNK) as u64).to_le_bytes());
                req.extend_from_slice(chunk);
                call_into(&mut c, Op::MemcpyHtoD, &req, &mut out);
            }
        }
        let h2d = (size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        let t = Instant::now();
        for _ in 0..reps {
            for (i, chunk) in back.chunks_mut(COPY_CHUNK).enumerate() {
                req.clear();
                req.extend_from_slice(&(d + (i * COPY_CHUNK) as u64).to_le_bytes());
                req.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
                call_into(&mut c, Op::MemcpyDtoH, &req, &mut out);
                chunk.copy_from_slice(&out);
            }
        }
        let d2h = (size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        assert_eq!(back, host);
        let t = Instant::now();
        for _ in 0..reps {
            back.copy_from_slice(std::hint::black_box(&host));
        }
        let memcpy = (size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        // No transport: pinned and pageable memory are the same thing here.
        for kind in ["pageable", "pinned"] {
            println!("h2d_{kind}_{size} {h2d:.3}");
            println!("d2h_{kind}_{size} {d2h:.3}");
        }
        println!("memcpy_{size} {memcpy:.3}");
        call(&mut c, Op::MemFree, &[&d.to_le_bytes()]);
        size *= 4;
    }
}
