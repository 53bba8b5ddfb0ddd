//! `libnvidia-ml.so.1` for vgpu: NVML answered from what the vgpu mediator reports, so discovery
//! tools (nvidia-smi-style CLIs, pynvml, Ollama's probe) see the virtual GPU truthfully. Every
//! function nvml.h declares is exported; those vgpu cannot answer honestly (temperatures, clocks,
//! power: the sim backend has none) return NVML_ERROR_NOT_SUPPORTED and log once.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use vgpu_client::{log, vlog, Client};
use vgpu_uapi::proto::{DeviceInfo, Op, HELLO_OBSERVER};
use vgpu_uapi::wire::Reader;

pub type NvmlReturn = c_uint;
pub const NVML_SUCCESS: NvmlReturn = 0;
pub const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
pub const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
pub const NVML_ERROR_NOT_FOUND: NvmlReturn = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
pub const NVML_ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
pub const NVML_ERROR_GPU_IS_LOST: NvmlReturn = 15;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;
pub const NVML_ERROR_UNKNOWN: NvmlReturn = 999;

include!(concat!(env!("OUT_DIR"), "/nvml_api.rs"));

/// The library's state between nvmlInit and the matching nvmlShutdown.
struct State {
    client: Client,
    inits: u32,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn guard(name: &str, f: impl FnOnce() -> Result<(), NvmlReturn>) -> NvmlReturn {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NVML_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => {
            vlog!(log::ERROR, "internal error (panic) in {name}");
            NVML_ERROR_UNKNOWN
        }
    }
}

fn not_supported(name: &str, logged: &AtomicBool) -> NvmlReturn {
    if !logged.swap(true, Ordering::Relaxed) {
        vlog!(log::WARN, "{name} is not supported by vgpu (returning NVML_ERROR_NOT_SUPPORTED)");
    }
    NVML_ERROR_NOT_SUPPORTED
}

