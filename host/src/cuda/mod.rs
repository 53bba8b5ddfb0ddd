//! The `cuda` backend: guests' work on a real NVIDIA GPU, through a CUDA driver loaded by path
//! (`driver.rs`). Every address, length and handle a guest sends is checked against what this
//! session created before it reaches the driver; device addresses are the driver's own, so
//! pointers stored in device memory and pointer arithmetic in kernels work as on the GPU.
//!
//! The mediator does not run this in its own process: each guest process's session runs in a
//! worker process of its own (`crate::worker`), so sessions never share a CUDA context; the
//! driver's device printf goes to the worker's stdout, which the mediator forwards to the guest.
//! Host memory that copies reach (a client's pinned memory, the VM's RAM) is mapped by the
//! worker too and registered with the driver (`page_lock`), so the GPU reaches it by DMA.
//! Still to come (issue 17): memory pools.

pub mod driver;

use crate::backend::{Backend, CmdError, CmdResult, DeviceSession, LaunchDims, ProcessUsage, Shared, UsageTable};
use vgpu_uapi::share::{IpcHandle, HANDLE_LEN, KIND_EVENT, KIND_MEMORY, KIND_PHYSICAL};
use driver::{c_name, CudaDriver, Ptr};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use vgpu_uapi::cuda::vmm::{MemAccessDesc, MemAllocationProp, MemLocation, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, CU_MEM_LOCATION_TYPE_DEVICE};
use vgpu_uapi::array::{self, format_bytes, ArrayDesc, Copy3D, CopySide, ResourceDesc, SamplerDesc, MEM_DEVICE, MEM_HOST, MEM_ARRAY, RESOURCE_ARRAY, RESOURCE_LINEAR, RESOURCE_PITCH2D};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{DeviceInfo, FunctionInfo, STREAM_LEGACY, STREAM_PER_THREAD};

/// A driver handle (context, module, function, stream, event) kept by a session.
#[derive(Clone, Copy, Debug)]
struct Raw(Ptr);

// SAFETY: CUDA handles are process-wide values; any thread may pass them to the driver once
// it has made their context current, which every session call does first (CudaSession::enter).
unsafe impl Send for Raw {}


// CUfunction_attribute (cuda.h).
const FUNC_MAX_THREADS_PER_BLOCK: i32 = 0;
const FUNC_SHARED_SIZE_BYTES: i32 = 1;
const FUNC_CONST_SIZE_BYTES: i32 = 2;
const FUNC_LOCAL_SIZE_BYTES: i32 = 3;
const FUNC_NUM_REGS: i32 = 4;
const FUNC_PTX_VERSION: i32 = 5;
const FUNC_BINARY_VERSION: i32 = 6;
const FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES: i32 = 8;
/// Dynamic shared memory a launch may use without opting in (cuda.h: 48 KiB).
const DEFAULT_DYNAMIC_SHARED: u32 = 48 << 10;

/// One of the driver's devices, presented to guests as their device 0.
pub struct CudaBackend {
    drv: Arc<CudaDriver>,
    /// The driver's ordinal of the device.
    ordinal: i32,
    info: DeviceInfo,
    usage: Arc<UsageTable>,
}

impl CudaBackend {
    /// The backend on device `ordinal` of the driver at `path` (None: the system's, from
    /// ldconfig's cache). Fails, saying why, if it does not load or has no such device.
    pub fn load(path: Option<&Path>, ordinal: u32) -> Result<CudaBackend, String> {
        let path = path.unwrap_or(Path::new(driver::SYSTEM_DRIVER));
        let drv = Arc::new(CudaDriver::load(path)?);
        let mut n = 0;
        // SAFETY: entry point of the initialized driver, valid out-pointer.
        drv.ok(unsafe { (drv.api.cuDeviceGetCount)(&mut n) }, "cuDeviceGetCount").map_err(|e| e.message)?;
        if n <= 0 {
            return Err(format!("{} reports no CUDA device", path.display()));
        }
        if ordinal as i32 >= n {
            return Err(format!("{} has {n} device(s), no device {ordinal}", path.display()));
        }
        let info = device_info(&drv, ordinal as i32).map_err(|e| e.message)?;
        Ok(CudaBackend { drv, ordinal: ordinal as i32, info, usage: Arc::default() })
    }

    pub fn driver_path(&self) -> &Path {
        &self.drv.path
    }

    pub fn driver_version(&self) -> i32 {
        self.drv.version
    }

    fn check_device(&self, device: u32) -> CmdResult<()> {
        crate::backend::check_single_device(device)
    }
}

/// What the driver says of device `ordinal`, as the mediator reports devices.
fn device_info(drv: &CudaDriver, ordinal: i32) -> CmdResult<DeviceInfo> {
    let api = &drv.api;
    let mut dev = 0;
    let mut name = [0 as std::ffi::c_char; 96];
    let mut uuid = [0u8; 16];
    let mut total = 0usize;
    // SAFETY: entry points of the initialized driver with valid out-pointers; the name buffer's
    // length is passed (the driver NUL-terminates within it).
    unsafe {
        drv.ok((api.cuDeviceGet)(&mut dev, ordinal), "cuDeviceGet")?;
        drv.ok((api.cuDeviceGetName)(name.as_mut_ptr(), name.len() as i32 - 1, dev), "cuDeviceGetName")?;
        drv.ok((api.cuDeviceGetUuid_v2)(&mut uuid, dev), "cuDeviceGetUuid_v2")?;
        drv.ok((api.cuDeviceTotalMem_v2)(&mut total, dev), "cuDeviceTotalMem_v2")?;
    }
    let mut attrs = [0i32; DEVICE_ATTRIBUTE_SLOTS];
    for (id, slot) in attrs.iter_mut().enumerate().skip(1) {
        let mut v = 0;
        // SAFETY: as above; an attribute the driver does not know is an error we leave at 0.
        if unsafe { (api.cuDeviceGetAttribute)(&mut v, id as i32, dev) } == CUDA_SUCCESS {
            *slot = v;
        }
    }
    // What the driver can do but this backend does not give guests yet: fabric handles and
    // shareable pools. IPC memory and event handles it has (the driver's, between workers), and
    // VMM memory as POSIX file descriptors when the driver has them.
    for id in [
        vgpu_uapi::cuda::attr::HANDLE_TYPE_FABRIC_SUPPORTED,
        vgpu_uapi::cuda::attr::MEMPOOL_SUPPORTED_HANDLE_TYPES,
    ] {
        attrs[id] = 0;
    }
    let mut info = DeviceInfo {
        name: [0; 96],
        uuid,
        total_mem: total as u64,
        pci_domain: attrs[attr_id::PCI_DOMAIN] as u32,
        pci_bus: attrs[attr_id::PCI_BUS] as u32,
        pci_device: attrs[attr_id::PCI_DEVICE] as u32,
        attrs,
    };
    for (d, s) in info.name.iter_mut().zip(name.iter().take_while(|&&c| c != 0)) {
        *d = *s as u8;
    }
    Ok(info)
}

