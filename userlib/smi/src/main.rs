//! `vgpu-smi`: what `nvidia-smi` prints, for the devices the vgpu mediator serves. Installed in
//! guests as `nvidia-smi`. Readings vgpu does not have (temperature, power, utilization, clocks)
//! are shown as N/A, as nvidia-smi does for a sensor a board lacks.

use clap::Parser;
use std::process::ExitCode;
use vgpu_client::Client;
use nvidia_ml::{bus_ids, memory, processes, uuid_string};
use vgpu_uapi::cuda::attr;
use vgpu_uapi::proto::{DeviceInfo, HELLO_OBSERVER};

#[derive(Parser, Debug)]
#[command(version, about = "Show the vgpu devices, like nvidia-smi")]
struct Args {
    /// List the GPUs, one line each.
    #[arg(short = 'L', long = "list-gpus")]
    list: bool,
    /// Comma-separated fields to print (e.g. name,uuid,memory.total,memory.used).
    #[arg(long = "query-gpu")]
    query_gpu: Option<String>,
    /// Comma-separated fields of the processes using the GPUs (pid,process_name,used_memory,gpu_uuid,gpu_bus_id,gpu_name).
    #[arg(long = "query-compute-apps")]
    query_apps: Option<String>,
    /// Output format for --query-gpu and --query-compute-apps: csv[,noheader][,nounits].
    #[arg(long, default_value = "csv")]
    format: String,
}

struct Gpu<'a> {
    index: u32,
    info: &'a DeviceInfo,
    total: u64,
    used: u64,
}

const MIB: u64 = 1 << 20;


/// One --query-gpu field: (value, unit) or None if the field is unknown.
fn field(g: &Gpu, name: &str) -> Option<(String, &'static str)> {
    let na = || ("[N/A]".to_string(), "");
    Some(match name {
        "index" => (g.index.to_string(), ""),
        "name" | "gpu_name" => (g.info.name_str().to_string(), ""),
        "uuid" | "gpu_uuid" => (uuid_string(&g.info.uuid), ""),
        "pci.bus_id" | "gpu_bus_id" => (bus_ids(g.info).0, ""),
        "driver_version" => (vgpu_uapi::NVIDIA_DRIVER_VERSION.to_string(), ""),
        "count" => return None,
        "memory.total" => ((g.total / MIB).to_string(), " MiB"),
        "memory.used" => ((g.used / MIB).to_string(), " MiB"),
        "memory.free" => ((g.total.saturating_sub(g.used) / MIB).to_string(), " MiB"),
        "compute_cap" => (format!("{}.{}", g.info.attrs[attr::COMPUTE_CAPABILITY_MAJOR], g.info.attrs[attr::COMPUTE_CAPABILITY_MINOR]), ""),
        "persistence_mode" => ("Enabled".to_string(), ""),
        "temperature.gpu" | "utilization.gpu" | "utilization.memory" | "power.draw" | "power.limit" | "clocks.sm" | "clocks.mem" | "fan.speed" => na(),
        _ => return None,
    })
}

/// One process using a GPU, a row of --query-compute-apps.
struct App<'a> {
    gpu: &'a Gpu<'a>,
    pid: u32,
    used: u64,
}

/// One --query-compute-apps field: (value, unit) or None if the field is unknown.
fn app_field(a: &App, name: &str) -> Option<(String, &'static str)> {
    Some(match name {
        "pid" => (a.pid.to_string(), ""),
        "process_name" | "name" => (process_name(a.pid), ""),
        "used_memory" | "used_gpu_memory" => ((a.used / MIB).to_string(), " MiB"),
        "gpu_uuid" | "gpu_bus_id" | "gpu_name" => return field(a.gpu, name),
        _ => return None,
    })
}

/// nvidia-smi's CSV output: one row per item, `fields` picked by `field` (None: not a field).
fn query<T>(rows: &[T], field: impl Fn(&T, &str) -> Option<(String, &'static str)>, fields: &str, format: &str) -> Result<String, String> {
    let opts: Vec<&str> = format.split(',').map(str::trim).collect();
    if opts.first() != Some(&"csv") {
        return Err(format!("unsupported --format {format} (csv[,noheader][,nounits])"));
    }
    let (header, units) = (!opts.contains(&"noheader"), !opts.contains(&"nounits"));
    let names: Vec<&str> = fields.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut out = String::new();
    if header {
        let cols: Vec<String> = names
            .iter()
            .map(|n| {
                let unit = rows.first().and_then(|r| field(r, n)).map_or("", |f| f.1.trim());
                if units && !unit.is_empty() { format!("{n} [{unit}]") } else { n.to_string() }
            })
            .collect();
        out.push_str(&cols.join(", "));
        out.push('\n');
    }
    for r in rows {
        let mut row = Vec::new();
        for n in &names {
            let (v, unit) = field(r, n).ok_or_else(|| format!("Field \"{n}\" is not a valid field to query."))?;
            row.push(if units { format!("{v}{unit}") } else { v });
        }
        out.push_str(&row.join(", "));
        out.push('\n');
    }
    Ok(out)
}

fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| c.split('\0').next().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "[not found]".into())
}

