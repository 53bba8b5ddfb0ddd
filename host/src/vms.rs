//! The GPUs the mediator serves and the VMs sharing them: each VM's settings (weight, memory
//! quota, rate limit, execution time limit), its live clients, and what it used (the figures
//! behind `vgpu-admin` and the metrics endpoint).

use crate::backend::{Backend, ProcessUsage};
use crate::cancel::Cancel;
use crate::config::VmConfig;
use crate::sched::Scheduler;
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

pub struct Gpu {
    pub name: String,
    pub backend: Arc<dyn Backend>,
    pub sched: Scheduler,
}

/// What a VM may do; changed live by the admin or a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSettings {
    pub weight: u32,
    pub memory_quota: Option<u64>,
    pub rate_limit: Option<f64>,
    pub exec_time_limit: Option<Duration>,
}

impl VmSettings {
    pub fn from_config(c: &VmConfig) -> VmSettings {
        VmSettings {
            weight: c.effective_weight(),
            memory_quota: c.memory_quota_mib.map(|m| m << 20),
            rate_limit: c.rate_limit,
            exec_time_limit: c.exec_time_limit_ms.map(Duration::from_millis),
        }
    }
}

/// Counters of one VM (monotonic unless said otherwise).
#[derive(Default)]
pub struct VmStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub launches: AtomicU64,
    pub bytes_to_device: AtomicU64,
    pub bytes_from_device: AtomicU64,
    /// Of those (both ways): bytes the mediator copied straight between the VM's own pages and
    /// the device (pinned guest memory), and bytes carried in requests and replies.
    pub bytes_zero_copy: AtomicU64,
    pub bytes_staged: AtomicU64,
    pub gpu_ns: AtomicU64,
    pub queue_wait_ns: AtomicU64,
    pub time_limit_kills: AtomicU64,
    pub quota_rejections: AtomicU64,
    pub rate_limited_ns: AtomicU64,
    /// Device memory the VM's clients hold now.
    pub memory_used: AtomicU64,
}

/// One connection (a guest process, or NVML/nvidia-smi observing) of a VM.
pub struct Client {
    pub id: u64,
    pub pid: AtomicU32,
    pub observer: AtomicBool,
    /// Device memory charged to the VM for this client.
    pub used: AtomicU64,
    pub cancel: Arc<Cancel>,
    /// To disconnect it on eviction.
    stream: UnixStream,
}

pub struct Vm {
    pub name: String,
    pub id: u64,
    gpu: RwLock<Arc<Gpu>>,
    socket: RwLock<PathBuf>,
    settings: RwLock<VmSettings>,
    pub stats: VmStats,
    clients: Mutex<HashMap<u64, Arc<Client>>>,
    /// What its processes exported to each other (IPC and shareable VMM handles).
    pub shares: crate::share::Shares,
    /// Its device processes' RAM and pinned pages (the zero-copy data path).
    pub guests: crate::guest::Guests,
    evicted: AtomicBool,
    /// Taken out of the configuration: its socket is closed.
    removed: AtomicBool,
    bucket: Mutex<Bucket>,
}