/// CUdevice_attribute ids (cuda.h) this backend reads or overrides.
mod attr_id {
    pub const PCI_BUS: usize = 33;
    pub const PCI_DEVICE: usize = 34;
    pub const PCI_DOMAIN: usize = 50;
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        vec![self.info]
    }

    fn memory_usage(&self, device: u32) -> CmdResult<(u64, u64)> {
        self.usage.single_device_usage(device, self.info.total_mem)
    }

    fn processes(&self, device: u32) -> CmdResult<Vec<ProcessUsage>> {
        self.usage.single_device_processes(device)
    }

    fn open_session(&self, device: u32, pid: u32, observer: bool) -> CmdResult<Box<dyn DeviceSession>> {
        self.check_device(device)?;
        let mut ctx: Ptr = std::ptr::null_mut();
        // SAFETY: entry point of the initialized driver, valid out-pointer; the retained
        // context is released when the session drops.
        self.drv.ok(unsafe { (self.drv.api.cuDevicePrimaryCtxRetain)(&mut ctx, self.ordinal) }, "cuDevicePrimaryCtxRetain")?;
        let usage_id = self.usage.open(pid, observer);
        Ok(Box::new(CudaSession {
            drv: self.drv.clone(),
            device: self.ordinal,
            ctx: Raw(ctx),
            usage: self.usage.clone(),
            usage_id,
            total_mem: self.info.total_mem,
            shareable: self.info.attrs[vgpu_uapi::cuda::attr::HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED] != 0,
            next_handle: 0x10,
            allocs: BTreeMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            physical: HashMap::new(),
            reserved: BTreeMap::new(),
            mapped: BTreeMap::new(),
            timing: VecDeque::new(),
            spare_events: Vec::new(),
            gpu_ns: 0,
            extended: 0,
            arrays: HashMap::new(),
            objects: HashMap::new(),
            opened: BTreeMap::new(),
            page_locked: BTreeMap::new(),
        }))
    }
}

struct Module {
    raw: Raw,
    /// The image as loaded (NUL-terminated), to load it again after a reset.
    image: Vec<u8>,
    /// Its variables this session has looked up: (address, size).
    globals: Vec<(u64, u64)>,
}

struct Function {
    raw: Raw,
    module: u64,
    name: String,
    /// Each parameter's (offset, size) in the packed parameter buffer.
    params: Vec<(u32, u32)>,
}

/// One client's work on the GPU. Handles given to the client are this session's own numbers;
/// device addresses are the driver's, accepted only inside this session's allocations.
pub struct CudaSession {
    drv: Arc<CudaDriver>,
    device: i32,
    ctx: Raw,
    usage: Arc<UsageTable>,
    usage_id: u64,
    total_mem: u64,
    /// The driver exports VMM memory as POSIX file descriptors: every physical allocation is
    /// made exportable (CUDA asks for it at cuMemCreate; vgpu's guests may export any).
    shareable: bool,
    next_handle: u64,
    /// base -> size of every allocation.
    allocs: BTreeMap<u64, u64>,
    modules: HashMap<u64, Module>,
    functions: HashMap<u64, Function>,
    streams: HashMap<u64, Raw>,
    events: HashMap<u64, Raw>,
    /// VMM: physical allocations (client handle -> (driver handle, size)), reserved address
    /// ranges (base -> size) and mappings (va -> (size, client handle of the physical
    /// allocation, whether access was set)).
    physical: HashMap<u64, (u64, u64)>,
    reserved: BTreeMap<u64, u64>,
    mapped: BTreeMap<u64, (u64, u64, bool)>,
    /// GPU time accounting: an event recorded before and after each launch, in launch order,
    /// until the end one has completed; then their elapsed time is added to `gpu_ns`.
    timing: VecDeque<(Raw, Raw)>,
    spare_events: Vec<Raw>,
    gpu_ns: u64,
    /// Launches since the pending pairs were last looked at.
    extended: u32,
    /// CUDA arrays (client handle -> the driver's array and its descriptor), and the texture
    /// and surface objects made (the driver's value, which kernels are given -> whether it is
    /// a texture).
    arrays: HashMap<u64, (Raw, ArrayDesc)>,
    objects: HashMap<u64, bool>,
    /// Memory another worker's session shared, opened with the driver's IPC handle: base -> size.
    opened: BTreeMap<u64, u64>,
    /// Host memory the worker mapped for copies (the client's pinned memory, the VM's RAM) and
    /// registered with the driver: address -> length (see `host_mapped`).
    page_locked: BTreeMap<usize, usize>,
}

/// What a session of this backend shares with another (host/src/share.rs): the driver's own IPC
/// handle, which another worker's context opens, and the memory's size. As bytes between the
/// workers and the mediator: the handle, then the size (u64, little-endian).
struct CudaShared {
    kind: u32,
    handle: IpcHandle,
    size: u64,
}

/// A physical allocation (VMM) shared as the driver shares it: a POSIX file descriptor from
/// cuMemExportToShareableHandle, which travels from worker to mediator to worker beside the
/// size (the bytes: u64, little-endian), and its size.
struct CudaSharedFd {
    fd: OwnedFd,
    size: u64,
}

/// Timed launches (event pairs) pending at most. Past that the GPU is behind the client: a
/// further launch extends the newest pair (its end event is recorded again after it), which
/// then times back-to-back kernels with no idle gap between them. The oldest pairs are looked
/// at again every `TIMING_RECHECK` launches.
const TIMING_BACKLOG: usize = 64;
const TIMING_RECHECK: u32 = 16;

fn invalid_handle(what: &str, h: u64) -> CmdError {
    CmdError::new(CUDA_ERROR_INVALID_HANDLE, format!("{h:#x} is not a {what} of this client"))
}

impl CudaSession {
    /// Registers host memory the worker mapped with the driver (page-locked, so that copies
    /// from and to it are DMA with no staging copy). A driver that refuses leaves the copies
    /// correct, only staged.
    fn page_lock(&mut self, ptr: *mut u8, len: usize) {
        // SAFETY: `ptr..ptr + len` is a mapping the worker's connection holds until it calls
        // `host_unmapped` (which unregisters it first); the driver only pins its pages.
        let r = self.enter().and_then(|()| self.drv.ok(unsafe { (self.drv.api.cuMemHostRegister_v2)(ptr.cast(), len, host_flags::PORTABLE) }, "cuMemHostRegister_v2"));
        match r {
            Ok(()) => {
                tracing::info!(bytes = len, "host memory mapped for copies is page-locked with the driver");
                self.page_locked.insert(ptr as usize, len);
            }
            Err(e) => tracing::warn!(bytes = len, "host memory mapped for copies could not be page-locked (copies are staged): {}", e.message),
        }
    }

