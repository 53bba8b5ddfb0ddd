//! The admin interface: a Unix socket (mode 0600) speaking one JSON object per line each way.
//! Requests: `{"cmd":"gpus"}`, `{"cmd":"vms"}`, `{"cmd":"set","vm":NAME, ...settings}`,
//! `{"cmd":"evict","vm":NAME}`, `{"cmd":"admit","vm":NAME}`, `{"cmd":"reload"}`,
//! `{"cmd":"metrics"}`. Replies: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
//! `vgpu-admin` is its command-line client.

use crate::config::{Priority, MAX_WEIGHT};
use crate::mediator::Mediator;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuReport {
    pub name: String,
    pub backend: String,
    pub model: String,
    pub memory_total: u64,
    pub memory_used: u64,
    pub vms: Vec<String>,
    pub queue_depth: usize,
    pub busy_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub memory_used: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmReport {
    pub name: String,
    pub gpu: String,
    pub socket: String,
    pub weight: u32,
    pub memory_quota: Option<u64>,
    pub rate_limit: Option<f64>,
    pub exec_time_limit_ms: Option<u64>,
    pub evicted: bool,
    pub clients: usize,
    pub processes: Vec<ProcessReport>,
    pub memory_used: u64,
    pub calls: u64,
    pub errors: u64,
    pub launches: u64,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    #[serde(default)]
    pub bytes_zero_copy: u64,
    #[serde(default)]
    pub bytes_staged: u64,
    pub gpu_seconds: f64,
    pub queue_depth: usize,
    pub queue_wait_seconds: f64,
    pub rate_limited_seconds: f64,
    pub time_limit_kills: u64,
    pub quota_rejections: u64,
}

pub fn gpus(m: &Mediator) -> Vec<GpuReport> {
    let vms = m.registry.vms();
    m.registry
        .gpus
        .iter()
        .map(|g| {
            let dev = g.backend.devices().into_iter().next();
            let (total, used) = g.backend.memory_usage(0).unwrap_or((0, 0));
            GpuReport {
                name: g.name.clone(),
                backend: g.backend.name().into(),
                model: dev.map(|d| d.name_str().to_string()).unwrap_or_default(),
                memory_total: total,
                memory_used: used,
                vms: vms.iter().filter(|v| v.gpu().name == g.name).map(|v| v.name.clone()).collect(),
                queue_depth: g.sched.queue_depths().values().sum(),
                busy_seconds: g.sched.busy().as_secs_f64(),
            }
        })
        .collect()
}

pub fn vms(m: &Mediator) -> Vec<VmReport> {
    m.registry
        .vms()
        .iter()
        .map(|v| {
            let s = v.settings();
            let gpu = v.gpu();
            let st = &v.stats;
            let ns = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
            VmReport {
                name: v.name.clone(),
                gpu: gpu.name.clone(),
                socket: v.socket().display().to_string(),
                weight: s.weight,
                memory_quota: s.memory_quota,
                rate_limit: s.rate_limit,
                exec_time_limit_ms: s.exec_time_limit.map(|d| d.as_millis() as u64),
                evicted: v.is_evicted(),
                clients: v.client_count(),
                processes: v.processes().into_iter().map(|p| ProcessReport { pid: p.pid, memory_used: p.used_bytes }).collect(),
                memory_used: st.memory_used.load(Ordering::Relaxed),
                calls: st.calls.load(Ordering::Relaxed),
                errors: st.errors.load(Ordering::Relaxed),
                launches: st.launches.load(Ordering::Relaxed),
                bytes_to_device: st.bytes_to_device.load(Ordering::Relaxed),
                bytes_from_device: st.bytes_from_device.load(Ordering::Relaxed),
                bytes_zero_copy: st.bytes_zero_copy.load(Ordering::Relaxed),
                bytes_staged: st.bytes_staged.load(Ordering::Relaxed),
                gpu_seconds: ns(&st.gpu_ns),
                queue_depth: gpu.sched.queue_depths().get(&v.id).copied().unwrap_or(0),
                queue_wait_seconds: ns(&st.queue_wait_ns),
                rate_limited_seconds: ns(&st.rate_limited_ns),
                time_limit_kills: st.time_limit_kills.load(Ordering::Relaxed),
                quota_rejections: st.quota_rejections.load(Ordering::Relaxed),
            }
        })
        .collect()
}

/// Carries out one request.
pub fn execute(m: &Mediator, req: &Value) -> Result<Value, String> {
    let cmd = req.get("cmd").and_then(Value::as_str).ok_or("request without \"cmd\"")?;
    let vm = || {
        let name = req.get("vm").and_then(Value::as_str).ok_or(format!("{cmd}: which VM? (\"vm\")"))?;
        m.registry.vm(name).ok_or(format!("no VM named `{name}`"))
    };
    match cmd {
        "gpus" => serde_json::to_value(gpus(m)).map_err(|e| e.to_string()),
        "vms" => serde_json::to_value(vms(m)).map_err(|e| e.to_string()),
        "metrics" => Ok(Value::String(crate::metrics::render(m))),
        "reload" => m.reload().map(Value::String),
        "evict" => {
            let v = vm()?;
            let n = v.evict();
            tracing::warn!(vm = %v.name, clients = n, "VM evicted by the administrator");
            Ok(json!(format!("VM {} evicted: {n} clients disconnected; new ones are refused until `admit`", v.name)))
        }
        "admit" => {
            let v = vm()?;
            v.admit();
            Ok(json!(format!("VM {} admitted", v.name)))
        }
        "set" => {
            let v = vm()?;
            let mut s = v.settings();
            let num = |k: &str| req.get(k).filter(|x| !x.is_null());
            if let Some(p) = num("priority") {
                let p = p.as_str().and_then(Priority::parse).ok_or("priority is low, medium or high")?;
                s.weight = p.weight();
            }
            if let Some(w) = num("weight") {
                s.weight = w.as_u64().filter(|&w| (1..=MAX_WEIGHT as u64).contains(&w)).ok_or(format!("weight must be 1..={MAX_WEIGHT}"))? as u32;
            }
            if let Some(q) = num("memory_quota_mib") {
                let q = q.as_u64().ok_or("memory_quota_mib must be a whole number (0: no quota)")?;
                s.memory_quota = (q > 0).then_some(q << 20);
            }
            if let Some(r) = num("rate_limit") {
                let r = r.as_f64().filter(|r| *r >= 0.0 && r.is_finite()).ok_or("rate_limit must be >= 0 (0: no limit)")?;
                s.rate_limit = (r > 0.0).then_some(r);
            }
            if let Some(t) = num("exec_time_limit_ms") {
                let t = t.as_u64().ok_or("exec_time_limit_ms must be a whole number (0: no limit)")?;
                s.exec_time_limit = (t > 0).then(|| Duration::from_millis(t));
            }
            tracing::info!(vm = %v.name, settings = ?s, "VM settings changed by the administrator");
            v.set_settings(s);
            Ok(json!(format!("VM {} updated (until the next reload, which applies the file)", v.name)))
        }
        other => Err(format!("unknown command `{other}` (gpus, vms, set, evict, admit, reload, metrics)")),
    }
}

/// Serves the admin socket at `path` in a thread of its own.
pub fn start(m: Arc<Mediator>, path: &Path) -> io::Result<()> {
    let listener = crate::server::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "admin interface listening");
    std::thread::Builder::new().name("vgpu-admin".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let m = m.clone();
            let _ = std::thread::Builder::new().name("vgpu-admin-client".into()).spawn(move || serve(&m, stream));
        }
    })?;
    Ok(())
}

fn serve(m: &Mediator, stream: UnixStream) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => match execute(m, &req) {
                Ok(result) => json!({"ok": true, "result": result}),
                Err(error) => json!({"ok": false, "error": error}),
            },
            Err(e) => json!({"ok": false, "error": format!("not JSON: {e}")}),
        };
        writeln!(out, "{reply}")?;
    }
    Ok(())
}

/// One request to the admin socket at `path` (the client side, for vgpu-admin and tests).
pub fn request(path: &Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("cannot reach the mediator's admin socket {}: {e}", path.display()))?;
    writeln!(s, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad reply from the mediator: {e}"))?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(v.get("error").and_then(Value::as_str).unwrap_or("request failed").to_string())
    }
}
