//! The sim backend: a GPU simulated on the CPU. Device memory is host memory at device
//! addresses, modules are PTX (from fatbins) run by the PTX interpreter.
//!
//! Work executes when it is submitted, in submission order, on the client's thread. That is one
//! valid schedule of CUDA's stream semantics (every stream's order is kept, and cross-stream
//! waits are trivially satisfied), so streams and events need no queues here.

use super::fatbin;
use super::memory::{DeviceMemory, DevicePool, Fault, SharedRegion};
use super::ptx;
use crate::backend::{Backend, CmdError, CmdResult, DeviceSession, LaunchDims, ProcessUsage, Shared, UsageTable};
use crate::profile::DeviceProfile;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use ptx::texture::{Object, Objects, Resource};
use vgpu_uapi::array::*;
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{DeviceInfo, FunctionInfo, STREAM_LEGACY, STREAM_PER_THREAD};

pub struct SimBackend {
    /// What the device reports; its memory size is `memory`'s.
    profile: DeviceProfile,
    /// The device's memory: host memory, committed as it is touched, shared by all sessions.
    memory: Arc<DevicePool>,
    /// Instructions one launch may execute (ptx::INSTRUCTION_BUDGET unless set).
    budget: u64,
    usage: Arc<UsageTable>,
}

impl SimBackend {
    /// A device like `profile` with `memory_limit` bytes of memory at most (host memory it may
    /// use; the profile's size when larger): the guest is told the size it really has, so free
    /// and total memory agree with what allocations get.
    pub fn new(mut profile: DeviceProfile, memory_limit: u64) -> Self {
        profile.total_mem = profile.total_mem.min(memory_limit);
        let memory = DevicePool::on_host_ram(profile.total_mem);
        SimBackend { profile, memory, budget: ptx::INSTRUCTION_BUDGET, usage: Arc::default() }
    }

    /// Launches may execute up to `budget` instructions (long kernels on a slow interpreter;
    /// a VM's execution time limit and a client hanging up still stop a launch at any time).
    pub fn with_instruction_budget(mut self, budget: u64) -> Self {
        self.budget = budget.max(1);
        self
    }

    fn check_device(&self, device: u32) -> CmdResult<()> {
        if device != 0 {
            return Err(CmdError::new(CUDA_ERROR_INVALID_DEVICE, format!("no device {device}")));
        }
        Ok(())
    }
}

impl Backend for SimBackend {
    fn runs_ptx_only(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "sim"
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        vec![self.profile.device_info()]
    }

    fn memory_usage(&self, device: u32) -> CmdResult<(u64, u64)> {
        self.check_device(device)?;
        Ok((self.profile.total_mem, self.usage.total_used()))
    }

    fn processes(&self, device: u32) -> CmdResult<Vec<ProcessUsage>> {
        self.check_device(device)?;
        Ok(self.usage.processes())
    }

    fn open_session(&self, device: u32, pid: u32, observer: bool) -> CmdResult<Box<dyn DeviceSession>> {
        self.check_device(device)?;
        let id = self.usage.open(pid, observer);
        Ok(Box::new(SimSession {
            usage: self.usage.clone(),
            usage_id: id,
            mem: DeviceMemory::new(self.memory.clone()),
            budget: self.budget,
            next_handle: 0x10,
            modules: HashMap::new(),
            functions: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            arrays: HashMap::new(),
        }))
    }
}

struct LoadedModule {
    ptx: Arc<ptx::Module>,
    /// Device addresses of the module's .global/.const variables, by name.
    globals: HashMap<String, u64>,
}

struct Function {
    module: u64,
    name: String,
}

struct Event {
    flags: u32,
    recorded: Option<Instant>,
}

const CU_EVENT_DISABLE_TIMING: u32 = 0x2;
const CU_EVENT_INTERPROCESS: u32 = 0x4;

/// An event another session shared (see `open_event`): nothing of it is needed here.
struct SharedEvent;

fn not_ours() -> CmdError {
    CmdError::new(CUDA_ERROR_INVALID_HANDLE, "the handle was exported on another GPU backend")
}

fn shared_region(shared: &Shared) -> CmdResult<Arc<SharedRegion>> {
    shared.clone().downcast::<SharedRegion>().map_err(|_| not_ours())
}

