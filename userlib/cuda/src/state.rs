//! Process-wide driver state: the mediator connection, the devices it reported, contexts, and
//! what libcuda must remember about functions (their parameter layouts) and pinned host memory.

use crate::driver::CUresult;
use crate::vlog;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use rustc_hash::FxHashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{DeviceInfo, FunctionInfo, Op};
use vgpu_uapi::{DEVICE_VA_BASE, DEVICE_VA_SIZE};

pub struct Driver {
    client: vgpu_client::Client,
    pub contexts: Mutex<Contexts>,
    /// Shared with each launch (an Arc: a launch takes no copy of the name and parameters).
    pub functions: Mutex<FxHashMap<u64, std::sync::Arc<KernelMeta>>>,
    /// Page-locked host memory (cuMemAllocHost/cuMemHostAlloc, cuMemHostRegister): base -> range.
    pub host_allocs: Mutex<BTreeMap<usize, HostAlloc>>,
    /// Events this process created and has not destroyed: a record is checked here and then
    /// queued like a launch (no round trip).
    pub events: Mutex<std::collections::HashSet<u64>>,
    /// Managed and mapped memory: host and device copies kept coherent (driver/mirror.rs).
    pub mirrors: crate::driver::mirror::MirrorState,
}

/// Page-locked host memory: ours (a shared mapping of a sealed memfd) or the application's
/// (cuMemHostRegister). `handle`: the transport reaches it directly (the mediator maps the memfd;
/// in a guest the driver pins the pages for the device), so copies to and from it carry no bytes
/// through the connection or staging.
#[derive(Clone, Copy, Debug)]
pub struct HostAlloc {
    pub len: usize,
    pub handle: Option<u64>,
    /// cuMemHostRegister'ed: the application's memory, not ours to unmap.
    pub registered: bool,
    /// The flags it was allocated or registered with.
    pub flags: u32,
    /// Its CU_POINTER_ATTRIBUTE_BUFFER_ID: [`HostAlloc::new_buffer_id`].
    pub buffer_id: u64,
}