    /// Makes the session's context current on the calling thread (sessions are served from
    /// several threads); every call into the driver comes after it.
    fn enter(&self) -> CmdResult<()> {
        // SAFETY: a context this session retained and has not released.
        self.drv.ok(unsafe { (self.drv.api.cuCtxSetCurrent)(self.ctx.0) }, "cuCtxSetCurrent")
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    /// Device memory the session holds: allocations and VMM physical allocations.
    fn held(&self) -> u64 {
        // Opened memory is counted too (its owner may free it while it stays mapped here).
        self.allocs.values().sum::<u64>() + self.physical.values().map(|&(_, s)| s).sum::<u64>() + self.arrays.values().map(|(_, d)| d.bytes()).sum::<u64>() + self.opened.values().sum::<u64>()
    }

    /// The driver's array for a client handle.
    fn array(&self, h: u64) -> CmdResult<Ptr> {
        self.arrays.get(&h).map(|(r, _)| r.0).ok_or_else(|| invalid_handle("CUDA array", h))
    }

    /// One side of a 3D copy for the driver: device memory checked to be this session's
    /// (every byte the copy touches), an array mapped to the driver's, host data given by
    /// `host` (packed).
    fn copy_side(&self, side: &CopySide, c: &Copy3D, host: *mut c_void) -> CmdResult<(u32, *mut c_void, u64, Ptr, usize, usize)> {
        match side.kind {
            MEM_HOST => Ok((MEM_HOST, host, 0, std::ptr::null_mut(), c.width_bytes as usize, c.height as usize)),
            MEM_DEVICE => {
                let overflow = || CmdError::new(CUDA_ERROR_INVALID_VALUE, "3D copy offsets overflow");
                let slice = side.pitch.checked_mul(side.height).ok_or_else(overflow)?;
                let start = side.offset(side.pitch, side.height).and_then(|o| side.handle.checked_add(o)).ok_or_else(overflow)?;
                let span = (c.depth - 1).checked_mul(slice).and_then(|o| o.checked_add((c.height - 1).checked_mul(side.pitch)?)).and_then(|o| o.checked_add(c.width_bytes)).ok_or_else(overflow)?;
                self.check_range(start, span)?;
                // One row needs no pitch from the client; the driver wants one all the same.
                let pitch = if c.height > 1 || c.depth > 1 { side.pitch } else { side.pitch.max(c.width_bytes) };
                Ok((MEM_DEVICE, std::ptr::null_mut(), side.handle, std::ptr::null_mut(), pitch as usize, side.height.max(c.height) as usize))
            }
            _ => Ok((MEM_ARRAY, std::ptr::null_mut(), 0, self.array(side.handle)?, 0, 0)),
        }
    }

    /// A resource for the driver: an array mapped to the driver's, device memory checked to
    /// be this session's.
    fn resource(&self, res: &ResourceDesc) -> CmdResult<array::c::ResourceDesc> {
        match res.kind {
            RESOURCE_ARRAY => {
                self.array(res.handle)?;
            }
            RESOURCE_LINEAR => self.check_range(res.handle, res.width)?,
            RESOURCE_PITCH2D => {
                let elem = format_bytes(res.format).unwrap_or(0) * res.channels as u64;
                let span = res.height.checked_sub(1).and_then(|r| r.checked_mul(res.pitch)).and_then(|b| b.checked_add(res.width.checked_mul(elem)?));
                self.check_range(res.handle, span.ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "an empty or overflowing pitched resource"))?)?;
            }
            _ => return Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "mipmapped arrays are not supported by vgpu")),
        }
        Ok(array::c::ResourceDesc::from_wire(res, |h| self.arrays.get(&h).map_or(0, |(r, _)| r.0 as usize as u64)))
    }

    fn remove_object(&mut self, h: u64, texture: bool) -> CmdResult<()> {
        if self.objects.get(&h) != Some(&texture) {
            return Err(invalid_handle(if texture { "texture object" } else { "surface object" }, h));
        }
        self.enter()?;
        let api = &self.drv.api;
        // SAFETY: an object this session made and has not destroyed (checked above).
        let r = unsafe { if texture { (api.cuTexObjectDestroy)(h) } else { (api.cuSurfObjectDestroy)(h) } };
        self.drv.ok(r, if texture { "cuTexObjectDestroy" } else { "cuSurfObjectDestroy" })?;
        self.objects.remove(&h);
        Ok(())
    }

    fn account(&self) {
        self.usage.set_used(self.usage_id, self.held());
    }

    /// Whether [addr, end) is covered by consecutive mappings with access set.
    fn mapped_span(&self, addr: u64, end: u64) -> bool {
        let mut at = addr;
        while at < end {
            match self.mapped.range(..=at).next_back() {
                Some((&va, &(size, _, true))) if at < va + size => at = va + size,
                _ => return false,
            }
        }
        true
    }

    /// Checks that [va, va + size) lies inside one reservation of this session.
    fn check_reserved(&self, va: u64, size: u64) -> CmdResult<()> {
        let end = va.checked_add(size).filter(|_| size > 0).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "empty or overflowing range"))?;
        match self.reserved.range(..=va).next_back() {
            Some((&b, &s)) if end <= b + s => Ok(()),
            _ => Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{size} bytes at {va:#x} are not inside one reservation of this client"))),
        }
    }

    /// Checks that `len` bytes at `addr` lie inside one allocation (or one module variable)
    /// of this session: nothing else of the GPU is the client's to touch.
    fn check_range(&self, addr: u64, len: u64) -> CmdResult<()> {
        let end = addr.checked_add(len).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "address range overflows"))?;
        let inside = |m: &BTreeMap<u64, u64>| m.range(..=addr).next_back().is_some_and(|(&b, &s)| end <= b + s);
        let in_alloc = inside(&self.allocs) || inside(&self.opened);
        let in_global = self.modules.values().flat_map(|m| &m.globals).any(|&(b, s)| addr >= b && end <= b + s);
        if in_alloc || in_global || (len > 0 && self.mapped_span(addr, end)) {
            Ok(())
        } else {
            Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{len} bytes at {addr:#x} are not inside one device allocation of this client")))
        }
    }

    fn stream(&self, s: u64) -> CmdResult<Ptr> {
        match s {
            0 => Ok(std::ptr::null_mut()),
            // CUDA's special stream handles: the driver takes them as they are.
            STREAM_LEGACY | STREAM_PER_THREAD => Ok(s as usize as Ptr),
            _ => self.streams.get(&s).map(|r| r.0).ok_or_else(|| invalid_handle("stream", s)),
        }
    }

    /// An event for kernel timing (made current context first), None if the driver has none.
    fn timing_event(&mut self) -> Option<Raw> {
        if let Some(e) = self.spare_events.pop() {
            return Some(e);
        }
        let mut e: Ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0: an event with timing.
        (unsafe { (self.drv.api.cuEventCreate)(&mut e, 0) } == CUDA_SUCCESS).then_some(Raw(e))
    }

    /// Adds the GPU time of launches whose end event has completed (context current).
    fn collect_timing(&mut self) {
        while let Some(&(start, end)) = self.timing.front() {
            // SAFETY: events of this session, recorded by `launch`.
            let done = unsafe { (self.drv.api.cuEventQuery)(end.0) };
            if done == CUDA_ERROR_NOT_READY {
                return;
            }
            let mut ms = 0f32;
            // SAFETY: as above; valid out-pointer.
            if done == CUDA_SUCCESS && unsafe { (self.drv.api.cuEventElapsedTime)(&mut ms, start.0, end.0) } == CUDA_SUCCESS && ms > 0.0 {
                self.gpu_ns += (ms as f64 * 1e6) as u64;
            }
            self.timing.pop_front();
            self.spare_events.extend([start, end]);
        }
    }

    fn event(&self, e: u64) -> CmdResult<Ptr> {
        self.events.get(&e).map(|r| r.0).ok_or_else(|| invalid_handle("event", e))
    }
}

impl Drop for CudaSession {
    /// Everything the client held goes back to the driver: a client that dies leaks nothing.
    fn drop(&mut self) {
        let api = &self.drv.api;
        if self.enter().is_ok() {
            // SAFETY: each handle was created by this session and not destroyed yet; work still
            // running on them is finished by the synchronize first.
            unsafe {
                (api.cuCtxSynchronize)();
                for (a, b) in self.timing.drain(..) {
                    (api.cuEventDestroy_v2)(a.0);
                    (api.cuEventDestroy_v2)(b.0);
                }
                for e in self.spare_events.drain(..) {
                    (api.cuEventDestroy_v2)(e.0);
                }
                for e in self.events.values() {
                    (api.cuEventDestroy_v2)(e.0);
                }
                for &base in self.opened.keys() {
                    (api.cuIpcCloseMemHandle)(base);
                }
                for s in self.streams.values() {
                    (api.cuStreamDestroy_v2)(s.0);
                }
                for (&o, &texture) in &self.objects {
                    if texture {
                        (api.cuTexObjectDestroy)(o);
                    } else {
                        (api.cuSurfObjectDestroy)(o);
                    }
                }
                for (a, _) in self.arrays.values() {
                    (api.cuArrayDestroy)(a.0);
                }
                for m in self.modules.values() {
                    (api.cuModuleUnload)(m.raw.0);
                }
                for (&va, &(size, _, _)) in &self.mapped {
                    (api.cuMemUnmap)(va, size as usize);
                }
                for &(h, _) in self.physical.values() {
                    (api.cuMemRelease)(h);
                }
                for (&va, &size) in &self.reserved {
                    (api.cuMemAddressFree)(va, size as usize);
                }
                for &base in self.allocs.keys() {
                    (api.cuMemFree_v2)(base);
                }
                for &p in self.page_locked.keys() {
                    (api.cuMemHostUnregister)(p as Ptr);
                }
            }
        }
        // SAFETY: releases the retain done when the session opened.
        unsafe { (api.cuDevicePrimaryCtxRelease_v2)(self.device) };
        self.usage.close(self.usage_id);
    }
}