/// Token bucket of the rate limit: `rate` commands per second, bursts of a tenth of a second.
struct Bucket {
    tokens: f64,
    at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Vm {
    pub fn new(cfg: &VmConfig, gpu: Arc<Gpu>) -> Vm {
        Vm {
            name: cfg.name.clone(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            gpu: RwLock::new(gpu),
            socket: RwLock::new(cfg.socket.clone()),
            settings: RwLock::new(VmSettings::from_config(cfg)),
            stats: VmStats::default(),
            clients: Mutex::default(),
            shares: Default::default(),
            guests: Default::default(),
            evicted: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            bucket: Mutex::new(Bucket { tokens: 0.0, at: Instant::now() }),
        }
    }

    /// The GPU new connections of this VM are served on.
    pub fn gpu(&self) -> Arc<Gpu> {
        self.gpu.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_gpu(&self, gpu: Arc<Gpu>) {
        *self.gpu.write().unwrap_or_else(|e| e.into_inner()) = gpu;
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_socket(&self, p: PathBuf) {
        *self.socket.write().unwrap_or_else(|e| e.into_inner()) = p;
    }

    pub fn settings(&self) -> VmSettings {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_settings(&self, s: VmSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = s;
        self.gpu().sched.wake();
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// Disconnects every client (their work stops, their resources are freed) and refuses new
    /// ones until `admit`.
    pub fn evict(&self) -> usize {
        self.evicted.store(true, Ordering::Relaxed);
        let clients: Vec<Arc<Client>> = lock(&self.clients).values().cloned().collect();
        for c in &clients {
            c.cancel.hang_up();
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        self.gpu().sched.wake();
        clients.len()
    }

    pub fn admit(&self) {
        self.evicted.store(false, Ordering::Relaxed);
    }

    pub fn register(&self, stream: &UnixStream, cancel: Arc<Cancel>) -> std::io::Result<Arc<Client>> {
        let c = Arc::new(Client {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pid: AtomicU32::new(0),
            observer: AtomicBool::new(true),
            used: AtomicU64::new(0),
            cancel,
            stream: stream.try_clone()?,
        });
        lock(&self.clients).insert(c.id, c.clone());
        Ok(c)
    }

    /// A client is gone: so are its exports (what others opened of them stays theirs).
    pub fn unregister(&self, c: &Client) {
        lock(&self.clients).remove(&c.id);
        self.shares.forget_owner(c.id);
    }

    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    /// The VM's GPU processes (observers such as nvidia-smi are not).
    pub fn processes(&self) -> Vec<ProcessUsage> {
        let mut v: Vec<ProcessUsage> = lock(&self.clients)
            .values()
            .filter(|c| !c.observer.load(Ordering::Relaxed))
            .map(|c| ProcessUsage { pid: c.pid.load(Ordering::Relaxed), used_bytes: c.used.load(Ordering::Relaxed) })
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// Waits until the rate limit (`rate`, this VM's setting) allows one more command; false if
    /// `cancel` was raised meanwhile.
    pub fn pace(&self, rate: Option<f64>, cancel: &Cancel) -> bool {
        let Some(rate) = rate else { return true };
        let burst = (rate / 10.0).max(1.0);
        let wait = {
            let mut b = lock(&self.bucket);
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            b.at = now;
            b.tokens -= 1.0;
            if b.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-b.tokens / rate) }
        };
        if !wait.is_zero() {
            self.stats.rate_limited_ns.fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if cancel.is_hung_up() {
                    return false;
                }
                std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
            }
        }
        true
    }
}

/// Every GPU and VM of the mediator.
pub struct Registry {
    pub gpus: Vec<Arc<Gpu>>,
    vms: RwLock<Vec<Arc<Vm>>>,
}

impl Registry {
    pub fn new(gpus: Vec<Arc<Gpu>>) -> Registry {
        Registry { gpus, vms: RwLock::default() }
    }

    pub fn gpu(&self, name: &str) -> Option<Arc<Gpu>> {
        self.gpus.iter().find(|g| g.name == name).cloned()
    }

    pub fn vms(&self) -> Vec<Arc<Vm>> {
        self.vms.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn vm(&self, name: &str) -> Option<Arc<Vm>> {
        self.vms().into_iter().find(|v| v.name == name)
    }

    pub fn add_vm(&self, vm: Arc<Vm>) {
        self.vms.write().unwrap_or_else(|e| e.into_inner()).push(vm);
    }

    pub fn remove_vm(&self, name: &str) -> Option<Arc<Vm>> {
        let mut vms = self.vms.write().unwrap_or_else(|e| e.into_inner());
        let i = vms.iter().position(|v| v.name == name)?;
        Some(vms.remove(i))
    }
}