pub struct SimSession {
    usage: Arc<UsageTable>,
    usage_id: u64,
    mem: DeviceMemory,
    budget: u64,
    next_handle: u64,
    modules: HashMap<u64, LoadedModule>,
    functions: HashMap<u64, Function>,
    streams: HashMap<u64, ()>,
    events: HashMap<u64, Event>,
    /// CUDA arrays: an allocation of their own each (packed rows), and their descriptor.
    arrays: HashMap<u64, (u64, ArrayDesc)>,
}

fn fault(f: Fault) -> CmdError {
    CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{} bytes at {:#x} are not inside one device allocation", f.len, f.addr))
}

fn invalid_handle(what: &str, h: u64) -> CmdError {
    CmdError::new(CUDA_ERROR_INVALID_HANDLE, format!("{h:#x} is not a {what} of this client"))
}

/// The interpreter's view of global memory: this session's allocations, nothing else.
impl ptx::Memory for DeviceMemory {
    fn regions(&mut self) -> Vec<(u64, &mut [u8])> {
        self.regions_mut()
    }

    fn global(&mut self) -> ptx::global::Global<'_> {
        DeviceMemory::global(self)
    }

    fn grid_workspace(&mut self) -> Result<Option<u64>, ptx::ExecError> {
        DeviceMemory::grid_workspace(self).map(Some).map_err(|e| ptx::ExecError::OutOfResources(format!("no room for the grid workspace: {}", e.message)))
    }

    fn heap(&mut self) -> Result<Option<Arc<ptx::heap::DeviceHeap>>, ptx::ExecError> {
        DeviceMemory::heap(self).map(Some).map_err(|e| ptx::ExecError::OutOfResources(format!("no room for the device heap: {}", e.message)))
    }

    fn objects(&self) -> Arc<Objects> {
        self.objects.clone()
    }
}

impl Drop for SimSession {
    fn drop(&mut self) {
        self.usage.close(self.usage_id);
    }
}

