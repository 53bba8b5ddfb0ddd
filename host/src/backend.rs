//! What a backend (sim: CPU; cuda: a real GPU) offers the mediator: one `DeviceSession` per
//! client connection, owning every resource the client created. Dropping the session frees them
//! all, which is how a client that dies leaks nothing.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use vgpu_uapi::array::{ArrayDesc, Copy3D, ResourceDesc, SamplerDesc};
use vgpu_uapi::cuda::CuResult;
use vgpu_uapi::proto::{DeviceInfo, FunctionInfo};

/// Host memory that copies reach, as the mediator maps it from a file (a client's pinned
/// memory, a piece of a VM's RAM: `len` bytes from `offset` of a memfd sealed against
/// shrinking), shared with backends that run in other processes. `id` is unique in this
/// process, never reused.
pub struct HostFile {
    pub id: u64,
    pub fd: OwnedFd,
    pub offset: u64,
    pub len: u64,
}

impl HostFile {
    pub fn new(fd: OwnedFd, offset: u64, len: u64) -> std::sync::Arc<HostFile> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        std::sync::Arc::new(HostFile { id: NEXT.fetch_add(1, Ordering::Relaxed), fd, offset, len })
    }
}

/// Bytes of host memory as the mediator maps them; where its file is kept (see
/// `DeviceSession::reaches_host_files`), `bytes` are the file's `offset..offset + bytes.len()`
/// (from the start of its window, not of the file).
pub struct HostSpan<'a> {
    pub file: Option<&'a std::sync::Arc<HostFile>>,
    pub offset: u64,
    pub bytes: &'a mut [u8],
}

/// A failed command: the CUresult the client gets, and a message for its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    pub code: CuResult,
    pub message: String,
}

impl CmdError {
    pub fn new(code: CuResult, message: impl Into<String>) -> Self {
        CmdError { code, message: message.into() }
    }
}

pub type CmdResult<T> = Result<T, CmdError>;

/// Launch geometry as the client asked for it (validated by the backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
    pub stream: u64,
    /// Every block resident at once (cuLaunchCooperativeKernel).
    pub cooperative: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUsage {
    pub pid: u32,
    pub used_bytes: u64,
}

/// Memory or an event a session shares with other sessions of its VM. Each backend knows its
/// own kind (and refuses another backend's, which a VM moved between GPUs could present).
pub type Shared = std::sync::Arc<dyn std::any::Any + Send + Sync>;

pub trait Backend: Send + Sync {
    /// Name for logs ("sim", "cuda").
    fn name(&self) -> &'static str;
    /// Whether kernels' device printf output comes from `DeviceSession::take_output` after
    /// synchronizing calls rather than with each launch.
    fn output_after_sync(&self) -> bool {
        false
    }
    /// Whether kernels run from PTX only (the sim), so that an image of SASS alone cannot run.
    fn runs_ptx_only(&self) -> bool {
        false
    }
    /// Whether sessions measure their GPU time themselves (`DeviceSession::take_gpu_time`):
    /// the time a command takes in the mediator is then not GPU time.
    fn measures_gpu_time(&self) -> bool {
        false
    }
    fn devices(&self) -> Vec<DeviceInfo>;
    /// A session for client process `pid`; an observer (NVML) is not counted as a GPU process.
    fn open_session(&self, device: u32, pid: u32, observer: bool) -> CmdResult<Box<dyn DeviceSession>>;
    /// (total, used by all sessions) of a device's memory.
    fn memory_usage(&self, device: u32) -> CmdResult<(u64, u64)>;
    /// The processes holding a (non-observer) session on the device.
    fn processes(&self, device: u32) -> CmdResult<Vec<ProcessUsage>>;
}

