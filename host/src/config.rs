//! The mediator's configuration file (TOML): the physical GPUs it serves and, per VM, which GPU,
//! its share (priority or weight), memory quota, rate limit and execution time limit.
//! See `host/vgpu-hostd.example.toml`. Reloaded on SIGHUP or `vgpu-admin reload`.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Unix socket of the admin interface (`vgpu-admin`).
    pub admin_socket: Option<PathBuf>,
    /// host:port of the Prometheus metrics endpoint (`GET /metrics`).
    pub metrics_listen: Option<String>,
    /// The host RAM all sim GPUs together may hold, in MiB (default: a quarter of what the host
    /// has available at start); read at start.
    pub sim_host_memory_mib: Option<u64>,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(rename = "gpu", default)]
    pub gpus: Vec<GpuConfig>,
    #[serde(rename = "vm", default)]
    pub vms: Vec<VmConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Longest time one VM keeps a GPU while others wait (a command is never interrupted).
    pub time_slice_ms: u64,
    /// How long a GPU stays with the VM whose command just finished, for its next command,
    /// before another VM gets it (a synchronous client needs a round trip to submit again).
    pub anticipation_us: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { time_slice_ms: 10, anticipation_us: 2000 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    pub name: String,
    /// `auto` (cuda when the driver loads and has a device, else sim), `cuda` (a physical GPU
    /// through a CUDA driver) or `sim` (the CPU).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// cuda: the driver to load (default: the system's libcuda.so.1, from ldconfig's cache).
    pub cuda_driver: Option<std::path::PathBuf>,
    /// cuda: which of the driver's devices this GPU is (its ordinal).
    #[serde(default)]
    pub cuda_device: u32,
    /// sim: the device guests see.
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default = "default_memory_gib")]
    pub memory_gib: u64,
    #[serde(default = "default_sm_count")]
    pub sm_count: i32,
    #[serde(default = "default_cc")]
    pub compute_capability: String,
    /// sim: the device's memory in MiB, if less than `memory_gib` (host memory, committed as
    /// guests touch it, shared by the GPU's VMs; bound each VM with its memory quota).
    pub sim_memory_mib: Option<u64>,
    /// sim: instructions one launch may execute before it fails with CUDA_ERROR_LAUNCH_TIMEOUT.
    pub sim_instruction_budget: Option<u64>,
}

