//! Many VMs on one GPU: a mediator started from a configuration file serves several VMs (each
//! on its own socket) on one sim GPU, and their clients hammer it. Checked: GPU time shared by
//! weight, exact memory quotas as seen from inside the VM, isolation between VMs, the execution
//! time limit, eviction, reload, rate limit, the admin interface and metrics, and that nothing
//! is leaked once clients go away.

use serde_json::json;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vgpu_host::admin::{request, GpuReport, VmReport};
use vgpu_host::config::Config;
use vgpu_host::mediator::Mediator;
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::HELLO_OBSERVER;

mod support;
use support::{Proc, Vadd};

/// The tests measure GPU shares, so they run one at a time (the machine may have two cores).
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

struct Env {
    dir: PathBuf,
    config: PathBuf,
    admin: PathBuf,
    metrics: String,
    _m: Arc<Mediator>,
}

impl Env {
    /// A mediator for `body` (a config file in which `{dir}` is a fresh directory), with its admin
    /// socket and metrics endpoint.
    fn start(tag: &str, body: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("vgpu-sharing-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("hostd.toml");
        std::fs::write(&config, body.replace("{dir}", dir.to_str().unwrap())).unwrap();
        let cfg = Config::load(&config).unwrap();
        let m = Mediator::from_config(&cfg, Some(config.clone())).unwrap();
        let admin = dir.join("admin.sock");
        vgpu_host::admin::start(m.clone(), &admin).unwrap();
        let metrics = vgpu_host::metrics::start(m.clone(), "127.0.0.1:0").unwrap();
        Env { dir, config, admin, metrics, _m: m }
    }

    fn sock(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("{vm}.sock"))
    }

    fn vms(&self) -> Vec<VmReport> {
        serde_json::from_value(request(&self.admin, &json!({"cmd": "vms"})).unwrap()).unwrap()
    }

    fn vm(&self, name: &str) -> VmReport {
        self.vms().into_iter().find(|v| v.name == name).unwrap()
    }

    fn gpus(&self) -> Vec<GpuReport> {
        serde_json::from_value(request(&self.admin, &json!({"cmd": "gpus"})).unwrap()).unwrap()
    }