impl DeviceSession for CudaSession {
    /// The driver's own reset destroys everything of the context, which is this session's
    /// alone (a worker serves one client); the modules are then loaded again from their images
    /// and their functions found again by name, under the same handles.
    fn reset(&mut self) -> CmdResult<()> {
        let drv = self.drv.clone();
        let api = &drv.api;
        self.enter()?;
        // The modules are unloaded before the reset: a driver that keeps them across it (vgpu's
        // own, in loopback) would otherwise hold each twice once they are loaded again. NVIDIA's
        // destroys them with the context anyway, so its answer (after a fault, that fault) does
        // not matter.
        for m in self.modules.values() {
            // SAFETY: a module this session loaded and has not unloaded.
            unsafe { (api.cuModuleUnload)(m.raw.0) };
        }
        // SAFETY: the device this session's context is the primary context of.
        drv.ok(unsafe { (api.cuDevicePrimaryCtxReset_v2)(self.device) }, "cuDevicePrimaryCtxReset")?;
        self.timing.clear();
        self.spare_events.clear();
        self.events.clear();
        self.streams.clear();
        self.mapped.clear();
        self.physical.clear();
        self.reserved.clear();
        self.allocs.clear();
        self.opened.clear();
        self.arrays.clear();
        self.objects.clear();
        self.account();
        // A reset does not release the retain the session holds; retaining again gives the
        // context as it is now, and the extra retain is given back.
        let mut ctx: Ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the device is this session's.
        drv.ok(unsafe { (api.cuDevicePrimaryCtxRetain)(&mut ctx, self.device) }, "cuDevicePrimaryCtxRetain")?;
        // SAFETY: releases the retain just made.
        unsafe { (api.cuDevicePrimaryCtxRelease_v2)(self.device) };
        self.ctx = Raw(ctx);
        self.enter()?;
        // The host memory registrations went with the context; the memory is still mapped.
        for (p, len) in std::mem::take(&mut self.page_locked) {
            self.page_lock(p as *mut u8, len);
        }
        for m in self.modules.values_mut() {
            let mut raw: Ptr = std::ptr::null_mut();
            // SAFETY: the image this module was loaded from, NUL-terminated, alive across the call.
            drv.ok(unsafe { (api.cuModuleLoadData)(&mut raw, m.image.as_ptr().cast()) }, "cuModuleLoadData")?;
            m.raw = Raw(raw);
            m.globals.clear();
        }
        for f in self.functions.values_mut() {
            let m = self.modules.get(&f.module).ok_or_else(|| invalid_handle("module", f.module))?.raw;
            let name = c_name(&f.name)?;
            let mut raw: Ptr = std::ptr::null_mut();
            // SAFETY: a module just loaded and a NUL-terminated name; valid out-pointer.
            drv.ok(unsafe { (api.cuModuleGetFunction)(&mut raw, m.0, name.as_ptr()) }, "cuModuleGetFunction")?;
            f.raw = Raw(raw);
        }
        Ok(())
    }

    fn array_create(&mut self, desc: &ArrayDesc) -> CmdResult<u64> {
        self.enter()?;
        let d = array::c::Array3DDescriptor { width: desc.width as usize, height: desc.height as usize, depth: desc.depth as usize, format: desc.format, num_channels: desc.channels, flags: desc.flags };
        let mut raw: Ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer and descriptor; the driver checks the descriptor's values.
        self.drv.ok(unsafe { (self.drv.api.cuArray3DCreate_v2)(&mut raw, &d) }, "cuArray3DCreate_v2")?;
        let h = self.handle();
        self.arrays.insert(h, (Raw(raw), *desc));
        self.account();
        Ok(h)
    }

    fn array_destroy(&mut self, array: u64) -> CmdResult<()> {
        let raw = self.array(array)?;
        self.enter()?;
        // SAFETY: an array this session made and has not destroyed (checked above).
        self.drv.ok(unsafe { (self.drv.api.cuArrayDestroy)(raw) }, "cuArrayDestroy")?;
        self.arrays.remove(&array);
        self.account();
        Ok(())
    }

    fn memcpy_3d(&mut self, c: &Copy3D, host_in: &[u8], host_out: &mut Vec<u8>) -> CmdResult<()> {
        if c.width_bytes == 0 || c.height == 0 || c.depth == 0 {
            return Ok(());
        }
        let start = host_out.len();
        if c.dst.kind == MEM_HOST {
            host_out.resize(start + (c.width_bytes * c.height * c.depth) as usize, 0);
        }
        let out_ptr = host_out[start..].as_mut_ptr().cast::<c_void>();
        let (sk, sh, sd, sa, sp, sht) = self.copy_side(&c.src, c, host_in.as_ptr().cast_mut().cast())?;
        let (dk, dh, dd, da, dp, dht) = self.copy_side(&c.dst, c, out_ptr)?;
        let p = array::c::Memcpy3D {
            src_x_in_bytes: if sk == MEM_HOST { 0 } else { c.src.x_bytes as usize },
            src_y: if sk == MEM_HOST { 0 } else { c.src.y as usize },
            src_z: if sk == MEM_HOST { 0 } else { c.src.z as usize },
            src_lod: 0,
            src_memory_type: sk,
            src_host: sh,
            src_device: sd,
            src_array: sa,
            reserved0: std::ptr::null_mut(),
            src_pitch: sp,
            src_height: sht,
            dst_x_in_bytes: if dk == MEM_HOST { 0 } else { c.dst.x_bytes as usize },
            dst_y: if dk == MEM_HOST { 0 } else { c.dst.y as usize },
            dst_z: if dk == MEM_HOST { 0 } else { c.dst.z as usize },
            dst_lod: 0,
            dst_memory_type: dk,
            dst_host: dh,
            dst_device: dd,
            dst_array: da,
            reserved1: std::ptr::null_mut(),
            dst_pitch: dp,
            dst_height: dht,
            width_in_bytes: c.width_bytes as usize,
            height: c.height as usize,
            depth: c.depth as usize,
        };
        self.enter()?;
        // SAFETY: host sides point at `host_in` (the request's data, packed, of the copy's size:
        // checked by the dispatcher) and `host_out` (resized to the copy's size above); device
        // sides are inside this session's memory and arrays are this session's (copy_side).
        let r = self.drv.ok(unsafe { (self.drv.api.cuMemcpy3D_v2)(&p) }, "cuMemcpy3D_v2");
        if r.is_err() {
            host_out.truncate(start);
        }
        r
    }

