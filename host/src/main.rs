//! `vgpu-hostd`: the vgpu mediator daemon.

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use vgpu_host::backend::Backend;
use vgpu_host::config::Config;
use vgpu_host::mediator::Mediator;
use vgpu_host::profile::DeviceProfile;
use vgpu_host::sim::SimBackend;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "vgpu mediator: runs guests' CUDA work on a (simulated or real) GPU shared among VMs",
    long_about = "vgpu mediator: runs guests' CUDA work on a (simulated or real) GPU shared among VMs.\n\n\
        With --config FILE, the GPUs and VMs (socket, priority, memory quota, limits) come from the \
        file (see host/vgpu-hostd.example.toml); SIGHUP or `vgpu-admin reload` re-reads it. \
        Without it, one GPU is described by the options below and served to one VM on --socket."
)]
struct Args {
    /// Configuration file (TOML) of GPUs and VMs; the options below then only set what the
    /// file leaves out (the admin socket, the metrics address).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket clients (libcuda.so.1, the vgpu-stub device) connect to (without --config).
    #[arg(long, default_value = "/run/vgpu/hostd.sock", env = "VGPU_SOCKET")]
    socket: PathBuf,
    /// Admin socket for vgpu-admin (default with --config: /run/vgpu/admin.sock).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9400).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Backend executing the work: `cuda` (a GPU, through a CUDA driver), `sim` (the CPU), or
    /// `auto`: cuda when the driver loads and has a device, else sim.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// cuda: the driver to load (default: the system's libcuda.so.1, from ldconfig's cache).
    #[arg(long)]
    cuda_driver: Option<PathBuf>,
    /// cuda: which of the driver's devices to serve (its ordinal).
    #[arg(long, default_value_t = 0)]
    cuda_device: u32,
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
    /// The sim device's memory in MiB, if less than --gpu-memory-gib: it is host memory,
    /// committed as guests touch it, shared by all clients, and what guests are told they have.
    #[arg(long)]
    sim_memory_mib: Option<u64>,
    /// The host RAM all sim devices together may hold, in MiB (default: a quarter of what the
    /// host has available when vgpu-hostd starts). Past it, allocations fail with
    /// CUDA_ERROR_OUT_OF_MEMORY rather than the host running out of memory.
    #[arg(long)]
    sim_host_memory_mib: Option<u64>,
    /// Instructions one kernel launch may execute on the sim backend before it fails with
    /// CUDA_ERROR_LAUNCH_TIMEOUT (raise it for long kernels, e.g. CuPy's random generator setup).
    #[arg(long, default_value_t = vgpu_host::sim::ptx::INSTRUCTION_BUDGET)]
    sim_instruction_budget: u64,
    /// (internal) Serve one guest process's session on the cuda backend over the socket on
    /// standard input: how vgpu-hostd starts its workers.
    #[arg(long, hide = true)]
    worker: bool,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("vgpu-hostd: {msg}");
    std::process::exit(2);
}

/// VGPU_LOG (default `info`), with the sim's code generator kept to warnings unless VGPU_LOG
/// names it: Cranelift logs every compiled function's whole IR at `info`.
fn log_filter(spec: Option<String>) -> String {
    let spec = spec.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "info".into());
    if spec.contains("cranelift") { spec } else { format!("{spec},cranelift_jit=warn,cranelift_codegen=warn") }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // A VGPU_LOG that does not parse gives the default, as before.
            tracing_subscriber::EnvFilter::try_new(log_filter(std::env::var("VGPU_LOG").ok()))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(None))),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.worker {
        std::process::exit(vgpu_host::worker::run(args.cuda_driver.as_deref(), args.cuda_device));
    }
    if let Some(mib) = args.sim_host_memory_mib {
        vgpu_host::sim::memory::set_host_ram_limit(mib << 20);
    }
    raise_open_files_limit();
    let (mediator, admin_socket, metrics_listen) = match &args.config {
        Some(path) => {
            let cfg = Config::load(path).unwrap_or_else(|e| fail(e));
            if let Some(mib) = cfg.sim_host_memory_mib.filter(|_| args.sim_host_memory_mib.is_none()) {
                vgpu_host::sim::memory::set_host_ram_limit(mib << 20);
            }
            let m = Mediator::from_config(&cfg, Some(path.clone())).unwrap_or_else(|e| fail(e));
            let admin = args.admin_socket.clone().or(cfg.admin_socket.clone()).unwrap_or_else(|| "/run/vgpu/admin.sock".into());
            (m, Some(admin), args.metrics_listen.clone().or(cfg.metrics_listen.clone()))
        }
        None => {
            let Some((major, minor)) = vgpu_host::config::parse_cc(&args.compute_capability) else {
                fail("--compute-capability must look like 9.0");
            };
            let profile = DeviceProfile {
                name: args.gpu_name.clone(),
                total_mem: args.gpu_memory_gib << 30,
                cc_major: major,
                cc_minor: minor,
                sm_count: args.sm_count,
                ..DeviceProfile::default()
            };
            let sim = || SimBackend::new(profile, args.sim_memory_mib.map_or(u64::MAX, |m| m << 20)).with_instruction_budget(args.sim_instruction_budget);
            let backend: Arc<dyn Backend> = vgpu_host::backend::choose("gpu0", &args.backend, args.cuda_driver.as_deref(), args.cuda_device, sim).unwrap_or_else(|e| fail(e));
            tracing::info!(backend = backend.name(), device = %backend.devices()[0].name_str(), "backend selected");
            let m = Mediator::single(backend, &args.socket).unwrap_or_else(|e| fail(e));
            (m, args.admin_socket.clone(), args.metrics_listen.clone())
        }
    };
    if let Some(p) = admin_socket {
        if let Err(e) = vgpu_host::admin::start(mediator.clone(), &p) {
            fail(format!("cannot serve the admin socket {}: {e}", p.display()));
        }
    }
    if let Some(a) = metrics_listen {
        if let Err(e) = vgpu_host::metrics::start(mediator.clone(), &a) {
            fail(e);
        }
    }
    // SIGHUP re-reads the configuration; the VMs' accept loops run in their own threads.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .unwrap_or_else(|e| fail(format!("cannot watch SIGHUP: {e}")));
    for _ in signals.forever() {
        match mediator.reload() {
            Ok(summary) => tracing::info!("reloaded: {summary}"),
            Err(e) => tracing::error!("reload refused, configuration unchanged: {e}"),
        }
    }
}

/// Every client connection is a descriptor, and on the cuda backend so is each client's pinned
/// buffer (its file, shared with the worker: see `DeviceSession::reaches_host_files`): the soft
/// limit on open files (often 1024) is raised to the hard one, as servers holding many do.
fn raise_open_files_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a pointer to a live local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