    fn admin_cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgpu-admin"))
            .arg("--socket")
            .arg(&self.admin)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "vgpu-admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until every VM holds no memory and has no clients, and the GPU holds nothing.
    fn assert_all_freed(&self) {
        let start = Instant::now();
        loop {
            let vms = self.vms();
            let gpus = self.gpus();
            if vms.iter().all(|v| v.memory_used == 0 && v.clients == 0 && v.queue_depth == 0) && gpus.iter().all(|g| g.memory_used == 0) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "resources still held: {vms:#?} {gpus:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const THREE_VMS: &str = r#"
[scheduler]
time_slice_ms = 10
anticipation_us = 2000
[[gpu]]
name = "gpu0"
memory_gib = 16
[[vm]]
name = "low"
gpu = "gpu0"
socket = "{dir}/low.sock"
priority = "low"
[[vm]]
name = "medium"
gpu = "gpu0"
socket = "{dir}/medium.sock"
priority = "medium"
[[vm]]
name = "high"
gpu = "gpu0"
socket = "{dir}/high.sock"
priority = "high"
"#;

/// Three busy VMs (two client processes each, launching the same kernel back to back) get GPU
/// time 1:2:4, as their priorities say, within 10%.
#[test]
fn busy_vms_get_gpu_time_by_weight() {
    let _s = serial();
    let env = Env::start("weights", THREE_VMS);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, vm) in ["low", "medium", "high"].into_iter().enumerate() {
        for k in 0..2 {
            let (sock, stop) = (env.sock(vm), stop.clone());
            threads.push(std::thread::spawn(move || {
                let p = Proc::connect(&sock, 100 + i as u32 * 10 + k).unwrap();
                let v = Vadd::new(&p, 16384);
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    v.run().unwrap();
                    n += 1;
                }
                n
            }));
        }
    }
    // Warm up (module loads, first slices), then measure GPU time over a window.
    std::thread::sleep(Duration::from_millis(500));
    let before = env.vms();
    std::thread::sleep(Duration::from_secs(4));
    let after = env.vms();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let launches: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let used: Vec<f64> = ["low", "medium", "high"]
        .iter()
        .map(|n| {
            let g = |r: &[VmReport]| r.iter().find(|v| v.name == *n).unwrap().gpu_seconds;
            g(&after) - g(&before)
        })
        .collect();
    let total: f64 = used.iter().sum();
    eprintln!("GPU seconds in the window (low, medium, high): {used:.3?}; launches per client: {launches:?}");
    for (u, w) in used.iter().zip([1.0, 2.0, 4.0]) {
        let (share, want) = (u / total, w / 7.0);
        assert!((share - want).abs() <= 0.1 * want, "share {share:.3} for weight {w}, want {want:.3} +-10% (GPU seconds {used:?})");
    }
    env.assert_all_freed();
}

const QUOTA: &str = r#"
[[gpu]]
name = "gpu0"
memory_gib = 16
[[vm]]
name = "small"
gpu = "gpu0"
socket = "{dir}/small.sock"
memory_quota_mib = 64
[[vm]]
name = "big"
gpu = "gpu0"
socket = "{dir}/big.sock"
"#;

/// The quota covers all of a VM's processes together, is exact to the byte, and is what
/// cuMemGetInfo and NVML report inside the VM; another VM is not affected; a live change of
/// the quota applies at once.
#[test]
fn memory_quota_is_exact_and_is_what_the_vm_sees() {
    let _s = serial();
    let env = Env::start("quota", QUOTA);
    let (p1, p2) = (Proc::connect(&env.sock("small"), 11).unwrap(), Proc::connect(&env.sock("small"), 12).unwrap());
    let nvml = Proc::connect_as(&env.sock("small"), 13, HELLO_OBSERVER).unwrap();
    assert_eq!(p1.mem_get_info(), (64 << 20, 64 << 20));
    assert_eq!(nvml.device_memory(), (64 << 20, 0));
    let a = p1.alloc(40 << 20).unwrap();
    assert_eq!(p2.alloc(25 << 20), Err(CUDA_ERROR_OUT_OF_MEMORY), "40 + 25 MiB > 64 MiB");
    let b = p2.alloc(24 << 20).unwrap();
    assert_eq!(p2.mem_get_info(), (0, 64 << 20));
    assert_eq!(nvml.device_memory(), (64 << 20, 64 << 20));
    assert_eq!(p1.alloc(1), Err(CUDA_ERROR_OUT_OF_MEMORY), "the quota is full to the byte");
    // The other VM has the GPU's memory and its own accounting.
    let big = Proc::connect(&env.sock("big"), 11).unwrap();
    let c = big.alloc(100 << 20).unwrap();
    assert_eq!(big.mem_get_info().1, 16 << 30);
    assert_eq!(big.device_memory(), (16 << 30, 100 << 20));
    // Freeing in one process makes room for the other.
    p1.free(a).unwrap();
    assert_eq!(p2.mem_get_info(), (40 << 20, 64 << 20));
    let d = p2.alloc(40 << 20).unwrap();
    let small = env.vm("small");
    assert_eq!((small.memory_used, small.quota_rejections, small.memory_quota), (64 << 20, 2, Some(64 << 20)));
    assert_eq!(nvml.device_pids(), vec![11, 12], "NVML lists this VM's processes, not the observer nor the other VM's");
    // Raised live by the admin: the allocation that failed now succeeds.
    env.admin_cli(&["set", "small", "--memory-quota-mib", "128"]);
    assert_eq!(p1.mem_get_info(), (64 << 20, 128 << 20));
    let e = p1.alloc(64 << 20).unwrap();
    assert_eq!(p1.alloc(1), Err(CUDA_ERROR_OUT_OF_MEMORY));
    for (p, x) in [(&p2, b), (&p2, d), (&p1, e), (&big, c)] {
        p.free(x).unwrap();
    }
    assert_eq!(env.vm("small").memory_used, 0);
    drop((p1, p2, nvml, big));
    env.assert_all_freed();
}

/// A VM cannot reach another VM's memory or see its processes, even where device addresses are
/// the same numbers.
#[test]
fn vms_are_isolated() {
    let _s = serial();
    let env = Env::start("isolation", QUOTA);
    let a = Proc::connect(&env.sock("big"), 500).unwrap();
    let secret = a.alloc(4096).unwrap();
    a.write(secret, &[0x5a; 4096]).unwrap();
    let b = Proc::connect(&env.sock("small"), 600).unwrap();
    assert_eq!(b.read(secret, 4096), Err(CUDA_ERROR_INVALID_VALUE), "another VM's allocation is not there");
    assert_eq!(b.free(secret), Err(CUDA_ERROR_INVALID_VALUE));
    let mine = b.alloc(4096).unwrap();
    assert_eq!(b.read(mine, 4096).unwrap(), vec![0; 4096], "a VM's memory starts zeroed, whatever its address");
    assert_eq!(b.device_pids(), vec![600]);
    assert_eq!(a.device_pids(), vec![500]);
    assert_eq!(a.read(secret, 4096).unwrap(), vec![0x5a; 4096]);
    drop((a, b));
    env.assert_all_freed();
}

const LIMITS: &str = r#"
[[gpu]]
name = "gpu0"
[[vm]]
name = "slow"
gpu = "gpu0"
socket = "{dir}/slow.sock"
exec_time_limit_ms = 300
[[vm]]
name = "other"
gpu = "gpu0"
socket = "{dir}/other.sock"
[[vm]]
name = "paced"
gpu = "gpu0"
socket = "{dir}/paced.sock"
rate_limit = 20
"#;

/// A launch past the VM's execution time limit fails with CUDA_ERROR_LAUNCH_TIMEOUT (the GPU
/// is not held beyond the limit: another VM's work waiting behind it runs), and the VM's next
/// launch works once the process has reset the device. A rate-limited VM's commands are held to its rate.
#[test]
fn time_limit_and_rate_limit() {
    let _s = serial();
    let env = Env::start("limits", LIMITS);
    let slow = Proc::connect(&env.sock("slow"), 1).unwrap();
    let spin = slow.function("spin");
    let flag = slow.alloc(4).unwrap();
    slow.memset32(flag, 0, 1).unwrap();
    let other_done = std::thread::scope(|s| {
        let t = Instant::now();
        let r = s.spawn(|| slow.launch(spin, 1, 32, &flag.to_le_bytes()));
        std::thread::sleep(Duration::from_millis(100));
        let other = Proc::connect(&env.sock("other"), 2).unwrap();
        let v = Vadd::new(&other, 1024);
        v.run().unwrap();
        let other_done = t.elapsed();
        assert_eq!(r.join().unwrap(), Err(CUDA_ERROR_LAUNCH_TIMEOUT));
        other_done
    });
    // Without the limit the spin would run to the sim's instruction budget (a minute or more).
    assert!(other_done < Duration::from_secs(20), "the other VM waited {other_done:?}");
    // The stopped kernel leaves the context unusable (sticky, as after a GPU's watchdog) until
    // the process resets the device (cudaDeviceReset); its kernels, still loaded, then run.
    assert_eq!(slow.memset32(flag, 1, 1), Err(CUDA_ERROR_LAUNCH_TIMEOUT));
    slow.call(vgpu_uapi::proto::Op::SessionReset, &[]).unwrap();
    let flag = slow.alloc(4).unwrap();
    slow.memset32(flag, 1, 1).unwrap();
    slow.launch(spin, 1, 32, &flag.to_le_bytes()).unwrap();
    let r = env.vm("slow");
    assert_eq!((r.time_limit_kills, r.launches), (1, 1));

    let paced = Proc::connect(&env.sock("paced"), 3).unwrap();
    let p = paced.alloc(4).unwrap();
    let t = Instant::now();
    for i in 0..30 {
        paced.memset32(p, i, 1).unwrap();
    }
    // 20 per second with a burst of 2: the 30 commands take at least 1.4 s.
    assert!(t.elapsed() >= Duration::from_millis(1300), "30 commands at 20/s took {:?}", t.elapsed());
    assert!(env.vm("paced").rate_limited_seconds > 1.0);
    drop((slow, paced));
    env.assert_all_freed();
}

/// Eviction disconnects a VM's clients, frees everything they held and refuses new clients until
/// it is admitted again; other VMs go on. A reload adds, changes and removes VMs without a
/// restart, and a bad file changes nothing.
#[test]
fn evict_admit_and_reload() {
    let _s = serial();
    let env = Env::start("evict", QUOTA);
    let victim = Proc::connect(&env.sock("small"), 7).unwrap();
    let p = victim.alloc(8 << 20).unwrap();
    let bystander = Proc::connect(&env.sock("big"), 8).unwrap();
    let q = bystander.alloc(1 << 20).unwrap();
    assert_eq!(env.vm("small").memory_used, 8 << 20);

    let out = env.admin_cli(&["evict", "small"]);
    assert!(out.contains("1 clients disconnected"), "{out}");
    assert_eq!(victim.read(p, 16).unwrap_err(), CUDA_ERROR_DEINITIALIZED, "an evicted client's connection is gone");
    assert_eq!(Proc::connect(&env.sock("small"), 9).err(), Some(CUDA_ERROR_NO_DEVICE));
    let start = Instant::now();
    while env.vm("small").memory_used != 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the evicted VM's memory was not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    bystander.write(q, &[1; 64]).unwrap();
    let table = env.admin_cli(&["vms"]);
    assert!(table.lines().any(|l| l.starts_with("small") && l.ends_with("evicted")), "{table}");
    env.admin_cli(&["admit", "small"]);
    let back = Proc::connect(&env.sock("small"), 10).unwrap();
    back.alloc(1 << 20).unwrap();

    // Reload: `small` gets a weight and a smaller quota, `big` goes, `new` comes.
    let body = std::fs::read_to_string(&env.config).unwrap();
    let small_only = body.split("[[vm]]\nname = \"big\"").next().unwrap().replace("memory_quota_mib = 64", "memory_quota_mib = 2\nweight = 7");
    let new_vm = format!("[[vm]]\nname = \"new\"\ngpu = \"gpu0\"\nsocket = \"{}\"\n", env.sock("new").display());
    std::fs::write(&env.config, format!("{small_only}{new_vm}")).unwrap();
    let out = env.admin_cli(&["reload"]);
    assert!(out.contains("removed VM big") && out.contains("added VM new") && out.contains("VM small: new settings"), "{out}");
    let small = env.vm("small");
    assert_eq!((small.weight, small.memory_quota), (7, Some(2 << 20)));
    back.alloc(1 << 20).unwrap();
    assert_eq!(back.alloc(1), Err(CUDA_ERROR_OUT_OF_MEMORY), "2 MiB held: the new quota is full");
    Proc::connect(&env.sock("new"), 1).unwrap().alloc(1).unwrap();
    assert_eq!(bystander.alloc(1).unwrap_err(), CUDA_ERROR_DEINITIALIZED, "a removed VM's clients are disconnected");
    assert!(!env.sock("big").exists());
    assert!(env.vms().iter().all(|v| v.name != "big"));

    // A bad file is refused whole.
    std::fs::write(&env.config, "[[gpu]]\nname = \"gpu0\"\n[[vm]]\nname = \"x\"\ngpu = \"nope\"\nsocket = \"/tmp/x\"\n").unwrap();
    let e = request(&env.admin, &json!({"cmd": "reload"})).unwrap_err();
    assert!(e.contains("no GPU named `nope`"), "{e}");
    assert_eq!(env.vms().len(), 2);
    drop((victim, bystander, back));
    env.assert_all_freed();
}

/// The metrics endpoint reports each VM's figures as the admin interface does.
#[test]
fn metrics_endpoint() {
    let _s = serial();
    let env = Env::start("metrics", QUOTA);
    let p = Proc::connect(&env.sock("small"), 1).unwrap();
    let d = p.alloc(1 << 20).unwrap();
    p.write(d, &vec![7; 300_000]).unwrap();
    assert_eq!(p.read(d, 1000).unwrap(), vec![7; 1000]);
    assert_eq!(p.alloc(1 << 30), Err(CUDA_ERROR_OUT_OF_MEMORY));

    let mut s = std::net::TcpStream::connect(&env.metrics).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.") && text.contains(" 200 "), "{text}");
    let value = |name: &str, vm: &str| -> f64 {
        let key = format!("{name}{{vm=\"{vm}\",gpu=\"gpu0\"}} ");
        let line = text.lines().find(|l| l.starts_with(&key)).unwrap_or_else(|| panic!("no {key} in\n{text}"));
        line[key.len()..].parse().unwrap()
    };
    assert_eq!(value("vgpu_vm_bytes_to_device_total", "small"), 300_000.0);
    assert_eq!(value("vgpu_vm_bytes_from_device_total", "small"), 1000.0);
    assert_eq!(value("vgpu_vm_memory_used_bytes", "small"), (1 << 20) as f64);
    assert_eq!(value("vgpu_vm_memory_quota_bytes", "small"), (64 << 20) as f64);
    assert_eq!(value("vgpu_vm_quota_rejections_total", "small"), 1.0);
    assert_eq!(value("vgpu_vm_calls_total", "small"), 5.0, "hello, alloc, write, read, failed alloc");
    assert_eq!(value("vgpu_vm_errors_total", "small"), 1.0);
    assert_eq!(value("vgpu_vm_calls_total", "big"), 0.0);
    assert!(text.contains("# TYPE vgpu_vm_gpu_seconds_total counter"));
    assert!(text.contains("vgpu_gpu_memory_used_bytes{gpu=\"gpu0\"} 1048576"));
    assert_eq!(env.admin_cli(&["metrics"]).trim_end(), text.split("\r\n\r\n").nth(1).unwrap().trim_end());
    drop(p);
    env.assert_all_freed();
}

/// Clients of several VMs connect, work (checking every result), and leave, half of them
/// without freeing anything, while the admin watches: nothing deadlocks and every VM's and the
/// GPU's accounting returns to zero.
#[test]
fn many_clients_come_and_go_and_nothing_leaks() {
    let _s = serial();
    let env = Env::start("churn", THREE_VMS);
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut looks = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                env.vms();
                env.gpus();
                looks += 1;
            }
            looks
        });
        let workers: Vec<_> = (0..6u32)
            .map(|w| {
                let sock = env.sock(["low", "medium", "high"][w as usize % 3]);
                s.spawn(move || {
                    for round in 0..8u32 {
                        let p = Proc::connect(&sock, 1000 + w * 100 + round).unwrap();
                        let size = 4096 * (1 + (w + round) as u64 % 7);
                        let a = p.alloc(size).unwrap();
                        let data: Vec<u8> = (0..size).map(|i| (i as u32 ^ w ^ round) as u8).collect();
                        p.write(a, &data).unwrap();
                        assert_eq!(p.read(a, size).unwrap(), data);
                        if round % 2 == 0 {
                            let v = Vadd::new(&p, 2048);
                            v.run().unwrap();
                            let c = u64::from_le_bytes(v.params[16..24].try_into().unwrap());
                            let out = p.read(c, 2048 * 4).unwrap();
                            assert!(out.chunks_exact(4).enumerate().all(|(i, x)| f32::from_le_bytes(x.try_into().unwrap()) == 2.0 * i as f32));
                        }
                        if w % 2 == 0 {
                            p.free(a).unwrap();
                        }
                        assert!(Instant::now() < deadline, "no progress: deadlock?");
                    }
                })
            })
            .collect();
        for t in workers {
            t.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(watcher.join().unwrap() > 0);
    });
    let calls: u64 = env.vms().iter().map(|v| v.calls).sum();
    assert!(calls > 6 * 8 * 4, "{calls} calls");
    env.assert_all_freed();
}