/// One client's view of one device. All handles are values this session issued; anything else
/// is rejected with CUDA_ERROR_INVALID_HANDLE / CUDA_ERROR_INVALID_VALUE.
pub trait DeviceSession: Send {
    fn mem_get_info(&self) -> (u64, u64);
    /// Device memory this session holds (allocations and module variables).
    fn used_bytes(&self) -> u64;
    fn mem_alloc(&mut self, bytes: u64) -> CmdResult<u64>;
    fn mem_free(&mut self, dptr: u64) -> CmdResult<()>;
    fn mem_address_range(&self, dptr: u64) -> CmdResult<(u64, u64)>;
    /// The buffer id of the allocation containing `dptr` (CU_POINTER_ATTRIBUTE_BUFFER_ID):
    /// unique among the session's allocations, never reused.
    fn mem_buffer_id(&self, _dptr: u64) -> CmdResult<u64> {
        Err(CmdError::new(vgpu_uapi::cuda::CUDA_ERROR_NOT_SUPPORTED, "buffer ids are not supported by this backend"))
    }
    fn write(&mut self, dst: u64, data: &[u8]) -> CmdResult<()>;
    fn read(&mut self, src: u64, out: &mut [u8]) -> CmdResult<()>;
    /// `write` from host memory the mediator maps from a file (a client's pinned memory, a
    /// piece of a VM's RAM). By default its bytes; a backend in another process (the cuda
    /// workers) maps the file itself and copies straight from it.
    fn write_host(&mut self, dst: u64, src: HostSpan<'_>) -> CmdResult<()> {
        self.write(dst, src.bytes)
    }
    /// `read` into host memory the mediator maps from a file (see `write_host`).
    fn read_host(&mut self, src: u64, dst: HostSpan<'_>) -> CmdResult<()> {
        self.read(src, dst.bytes)
    }
    /// Whether `write_host`/`read_host` use the span's file: then the mediator keeps the file
    /// of each client's pinned memory it maps (otherwise it closes it once mapped, so that a
    /// client's thousands of pinned allocations hold no descriptors here).
    fn reaches_host_files(&self) -> bool {
        false
    }
    /// A cuda worker's connection mapped host memory for copies (the mediator's HostRegister):
    /// `len` bytes at `ptr`, mapped until `host_unmapped(ptr)`. The cuda backend page-locks
    /// them with the driver, so that the GPU copies them by DMA with no staging copy.
    fn host_mapped(&mut self, _ptr: *mut u8, _len: usize) {}
    fn host_unmapped(&mut self, _ptr: *mut u8) {}
    fn copy(&mut self, dst: u64, src: u64, len: u64) -> CmdResult<()>;
    fn memset(&mut self, dst: u64, value: u32, elem_size: u32, count: u64) -> CmdResult<()>;

    fn module_load(&mut self, image: &[u8]) -> CmdResult<u64>;
    fn module_unload(&mut self, module: u64) -> CmdResult<()>;
    /// The function's launch facts and its parameters' (offset, size).
    fn module_get_function(&mut self, module: u64, name: &str) -> CmdResult<(FunctionInfo, Vec<(u32, u32)>)>;
    fn module_get_global(&mut self, module: u64, name: &str) -> CmdResult<(u64, u64)>;
    fn module_functions(&self, module: u64) -> CmdResult<Vec<String>>;

    /// Runs a kernel; returns what its printf calls wrote (device printf output).
    fn launch(&mut self, function: u64, dims: LaunchDims, params: &[u8]) -> CmdResult<Vec<u8>>;

    fn stream_create(&mut self, flags: u32, priority: i32) -> CmdResult<u64>;
    fn stream_destroy(&mut self, stream: u64) -> CmdResult<()>;
    fn stream_synchronize(&mut self, stream: u64) -> CmdResult<()>;
    fn stream_query(&mut self, stream: u64) -> CmdResult<()>;
    fn stream_wait_event(&mut self, stream: u64, event: u64) -> CmdResult<()>;

    fn event_create(&mut self, flags: u32) -> CmdResult<u64>;
    fn event_destroy(&mut self, event: u64) -> CmdResult<()>;
    fn event_record(&mut self, event: u64, stream: u64) -> CmdResult<()>;
    fn event_synchronize(&mut self, event: u64) -> CmdResult<()>;
    fn event_query(&mut self, event: u64) -> CmdResult<()>;
    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> CmdResult<f32>;

    fn synchronize(&mut self) -> CmdResult<()>;

    // Virtual memory management (cuMemCreate, cuMemAddressReserve, cuMemMap...).
    fn vmm_create(&mut self, size: u64) -> CmdResult<u64>;
    fn vmm_release(&mut self, handle: u64) -> CmdResult<()>;
    fn vmm_reserve(&mut self, size: u64, alignment: u64, hint: u64) -> CmdResult<u64>;
    fn vmm_unreserve(&mut self, va: u64, size: u64) -> CmdResult<()>;
    fn vmm_map(&mut self, va: u64, size: u64, offset: u64, handle: u64) -> CmdResult<()>;
    fn vmm_unmap(&mut self, va: u64, size: u64) -> CmdResult<()>;
    /// Access can only be given to memory that is mapped.
    fn vmm_set_access(&mut self, va: u64, size: u64) -> CmdResult<()>;

