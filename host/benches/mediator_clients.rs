//! Aggregate throughput of one sim GPU shared by 1, 2, 4 and 8 clients, each in a VM of its own
//! (equal weights), through the mediator's Unix sockets: small kernel launches, tiny GPU
//! commands (4-byte memsets: the scheduler's and the socket's overhead), and 1 MiB host-to-device
//! copies. Prints per-second figures and the ratio to one client, plus how evenly the clients
//! were served (least / most). `cargo bench -p vgpu-host --bench mediator_clients`
//! (`-- --secs 1` per measurement; default 2).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Proc, Vadd};
use vgpu_host::config::Config;
use vgpu_host::mediator::Mediator;

#[derive(Clone, Copy)]
enum Work {
    Launch,
    Memset,
    Copy1MiB,
}

fn config(dir: &std::path::Path, vms: usize) -> Config {
    let mut s = String::from("[[gpu]]\nname = \"gpu0\"\n");
    for i in 0..vms {
        s += &format!("[[vm]]\nname = \"vm{i}\"\ngpu = \"gpu0\"\nsocket = \"{}/vm{i}.sock\"\n", dir.display());
    }
    toml::from_str(&s).unwrap()
}

/// Operations per second of each client while `clients` run `work` together for `secs`.
fn run(clients: usize, work: Work, secs: f64) -> Vec<f64> {
    let dir = std::env::temp_dir().join(format!("vgpu-bench-clients-{}-{clients}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _m = Mediator::from_config(&config(&dir, clients), None).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(std::sync::Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (sock, stop, start) = (dir.join(format!("vm{i}.sock")), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let p = Proc::connect(&sock, 1 + i as u32).unwrap();
                let v = Vadd::new(&p, 1024);
                let buf = p.alloc(1 << 20).unwrap();
                let data = vec![0x5au8; 1 << 20];
                start.wait();
                let (t, mut n) = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match work {
                        Work::Launch => v.run().unwrap(),
                        Work::Memset => p.memset32(buf, n as u32, 1).unwrap(),
                        Work::Copy1MiB => p.write(buf, &data).unwrap(),
                    }
                    n += 1;
                }
                n as f64 / t.elapsed().as_secs_f64()
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let r = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = args.iter().position(|a| a == "--secs").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(2.0);
    println!("one sim GPU, N clients each in its own VM (equal weights), {secs} s per figure, {} host CPUs", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{:<28} {:>8} {:>14} {:>10} {:>12}", "work", "clients", "aggregate/s", "vs 1", "least/most");
    for (name, work) in [("launch vadd(1024)", Work::Launch), ("memset 4 B (GPU command)", Work::Memset), ("copy 1 MiB host->device", Work::Copy1MiB)] {
        let mut base = 0.0;
        for clients in [1, 2, 4, 8] {
            let per = run(clients, work, secs);
            let total: f64 = per.iter().sum();
            if clients == 1 {
                base = total;
            }
            let (lo, hi) = per.iter().fold((f64::MAX, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
            let unit = if matches!(work, Work::Copy1MiB) { format!("{total:.0} MiB") } else { format!("{total:.0}") };
            println!("{name:<28} {clients:>8} {unit:>14} {:>9.2}x {:>12.2}", total / base, lo / hi);
        }
    }
}