/// Two GPUs (pools) in one mediator: each VM is served by the GPU its configuration names and
/// sees that GPU's model and memory; the admin lists each GPU with its VMs; moving a VM to the
/// other GPU by reload applies to its next connection.
#[test]
fn vms_are_served_by_the_gpu_they_are_configured_for() {
    let _s = serial();
    let env = Env::start(
        "pools",
        r#"
[[gpu]]
name = "big"
model = "NVIDIA H100 80GB HBM3"
memory_gib = 80
[[gpu]]
name = "small"
model = "NVIDIA L4"
memory_gib = 24
compute_capability = "8.9"
sm_count = 58
[[vm]]
name = "a"
gpu = "big"
socket = "{dir}/a.sock"
[[vm]]
name = "b"
gpu = "small"
socket = "{dir}/b.sock"
"#,
    );
    let device = |vm: &str| {
        let p = Proc::connect(&env.sock(vm), 1).unwrap();
        let info = p.call(vgpu_uapi::proto::Op::DeviceInfo, &[&0u32.to_le_bytes()]).unwrap();
        let d = vgpu_uapi::wire::Reader::new(&info).device_info().unwrap();
        (d.name_str().to_string(), d.total_mem, d.uuid)
    };
    let (a, b) = (device("a"), device("b"));
    assert_eq!((a.0.as_str(), a.1), ("NVIDIA H100 80GB HBM3", 80 << 30));
    assert_eq!((b.0.as_str(), b.1), ("NVIDIA L4", 24 << 30));
    assert_ne!(a.2, b.2, "two GPUs, two UUIDs");
    let gpus = env.gpus();
    assert_eq!(gpus.iter().map(|g| (g.name.as_str(), g.vms.clone())).collect::<Vec<_>>(), [("big", vec!["a".to_string()]), ("small", vec!["b".to_string()])]);
    // Reload: VM a moves to the small GPU; its next process sees it.
    let body = std::fs::read_to_string(&env.config).unwrap().replacen("gpu = \"big\"", "gpu = \"small\"", 1);
    std::fs::write(&env.config, body).unwrap();
    let out = env.admin_cli(&["reload"]);
    assert!(out.contains("VM a: new connections go to GPU small"), "{out}");
    assert_eq!(device("a").0, "NVIDIA L4");
    env.assert_all_freed();
}