    // CUDA arrays, texture and surface objects (vgpu_uapi::array). Backends without them
    // refuse with CUDA_ERROR_NOT_SUPPORTED.
    fn array_create(&mut self, _desc: &ArrayDesc) -> CmdResult<u64> {
        Err(not_supported("CUDA arrays"))
    }
    fn array_destroy(&mut self, _array: u64) -> CmdResult<()> {
        Err(not_supported("CUDA arrays"))
    }
    /// A 3D copy; a host source is `host_in` (packed), a host destination is appended to
    /// `host_out` (packed). The dispatcher has checked that sizes match.
    fn memcpy_3d(&mut self, _copy: &Copy3D, _host_in: &[u8], _host_out: &mut Vec<u8>) -> CmdResult<()> {
        Err(not_supported("3D copies"))
    }
    fn tex_create(&mut self, _res: &ResourceDesc, _sampler: &SamplerDesc) -> CmdResult<u64> {
        Err(not_supported("texture objects"))
    }
    fn tex_destroy(&mut self, _tex: u64) -> CmdResult<()> {
        Err(not_supported("texture objects"))
    }
    fn surf_create(&mut self, _res: &ResourceDesc) -> CmdResult<u64> {
        Err(not_supported("surface objects"))
    }
    fn surf_destroy(&mut self, _surf: u64) -> CmdResult<()> {
        Err(not_supported("surface objects"))
    }

    // Sharing with other sessions of the VM (crate::share: IPC and shareable VMM handles).
    // What a session shares is its backend's own kind of `Shared`; backends without sharing
    // refuse with CUDA_ERROR_NOT_SUPPORTED.
    /// The allocation holding `dptr`: its base address, and what another session opens.
    fn share_memory(&mut self, _dptr: u64) -> CmdResult<(u64, Shared)> {
        Err(not_supported("IPC memory handles"))
    }
    /// A physical allocation (cuMemCreate), mapped or not.
    fn share_physical(&mut self, _handle: u64) -> CmdResult<Shared> {
        Err(not_supported("shareable VMM handles"))
    }
    /// An event made with CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING.
    fn share_event(&mut self, _event: u64) -> CmdResult<Shared> {
        Err(not_supported("IPC event handles"))
    }
    /// Maps another session's shared memory: (base address, size).
    fn open_memory(&mut self, _shared: &Shared) -> CmdResult<(u64, u64)> {
        Err(not_supported("IPC memory handles"))
    }
    /// Another session's physical allocation, as one of this session: (handle, size).
    fn open_physical(&mut self, _shared: &Shared) -> CmdResult<(u64, u64)> {
        Err(not_supported("shareable VMM handles"))
    }
    /// Another session's event, as an event of this session.
    fn open_event(&mut self, _shared: &Shared) -> CmdResult<u64> {
        Err(not_supported("IPC event handles"))
    }
    /// Unmaps memory `open_memory` mapped.
    fn close_memory(&mut self, _base: u64) -> CmdResult<()> {
        Err(not_supported("IPC memory handles"))
    }
    /// What a worker process sends the mediator of what its session shared (the cuda backend's
    /// sessions run in workers, see crate::worker), and what the mediator gives another worker
    /// to open: `shared` as bytes and, for what the driver shares as a file descriptor (VMM
    /// memory), that descriptor, which travels beside the bytes (SCM_RIGHTS); and back.
    fn shared_to_wire(&self, _shared: &Shared) -> CmdResult<(Vec<u8>, Option<OwnedFd>)> {
        Err(not_supported("sharing through a worker"))
    }
    fn shared_from_wire(&self, _kind: u32, _bytes: &[u8], _fd: Option<OwnedFd>) -> CmdResult<Shared> {
        Err(not_supported("sharing through a worker"))
    }

    /// cuDevicePrimaryCtxReset: frees the session's memory, streams, events and VMM, as if the
    /// client had disconnected, and clears a faulted context. Loaded modules stay, with the same
    /// handles for them and their functions, and their variables back at their initial values:
    /// CUDA libraries (cuLibraryLoadData, how cudart loads its kernels) outlive a context, and
    /// cudart goes on launching the same kernels after cudaDeviceReset. (A context's modules go
    /// with it in CUDA; keeping them only lets stale handles work, nothing a program relies on.)
    fn reset(&mut self) -> CmdResult<()>;

    /// GPU time of the session's completed kernels, as the GPU measured it (backends that run
    /// asynchronously; for the others the mediator times each command and this is 0).
    fn gpu_time_ns(&mut self) -> u64 {
        0
    }

