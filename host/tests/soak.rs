//! Soak: processes of two VMs doing random valid work on one sim GPU for a bounded time
//! (`VGPU_SOAK_SECS`, default 15), every result checked, processes coming and going; at the end
//! every VM's and the GPU's accounting is back to zero. Prints what was done.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{Proc, Vadd};
use vgpu_host::config::Config;
use vgpu_host::mediator::Mediator;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_valid_work_is_always_right_and_nothing_leaks() {
    let secs: u64 = std::env::var("VGPU_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let dir = std::env::temp_dir().join(format!("vgpu-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg: Config = toml::from_str(&format!(
        "[[gpu]]\nname = \"gpu0\"\n\
         [[vm]]\nname = \"a\"\ngpu = \"gpu0\"\nsocket = \"{d}/a.sock\"\npriority = \"high\"\nmemory_quota_mib = 48\n\
         [[vm]]\nname = \"b\"\ngpu = \"gpu0\"\nsocket = \"{d}/b.sock\"\npriority = \"low\"\n",
        d = dir.display()
    ))
    .unwrap();
    let m = Mediator::from_config(&cfg, None).unwrap();
    let ops = AtomicU64::new(0);
    let checked = AtomicU64::new(0);
    let sessions = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for w in 0..6u64 {
            let sock = dir.join(if w % 2 == 0 { "a.sock" } else { "b.sock" });
            let (ops, checked, sessions) = (&ops, &checked, &sessions);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
                while Instant::now() < deadline {
                    // One process's life: connect, work a while, leave (with or without cleaning up).
                    let p = Proc::connect(&sock, 1000 + w as u32).unwrap();
                    sessions.fetch_add(1, Ordering::Relaxed);
                    let v = Vadd::new(&p, 1 + rng.below(2048) as u32);
                    let mut live: Vec<(u64, Vec<u8>)> = Vec::new();
                    for _ in 0..rng.below(60) {
                        ops.fetch_add(1, Ordering::Relaxed);
                        match rng.below(6) {
                            0 => {
                                let size = 1 + rng.below(1 << 20);
                                match p.alloc(size) {
                                    Ok(ptr) => {
                                        let data: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
                                        p.write(ptr, &data).unwrap();
                                        live.push((ptr, data));
                                    }
                                    // VM a's quota is small on purpose: refusals are right too.
                                    Err(e) => assert_eq!(e, vgpu_uapi::cuda::CUDA_ERROR_OUT_OF_MEMORY),
                                }
                            }
                            1 if !live.is_empty() => {
                                let (ptr, _) = live.swap_remove(rng.below(live.len() as u64) as usize);
                                p.free(ptr).unwrap();
                            }
                            2 if !live.is_empty() => {
                                let (ptr, data) = &live[rng.below(live.len() as u64) as usize];
                                assert_eq!(&p.read(*ptr, data.len() as u64).unwrap(), data);
                                checked.fetch_add(1, Ordering::Relaxed);
                            }
                            3 if live.len() >= 2 => {
                                let (i, j) = (rng.below(live.len() as u64) as usize, rng.below(live.len() as u64) as usize);
                                let n = live[i].1.len().min(live[j].1.len());
                                p.call(vgpu_uapi::proto::Op::MemcpyDtoD, &[&live[j].0.to_le_bytes(), &live[i].0.to_le_bytes(), &(n as u64).to_le_bytes()]).unwrap();
                                let src = live[i].1[..n].to_vec();
                                live[j].1[..n].copy_from_slice(&src);
                            }
                            4 if !live.is_empty() => {
                                let k = rng.below(live.len() as u64) as usize;
                                let words = live[k].1.len() / 4;
                                let val = rng.next() as u32;
                                p.memset32(live[k].0, val, words as u64).unwrap();
                                for c in live[k].1[..words * 4].chunks_exact_mut(4) {
                                    c.copy_from_slice(&val.to_le_bytes());
                                }
                            }
                            _ => {
                                v.run().unwrap();
                                let (c, n) = (u64::from_le_bytes(v.params[16..24].try_into().unwrap()), u32::from_le_bytes(v.params[24..28].try_into().unwrap()));
                                let out = p.read(c, n as u64 * 4).unwrap();
                                assert!(out.chunks_exact(4).enumerate().all(|(i, x)| f32::from_le_bytes(x.try_into().unwrap()) == 2.0 * i as f32));
                                checked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    for (ptr, data) in &live {
                        assert_eq!(&p.read(*ptr, data.len() as u64).unwrap(), data, "data changed behind the process's back");
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                    if rng.below(2) == 0 {
                        for (ptr, _) in live {
                            p.free(ptr).unwrap();
                        }
                    }
                }
            });
        }
    });
    let start = Instant::now();
    loop {
        let held: u64 = m.registry.vms().iter().map(|v| v.stats.memory_used.load(Ordering::Relaxed)).sum();
        let clients: usize = m.registry.vms().iter().map(|v| v.client_count()).sum();
        let gpu = m.registry.gpus[0].backend.memory_usage(0).unwrap().1;
        if held == 0 && clients == 0 && gpu == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "left after the soak: {held} bytes charged, {clients} clients, {gpu} bytes on the GPU");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "soak: {secs} s, {} processes, {} operations, {} results checked, 0 bytes and 0 clients left",
        sessions.load(Ordering::Relaxed),
        ops.load(Ordering::Relaxed),
        checked.load(Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