    fn tex_create(&mut self, res: &ResourceDesc, sampler: &SamplerDesc) -> CmdResult<u64> {
        let rd = self.resource(res)?;
        let td = array::c::TextureDesc::from_wire(sampler);
        self.enter()?;
        let mut obj = 0u64;
        // SAFETY: valid out-pointer and descriptors (the resource is this session's).
        self.drv.ok(unsafe { (self.drv.api.cuTexObjectCreate)(&mut obj, &rd, &td, std::ptr::null()) }, "cuTexObjectCreate")?;
        self.objects.insert(obj, true);
        Ok(obj)
    }

    fn tex_destroy(&mut self, tex: u64) -> CmdResult<()> {
        self.remove_object(tex, true)
    }

    fn surf_create(&mut self, res: &ResourceDesc) -> CmdResult<u64> {
        let rd = self.resource(res)?;
        self.enter()?;
        let mut obj = 0u64;
        // SAFETY: valid out-pointer and descriptor (the resource is this session's).
        self.drv.ok(unsafe { (self.drv.api.cuSurfObjectCreate)(&mut obj, &rd) }, "cuSurfObjectCreate")?;
        self.objects.insert(obj, false);
        Ok(obj)
    }

    fn surf_destroy(&mut self, surf: u64) -> CmdResult<()> {
        self.remove_object(surf, false)
    }

    fn mem_get_info(&self) -> (u64, u64) {
        let used = self.held();
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers; the context is made current first.
        let ok = self.enter().is_ok() && unsafe { (self.drv.api.cuMemGetInfo_v2)(&mut free, &mut total) } == CUDA_SUCCESS;
        if ok {
            (free as u64, total as u64)
        } else {
            (self.total_mem.saturating_sub(used), self.total_mem)
        }
    }

    fn used_bytes(&self) -> u64 {
        self.held()
    }

    fn gpu_time_ns(&mut self) -> u64 {
        if self.enter().is_ok() {
            self.collect_timing();
        }
        self.gpu_ns
    }

