//! Prometheus metrics (text exposition format 0.0.4), per VM and per GPU, served over HTTP at
//! `GET /metrics` on `metrics_listen` and by `vgpu-admin metrics`.

use crate::mediator::Mediator;
use std::fmt::Write;
use std::sync::Arc;

/// Label values escaped as the exposition format wants.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(m: &Mediator) -> String {
    let vms = crate::admin::vms(m);
    let gpus = crate::admin::gpus(m);
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{{{labels}}} {v}");
        }
    };
    let per_vm = |f: &dyn Fn(&crate::admin::VmReport) -> f64| {
        vms.iter().map(|v| (format!("vm=\"{}\",gpu=\"{}\"", esc(&v.name), esc(&v.gpu)), f(v))).collect::<Vec<_>>()
    };
    family("vgpu_vm_calls_total", "counter", "Requests the VM's clients made.", per_vm(&|v| v.calls as f64));
    family("vgpu_vm_errors_total", "counter", "Requests that failed.", per_vm(&|v| v.errors as f64));
    family("vgpu_vm_launches_total", "counter", "Kernels launched and completed.", per_vm(&|v| v.launches as f64));
    family("vgpu_vm_bytes_to_device_total", "counter", "Bytes copied host to device.", per_vm(&|v| v.bytes_to_device as f64));
    family("vgpu_vm_bytes_from_device_total", "counter", "Bytes copied device to host.", per_vm(&|v| v.bytes_from_device as f64));
    family(
        "vgpu_vm_bytes_zero_copy_total",
        "counter",
        "Bytes copied (either way) straight between the VM's pinned pages and the device.",
        per_vm(&|v| v.bytes_zero_copy as f64),
    );
    family("vgpu_vm_bytes_staged_total", "counter", "Bytes copied (either way) carried in requests and replies.", per_vm(&|v| v.bytes_staged as f64));
    family("vgpu_vm_gpu_seconds_total", "counter", "GPU time used by the VM's commands.", per_vm(&|v| v.gpu_seconds));
    family("vgpu_vm_queue_wait_seconds_total", "counter", "Time the VM's commands waited for the GPU.", per_vm(&|v| v.queue_wait_seconds));
    family("vgpu_vm_rate_limited_seconds_total", "counter", "Time the VM's commands were held by its rate limit.", per_vm(&|v| v.rate_limited_seconds));
    family("vgpu_vm_time_limit_kills_total", "counter", "Launches stopped by the execution time limit.", per_vm(&|v| v.time_limit_kills as f64));
    family("vgpu_vm_quota_rejections_total", "counter", "Allocations refused by the memory quota.", per_vm(&|v| v.quota_rejections as f64));
    family("vgpu_vm_memory_used_bytes", "gauge", "Device memory the VM holds.", per_vm(&|v| v.memory_used as f64));
    family(
        "vgpu_vm_memory_quota_bytes",
        "gauge",
        "The VM's memory quota (absent: none).",
        vms.iter().filter_map(|v| Some((format!("vm=\"{}\",gpu=\"{}\"", esc(&v.name), esc(&v.gpu)), v.memory_quota? as f64))).collect(),
    );
    family("vgpu_vm_queue_depth", "gauge", "Commands waiting for the GPU.", per_vm(&|v| v.queue_depth as f64));
    family("vgpu_vm_weight", "gauge", "Scheduling weight.", per_vm(&|v| v.weight as f64));
    family("vgpu_vm_processes", "gauge", "GPU processes of the VM.", per_vm(&|v| v.processes.len() as f64));
    family("vgpu_vm_evicted", "gauge", "1 while the VM is evicted.", per_vm(&|v| v.evicted as u8 as f64));
    let per_gpu = |f: &dyn Fn(&crate::admin::GpuReport) -> f64| gpus.iter().map(|g| (format!("gpu=\"{}\"", esc(&g.name)), f(g))).collect::<Vec<_>>();
    family("vgpu_gpu_busy_seconds_total", "counter", "Time the GPU ran commands.", per_gpu(&|g| g.busy_seconds));
    family("vgpu_gpu_memory_used_bytes", "gauge", "Device memory in use.", per_gpu(&|g| g.memory_used as f64));
    family("vgpu_gpu_memory_total_bytes", "gauge", "Device memory.", per_gpu(&|g| g.memory_total as f64));
    family("vgpu_gpu_queue_depth", "gauge", "Commands waiting.", per_gpu(&|g| g.queue_depth as f64));
    let sim = &crate::sim::ptx::SIM_TOTALS;
    let total = sim.instructions.load(std::sync::atomic::Ordering::Relaxed);
    family("vgpu_sim_instructions_total", "counter", "PTX instructions the sim backend ran (one per thread).", vec![(String::new(), total as f64)]);
    family(
        "vgpu_sim_warp_wide_instructions_total",
        "counter",
        "Of them, those run warp-wide (the rest ran lane by lane through the interpreter).",
        vec![(String::new(), sim.warp_wide.load(std::sync::atomic::Ordering::Relaxed) as f64)],
    );
    family(
        "vgpu_sim_compiled_instructions_total",
        "counter",
        "Of those, the ones that ran as compiled code (hot kernels' straight-line register work).",
        vec![(String::new(), sim.compiled.load(std::sync::atomic::Ordering::Relaxed) as f64)],
    );
    family(
        "vgpu_sim_kernels_compiled_total",
        "counter",
        "Kernels the sim compiled (once hot).",
        vec![(String::new(), sim.kernels_compiled.load(std::sync::atomic::Ordering::Relaxed) as f64)],
    );
    family(
        "vgpu_sim_compile_seconds_total",
        "counter",
        "Time spent compiling them.",
        vec![(String::new(), sim.compile_micros.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6)],
    );
    o
}

/// Serves `GET /metrics` on `addr` (host:port; port 0 picks one) in a thread of its own;
/// returns the address it listens on.
pub fn start(m: Arc<Mediator>, addr: &str) -> Result<String, String> {
    let server = tiny_http::Server::http(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let bound = server.server_addr().to_string();
    tracing::info!("metrics at http://{bound}/metrics");
    std::thread::Builder::new()
        .name("vgpu-metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let resp = if req.url() == "/metrics" && *req.method() == tiny_http::Method::Get {
                    let r = tiny_http::Response::from_string(render(&m));
                    match tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4") {
                        Ok(ct) => r.with_header(ct),
                        Err(()) => r,
                    }
                } else {
                    tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}