fn table(c: &Client, gpus: &[Gpu]) -> String {
    let mut o = String::new();
    let line = format!("+{}+\n", "-".repeat(89));
    let sep = "+-----------------------------------------+------------------------+----------------------+\n";
    o.push_str(&line);
    o.push_str(&format!(
        "| NVIDIA-SMI {:<22} Driver Version: {:<14} CUDA Version: {:<9}|\n",
        vgpu_uapi::NVIDIA_DRIVER_VERSION,
        vgpu_uapi::NVIDIA_DRIVER_VERSION,
        format!("{}.{}", vgpu_uapi::CUDA_DRIVER_VERSION / 1000, vgpu_uapi::CUDA_DRIVER_VERSION % 1000 / 10)
    ));
    o.push_str(sep);
    o.push_str("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |\n");
    o.push_str("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |\n");
    o.push_str("|                                         |                        |               MIG M. |\n");
    o.push_str("|=========================================+========================+======================|\n");
    for g in gpus {
        let mut name = g.info.name_str().to_string();
        name.truncate(29);
        o.push_str(&format!("| {:>3}  {:<29}  On  | {:>18} Off | {:>20} |\n", g.index, name, bus_ids(g.info).0, 0));
        let mem = format!("{}MiB / {}MiB", g.used / MIB, g.total / MIB);
        o.push_str(&format!("| N/A   N/A    P0            N/A  /  N/A  | {mem:>22} | {:>7}      Default |\n", "N/A"));
        o.push_str(&format!("|                                         |                        | {:>20} |\n", "Disabled"));
        o.push_str(sep);
    }
    o.push('\n');
    o.push_str(&line);
    o.push_str(&format!("| {:<87} |\n", "Processes:"));
    o.push_str("|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |\n");
    o.push_str("|        ID   ID                                                               Usage      |\n");
    o.push_str(&format!("|{}|\n", "=".repeat(89)));
    let mut any = false;
    for g in gpus {
        for (pid, used) in processes(c, g.index).unwrap_or_default() {
            any = true;
            let mut name = process_name(pid);
            if name.len() > 35 {
                name = format!("...{}", &name[name.len() - 32..]);
            }
            o.push_str(&format!("|  {:>3}   N/A  N/A  {:>12}      C   {:<35} {:>8}MiB |\n", g.index, pid, name, used / MIB));
        }
    }
    if !any {
        o.push_str(&format!("|  {:<86} |\n", "No running processes found"));
    }
    o.push_str(&line);
    o
}

fn main() -> ExitCode {
    let args = Args::parse();
    let client = match Client::connect_as("vgpu-smi", HELLO_OBSERVER) {
        Ok(c) => c,
        Err(_) => {
            eprintln!("vgpu-smi has failed because it couldn't communicate with the vgpu mediator ({}).", vgpu_client::mediator_place());
            return ExitCode::from(9);
        }
    };
    let mut gpus = Vec::new();
    for (i, info) in client.devices.iter().enumerate() {
        match memory(&client, i as u32) {
            Ok((total, _free, used)) => gpus.push(Gpu { index: i as u32, info, total, used }),
            Err(e) => {
                eprintln!("vgpu-smi: GPU {i}: the mediator did not report memory (NVML error {e})");
                return ExitCode::from(15);
            }
        }
    }
    if args.list {
        for g in &gpus {
            println!("GPU {}: {} (UUID: {})", g.index, g.info.name_str(), uuid_string(&g.info.uuid));
        }
    } else if let Some(q) = &args.query_gpu {
        let count = gpus.len();
        let gpu_field = |g: &Gpu, n: &str| if n == "count" { Some((count.to_string(), "")) } else { field(g, n) };
        match query(&gpus, gpu_field, q, &args.format) {
            Ok(s) => print!("{s}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    } else if let Some(q) = &args.query_apps {
        let mut apps = Vec::new();
        for g in &gpus {
            match processes(&client, g.index) {
                Ok(ps) => apps.extend(ps.into_iter().map(|(pid, used)| App { gpu: g, pid, used })),
                Err(e) => {
                    eprintln!("vgpu-smi: GPU {}: the mediator did not list processes (NVML error {e})", g.index);
                    return ExitCode::from(15);
                }
            }
        }
        match query(&apps, app_field, q, &args.format) {
            Ok(s) => print!("{s}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", table(&client, &gpus));
    }
    ExitCode::SUCCESS
}