impl SimSession {
    /// Publishes this session's memory use after it changed.
    fn account(&self) {
        self.usage.set_used(self.usage_id, self.mem.used());
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    fn check_stream(&self, s: u64) -> CmdResult<()> {
        if s == 0 || s == STREAM_LEGACY || s == STREAM_PER_THREAD || self.streams.contains_key(&s) {
            Ok(())
        } else {
            Err(invalid_handle("stream", s))
        }
    }

    fn event(&mut self, e: u64) -> CmdResult<&mut Event> {
        self.events.get_mut(&e).ok_or_else(|| invalid_handle("event", e))
    }

    /// Where one side of a 3D copy starts in device memory, and its row and slice pitches
    /// (None: the host side).
    fn copy_side(&self, side: &CopySide, c: &Copy3D) -> CmdResult<Option<(u64, u64, u64)>> {
        let bad = |m: String| CmdError::new(CUDA_ERROR_INVALID_VALUE, m);
        let overflow = || bad("3D copy offsets overflow".into());
        let (base, pitch, rows) = match side.kind {
            MEM_DEVICE => {
                let pitch = if c.height > 1 || c.depth > 1 { side.pitch } else { side.pitch.max(c.width_bytes) };
                if pitch < c.width_bytes || c.depth > 1 && side.height < c.height {
                    return Err(bad(format!("a pitch of {pitch} bytes (or a height of {} rows) is smaller than the copy's {}x{}", side.height, c.width_bytes, c.height)));
                }
                (side.handle, pitch, side.height)
            }
            MEM_ARRAY => {
                let &(dptr, d) = self.arrays.get(&side.handle).ok_or_else(|| invalid_handle("CUDA array", side.handle))?;
                let inside = |off: u64, n: u64, lim: u64| off.checked_add(n).is_some_and(|e| e <= lim);
                if !inside(side.x_bytes, c.width_bytes, d.row_bytes()) || !inside(side.y, c.height, d.rows()) || !inside(side.z, c.depth, d.slices()) {
                    return Err(bad(format!(
                        "a copy of {}x{}x{} bytes at ({}, {}, {}) does not fit a {}x{}x{} array of {}-byte elements",
                        c.width_bytes, c.height, c.depth, side.x_bytes, side.y, side.z, d.width, d.height, d.depth, d.elem_bytes()
                    )));
                }
                (dptr, d.row_bytes(), d.rows())
            }
            _ => return Ok(None),
        };
        let slice = pitch.checked_mul(rows).ok_or_else(overflow)?;
        let start = side.offset(pitch, rows).and_then(|o| base.checked_add(o)).ok_or_else(overflow)?;
        Ok(Some((start, pitch, slice)))
    }

    /// The texels a texture or surface object reads: an array, or linear or pitched memory
    /// checked to lie in one allocation.
    fn resource(&self, res: &ResourceDesc) -> CmdResult<Resource> {
        let bad = |m: String| CmdError::new(CUDA_ERROR_INVALID_VALUE, m);
        match res.kind {
            RESOURCE_ARRAY => {
                let &(dptr, d) = self.arrays.get(&res.handle).ok_or_else(|| invalid_handle("CUDA array", res.handle))?;
                let layered = d.flags & ARRAY_LAYERED != 0;
                let dims = if d.height == 0 { 1 } else if d.depth == 0 || layered { 2 } else { 3 };
                Ok(Resource {
                    base: dptr,
                    format: d.format,
                    channels: d.channels,
                    width: d.width,
                    height: d.rows(),
                    depth: d.slices(),
                    pitch: d.row_bytes(),
                    slice: d.row_bytes() * d.rows(),
                    layered,
                    dims,
                    linear: false,
                })
            }
            RESOURCE_LINEAR | RESOURCE_PITCH2D => {
                let elem = format_bytes(res.format).filter(|_| matches!(res.channels, 1 | 2 | 4)).map(|b| b * res.channels as u64);
                let elem = elem.ok_or_else(|| bad(format!("format {:#x} with {} channels", res.format, res.channels)))?;
                let linear = res.kind == RESOURCE_LINEAR;
                let (width, height, pitch) = if linear { (res.width / elem, 1, res.width) } else { (res.width, res.height, res.pitch) };
                if width == 0 || height == 0 {
                    return Err(bad("an empty texture resource".into()));
                }
                if !linear && (pitch < width * elem || pitch % TEXTURE_PITCH_ALIGNMENT != 0) {
                    return Err(bad(format!("pitch {pitch} must hold a row of {width} elements and be a multiple of {TEXTURE_PITCH_ALIGNMENT} bytes")));
                }
                let span = (height - 1).checked_mul(pitch).and_then(|b| b.checked_add(width * elem));
                let inside = span.is_some_and(|n| self.mem.range_of(res.handle).is_some_and(|(b, size)| res.handle + n <= b + size));
                if !inside {
                    return Err(bad(format!("texture memory at {:#x} is not inside one allocation", res.handle)));
                }
                Ok(Resource { base: res.handle, format: res.format, channels: res.channels, width, height, depth: 1, pitch, slice: pitch * height, layered: false, dims: if linear { 1 } else { 2 }, linear })
            }
            RESOURCE_MIPMAPPED_ARRAY => Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "mipmapped arrays are not supported by vgpu")),
            k => Err(bad(format!("unknown resource type {k}"))),
        }
    }

    fn add_object(&mut self, obj: Object) -> u64 {
        let h = self.handle();
        Arc::make_mut(&mut self.mem.objects).insert(h, obj);
        h
    }

    fn remove_object(&mut self, h: u64, texture: bool) -> CmdResult<()> {
        let what = if texture { "texture object" } else { "surface object" };
        match self.mem.objects.get(&h) {
            Some(o) if o.sampler.is_some() == texture => {
                Arc::make_mut(&mut self.mem.objects).remove(&h);
                Ok(())
            }
            _ => Err(invalid_handle(what, h)),
        }
    }

    fn load_ptx(&mut self, text: &str) -> CmdResult<u64> {
        let dumped = dump_ptx(text);
        let started = std::time::Instant::now();
        let module = ptx::Module::parse(text).map_err(|e| CmdError::new(CUDA_ERROR_INVALID_PTX, format!("PTX: {e}{dumped}")))?;
        tracing::debug!(micros = started.elapsed().as_micros() as u64, "parsed a PTX module of {} lines, {} kernels", text.lines().count(), module.kernel_names().count());
        let mut globals = HashMap::new();
        let mut result = Ok(());
        for g in module.globals() {
            match self.mem.alloc(g.size.max(1)) {
                Ok(p) => {
                    globals.insert(g.name.clone(), p);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = init_globals(&mut self.mem, &module, &globals);
        }
        if let Err(e) = result {
            for &p in globals.values() {
                let _ = self.mem.free(p);
            }
            return Err(e);
        }
        let h = self.handle();
        self.modules.insert(h, LoadedModule { ptx: Arc::new(module), globals });
        self.account();
        Ok(h)
    }
}

/// Gives a module's variables their initial values (the image's initializers, then the
/// addresses of the variables that initializers name); the rest of each is zero.
fn init_globals(mem: &mut DeviceMemory, module: &ptx::Module, globals: &HashMap<String, u64>) -> CmdResult<()> {
    for g in module.globals() {
        let Some(&p) = globals.get(&g.name) else { continue };
        if let Ok(s) = mem.slice_mut(p, g.size.max(1)) {
            s.fill(0);
            let n = g.init.len().min(s.len());
            s[..n].copy_from_slice(&g.init[..n]);
        }
    }
    for g in module.globals() {
        for (off, target, addend) in &g.relocs {
            let (Some(&at), Some(&to)) = (globals.get(&g.name), globals.get(target)) else { continue };
            let v = to.wrapping_add_signed(*addend);
            if mem.slice_mut(at + off, 8).map(|s| s.copy_from_slice(&v.to_le_bytes())).is_err() {
                return Err(CmdError::new(CUDA_ERROR_INVALID_PTX, format!("initializer of {} out of its bounds", g.name)));
            }
        }
    }
    Ok(())
}

impl DeviceSession for SimSession {
    fn reset(&mut self) -> CmdResult<()> {
        let keep: std::collections::HashSet<u64> = self.modules.values().flat_map(|m| m.globals.values().copied()).collect();
        self.mem.free_all_but(&keep);
        self.streams.clear();
        self.events.clear();
        self.arrays.clear();
        let r = self.modules.values().try_for_each(|m| init_globals(&mut self.mem, &m.ptx, &m.globals));
        self.account();
        r
    }

    fn array_create(&mut self, desc: &ArrayDesc) -> CmdResult<u64> {
        let p = self.mem.alloc(desc.bytes())?;
        let h = self.handle();
        self.arrays.insert(h, (p, *desc));
        self.account();
        Ok(h)
    }

    fn array_destroy(&mut self, array: u64) -> CmdResult<()> {
        let (p, _) = self.arrays.remove(&array).ok_or_else(|| invalid_handle("CUDA array", array))?;
        let _ = self.mem.free(p);
        self.account();
        Ok(())
    }

    fn memcpy_3d(&mut self, c: &Copy3D, host_in: &[u8], host_out: &mut Vec<u8>) -> CmdResult<()> {
        if c.width_bytes == 0 || c.height == 0 || c.depth == 0 {
            return Ok(());
        }
        let (src, dst) = (self.copy_side(&c.src, c)?, self.copy_side(&c.dst, c)?);
        // Rows that follow each other on both sides (packed host data, pitch = width) move as
        // one: a slice at a time.
        let packed = |s: Option<(u64, u64, u64)>| s.is_none_or(|(_, pitch, _)| pitch == c.width_bytes);
        let (rows, w) = if packed(src) && packed(dst) { (1, c.width_bytes * c.height) } else { (c.height, c.width_bytes) };
        let mut taken = 0usize;
        for z in 0..c.depth {
            for y in 0..rows {
                let at = |s: (u64, u64, u64)| s.0.wrapping_add(z.wrapping_mul(s.2)).wrapping_add(y.wrapping_mul(s.1));
                match (src, dst) {
                    (Some(s), Some(d)) => self.mem.copy(at(d), at(s), w).map_err(fault)?,
                    (None, Some(d)) => {
                        let row = host_in.get(taken..taken + w as usize).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "3D copy data too short"))?;
                        taken += w as usize;
                        self.mem.write(at(d), row).map_err(fault)?;
                    }
                    (Some(s), None) => {
                        let start = host_out.len();
                        host_out.resize(start + w as usize, 0);
                        self.mem.read(at(s), &mut host_out[start..]).map_err(fault)?;
                    }
                    (None, None) => return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "a host-to-host copy is the client's own")),
                }
            }
        }
        Ok(())
    }

    fn tex_create(&mut self, res: &ResourceDesc, sampler: &SamplerDesc) -> CmdResult<u64> {
        let r = self.resource(res)?;
        if sampler.filter == FILTER_LINEAR && ptx::texture::reads_integers(r.format, sampler.flags) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "linear filtering of an integer texture needs the normalized-float read mode"));
        }
        Ok(self.add_object(Object { res: r, sampler: Some(*sampler) }))
    }

    fn tex_destroy(&mut self, tex: u64) -> CmdResult<()> {
        self.remove_object(tex, true)
    }

    fn surf_create(&mut self, res: &ResourceDesc) -> CmdResult<u64> {
        let needs = || CmdError::new(CUDA_ERROR_INVALID_VALUE, "a surface object needs a CUDA array made with CUDA_ARRAY3D_SURFACE_LDST");
        if res.kind != RESOURCE_ARRAY {
            return Err(needs());
        }
        let r = self.resource(res)?;
        if self.arrays.get(&res.handle).is_none_or(|(_, d)| d.flags & ARRAY_SURFACE_LDST == 0) {
            return Err(needs());
        }
        Ok(self.add_object(Object { res: r, sampler: None }))
    }

    fn surf_destroy(&mut self, surf: u64) -> CmdResult<()> {
        self.remove_object(surf, false)
    }

    fn share_memory(&mut self, dptr: u64) -> CmdResult<(u64, Shared)> {
        let (base, region) = self.mem.share(dptr)?;
        Ok((base, region))
    }

    fn share_physical(&mut self, handle: u64) -> CmdResult<Shared> {
        Ok(self.mem.share_physical(handle)?)
    }

    fn share_event(&mut self, event: u64) -> CmdResult<Shared> {
        let e = self.events.get(&event).ok_or_else(|| invalid_handle("event", event))?;
        if e.flags & (CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING) != CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "an event shared between processes is made with CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING"));
        }
        Ok(Arc::new(SharedEvent))
    }

    fn open_memory(&mut self, shared: &Shared) -> CmdResult<(u64, u64)> {
        let region = shared_region(shared)?;
        let size = region.size();
        let base = self.mem.open_shared(region)?;
        self.account();
        Ok((base, size))
    }

    fn open_physical(&mut self, shared: &Shared) -> CmdResult<(u64, u64)> {
        let region = shared_region(shared)?;
        let size = region.size();
        let h = self.mem.open_physical(region)?;
        self.account();
        Ok((h, size))
    }

    fn open_event(&mut self, shared: &Shared) -> CmdResult<u64> {
        if !shared.is::<SharedEvent>() {
            return Err(not_ours());
        }
        // The exporter's work before any record of its event has finished when the record
        // returns (work runs at submission), so waiting on it here never has to wait.
        let h = self.handle();
        self.events.insert(h, Event { flags: CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING, recorded: Some(Instant::now()) });
        Ok(h)
    }

    fn close_memory(&mut self, base: u64) -> CmdResult<()> {
        self.mem.close_shared(base)?;
        self.account();
        Ok(())
    }

    fn mem_get_info(&self) -> (u64, u64) {
        // The device's, as on a GPU: what no process holds, of all there is.
        let pool = self.mem.pool();
        (pool.free(), pool.size())
    }

    fn used_bytes(&self) -> u64 {
        self.mem.used()
    }

    fn mem_alloc(&mut self, bytes: u64) -> CmdResult<u64> {
        let p = self.mem.alloc(bytes)?;
        self.account();
        Ok(p)
    }

    fn mem_free(&mut self, dptr: u64) -> CmdResult<()> {
        if self.modules.values().any(|m| m.globals.values().any(|&g| g == dptr)) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "cannot free a module variable"));
        }
        if self.arrays.values().any(|&(p, _)| p == dptr) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "cannot free a CUDA array's memory (cuArrayDestroy)"));
        }
        self.mem.free(dptr)?;
        self.account();
        Ok(())
    }

    fn mem_address_range(&self, dptr: u64) -> CmdResult<(u64, u64)> {
        self.mem.range_of(dptr).ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_FOUND, format!("{dptr:#x} is not device memory")))
    }

    fn mem_buffer_id(&self, dptr: u64) -> CmdResult<u64> {
        self.mem.buffer_id(dptr).ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_FOUND, format!("{dptr:#x} is not device memory")))
    }

    fn write(&mut self, dst: u64, data: &[u8]) -> CmdResult<()> {
        self.mem.write(dst, data).map_err(fault)
    }

    fn read(&mut self, src: u64, out: &mut [u8]) -> CmdResult<()> {
        self.mem.read(src, out).map_err(fault)
    }

    fn copy(&mut self, dst: u64, src: u64, len: u64) -> CmdResult<()> {
        self.mem.copy(dst, src, len).map_err(fault)
    }

    fn memset(&mut self, dst: u64, value: u32, elem_size: u32, count: u64) -> CmdResult<()> {
        let bytes = count
            .checked_mul(elem_size as u64)
            .ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "memset size overflows"))?;
        if !matches!(elem_size, 1 | 2 | 4) || !dst.is_multiple_of(elem_size as u64) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "memset element must be 1, 2 or 4 bytes, aligned"));
        }
        let pattern = value.to_le_bytes();
        self.mem.fill(dst, bytes, &pattern[..elem_size as usize]).map_err(fault)
    }

    fn module_load(&mut self, image: &[u8]) -> CmdResult<u64> {
        match fatbin::image_kind(image) {
            fatbin::ImageKind::Fatbin => {
                let text = fatbin::select_ptx(image)
                    .map_err(|e| CmdError::new(CUDA_ERROR_NO_BINARY_FOR_GPU, format!("fatbin: {e}")))?;
                self.load_ptx(&text)
            }
            fatbin::ImageKind::PtxText => {
                let end = image.iter().position(|&b| b == 0).unwrap_or(image.len());
                let text = std::str::from_utf8(&image[..end])
                    .map_err(|_| CmdError::new(CUDA_ERROR_INVALID_PTX, "PTX is not UTF-8"))?;
                self.load_ptx(text)
            }
            fatbin::ImageKind::Elf => Err(CmdError::new(
                CUDA_ERROR_NO_BINARY_FOR_GPU,
                format!("cubin (ELF) images cannot run on the sim backend, which runs PTX: {}", fatbin::HOW_TO_GET_PTX),
            )),
            fatbin::ImageKind::Unknown => Err(CmdError::new(CUDA_ERROR_INVALID_IMAGE, "not a fatbin, cubin or PTX image")),
        }
    }

    fn module_unload(&mut self, module: u64) -> CmdResult<()> {
        let m = self.modules.remove(&module).ok_or_else(|| invalid_handle("module", module))?;
        for p in m.globals.values() {
            let _ = self.mem.free(*p);
        }
        self.functions.retain(|_, f| f.module != module);
        self.account();
        Ok(())
    }

    fn module_get_function(&mut self, module: u64, name: &str) -> CmdResult<(FunctionInfo, Vec<(u32, u32)>)> {
        let m = self.modules.get(&module).ok_or_else(|| invalid_handle("module", module))?;
        match m.ptx.unsupported(name) {
            Some((e, ptx::Rejection::Invalid)) => {
                return Err(CmdError::new(CUDA_ERROR_INVALID_PTX, format!("kernel {name} cannot run on the sim backend: PTX: {e}")));
            }
            Some((e, ptx::Rejection::Unsupported)) => {
                log_lacking_once(&e.message);
                return Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, format!("kernel {name} cannot run on the sim backend: {e}")));
            }
            None => {}
        }
        let k = m
            .ptx
            .kernel(name)
            .ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_FOUND, format!("no kernel named {name}")))?;
        let params: Vec<(u32, u32)> = k.params.iter().map(|p| (p.offset, p.size)).collect();
        let (param_bytes, static_shared_bytes, local_bytes) = (k.param_bytes, k.static_shared_bytes, k.local_bytes);
        let (max_threads, regs, req_block) = (k.max_threads, k.regs, k.req_block.unwrap_or([0; 3]));
        let const_bytes = m.ptx.globals().iter().filter(|g| g.space == ptx::VarSpace::Const).map(|g| g.size).sum::<u64>().min(u32::MAX as u64) as u32;
        // What runs is this PTX: its target is the version both report.
        let arch = if m.ptx.target() > 0 { m.ptx.target() } else { 90 };
        // One handle per (module, name): resolving twice gives the same function, as in CUDA.
        let existing = self.functions.iter().find(|(_, f)| f.module == module && f.name == name).map(|(&h, _)| h);
        let h = match existing {
            Some(h) => h,
            None => {
                let h = self.handle();
                self.functions.insert(h, Function { module, name: name.to_string() });
                h
            }
        };
        let info = FunctionInfo {
            handle: h,
            param_count: params.len() as u32,
            param_bytes,
            static_shared_bytes,
            local_bytes,
            max_threads_per_block: max_threads,
            num_regs: regs,
            ptx_version: arch,
            binary_version: arch,
            const_bytes,
            req_block,
        };
        Ok((info, params))
    }

    fn module_get_global(&mut self, module: u64, name: &str) -> CmdResult<(u64, u64)> {
        let m = self.modules.get(&module).ok_or_else(|| invalid_handle("module", module))?;
        let p = *m.globals.get(name).ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_FOUND, format!("no global named {name}")))?;
        let size = m.ptx.globals().iter().find(|g| g.name == name).map(|g| g.size).unwrap_or(0);
        Ok((p, size))
    }

    fn module_functions(&self, module: u64) -> CmdResult<Vec<String>> {
        let m = self.modules.get(&module).ok_or_else(|| invalid_handle("module", module))?;
        Ok(m.ptx.kernel_names().map(str::to_string).collect())
    }

    fn launch(&mut self, function: u64, dims: LaunchDims, params: &[u8]) -> CmdResult<Vec<u8>> {
        self.check_stream(dims.stream)?;
        let f = self.functions.get(&function).ok_or_else(|| invalid_handle("function", function))?;
        let m = self.modules.get(&f.module).ok_or_else(|| invalid_handle("module", f.module))?;
        let k = m.ptx.kernel(&f.name).ok_or_else(|| invalid_handle("function", function))?;
        validate_dims(&dims, k.static_shared_bytes)?;
        if params.len() != k.param_bytes as usize {
            return Err(CmdError::new(
                CUDA_ERROR_INVALID_VALUE,
                format!("{} takes {} bytes of parameters, got {}", f.name, k.param_bytes, params.len()),
            ));
        }
        let cfg = ptx::LaunchConfig { grid: dims.grid, block: dims.block, dynamic_shared_bytes: dims.dynamic_shared_bytes };
        let module = m.ptx.clone();
        let globals = m.globals.clone();
        let kernel_name = f.name.clone();
        let k = module.kernel(&kernel_name).ok_or_else(|| invalid_handle("function", function))?;
        tracing::debug!(grid = ?cfg.grid, block = ?cfg.block, dynamic_shared = cfg.dynamic_shared_bytes, params = ?params, "launch {kernel_name}");
        let started = std::time::Instant::now();
        let r = ptx::launch_with_budget(&module, k, &cfg, params, &globals, &mut self.mem, self.budget)
            .inspect(|stats| tracing::debug!(instructions = stats.instructions, compiled = stats.compiled, micros = started.elapsed().as_micros() as u64, "ran {kernel_name}"))
            .map(|stats| stats.output)
            .map_err(|e| CmdError::new(super::exec_error_code(&e), format!("kernel {kernel_name}: {e}")));
        // The first launch that allocates on the device makes the heap.
        self.account();
        r
    }

    fn stream_create(&mut self, _flags: u32, _priority: i32) -> CmdResult<u64> {
        let h = self.handle();
        self.streams.insert(h, ());
        Ok(h)
    }

    fn stream_destroy(&mut self, stream: u64) -> CmdResult<()> {
        self.streams.remove(&stream).map(|_| ()).ok_or_else(|| invalid_handle("stream", stream))
    }

    fn stream_synchronize(&mut self, stream: u64) -> CmdResult<()> {
        self.check_stream(stream)
    }

    fn stream_query(&mut self, stream: u64) -> CmdResult<()> {
        self.check_stream(stream)
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64) -> CmdResult<()> {
        self.check_stream(stream)?;
        self.event(event).map(|_| ())
    }

    fn event_create(&mut self, flags: u32) -> CmdResult<u64> {
        if flags & !0xf != 0 {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("bad event flags {flags:#x}")));
        }
        let h = self.handle();
        self.events.insert(h, Event { flags, recorded: None });
        Ok(h)
    }

    fn event_destroy(&mut self, event: u64) -> CmdResult<()> {
        self.events.remove(&event).map(|_| ()).ok_or_else(|| invalid_handle("event", event))
    }

    fn event_record(&mut self, event: u64, stream: u64) -> CmdResult<()> {
        self.check_stream(stream)?;
        // All earlier work has completed (it ran at submission), so the event completes now.
        self.event(event)?.recorded = Some(Instant::now());
        Ok(())
    }

    fn event_synchronize(&mut self, event: u64) -> CmdResult<()> {
        self.event(event).map(|_| ())
    }

    fn event_query(&mut self, event: u64) -> CmdResult<()> {
        self.event(event).map(|_| ())
    }

    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> CmdResult<f32> {
        let s = self.events.get(&start).ok_or_else(|| invalid_handle("event", start))?;
        let e = self.events.get(&end).ok_or_else(|| invalid_handle("event", end))?;
        if (s.flags | e.flags) & CU_EVENT_DISABLE_TIMING != 0 {
            return Err(CmdError::new(CUDA_ERROR_INVALID_HANDLE, "event created with CU_EVENT_DISABLE_TIMING"));
        }
        match (s.recorded, e.recorded) {
            (Some(a), Some(b)) => {
                let ms = if b >= a { (b - a).as_secs_f64() * 1e3 } else { -((a - b).as_secs_f64() * 1e3) };
                Ok(ms as f32)
            }
            _ => Err(CmdError::new(CUDA_ERROR_NOT_READY, "event not recorded")),
        }
    }

    fn synchronize(&mut self) -> CmdResult<()> {
        Ok(())
    }

    fn vmm_create(&mut self, size: u64) -> CmdResult<u64> {
        let h = self.mem.create_physical(size)?;
        self.account();
        Ok(h)
    }

    fn vmm_release(&mut self, handle: u64) -> CmdResult<()> {
        self.mem.release_physical(handle)?;
        self.account();
        Ok(())
    }

    fn vmm_reserve(&mut self, size: u64, alignment: u64, hint: u64) -> CmdResult<u64> {
        self.mem.reserve(size, alignment, hint)
    }

    fn vmm_unreserve(&mut self, va: u64, size: u64) -> CmdResult<()> {
        self.mem.unreserve(va, size)
    }

    fn vmm_map(&mut self, va: u64, size: u64, offset: u64, handle: u64) -> CmdResult<()> {
        self.mem.map(va, size, offset, handle)
    }

    fn vmm_unmap(&mut self, va: u64, size: u64) -> CmdResult<()> {
        self.mem.unmap(va, size)?;
        self.account();
        Ok(())
    }

    fn vmm_set_access(&mut self, va: u64, size: u64) -> CmdResult<()> {
        if self.mem.is_mapped(va, size) {
            Ok(())
        } else {
            Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{size} bytes at {va:#x} are not mapped")))
        }
    }
}