    /// GPU time measured since the last call, for the mediator to charge (see `gpu_time_ns`).
    fn take_gpu_time(&mut self) -> u64 {
        0
    }

    /// What the client's kernels printed since the last call (backends whose output comes
    /// after synchronization; the others return it from `launch`).
    fn take_output(&mut self) -> Vec<u8> {
        Vec::new()
    }
}

fn not_supported(what: &str) -> CmdError {
    CmdError::new(vgpu_uapi::cuda::CUDA_ERROR_NOT_SUPPORTED, format!("{what} are not supported by this backend"))
}

/// Backends that serve one device, presented to guests as device 0 (cuda's, in or out of process).
pub fn check_single_device(device: u32) -> CmdResult<()> {
    if device == 0 {
        Ok(())
    } else {
        Err(CmdError::new(vgpu_uapi::cuda::CUDA_ERROR_INVALID_DEVICE, format!("no device {device}")))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Device memory held by each live session of a backend, for NVML-style reporting
/// (`Backend::memory_usage`, `Backend::processes`).
#[derive(Default)]
pub struct UsageTable {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, (ProcessUsage, bool)>>,
}

impl UsageTable {
    /// A new session of process `pid` (an observer is not listed as a GPU process); its id.
    pub fn open(&self, pid: u32, observer: bool) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(id, (ProcessUsage { pid, used_bytes: 0 }, observer));
        id
    }

    pub fn set_used(&self, id: u64, used_bytes: u64) {
        if let Some((u, _)) = lock(&self.sessions).get_mut(&id) {
            u.used_bytes = used_bytes;
        }
    }

    pub fn close(&self, id: u64) {
        lock(&self.sessions).remove(&id);
    }

    pub fn total_used(&self) -> u64 {
        lock(&self.sessions).values().map(|(u, _)| u.used_bytes).sum()
    }

    /// `Backend::memory_usage` of a backend with one device of `total` bytes.
    pub fn single_device_usage(&self, device: u32, total: u64) -> CmdResult<(u64, u64)> {
        check_single_device(device)?;
        Ok((total, self.total_used()))
    }

    /// `Backend::processes` of a backend with one device.
    pub fn single_device_processes(&self, device: u32) -> CmdResult<Vec<ProcessUsage>> {
        check_single_device(device)?;
        Ok(self.processes())
    }

    /// The non-observer sessions, by pid.
    pub fn processes(&self) -> Vec<ProcessUsage> {
        let mut v: Vec<ProcessUsage> = lock(&self.sessions).values().filter(|(_, obs)| !obs).map(|(u, _)| *u).collect();
        v.sort_by_key(|u| u.pid);
        v
    }
}

/// The backend a GPU asked for (`auto`, `cuda` or `sim`): `cuda` on device `cuda_device` of the
/// driver at `cuda_driver` (None: the system's), `sim` as `sim` builds it; `auto` takes cuda when
/// the driver loads and has the device, else sim. Logs which, and why, in one line.
pub fn choose(
    gpu: &str,
    kind: &str,
    cuda_driver: Option<&std::path::Path>,
    cuda_device: u32,
    sim: impl FnOnce() -> crate::sim::SimBackend,
) -> Result<std::sync::Arc<dyn Backend>, String> {
    // The driver is loaded by workers only (one per guest process), never by the mediator.
    let cuda = || crate::worker::WorkerSpec::this_executable(cuda_driver, cuda_device).and_then(crate::worker::WorkerBackend::start);
    let backend: std::sync::Arc<dyn Backend> = match kind {
        "sim" => {
            tracing::info!(gpu, "backend sim: configured");
            std::sync::Arc::new(sim())
        }
        "cuda" => {
            let c = cuda().map_err(|e| format!("GPU `{gpu}`: backend cuda: {e}"))?;
            tracing::info!(gpu, driver = %c.driver_path().display(), device = %c.devices()[0].name_str(), "backend cuda: configured (a worker process per guest process)");
            std::sync::Arc::new(c)
        }
        "auto" => match cuda() {
            Ok(c) => {
                tracing::info!(gpu, driver = %c.driver_path().display(), device = %c.devices()[0].name_str(), "backend cuda: the driver loads and has the device (a worker process per guest process)");
                std::sync::Arc::new(c)
            }
            Err(why) => {
                tracing::info!(gpu, "backend sim: no usable CUDA driver ({why})");
                std::sync::Arc::new(sim())
            }
        },
        other => return Err(format!("GPU `{gpu}`: unknown backend `{other}` (auto, cuda or sim)")),
    };
    Ok(backend)
}