fn put<T>(p: *mut T, v: T) -> Result<(), NvmlReturn> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null; the NVML contract makes the caller pass a valid, writable `T*`.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Copies `s` NUL-terminated into a caller buffer of `len` bytes; too small is an error in NVML.
fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), NvmlReturn> {
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    if (len as usize) < s.len() + 1 {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller provides `len` >= s.len() + 1 writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

/// nvmlDevice_t values: small tagged integers, never dereferenced.
const HANDLE_BASE: usize = 0x6e76_0000;

fn handle_of(index: usize) -> *mut c_void {
    (HANDLE_BASE + index * 0x10) as *mut c_void
}

fn with_device<T>(dev: *mut c_void, f: impl FnOnce(&Client, u32, &DeviceInfo) -> Result<T, NvmlReturn>) -> Result<T, NvmlReturn> {
    let st = state();
    let st = st.as_ref().ok_or(NVML_ERROR_UNINITIALIZED)?;
    let off = (dev as usize).checked_sub(HANDLE_BASE).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    if off % 0x10 != 0 {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let index = off / 0x10;
    let info = st.client.devices.get(index).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    f(&st.client, index as u32, info)
}

fn init() -> Result<(), NvmlReturn> {
    let mut st = state();
    if let Some(s) = st.as_mut() {
        s.inits += 1;
        return Ok(());
    }
    let client = Client::connect_as("nvmlInit", HELLO_OBSERVER).map_err(|_| NVML_ERROR_DRIVER_NOT_LOADED)?;
    *st = Some(State { client, inits: 1 });
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> NvmlReturn {
    guard("nvmlInit_v2", init)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit() -> NvmlReturn {
    guard("nvmlInit", init)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInitWithFlags(flags: c_uint) -> NvmlReturn {
    // NVML_INIT_FLAG_NO_GPUS (1) / NO_ATTACH (2) only relax what init requires.
    guard("nvmlInitWithFlags", || if flags & !3 != 0 { Err(NVML_ERROR_INVALID_ARGUMENT) } else { init() })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> NvmlReturn {
    guard("nvmlShutdown", || {
        let mut st = state();
        let s = st.as_mut().ok_or(NVML_ERROR_UNINITIALIZED)?;
        s.inits -= 1;
        if s.inits == 0 {
            *st = None; // closes the connection
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    let s: &'static [u8] = match result {
        NVML_SUCCESS => b"Success\0",
        NVML_ERROR_UNINITIALIZED => b"Uninitialized\0",
        NVML_ERROR_INVALID_ARGUMENT => b"Invalid Argument\0",
        NVML_ERROR_NOT_SUPPORTED => b"Not Supported\0",
        NVML_ERROR_NOT_FOUND => b"Not Found\0",
        NVML_ERROR_INSUFFICIENT_SIZE => b"Insufficient Size\0",
        NVML_ERROR_DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        NVML_ERROR_GPU_IS_LOST => b"GPU is lost\0",
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH => b"Argument version mismatch\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

fn initialized() -> Result<(), NvmlReturn> {
    state().as_ref().map(|_| ()).ok_or(NVML_ERROR_UNINITIALIZED)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, len: c_uint) -> NvmlReturn {
    guard("nvmlSystemGetDriverVersion", || {
        initialized()?;
        put_str(version, len, vgpu_uapi::NVIDIA_DRIVER_VERSION)
    })
}

/// "<CUDA major>.<driver version>", as NVML spells it.
pub fn nvml_version() -> String {
    format!("{}.{}", vgpu_uapi::CUDA_DRIVER_VERSION / 1000, vgpu_uapi::NVIDIA_DRIVER_VERSION)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, len: c_uint) -> NvmlReturn {
    guard("nvmlSystemGetNVMLVersion", || put_str(version, len, &nvml_version()))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> NvmlReturn {
    guard("nvmlSystemGetCudaDriverVersion", || put(version, vgpu_uapi::CUDA_DRIVER_VERSION))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> NvmlReturn {
    guard("nvmlSystemGetCudaDriverVersion_v2", || put(version, vgpu_uapi::CUDA_DRIVER_VERSION))
}

fn count(out: *mut c_uint) -> Result<(), NvmlReturn> {
    let st = state();
    let st = st.as_ref().ok_or(NVML_ERROR_UNINITIALIZED)?;
    put(out, st.client.devices.len() as c_uint)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(out: *mut c_uint) -> NvmlReturn {
    guard("nvmlDeviceGetCount_v2", || count(out))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount(out: *mut c_uint) -> NvmlReturn {
    guard("nvmlDeviceGetCount", || count(out))
}

fn by_index(index: c_uint, out: *mut *mut c_void) -> Result<(), NvmlReturn> {
    let st = state();
    let st = st.as_ref().ok_or(NVML_ERROR_UNINITIALIZED)?;
    if index as usize >= st.client.devices.len() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    put(out, handle_of(index as usize))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, out: *mut *mut c_void) -> NvmlReturn {
    guard("nvmlDeviceGetHandleByIndex_v2", || by_index(index, out))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(index: c_uint, out: *mut *mut c_void) -> NvmlReturn {
    guard("nvmlDeviceGetHandleByIndex", || by_index(index, out))
}

fn find(pred: impl Fn(&DeviceInfo) -> bool, out: *mut *mut c_void) -> Result<(), NvmlReturn> {
    let st = state();
    let st = st.as_ref().ok_or(NVML_ERROR_UNINITIALIZED)?;
    let i = st.client.devices.iter().position(pred).ok_or(NVML_ERROR_NOT_FOUND)?;
    put(out, handle_of(i))
}

fn c_arg<'a>(p: *const c_char) -> Result<&'a str, NvmlReturn> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null NUL-terminated string (API contract).
    unsafe { std::ffi::CStr::from_ptr(p) }.to_str().map_err(|_| NVML_ERROR_INVALID_ARGUMENT)
}

/// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", NVIDIA's UUID spelling.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", h[0..4].concat(), h[4..6].concat(), h[6..8].concat(), h[8..10].concat(), h[10..16].concat())
}

/// NVML's bus id ("00000000:00:05.0") and the legacy form ("0000:00:05.0").
pub fn bus_ids(d: &DeviceInfo) -> (String, String) {
    (
        format!("{:08x}:{:02x}:{:02x}.0", d.pci_domain, d.pci_bus, d.pci_device),
        format!("{:04x}:{:02x}:{:02x}.0", d.pci_domain, d.pci_bus, d.pci_device),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, out: *mut *mut c_void) -> NvmlReturn {
    guard("nvmlDeviceGetHandleByUUID", || {
        let want = c_arg(uuid)?.to_ascii_lowercase();
        find(|d| uuid_string(&d.uuid).to_ascii_lowercase() == want, out)
    })
}

fn by_bus_id(id: *const c_char, out: *mut *mut c_void) -> Result<(), NvmlReturn> {
    let want = c_arg(id)?.to_ascii_lowercase();
    find(
        |d| {
            let (long, short) = bus_ids(d);
            want == long || want == short
        },
        out,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(id: *const c_char, out: *mut *mut c_void) -> NvmlReturn {
    guard("nvmlDeviceGetHandleByPciBusId_v2", || by_bus_id(id, out))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(id: *const c_char, out: *mut *mut c_void) -> NvmlReturn {
    guard("nvmlDeviceGetHandleByPciBusId", || by_bus_id(id, out))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(dev: *mut c_void, name: *mut c_char, len: c_uint) -> NvmlReturn {
    guard("nvmlDeviceGetName", || with_device(dev, |_, _, d| put_str(name, len, d.name_str())))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(dev: *mut c_void, uuid: *mut c_char, len: c_uint) -> NvmlReturn {
    guard("nvmlDeviceGetUUID", || with_device(dev, |_, _, d| put_str(uuid, len, &uuid_string(&d.uuid))))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: *mut c_void, index: *mut c_uint) -> NvmlReturn {
    guard("nvmlDeviceGetIndex", || with_device(dev, |_, i, _| put(index, i)))
}

/// The N of /dev/nvidiaN: the device's index.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(dev: *mut c_void, minor: *mut c_uint) -> NvmlReturn {
    guard("nvmlDeviceGetMinorNumber", || with_device(dev, |_, i, _| put(minor, i)))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(dev: *mut c_void, major: *mut c_int, minor: *mut c_int) -> NvmlReturn {
    guard("nvmlDeviceGetCudaComputeCapability", || {
        with_device(dev, |_, _, d| {
            put(major, d.attrs[vgpu_uapi::cuda::attr::COMPUTE_CAPABILITY_MAJOR])?;
            put(minor, d.attrs[vgpu_uapi::cuda::attr::COMPUTE_CAPABILITY_MINOR])
        })
    })
}

/// nvmlPciInfo_t (the layout of NVML >= 9).
#[repr(C)]
pub struct PciInfo {
    pub bus_id_legacy: [c_char; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pci_device_id: c_uint,
    pub pci_subsystem_id: c_uint,
    pub bus_id: [c_char; 32],
}

fn fill_c(dst: &mut [c_char], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().chain(std::iter::repeat(0))) {
        *d = b as c_char;
    }
    if let Some(last) = dst.last_mut() {
        *last = 0;
    }
}

fn pci_info(dev: *mut c_void, out: *mut PciInfo) -> Result<(), NvmlReturn> {
    with_device(dev, |_, _, d| {
        let (long, short) = bus_ids(d);
        let mut p = PciInfo {
            bus_id_legacy: [0; 16],
            domain: d.pci_domain,
            bus: d.pci_bus,
            device: d.pci_device,
            pci_device_id: ((vgpu_uapi::PCI_DEVICE_ID as u32) << 16) | vgpu_uapi::PCI_VENDOR_ID as u32,
            pci_subsystem_id: ((vgpu_uapi::PCI_SUBSYSTEM_ID as u32) << 16) | vgpu_uapi::PCI_VENDOR_ID as u32,
            bus_id: [0; 32],
        };
        fill_c(&mut p.bus_id_legacy, &short);
        fill_c(&mut p.bus_id, &long);
        put(out, p)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(dev: *mut c_void, out: *mut PciInfo) -> NvmlReturn {
    guard("nvmlDeviceGetPciInfo_v3", || pci_info(dev, out))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(dev: *mut c_void, out: *mut PciInfo) -> NvmlReturn {
    guard("nvmlDeviceGetPciInfo_v2", || pci_info(dev, out))
}

/// (total, free, used) of device memory as the mediator accounts it for this VM.
pub fn memory(client: &Client, index: u32) -> Result<(u64, u64, u64), NvmlReturn> {
    let reply = client.call(Op::DeviceMemoryInfo, &[&index.to_le_bytes()]).map_err(|_| NVML_ERROR_GPU_IS_LOST)?;
    let mut r = Reader::new(&reply);
    let (total, used) = (r.u64().map_err(|_| NVML_ERROR_UNKNOWN)?, r.u64().map_err(|_| NVML_ERROR_UNKNOWN)?);
    Ok((total, total.saturating_sub(used), used))
}

/// nvmlMemory_t
#[repr(C)]
pub struct Memory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// nvmlMemory_v2_t
#[repr(C)]
pub struct MemoryV2 {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

pub const NVML_MEMORY_V2: c_uint = std::mem::size_of::<MemoryV2>() as c_uint | (2 << 24);

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(dev: *mut c_void, out: *mut Memory) -> NvmlReturn {
    guard("nvmlDeviceGetMemoryInfo", || {
        with_device(dev, |c, i, _| {
            let (total, free, used) = memory(c, i)?;
            put(out, Memory { total, free, used })
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(dev: *mut c_void, out: *mut MemoryV2) -> NvmlReturn {
    guard("nvmlDeviceGetMemoryInfo_v2", || {
        if out.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null; the caller sets `version` before the call.
        if unsafe { (*out).version } != NVML_MEMORY_V2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        with_device(dev, |c, i, _| {
            let (total, free, used) = memory(c, i)?;
            put(out, MemoryV2 { version: NVML_MEMORY_V2, total, reserved: 0, free, used })
        })
    })
}

/// nvmlProcessInfo_t (v2 layout, used by the _v2 and _v3 calls).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessInfo {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

/// NVML_VALUE_NOT_AVAILABLE for the MIG ids of a non-MIG device.
const VALUE_NOT_AVAILABLE: c_uint = 0xFFFF_FFFF;

pub fn processes(client: &Client, index: u32) -> Result<Vec<(u32, u64)>, NvmlReturn> {
    let reply = client.call(Op::DeviceProcesses, &[&index.to_le_bytes()]).map_err(|_| NVML_ERROR_GPU_IS_LOST)?;
    let mut r = Reader::new(&reply);
    let n = r.u32().map_err(|_| NVML_ERROR_UNKNOWN)?;
    (0..n).map(|_| Ok((r.u32().map_err(|_| NVML_ERROR_UNKNOWN)?, r.u64().map_err(|_| NVML_ERROR_UNKNOWN)?))).collect()
}

fn running_processes(dev: *mut c_void, count: *mut c_uint, infos: *mut ProcessInfo) -> Result<(), NvmlReturn> {
    with_device(dev, |c, i, _| {
        if count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let procs = processes(c, i)?;
        // SAFETY: non-null count pointer (API contract: in = capacity, out = needed/written).
        let cap = unsafe { *count } as usize;
        put(count, procs.len() as c_uint)?;
        if procs.len() > cap || (infos.is_null() && !procs.is_empty()) {
            return Err(NVML_ERROR_INSUFFICIENT_SIZE);
        }
        for (k, (pid, used)) in procs.into_iter().enumerate() {
            let info = ProcessInfo { pid, used_gpu_memory: used, gpu_instance_id: VALUE_NOT_AVAILABLE, compute_instance_id: VALUE_NOT_AVAILABLE };
            // SAFETY: k < cap entries fit in the caller's array.
            unsafe { infos.add(k).write_unaligned(info) };
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(dev: *mut c_void, count: *mut c_uint, infos: *mut ProcessInfo) -> NvmlReturn {
    guard("nvmlDeviceGetComputeRunningProcesses_v3", || running_processes(dev, count, infos))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(dev: *mut c_void, count: *mut c_uint, infos: *mut ProcessInfo) -> NvmlReturn {
    guard("nvmlDeviceGetComputeRunningProcesses_v2", || running_processes(dev, count, infos))
}

/// Compute work runs through the mediator; there is no graphics engine.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(dev: *mut c_void, count: *mut c_uint, _infos: *mut ProcessInfo) -> NvmlReturn {
    guard("nvmlDeviceGetGraphicsRunningProcesses_v3", || with_device(dev, |_, _, _| put(count, 0)))
}

/// The mediator keeps device state whether or not a guest process is attached.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPersistenceMode(dev: *mut c_void, mode: *mut c_uint) -> NvmlReturn {
    guard("nvmlDeviceGetPersistenceMode", || with_device(dev, |_, _, _| put(mode, 1)))
}

// GPU fabric (NVLink switch / multi-node NVLink) state. A vgpu device has no NVLink fabric:
// NVML then answers as it does for a PCIe H100, state NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
// (PyTorch asks before choosing fabric handles for its expandable segments).
const NVML_GPU_FABRIC_STATE_NOT_SUPPORTED: u8 = 0;
/// nvmlGpuFabricInfo_v2 / _v3: size | version << 24.
const NVML_GPU_FABRIC_INFO_V2: c_uint = 36 | (2 << 24);
const NVML_GPU_FABRIC_INFO_V3: c_uint = 40 | (3 << 24);

/// Fills a fabric-info structure whose clusterUuid starts at byte `at` (after `version` for the
/// versioned ones): uuid zero, status NOT_SUPPORTED, clique 0, state NOT_SUPPORTED, health
/// fields (v2, v3) zero ("not supported").
fn put_no_fabric(out: *mut u8, at: usize, len: usize) -> Result<(), NvmlReturn> {
    if out.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: `out` points at the caller's structure of `len` bytes (its version says which,
    // or the unversioned call's fixed layout); every write below is inside it.
    unsafe {
        std::ptr::write_bytes(out.add(at), 0, len - at);
        out.add(at + 16).cast::<u32>().write_unaligned(NVML_ERROR_NOT_SUPPORTED);
        out.add(at + 24).write(NVML_GPU_FABRIC_STATE_NOT_SUPPORTED);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfo(dev: *mut c_void, out: *mut c_void) -> NvmlReturn {
    // nvmlGpuFabricInfo_t: clusterUuid[16], status, cliqueId, state (28 bytes).
    guard("nvmlDeviceGetGpuFabricInfo", || with_device(dev, |_, _, _| put_no_fabric(out.cast(), 0, 28)))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfoV(dev: *mut c_void, out: *mut c_void) -> NvmlReturn {
    guard("nvmlDeviceGetGpuFabricInfoV", || {
        if out.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null; the caller sets `version` (the first field) before the call.
        let len = match unsafe { out.cast::<c_uint>().read_unaligned() } {
            NVML_GPU_FABRIC_INFO_V2 => 36,
            NVML_GPU_FABRIC_INFO_V3 => 40,
            _ => return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH),
        };
        with_device(dev, |_, _, _| put_no_fabric(out.cast(), 4, len))
    })
}