/// CUDA's launch limits (compute capability 9.0).
fn validate_dims(d: &LaunchDims, static_shared: u32) -> CmdResult<()> {
    let bad = |m: String| Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, m));
    let [bx, by, bz] = d.block;
    let [gx, gy, gz] = d.grid;
    if bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0 {
        return bad(format!("empty launch grid {:?} block {:?}", d.grid, d.block));
    }
    if bx > 1024 || by > 1024 || bz > 64 || (bx as u64) * (by as u64) * (bz as u64) > 1024 {
        return bad(format!("block {:?} exceeds 1024 threads / (1024, 1024, 64)", d.block));
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return bad(format!("grid {:?} exceeds (2^31-1, 65535, 65535)", d.grid));
    }
    if static_shared as u64 + d.dynamic_shared_bytes as u64 > 232_448 {
        return bad(format!("{} bytes of shared memory exceed the 227 KiB per block", static_shared as u64 + d.dynamic_shared_bytes as u64));
    }
    Ok(())
}

/// With VGPU_SIM_DUMP_PTX=<dir>, every PTX module loaded is written there (to read the line an
/// error names); returns a note for error messages.
fn dump_ptx(text: &str) -> String {
    let Some(dir) = std::env::var_os("VGPU_SIM_DUMP_PTX") else { return String::new() };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let path = std::path::Path::new(&dir).join(format!("module-{:016x}.ptx", h.finish()));
    match std::fs::write(&path, text) {
        Ok(()) => format!(" (PTX written to {})", path.display()),
        Err(e) => format!(" (could not write the PTX to {}: {e})", path.display()),
    }
}

/// Says once per process which instruction the sim lacks (a library module can have hundreds of
/// kernels using the same one; each lookup still fails with the full reason).
fn log_lacking_once(message: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    // The opcode: the text between the first two backquotes, up to its first space.
    let opcode = message.split('`').nth(1).and_then(|t| t.split_whitespace().find(|w| !w.starts_with('@'))).unwrap_or(message).to_string();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&opcode) {
        tracing::warn!("sim backend: kernels using `{opcode}` cannot run here ({message})");
        seen.push(opcode);
    }
}
