//! `vgpu-admin`: look at and steer a running vgpu-hostd through its admin socket.

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use vgpu_host::admin::{request, GpuReport, VmReport};

#[derive(Parser)]
#[command(version, about = "Administer a running vgpu mediator: GPUs, VMs, their usage; change shares and quotas live; evict")]
struct Args {
    /// The mediator's admin socket.
    #[arg(long, env = "VGPU_ADMIN_SOCKET", default_value = "/run/vgpu/admin.sock")]
    socket: PathBuf,
    /// Print the mediator's JSON reply instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The physical GPUs: memory, VMs, queue depth, busy time.
    Gpus,
    /// The VMs: share, quota, memory, processes, calls, bytes, GPU time, queue.
    Vms,
    /// Change a VM's settings now (until the next reload applies the file again).
    Set {
        vm: String,
        /// low | medium | high
        #[arg(long, conflicts_with = "weight")]
        priority: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
        /// Memory quota in MiB (0: none).
        #[arg(long)]
        memory_quota_mib: Option<u64>,
        /// GPU commands per second (0: no limit).
        #[arg(long)]
        rate_limit: Option<f64>,
        /// Longest a launch may run, in ms (0: no limit).
        #[arg(long)]
        exec_time_limit_ms: Option<u64>,
    },
    /// Disconnect every client of a VM (their GPU resources are freed) and refuse new ones.
    Evict { vm: String },
    /// Accept an evicted VM's clients again.
    Admit { vm: String },
    /// Re-read the mediator's configuration file.
    Reload,
    /// Print the Prometheus metrics.
    Metrics,
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

fn main() {
    let args = Args::parse();
    let req = match &args.cmd {
        Cmd::Gpus => json!({"cmd": "gpus"}),
        Cmd::Vms => json!({"cmd": "vms"}),
        Cmd::Set { vm, priority, weight, memory_quota_mib, rate_limit, exec_time_limit_ms } => json!({
            "cmd": "set", "vm": vm, "priority": priority, "weight": weight,
            "memory_quota_mib": memory_quota_mib, "rate_limit": rate_limit, "exec_time_limit_ms": exec_time_limit_ms,
        }),
        Cmd::Evict { vm } => json!({"cmd": "evict", "vm": vm}),
        Cmd::Admit { vm } => json!({"cmd": "admit", "vm": vm}),
        Cmd::Reload => json!({"cmd": "reload"}),
        Cmd::Metrics => json!({"cmd": "metrics"}),
    };
    let result = match request(&args.socket, &req) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vgpu-admin: {e}");
            std::process::exit(1);
        }
    };
    if args.json {
        println!("{result}");
        return;
    }
    match (&args.cmd, &result) {
        (Cmd::Gpus, v) => {
            let gpus: Vec<GpuReport> = serde_json::from_value(v.clone()).unwrap_or_default();
            println!("{:<10} {:<8} {:<28} {:>21} {:>6} {:>10}  VMS", "GPU", "BACKEND", "MODEL", "MEMORY USED/TOTAL", "QUEUE", "BUSY");
            for g in gpus {
                println!(
                    "{:<10} {:<8} {:<28} {:>21} {:>6} {:>9.1}s  {}",
                    g.name,
                    g.backend,
                    g.model,
                    format!("{}/{}", mib(g.memory_used), mib(g.memory_total)),
                    g.queue_depth,
                    g.busy_seconds,
                    g.vms.join(",")
                );
            }
        }
        (Cmd::Vms, v) => {
            let vms: Vec<VmReport> = serde_json::from_value(v.clone()).unwrap_or_default();
            println!(
                "{:<12} {:<8} {:>6} {:>21} {:>5} {:>9} {:>11} {:>11} {:>11} {:>9} {:>6} {:>9}  STATE",
                "VM", "GPU", "WEIGHT", "MEMORY USED/QUOTA", "PROCS", "CALLS", "TO DEVICE", "FROM DEVICE", "ZERO-COPY", "GPU TIME", "QUEUE", "WAITED"
            );
            for v in vms {
                let quota = v.memory_quota.map_or("-".to_string(), mib);
                println!(
                    "{:<12} {:<8} {:>6} {:>21} {:>5} {:>9} {:>11} {:>11} {:>11} {:>8.2}s {:>6} {:>8.2}s  {}",
                    v.name,
                    v.gpu,
                    v.weight,
                    format!("{}/{}", mib(v.memory_used), quota),
                    v.processes.len(),
                    v.calls,
                    mib(v.bytes_to_device),
                    mib(v.bytes_from_device),
                    mib(v.bytes_zero_copy),
                    v.gpu_seconds,
                    v.queue_depth,
                    v.queue_wait_seconds,
                    if v.evicted { "evicted" } else { "serving" }
                );
            }
        }
        (_, Value::String(s)) => print!("{s}{}", if s.ends_with('\n') { "" } else { "\n" }),
        (_, other) => println!("{other}"),
    }
}