    fn mem_alloc(&mut self, bytes: u64) -> CmdResult<u64> {
        if bytes == 0 {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "allocation of 0 bytes"));
        }
        self.enter()?;
        let mut p = 0u64;
        // SAFETY: valid out-pointer; the size is the client's, the driver bounds it.
        self.drv.ok(unsafe { (self.drv.api.cuMemAlloc_v2)(&mut p, bytes as usize) }, "cuMemAlloc_v2")?;
        self.allocs.insert(p, bytes);
        self.account();
        Ok(p)
    }

    fn mem_free(&mut self, dptr: u64) -> CmdResult<()> {
        if !self.allocs.contains_key(&dptr) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{dptr:#x} is not an allocation of this client")));
        }
        self.enter()?;
        // SAFETY: an allocation of this session (checked above).
        self.drv.ok(unsafe { (self.drv.api.cuMemFree_v2)(dptr) }, "cuMemFree_v2")?;
        self.allocs.remove(&dptr);
        self.account();
        Ok(())
    }

    fn mem_address_range(&self, dptr: u64) -> CmdResult<(u64, u64)> {
        let within = |m: &BTreeMap<u64, u64>| m.range(..=dptr).next_back().filter(|(&b, &s)| dptr < b + s).map(|(&b, &s)| (b, s));
        within(&self.allocs)
            .or_else(|| within(&self.opened))
            .ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_FOUND, format!("{dptr:#x} is not inside an allocation of this client")))
    }

    fn mem_buffer_id(&self, dptr: u64) -> CmdResult<u64> {
        self.mem_address_range(dptr)?;
        self.enter()?;
        let mut id = 0u64;
        const CU_POINTER_ATTRIBUTE_BUFFER_ID: std::ffi::c_int = 7;
        // SAFETY: a u64 out-pointer for BUFFER_ID (cuda.h); dptr lies in this session's memory.
        self.drv.ok(unsafe { (self.drv.api.cuPointerGetAttribute)((&mut id as *mut u64).cast(), CU_POINTER_ATTRIBUTE_BUFFER_ID, dptr) }, "cuPointerGetAttribute")?;
        Ok(id)
    }

    fn share_memory(&mut self, dptr: u64) -> CmdResult<(u64, Shared)> {
        let (base, size) = self.allocs.range(..=dptr).next_back().filter(|(&b, &s)| dptr < b + s).map(|(&b, &s)| (b, s)).ok_or_else(|| {
            CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{dptr:#x} is not inside a cuMemAlloc allocation of this client"))
        })?;
        self.enter()?;
        let mut handle = IpcHandle { data: [0; HANDLE_LEN] };
        // SAFETY: valid out-pointer; an allocation of this session (checked above).
        self.drv.ok(unsafe { (self.drv.api.cuIpcGetMemHandle)(&mut handle, base) }, "cuIpcGetMemHandle")?;
        Ok((base, Arc::new(CudaShared { kind: KIND_MEMORY, handle, size })))
    }

    fn share_event(&mut self, event: u64) -> CmdResult<Shared> {
        let e = self.event(event)?;
        self.enter()?;
        let mut handle = IpcHandle { data: [0; HANDLE_LEN] };
        // SAFETY: valid out-pointer; an event of this session. The driver checks its flags
        // (CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING).
        self.drv.ok(unsafe { (self.drv.api.cuIpcGetEventHandle)(&mut handle, e) }, "cuIpcGetEventHandle")?;
        Ok(Arc::new(CudaShared { kind: KIND_EVENT, handle, size: 0 }))
    }

    fn shared_to_wire(&self, shared: &Shared) -> CmdResult<(Vec<u8>, Option<OwnedFd>)> {
        if let Some(s) = shared.downcast_ref::<CudaSharedFd>() {
            let fd = s.fd.try_clone().map_err(|e| CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, format!("cannot duplicate a shareable handle: {e}")))?;
            return Ok((s.size.to_le_bytes().to_vec(), Some(fd)));
        }
        let s = shared.downcast_ref::<CudaShared>().ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, "not shared by this backend"))?;
        Ok(([&s.handle.data[..], &s.size.to_le_bytes()].concat(), None))
    }

    fn shared_from_wire(&self, kind: u32, bytes: &[u8], fd: Option<OwnedFd>) -> CmdResult<Shared> {
        let bad = || CmdError::new(CUDA_ERROR_INVALID_VALUE, "malformed shared handle");
        if kind == KIND_PHYSICAL {
            let fd = fd.ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, "a shareable VMM handle came without its file descriptor"))?;
            let size = u64::from_le_bytes(bytes.try_into().map_err(|_| bad())?);
            return Ok(Arc::new(CudaSharedFd { fd, size }));
        }
        if bytes.len() != HANDLE_LEN + 8 {
            return Err(bad());
        }
        let data = bytes[..HANDLE_LEN].try_into().map_err(|_| bad())?;
        let size = u64::from_le_bytes(bytes[HANDLE_LEN..].try_into().map_err(|_| bad())?);
        Ok(Arc::new(CudaShared { kind, handle: IpcHandle { data }, size }))
    }

    fn open_memory(&mut self, shared: &Shared) -> CmdResult<(u64, u64)> {
        let s = shared.downcast_ref::<CudaShared>().filter(|s| s.kind == KIND_MEMORY).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, "not memory shared by this backend"))?;
        self.enter()?;
        let mut p = 0u64;
        // SAFETY: valid out-pointer; the handle is one the driver made in another worker (the
        // mediator passes only what a worker of the same VM exported); flags:
        // CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, the only one.
        self.drv.ok(unsafe { (self.drv.api.cuIpcOpenMemHandle_v2)(&mut p, s.handle, 1) }, "cuIpcOpenMemHandle")?;
        self.opened.insert(p, s.size);
        self.account();
        Ok((p, s.size))
    }

    fn share_physical(&mut self, handle: u64) -> CmdResult<Shared> {
        let (h, size) = *self.physical.get(&handle).ok_or_else(|| invalid_handle("physical allocation", handle))?;
        if !self.shareable {
            return Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "the driver has no POSIX file descriptor handles"));
        }
        self.enter()?;
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: an int out-pointer, as CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR takes; a
        // physical allocation of this session, made exportable (vmm_create).
        self.drv.ok(unsafe { (self.drv.api.cuMemExportToShareableHandle)((&mut fd as *mut std::ffi::c_int).cast(), h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0) }, "cuMemExportToShareableHandle")?;
        if fd < 0 {
            return Err(CmdError::new(CUDA_ERROR_UNKNOWN, "cuMemExportToShareableHandle gave no file descriptor"));
        }
        // SAFETY: the driver just opened this descriptor for us (the application closes it, in
        // CUDA's contract); nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(CudaSharedFd { fd, size }))
    }

    fn open_physical(&mut self, shared: &Shared) -> CmdResult<(u64, u64)> {
        let s = shared.downcast_ref::<CudaSharedFd>().ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, "not VMM memory shared by this backend"))?;
        self.enter()?;
        let mut h = 0u64;
        // SAFETY: valid out-pointer; the descriptor is one the driver exported in another worker
        // of this VM (the mediator passes nothing else), passed in the pointer as CUDA takes it.
        // The driver does not take it over: it is closed when `shared` goes.
        self.drv.ok(unsafe { (self.drv.api.cuMemImportFromShareableHandle)(&mut h, s.fd.as_raw_fd() as usize as *mut c_void, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) }, "cuMemImportFromShareableHandle")?;
        let id = self.handle();
        self.physical.insert(id, (h, s.size));
        self.account();
        Ok((id, s.size))
    }

    fn open_event(&mut self, shared: &Shared) -> CmdResult<u64> {
        let s = shared.downcast_ref::<CudaShared>().filter(|s| s.kind == KIND_EVENT).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, "not an event shared by this backend"))?;
        self.enter()?;
        let mut e: Ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer; a handle the driver made in another worker (see open_memory).
        self.drv.ok(unsafe { (self.drv.api.cuIpcOpenEventHandle)(&mut e, s.handle) }, "cuIpcOpenEventHandle")?;
        let h = self.handle();
        self.events.insert(h, Raw(e));
        Ok(h)
    }

    fn close_memory(&mut self, base: u64) -> CmdResult<()> {
        if !self.opened.contains_key(&base) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{base:#x} is not memory opened from another process")));
        }
        self.enter()?;
        // SAFETY: memory this session opened with cuIpcOpenMemHandle (checked above).
        self.drv.ok(unsafe { (self.drv.api.cuIpcCloseMemHandle)(base) }, "cuIpcCloseMemHandle")?;
        self.opened.remove(&base);
        self.account();
        Ok(())
    }

    fn host_mapped(&mut self, ptr: *mut u8, len: usize) {
        self.page_lock(ptr, len);
    }

    fn host_unmapped(&mut self, ptr: *mut u8) {
        if let Some(len) = self.page_locked.remove(&(ptr as usize)) {
            if self.enter().is_ok() {
                // SAFETY: memory this session registered and has not unregistered; still mapped.
                unsafe { (self.drv.api.cuMemHostUnregister)(ptr.cast()) };
            }
            tracing::info!(bytes = len, "host memory mapped for copies is unregistered from the driver");
        }
    }

    fn write(&mut self, dst: u64, data: &[u8]) -> CmdResult<()> {
        self.check_range(dst, data.len() as u64)?;
        self.enter()?;
        // SAFETY: the destination is inside this session's memory (checked); the source is
        // `data`, valid for its length.
        self.drv.ok(unsafe { (self.drv.api.cuMemcpyHtoD_v2)(dst, data.as_ptr().cast(), data.len()) }, "cuMemcpyHtoD_v2")
    }

    fn read(&mut self, src: u64, out: &mut [u8]) -> CmdResult<()> {
        self.check_range(src, out.len() as u64)?;
        self.enter()?;
        // SAFETY: the source is inside this session's memory (checked); `out` is writable for
        // its length.
        self.drv.ok(unsafe { (self.drv.api.cuMemcpyDtoH_v2)(out.as_mut_ptr().cast(), src, out.len()) }, "cuMemcpyDtoH_v2")
    }

    fn copy(&mut self, dst: u64, src: u64, len: u64) -> CmdResult<()> {
        self.check_range(dst, len)?;
        self.check_range(src, len)?;
        self.enter()?;
        // SAFETY: both ranges are this session's device memory (checked).
        self.drv.ok(unsafe { (self.drv.api.cuMemcpyDtoD_v2)(dst, src, len as usize) }, "cuMemcpyDtoD_v2")
    }

    fn memset(&mut self, dst: u64, value: u32, elem_size: u32, count: u64) -> CmdResult<()> {
        let len = count.checked_mul(elem_size as u64).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "memset size overflows"))?;
        self.check_range(dst, len)?;
        self.enter()?;
        let api = &self.drv.api;
        // SAFETY: the range is this session's device memory (checked).
        let r = unsafe {
            match elem_size {
                1 => (api.cuMemsetD8_v2)(dst, value as u8, count as usize),
                2 => (api.cuMemsetD16_v2)(dst, value as u16, count as usize),
                4 => (api.cuMemsetD32_v2)(dst, value, count as usize),
                _ => return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("memset of {elem_size}-byte elements"))),
            }
        };
        self.drv.ok(r, "cuMemset")
    }

    fn module_load(&mut self, image: &[u8]) -> CmdResult<u64> {
        // The driver reads PTX up to its NUL and other images by their headers' sizes: a copy
        // that ends in a NUL keeps it inside what the client sent.
        let mut owned = image.to_vec();
        owned.push(0);
        self.enter()?;
        let mut m: Ptr = std::ptr::null_mut();
        // SAFETY: `owned` stays alive across the call and is NUL-terminated.
        self.drv.ok(unsafe { (self.drv.api.cuModuleLoadData)(&mut m, owned.as_ptr().cast()) }, "cuModuleLoadData")?;
        let h = self.handle();
        self.modules.insert(h, Module { raw: Raw(m), image: owned, globals: Vec::new() });
        Ok(h)
    }

    fn module_unload(&mut self, module: u64) -> CmdResult<()> {
        let m = self.modules.get(&module).ok_or_else(|| invalid_handle("module", module))?;
        self.enter()?;
        // SAFETY: a module this session loaded.
        self.drv.ok(unsafe { (self.drv.api.cuModuleUnload)(m.raw.0) }, "cuModuleUnload")?;
        self.modules.remove(&module);
        self.functions.retain(|_, f| f.module != module);
        Ok(())
    }

    fn module_get_function(&mut self, module: u64, name: &str) -> CmdResult<(FunctionInfo, Vec<(u32, u32)>)> {
        let m = self.modules.get(&module).ok_or_else(|| invalid_handle("module", module))?.raw;
        let cname = c_name(name)?;
        self.enter()?;
        let drv = self.drv.clone();
        let api = &drv.api;
        let mut f: Ptr = std::ptr::null_mut();
        // SAFETY: a module of this session and a NUL-terminated name.
        drv.ok(unsafe { (api.cuModuleGetFunction)(&mut f, m.0, cname.as_ptr()) }, "cuModuleGetFunction")?;
        // The parameters' layout, as the driver knows it from the image.
        let mut params = Vec::new();
        loop {
            let (mut off, mut size) = (0usize, 0usize);
            // SAFETY: a function of the loaded module; valid out-pointers. Past the last
            // parameter the driver answers CUDA_ERROR_INVALID_VALUE.
            let r = unsafe { (api.cuFuncGetParamInfo)(f, params.len(), &mut off, &mut size) };
            if r != CUDA_SUCCESS || params.len() as u32 >= vgpu_uapi::proto::MAX_KERNEL_PARAMS {
                break;
            }
            params.push((off as u32, size as u32));
        }
        let attr = |a: i32| -> u32 {
            let mut v = 0;
            // SAFETY: as above.
            unsafe { (api.cuFuncGetAttribute)(&mut v, a, f) };
            v.max(0) as u32
        };
        let param_bytes = params.iter().map(|&(o, s)| o + s).max().unwrap_or(0);
        let existing = self.functions.iter().find(|(_, x)| x.module == module && x.name == name).map(|(&h, _)| h);
        let h = match existing {
            Some(h) => h,
            None => {
                let h = self.handle();
                self.functions.insert(h, Function { raw: Raw(f), module, name: name.to_string(), params: params.clone() });
                h
            }
        };
        let info = FunctionInfo {
            handle: h,
            param_count: params.len() as u32,
            param_bytes,
            static_shared_bytes: attr(FUNC_SHARED_SIZE_BYTES),
            local_bytes: attr(FUNC_LOCAL_SIZE_BYTES),
            max_threads_per_block: attr(FUNC_MAX_THREADS_PER_BLOCK),
            num_regs: attr(FUNC_NUM_REGS),
            ptx_version: attr(FUNC_PTX_VERSION),
            binary_version: attr(FUNC_BINARY_VERSION),
            const_bytes: attr(FUNC_CONST_SIZE_BYTES),
            // The driver enforces .reqntid at the launch itself.
            req_block: [0; 3],
        };
        Ok((info, params))
    }

    fn module_get_global(&mut self, module: u64, name: &str) -> CmdResult<(u64, u64)> {
        let m = self.modules.get(&module).ok_or_else(|| invalid_handle("module", module))?.raw;
        let cname = c_name(name)?;
        self.enter()?;
        let (mut p, mut size) = (0u64, 0usize);
        // SAFETY: a module of this session and a NUL-terminated name; valid out-pointers.
        self.drv.ok(unsafe { (self.drv.api.cuModuleGetGlobal_v2)(&mut p, &mut size, m.0, cname.as_ptr()) }, "cuModuleGetGlobal_v2")?;
        if let Some(m) = self.modules.get_mut(&module) {
            if !m.globals.contains(&(p, size as u64)) {
                m.globals.push((p, size as u64));
            }
        }
        Ok((p, size as u64))
    }

    /// Read from the image itself (cuModuleEnumerateFunctions needs a 12.4 driver): the kernels
    /// of its sm_90 cubin, else of the PTX the driver would JIT.
    fn module_functions(&self, module: u64) -> CmdResult<Vec<String>> {
        let m = self.modules.get(&module).ok_or_else(|| invalid_handle("module", module))?;
        Ok(vgpu_fatbin::image_kernels(&m.image, 90))
    }

    fn launch(&mut self, function: u64, dims: LaunchDims, params: &[u8]) -> CmdResult<Vec<u8>> {
        let f = self.functions.get(&function).ok_or_else(|| invalid_handle("function", function))?;
        let stream = self.stream(dims.stream)?;
        // kernelParams: a pointer to each parameter inside the packed buffer the client sent.
        let mut ptrs: Vec<*mut c_void> = Vec::with_capacity(f.params.len());
        for &(off, size) in &f.params {
            if off as usize + size as usize > params.len() {
                return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{} needs {} bytes of parameters, got {}", f.name, off + size, params.len())));
            }
            ptrs.push(params[off as usize..].as_ptr() as *mut c_void);
        }
        let raw = f.raw;
        self.enter()?;
        if dims.dynamic_shared_bytes > DEFAULT_DYNAMIC_SHARED {
            // The guest opted in with cuFuncSetAttribute, which its libcuda checked and kept; the
            // real function needs the same opt-in (the driver refuses the launch otherwise).
            // SAFETY: a function of this session.
            let r = unsafe { (self.drv.api.cuFuncSetAttribute)(raw.0, FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES, dims.dynamic_shared_bytes as i32) };
            self.drv.ok(r, "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")?;
        }
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        if self.timing.len() >= TIMING_BACKLOG && self.extended >= TIMING_RECHECK {
            self.collect_timing();
            self.extended = 0;
        }
        // A pair of its own while the backlog has room, else the newest pair stretched over it.
        let timed = if self.timing.len() < TIMING_BACKLOG {
            match (self.timing_event(), self.timing_event()) {
                (Some(a), Some(b)) => Some((a, b)),
                (a, b) => {
                    self.spare_events.extend(a.into_iter().chain(b));
                    None
                }
            }
        } else {
            None
        };
        if let Some((start, _)) = timed {
            // SAFETY: an event of this session on this session's stream.
            unsafe { (self.drv.api.cuEventRecord)(start.0, stream) };
        }
        let r = if dims.cooperative {
            // SAFETY: as for cuLaunchKernel below.
            unsafe { (self.drv.api.cuLaunchCooperativeKernel)(raw.0, gx, gy, gz, bx, by, bz, dims.dynamic_shared_bytes, stream, ptrs.as_mut_ptr()) }
        } else {
            // SAFETY: a function of this session; `ptrs` point into `params`, which outlives
            // the call (the driver copies the parameters at launch); the stream is this
            // session's.
            unsafe { (self.drv.api.cuLaunchKernel)(raw.0, gx, gy, gz, bx, by, bz, dims.dynamic_shared_bytes, stream, ptrs.as_mut_ptr(), std::ptr::null_mut()) }
        };
        match timed {
            Some((start, end)) if r == CUDA_SUCCESS => {
                // SAFETY: as above.
                unsafe { (self.drv.api.cuEventRecord)(end.0, stream) };
                self.timing.push_back((start, end));
            }
            Some((start, end)) => self.spare_events.extend([start, end]),
            None if r == CUDA_SUCCESS => {
                if let Some(&(_, end)) = self.timing.back() {
                    // SAFETY: an event of this session, re-recorded after this launch.
                    unsafe { (self.drv.api.cuEventRecord)(end.0, stream) };
                    self.extended += 1;
                }
            }
            None => {}
        }
        self.drv.ok(r, "cuLaunchKernel")?;
        Ok(Vec::new())
    }

    fn stream_create(&mut self, flags: u32, _priority: i32) -> CmdResult<u64> {
        self.enter()?;
        let mut s: Ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.drv.ok(unsafe { (self.drv.api.cuStreamCreate)(&mut s, flags) }, "cuStreamCreate")?;
        let h = self.handle();
        self.streams.insert(h, Raw(s));
        Ok(h)
    }

    fn stream_destroy(&mut self, stream: u64) -> CmdResult<()> {
        let s = *self.streams.get(&stream).ok_or_else(|| invalid_handle("stream", stream))?;
        self.enter()?;
        // SAFETY: a stream of this session.
        self.drv.ok(unsafe { (self.drv.api.cuStreamDestroy_v2)(s.0) }, "cuStreamDestroy_v2")?;
        self.streams.remove(&stream);
        Ok(())
    }

    fn stream_synchronize(&mut self, stream: u64) -> CmdResult<()> {
        let s = self.stream(stream)?;
        self.enter()?;
        // SAFETY: a stream of this session (or a special handle).
        self.drv.ok(unsafe { (self.drv.api.cuStreamSynchronize)(s) }, "cuStreamSynchronize")
    }

    fn stream_query(&mut self, stream: u64) -> CmdResult<()> {
        let s = self.stream(stream)?;
        self.enter()?;
        // SAFETY: as above.
        self.drv.ok(unsafe { (self.drv.api.cuStreamQuery)(s) }, "cuStreamQuery")
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64) -> CmdResult<()> {
        let (s, e) = (self.stream(stream)?, self.event(event)?);
        self.enter()?;
        // SAFETY: a stream and an event of this session.
        self.drv.ok(unsafe { (self.drv.api.cuStreamWaitEvent)(s, e, 0) }, "cuStreamWaitEvent")
    }

    fn event_create(&mut self, flags: u32) -> CmdResult<u64> {
        self.enter()?;
        let mut e: Ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.drv.ok(unsafe { (self.drv.api.cuEventCreate)(&mut e, flags) }, "cuEventCreate")?;
        let h = self.handle();
        self.events.insert(h, Raw(e));
        Ok(h)
    }

    fn event_destroy(&mut self, event: u64) -> CmdResult<()> {
        let e = self.event(event)?;
        self.enter()?;
        // SAFETY: an event of this session.
        self.drv.ok(unsafe { (self.drv.api.cuEventDestroy_v2)(e) }, "cuEventDestroy_v2")?;
        self.events.remove(&event);
        Ok(())
    }

    fn event_record(&mut self, event: u64, stream: u64) -> CmdResult<()> {
        let (e, s) = (self.event(event)?, self.stream(stream)?);
        self.enter()?;
        // SAFETY: an event and a stream of this session.
        self.drv.ok(unsafe { (self.drv.api.cuEventRecord)(e, s) }, "cuEventRecord")
    }

    fn event_synchronize(&mut self, event: u64) -> CmdResult<()> {
        let e = self.event(event)?;
        self.enter()?;
        // SAFETY: an event of this session.
        self.drv.ok(unsafe { (self.drv.api.cuEventSynchronize)(e) }, "cuEventSynchronize")
    }

    fn event_query(&mut self, event: u64) -> CmdResult<()> {
        let e = self.event(event)?;
        self.enter()?;
        // SAFETY: as above.
        self.drv.ok(unsafe { (self.drv.api.cuEventQuery)(e) }, "cuEventQuery")
    }

    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> CmdResult<f32> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        self.enter()?;
        let mut ms = 0f32;
        // SAFETY: events of this session; valid out-pointer.
        self.drv.ok(unsafe { (self.drv.api.cuEventElapsedTime)(&mut ms, a, b) }, "cuEventElapsedTime")?;
        Ok(ms)
    }

    fn synchronize(&mut self) -> CmdResult<()> {
        self.enter()?;
        // SAFETY: the session's current context.
        self.drv.ok(unsafe { (self.drv.api.cuCtxSynchronize)() }, "cuCtxSynchronize")
    }

    fn vmm_create(&mut self, size: u64) -> CmdResult<u64> {
        let prop = MemAllocationProp {
            ty: CU_MEM_ALLOCATION_TYPE_PINNED,
            handle_types: if self.shareable { CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR } else { 0 },
            location: MemLocation { ty: CU_MEM_LOCATION_TYPE_DEVICE, id: self.device },
            win32_metadata: std::ptr::null_mut(),
            alloc_flags: [0; 8],
        };
        self.enter()?;
        let mut h = 0u64;
        // SAFETY: valid out-pointer and property struct; the driver checks size and granularity.
        self.drv.ok(unsafe { (self.drv.api.cuMemCreate)(&mut h, size as usize, &prop, 0) }, "cuMemCreate")?;
        let id = self.handle();
        self.physical.insert(id, (h, size));
        self.account();
        Ok(id)
    }

    fn vmm_release(&mut self, handle: u64) -> CmdResult<()> {
        let (h, _) = *self.physical.get(&handle).ok_or_else(|| invalid_handle("physical allocation", handle))?;
        self.enter()?;
        // SAFETY: a physical allocation of this session (the driver keeps mapped memory alive
        // until it is unmapped, as CUDA specifies).
        self.drv.ok(unsafe { (self.drv.api.cuMemRelease)(h) }, "cuMemRelease")?;
        self.physical.remove(&handle);
        self.account();
        Ok(())
    }

    fn vmm_reserve(&mut self, size: u64, alignment: u64, hint: u64) -> CmdResult<u64> {
        self.enter()?;
        let mut va = 0u64;
        // SAFETY: valid out-pointer; the driver chooses the range (a hint is only a hint).
        self.drv.ok(unsafe { (self.drv.api.cuMemAddressReserve)(&mut va, size as usize, alignment as usize, hint, 0) }, "cuMemAddressReserve")?;
        self.reserved.insert(va, size);
        Ok(va)
    }

    fn vmm_unreserve(&mut self, va: u64, size: u64) -> CmdResult<()> {
        if self.reserved.get(&va) != Some(&size) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{size} bytes at {va:#x} are not a reservation of this client")));
        }
        self.enter()?;
        // SAFETY: a whole reservation of this session.
        self.drv.ok(unsafe { (self.drv.api.cuMemAddressFree)(va, size as usize) }, "cuMemAddressFree")?;
        self.reserved.remove(&va);
        Ok(())
    }

    fn vmm_map(&mut self, va: u64, size: u64, offset: u64, handle: u64) -> CmdResult<()> {
        self.check_reserved(va, size)?;
        let (h, phys_size) = *self.physical.get(&handle).ok_or_else(|| invalid_handle("physical allocation", handle))?;
        if offset.checked_add(size).is_none_or(|e| e > phys_size) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{size} bytes at offset {offset} exceed the physical allocation's {phys_size}")));
        }
        self.enter()?;
        // SAFETY: the range is inside a reservation of this session and the allocation is its
        // own; the driver refuses overlaps and misalignment.
        self.drv.ok(unsafe { (self.drv.api.cuMemMap)(va, size as usize, offset as usize, h, 0) }, "cuMemMap")?;
        self.mapped.insert(va, (size, handle, false));
        Ok(())
    }

    fn vmm_unmap(&mut self, va: u64, size: u64) -> CmdResult<()> {
        self.check_reserved(va, size)?;
        let end = va + size;
        let inside: Vec<u64> = self.mapped.range(va..end).filter(|(&m, &(s, _, _))| m + s <= end).map(|(&m, _)| m).collect();
        if inside.is_empty() {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("nothing of this client is mapped at {va:#x}")));
        }
        self.enter()?;
        // SAFETY: mappings of this session inside one of its reservations.
        self.drv.ok(unsafe { (self.drv.api.cuMemUnmap)(va, size as usize) }, "cuMemUnmap")?;
        for m in inside {
            self.mapped.remove(&m);
        }
        self.account();
        Ok(())
    }

    fn vmm_set_access(&mut self, va: u64, size: u64) -> CmdResult<()> {
        self.check_reserved(va, size)?;
        let end = va + size;
        let mut covered = va;
        for (&m, &(s, _, _)) in self.mapped.range(..end) {
            if m <= covered && m + s > covered {
                covered = m + s;
            }
        }
        if covered < end {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{size} bytes at {va:#x} are not mapped")));
        }
        let desc = MemAccessDesc { location: MemLocation { ty: CU_MEM_LOCATION_TYPE_DEVICE, id: self.device }, flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
        self.enter()?;
        // SAFETY: mapped memory of this session; one valid access descriptor.
        self.drv.ok(unsafe { (self.drv.api.cuMemSetAccess)(va, size as usize, &desc, 1) }, "cuMemSetAccess")?;
        for (_, m) in self.mapped.range_mut(..end).filter(|(&m, v)| m + v.0 > va) {
            m.2 = true;
        }
        Ok(())
    }
}
