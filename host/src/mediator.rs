//! The running mediator: its GPUs, its VMs and their sockets, built from the configuration and
//! brought in line with it again on reload (SIGHUP, `vgpu-admin reload`) without a restart.

use crate::backend::Backend;
use crate::config::{parse_cc, Config, GpuConfig, SchedulerConfig, VmConfig};
use crate::profile::DeviceProfile;
use crate::sched::Scheduler;
use crate::sim::SimBackend;
use crate::vms::{Gpu, Registry, Vm, VmSettings};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Mediator {
    pub registry: Registry,
    config_path: Option<PathBuf>,
    gpu_configs: Vec<GpuConfig>,
    /// Serializes reloads (and admin changes against them).
    reloading: Mutex<()>,
}

fn scheduler(s: &SchedulerConfig) -> Scheduler {
    Scheduler::new(Duration::from_millis(s.time_slice_ms.max(1)), Duration::from_micros(s.anticipation_us))
}

/// The device a sim GPU presents, from its configuration. Each GPU's UUID derives from its name.
pub fn sim_profile(g: &GpuConfig) -> DeviceProfile {
    let (cc_major, cc_minor) = parse_cc(&g.compute_capability).unwrap_or((9, 0));
    let base = DeviceProfile::default();
    let uuid_seed = g.name.bytes().fold(base.uuid_seed, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    DeviceProfile { name: g.model.clone(), total_mem: g.memory_gib << 30, cc_major, cc_minor, sm_count: g.sm_count, uuid_seed, ..base }
}

impl Mediator {
    /// The mediator of a configuration file, its VMs serving.
    pub fn from_config(cfg: &Config, path: Option<PathBuf>) -> Result<Arc<Mediator>, String> {
        cfg.validate()?;
        let gpus = cfg
            .gpus
            .iter()
            .map(|g| {
                let sim = || {
                    let sim = SimBackend::new(sim_profile(g), g.sim_memory_mib.map_or(u64::MAX, |m| m << 20));
                    match g.sim_instruction_budget {
                        Some(b) => sim.with_instruction_budget(b),
                        None => sim,
                    }
                };
                let backend = crate::backend::choose(&g.name, &g.backend, g.cuda_driver.as_deref(), g.cuda_device, sim)?;
                Ok(Arc::new(Gpu { name: g.name.clone(), backend, sched: scheduler(&cfg.scheduler) }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let m = Arc::new(Mediator {
            registry: Registry::new(gpus),
            config_path: path,
            gpu_configs: cfg.gpus.clone(),
            reloading: Mutex::new(()),
        });
        m.apply(cfg)?;
        Ok(m)
    }

    /// One GPU, one VM ("default") on `socket` without limits: the mediator without a file.
    pub fn single(backend: Arc<dyn Backend>, socket: &Path) -> Result<Arc<Mediator>, String> {
        let s = SchedulerConfig::default();
        let gpu = Arc::new(Gpu { name: "gpu0".into(), backend, sched: scheduler(&s) });
        let m = Arc::new(Mediator { registry: Registry::new(vec![gpu]), config_path: None, gpu_configs: vec![], reloading: Mutex::new(()) });
        m.start_vm(&VmConfig::unlimited("default", "gpu0", socket))?;
        Ok(m)
    }

    fn start_vm(&self, c: &VmConfig) -> Result<(), String> {
        let gpu = self.registry.gpu(&c.gpu).ok_or_else(|| format!("VM `{}`: no GPU named `{}`", c.name, c.gpu))?;
        let vm = Arc::new(Vm::new(c, gpu));
        self.listen(&vm, &c.socket)?;
        self.registry.add_vm(vm);
        tracing::info!(vm = %c.name, gpu = %c.gpu, socket = %c.socket.display(), "VM added");
        Ok(())
    }

    fn listen(&self, vm: &Arc<Vm>, socket: &Path) -> Result<(), String> {
        let listener = crate::server::bind(socket).map_err(|e| format!("VM `{}`: cannot listen on {}: {e}", vm.name, socket.display()))?;
        vm.set_socket(socket.to_path_buf());
        let vm = vm.clone();
        std::thread::Builder::new()
            .name(format!("vgpu-vm-{}", vm.name))
            .spawn(move || crate::server::serve_vm(listener, vm))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Ends the accept loop on `socket` once the VM is removed or moved to another socket (the
    /// loop wakes on a connection of ours and sees that), and removes the socket file.
    fn stop_listening(socket: &Path) {
        let _ = UnixStream::connect(socket);
        let _ = std::fs::remove_file(socket);
    }

    /// Brings GPUs' VMs in line with `cfg`: new VMs start, removed ones are evicted and their
    /// sockets closed, changed ones take their new settings at once (a new GPU or socket applies
    /// to connections made from now on).
    pub fn apply(&self, cfg: &Config) -> Result<String, String> {
        cfg.validate()?;
        if !self.gpu_configs.is_empty() && cfg.gpus != self.gpu_configs {
            return Err("the [[gpu]] sections changed: GPUs are only set up when vgpu-hostd starts; restart it".into());
        }
        let _g = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = Vec::new();
        for old in self.registry.vms() {
            if !cfg.vms.iter().any(|v| v.name == old.name) {
                old.mark_removed();
                let n = old.evict();
                Self::stop_listening(&old.socket());
                self.registry.remove_vm(&old.name);
                old.gpu().sched.remove(old.id);
                changes.push(format!("removed VM {} ({n} clients disconnected)", old.name));
            }
        }
        for c in &cfg.vms {
            match self.registry.vm(&c.name) {
                None => {
                    self.start_vm(c)?;
                    changes.push(format!("added VM {}", c.name));
                }
                Some(vm) => {
                    let s = VmSettings::from_config(c);
                    if vm.settings() != s {
                        vm.set_settings(s);
                        changes.push(format!("VM {}: new settings", c.name));
                    }
                    if vm.gpu().name != c.gpu {
                        let gpu = self.registry.gpu(&c.gpu).ok_or("unknown GPU")?;
                        vm.set_gpu(gpu);
                        changes.push(format!("VM {}: new connections go to GPU {}", c.name, c.gpu));
                    }
                    let old_socket = vm.socket();
                    if old_socket != c.socket {
                        self.listen(&vm, &c.socket)?;
                        Self::stop_listening(&old_socket);
                        changes.push(format!("VM {}: now on {}", c.name, c.socket.display()));
                    }
                }
            }
        }
        let summary = if changes.is_empty() { "no changes".to_string() } else { changes.join("; ") };
        tracing::info!("configuration applied: {summary}");
        Ok(summary)
    }

    /// Re-reads the configuration file and applies it; on any error nothing changes.
    pub fn reload(&self) -> Result<String, String> {
        let path = self.config_path.as_ref().ok_or("vgpu-hostd was started without --config: nothing to reload")?;
        let cfg = Config::load(path)?;
        self.apply(&cfg)
    }
}