fn default_backend() -> String {
    "auto".into()
}
fn default_model() -> String {
    crate::profile::DeviceProfile::default().name
}
fn default_memory_gib() -> u64 {
    80
}
fn default_sm_count() -> i32 {
    132
}
fn default_cc() -> String {
    "9.0".into()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    /// The scheduler weight of a priority: each level gets twice the share of the one below.
    pub fn weight(self) -> u32 {
        match self {
            Priority::Low => 1,
            Priority::Medium => 2,
            Priority::High => 4,
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "medium" => Some(Priority::Medium),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: String,
    pub gpu: String,
    /// The socket this VM's device process (vgpu-stub --mediator) connects to: a connection's
    /// VM is the socket it came in on, never anything the guest says.
    pub socket: PathBuf,
    /// low | medium | high (weights 1, 2, 4); or give `weight`.
    pub priority: Option<Priority>,
    pub weight: Option<u32>,
    /// Device memory all of the VM's processes together may hold, in MiB (default: the GPU's).
    pub memory_quota_mib: Option<u64>,
    /// GPU commands (launches, copies, memsets) per second; more wait (default: no limit).
    pub rate_limit: Option<f64>,
    /// A launch running longer fails with CUDA_ERROR_LAUNCH_TIMEOUT (default: no limit).
    pub exec_time_limit_ms: Option<u64>,
}

pub const MAX_WEIGHT: u32 = 1000;

impl VmConfig {
    /// A VM with the default share and no limits.
    pub fn unlimited(name: &str, gpu: &str, socket: &Path) -> VmConfig {
        VmConfig {
            name: name.into(),
            gpu: gpu.into(),
            socket: socket.into(),
            priority: None,
            weight: None,
            memory_quota_mib: None,
            rate_limit: None,
            exec_time_limit_ms: None,
        }
    }

    pub fn effective_weight(&self) -> u32 {
        self.weight.or(self.priority.map(Priority::weight)).unwrap_or(Priority::Medium.weight())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        cfg.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.gpus.is_empty() {
            return Err("no [[gpu]] configured".into());
        }
        let mut gpus = HashSet::new();
        for g in &self.gpus {
            if !gpus.insert(g.name.as_str()) {
                return Err(format!("GPU `{}` is configured twice", g.name));
            }
            if !["auto", "cuda", "sim"].contains(&g.backend.as_str()) {
                return Err(format!("GPU `{}`: backend `{}` is not one of auto, cuda, sim", g.name, g.backend));
            }
            parse_cc(&g.compute_capability).ok_or_else(|| format!("GPU `{}`: compute_capability must look like 9.0", g.name))?;
        }
        let (mut names, mut sockets) = (HashSet::new(), HashSet::new());
        for v in &self.vms {
            if v.name.is_empty() || !v.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!("VM name `{}`: use letters, digits, - _ .", v.name));
            }
            if !names.insert(v.name.as_str()) {
                return Err(format!("VM `{}` is configured twice", v.name));
            }
            if !sockets.insert(v.socket.as_path()) {
                return Err(format!("VM `{}`: socket {} is another VM's too", v.name, v.socket.display()));
            }
            if !gpus.contains(v.gpu.as_str()) {
                return Err(format!("VM `{}`: no GPU named `{}`", v.name, v.gpu));
            }
            if v.priority.is_some() && v.weight.is_some() {
                return Err(format!("VM `{}`: give priority or weight, not both", v.name));
            }
            if v.weight.is_some_and(|w| w == 0 || w > MAX_WEIGHT) {
                return Err(format!("VM `{}`: weight must be 1..={MAX_WEIGHT}", v.name));
            }
            if v.memory_quota_mib == Some(0) {
                return Err(format!("VM `{}`: a memory quota of 0 leaves nothing to use", v.name));
            }
            if v.rate_limit.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(format!("VM `{}`: rate_limit must be a positive number of commands per second", v.name));
            }
            if v.exec_time_limit_ms == Some(0) {
                return Err(format!("VM `{}`: exec_time_limit_ms must be positive", v.name));
            }
        }
        Ok(())
    }
}

pub fn parse_cc(s: &str) -> Option<(i32, i32)> {
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn example_file_parses() {
        let c = Config::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/vgpu-hostd.example.toml"))).unwrap();
        assert_eq!(c.gpus.len(), 1);
        assert!(c.vms.len() >= 2);
        assert_eq!(c.vms[0].effective_weight(), 4);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let gpu = "[[gpu]]\nname = \"g\"\n";
        for (body, why) in [
            ("", "no [[gpu]]"),
            ("[[gpu]]\nname = \"g\"\nbackend = \"opencl\"\n", "not one of auto, cuda, sim"),
            (&format!("{gpu}[[vm]]\nname = \"a\"\ngpu = \"h\"\nsocket = \"/s\"\n"), "no GPU named"),
            (&format!("{gpu}[[vm]]\nname = \"a\"\ngpu = \"g\"\nsocket = \"/s\"\nweight = 0\n"), "weight must be"),
            (&format!("{gpu}[[vm]]\nname = \"a\"\ngpu = \"g\"\nsocket = \"/s\"\nweight = 2\npriority = \"low\"\n"), "not both"),
            (&format!("{gpu}[[vm]]\nname = \"a\"\ngpu = \"g\"\nsocket = \"/s\"\n[[vm]]\nname = \"b\"\ngpu = \"g\"\nsocket = \"/s\"\n"), "another VM's"),
            (&format!("{gpu}[[vm]]\nname = \"a\"\ngpu = \"g\"\nsocket = \"/s\"\npriority = \"urgent\"\n"), "unknown variant"),
            (&format!("{gpu}[[vm]]\nname = \"a\"\ngpu = \"g\"\nsocket = \"/s\"\nquota = 1\n"), "unknown field"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(why), "{body:?}: {e}");
        }
    }
}