impl HostAlloc {
    /// A buffer id for new page-locked memory: never reused in the process, and never one the
    /// mediator gives device memory (those have the top bit clear).
    pub fn new_buffer_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        1 << 63 | NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Driver {
    pub fn transport(&self) -> &dyn vgpu_client::transport::Transport {
        self.client.transport.as_ref()
    }

    /// The backend runs PTX only (the sim): see driver/ptx_twin.rs.
    pub fn ptx_only(&self) -> bool {
        self.client.ptx_only
    }
}

/// What a launch needs to pack `kernelParams`.
#[derive(Clone, Debug)]
pub struct KernelMeta {
    pub info: FunctionInfo,
    /// The kernel's name as the module has it (mangled for C++), NUL-terminated for
    /// cuFuncGetName.
    pub name: std::ffi::CString,
    pub params: Vec<(u32, u32)>,
    pub module: u64,
    pub max_dynamic_shared: i32,
}

static DRIVER: OnceLock<Result<Driver, CUresult>> = OnceLock::new();

/// The initialized driver, or CUDA_ERROR_NOT_INITIALIZED before a successful cuInit.
pub fn driver() -> Result<&'static Driver, CUresult> {
    match DRIVER.get() {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(*e),
        None => Err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

/// cuInit: connects once; the outcome (success or the error) sticks for the process, as in CUDA.
pub fn init() -> CUresult {
    match DRIVER.get_or_init(connect) {
        Ok(_) => CUDA_SUCCESS,
        Err(e) => *e,
    }
}

fn connect() -> Result<Driver, CUresult> {
    let client = vgpu_client::Client::connect("cuInit")?;
    reserve_device_window();
    Ok(Driver {
        client,
        contexts: Mutex::new(Contexts::default()),
        functions: Mutex::new(FxHashMap::default()),
        host_allocs: Mutex::new(BTreeMap::new()),
        events: Mutex::new(std::collections::HashSet::new()),
        mirrors: Default::default(),
    })
}

/// Keeps the host from ever mapping anything where device pointers live, so a pointer's value
/// tells host from device (unified addressing).
fn reserve_device_window() {
    // SAFETY: a PROT_NONE, MAP_NORESERVE anonymous mapping at a fixed address that must not
    // replace anything (MAP_FIXED_NOREPLACE): it cannot disturb existing memory, and it is never
    // accessed.
    let p = unsafe {
        libc::mmap(
            DEVICE_VA_BASE as *mut libc::c_void,
            DEVICE_VA_SIZE as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p != DEVICE_VA_BASE as *mut libc::c_void {
        vlog!(crate::log::WARN, "could not reserve the device address window at {DEVICE_VA_BASE:#x}");
    }
}

pub fn is_device_ptr(p: u64) -> bool {
    (DEVICE_VA_BASE..DEVICE_VA_BASE + DEVICE_VA_SIZE).contains(&p)
}

impl Driver {
    /// A synchronous request. It is also where what asynchronous launches printed reaches
    /// stdout: after a call that waited for the mediator, as CUDA flushes device printf at
    /// synchronizing calls.
    pub fn call(&self, op: Op, parts: &[&[u8]]) -> Result<Vec<u8>, CUresult> {
        let waits = matches!(op, Op::Synchronize | Op::StreamSynchronize | Op::EventSynchronize | Op::StreamQuery | Op::EventQuery);
        let seen = self.mirrors.wait_begins();
        let r = self.client.call(op, parts);
        // The device's writes to managed and mapped memory become the host's after a wait.
        if waits && r.is_ok() {
            self.mirrors.after_wait(self, seen)?;
        }
        let printed = self.client.transport.take_async_output();
        crate::driver::launch_output(&printed);
        // Where the device prints at synchronization (a real GPU), what a synchronizing call
        // flushed is fetched now, before the application's next line of its own.
        if self.client.output_after_sync && matches!(op, Op::Synchronize | Op::StreamSynchronize | Op::EventSynchronize | Op::MemcpyDtoH | Op::ModuleUnload) {
            if let Ok(printed) = self.client.call(Op::DeviceOutput, &[]) {
                crate::driver::launch_output(&printed);
            }
        }
        r
    }

    /// Asynchronous work (launches, async copies and memsets): queued without waiting where the
    /// transport can; Some(reply) where it ran at once.
    pub fn call_async(&self, op: Op, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, CUresult> {
        self.client.call_async(op, parts)
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        &self.client.devices
    }

    pub fn device(&self, ordinal: i32) -> Result<&DeviceInfo, CUresult> {
        usize::try_from(ordinal).ok().and_then(|i| self.client.devices.get(i)).ok_or(CUDA_ERROR_INVALID_DEVICE)
    }

    pub fn contexts(&self) -> MutexGuard<'_, Contexts> {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A context as libcuda tracks it. Device work is all done in the client's one mediator session,
/// so a context here is the unit of "current device + settings" that the API exposes.
#[derive(Debug)]
pub struct Ctx {
    pub device: i32,
    pub flags: u32,
    pub primary: bool,
    pub refcount: u32,
    pub limits: HashMap<u32, usize>,
}

#[derive(Default)]
pub struct Contexts {
    next: usize,
    pub table: FxHashMap<usize, Ctx>,
    primary: HashMap<i32, usize>,
    pub primary_flags: HashMap<i32, u32>,
}

const CTX_HANDLE_BASE: usize = 0x7c7c_0000;

impl Contexts {
    pub fn create(&mut self, device: i32, flags: u32, primary: bool) -> usize {
        self.next += 1;
        let h = CTX_HANDLE_BASE + self.next * 0x100;
        self.table.insert(h, Ctx { device, flags, primary, refcount: 1, limits: HashMap::new() });
        h
    }

    /// The device's primary context, created (not retained) on first use.
    pub fn primary(&mut self, device: i32) -> usize {
        if let Some(&h) = self.primary.get(&device) {
            return h;
        }
        let flags = self.primary_flags.get(&device).copied().unwrap_or(0);
        let h = self.create(device, flags, true);
        if let Some(c) = self.table.get_mut(&h) {
            c.refcount = 0;
        }
        self.primary.insert(device, h);
        h
    }

    pub fn primary_if_exists(&self, device: i32) -> Option<usize> {
        self.primary.get(&device).copied()
    }

    pub fn get(&self, h: usize) -> Result<&Ctx, CUresult> {
        self.table.get(&h).ok_or(CUDA_ERROR_INVALID_CONTEXT)
    }

    pub fn get_mut(&mut self, h: usize) -> Result<&mut Ctx, CUresult> {
        self.table.get_mut(&h).ok_or(CUDA_ERROR_INVALID_CONTEXT)
    }
}

thread_local! {
    static CTX_STACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

// Each use goes through `try_with`: libraries call the driver from their destructors at exit
// (cuFFT's cuPointerGetAttributes), after this thread's stack may be gone; then there is no
// current context, as for a thread that never set one.

pub fn current_ctx() -> Option<usize> {
    CTX_STACK.try_with(|s| s.borrow().last().copied()).ok().flatten()
}

pub fn set_current_ctx(h: Option<usize>) {
    let _ = CTX_STACK.try_with(|s| {
        let mut s = s.borrow_mut();
        s.pop();
        if let Some(h) = h {
            s.push(h);
        }
    });
}

pub fn push_ctx(h: usize) {
    let _ = CTX_STACK.try_with(|s| s.borrow_mut().push(h));
}

pub fn pop_ctx() -> Option<usize> {
    CTX_STACK.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Drops a destroyed context from this thread's stack.
pub fn forget_ctx(h: usize) {
    let _ = CTX_STACK.try_with(|s| s.borrow_mut().retain(|&c| c != h));
}

/// The device of the current context, or CUDA_ERROR_INVALID_CONTEXT when there is none.
pub fn current_device() -> Result<(&'static Driver, i32), CUresult> {
    let d = driver()?;
    let h = current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    let dev = d.contexts().get(h)?.device;
    Ok((d, dev))
}
