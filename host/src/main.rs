//! `vgpu-hostd`: the vgpu mediator daemon.

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use vgpu_host::backend::Backend;
use vgpu_host::profile::DeviceProfile;
use vgpu_host::sim::SimBackend;

#[derive(Parser, Debug)]
#[command(version, about = "vgpu mediator: runs guests' CUDA work on a (simulated or real) GPU")]
struct Args {
    /// Unix socket clients (libcuda.so.1, the vgpu-stub device) connect to.
    #[arg(long, default_value = "/run/vgpu/hostd.sock", env = "VGPU_SOCKET")]
    socket: PathBuf,
    /// Backend executing the work: `sim` (CPU) is the only one in this build.
    #[arg(long, default_value = "sim")]
    backend: String,
    /// Device name reported to guests.
    #[arg(long, default_value_t = DeviceProfile::default().name)]
    gpu_name: String,
    /// Device memory reported to guests, in GiB.
    #[arg(long, default_value_t = 80)]
    gpu_memory_gib: u64,
    /// Streaming multiprocessors reported to guests.
    #[arg(long, default_value_t = 132)]
    sm_count: i32,
    /// Compute capability reported to guests, as MAJOR.MINOR.
    #[arg(long, default_value = "9.0")]
    compute_capability: String,
    /// Host memory one client may hold as sim device memory, in MiB.
    #[arg(long, default_value_t = 4096)]
    sim_memory_mib: u64,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VGPU_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let Some((major, minor)) = args
        .compute_capability
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
    else {
        eprintln!("vgpu-hostd: --compute-capability must look like 9.0");
        std::process::exit(2);
    };
    let profile = DeviceProfile {
        name: args.gpu_name,
        total_mem: args.gpu_memory_gib << 30,
        cc_major: major,
        cc_minor: minor,
        sm_count: args.sm_count,
        ..DeviceProfile::default()
    };
    let backend: Arc<dyn Backend> = match args.backend.as_str() {
        "sim" => Arc::new(SimBackend::new(profile, args.sim_memory_mib << 20)),
        other => {
            eprintln!("vgpu-hostd: unknown backend `{other}` (this build has: sim)");
            std::process::exit(2);
        }
    };
    tracing::info!(
        backend = backend.name(),
        device = %backend.devices()[0].name_str(),
        "backend selected"
    );
    if let Err(e) = vgpu_host::server::serve(&args.socket, backend) {
        eprintln!("vgpu-hostd: cannot serve on {}: {e}", args.socket.display());
        std::process::exit(1);
    }
}
