//! Device enumeration and properties, answered from what the mediator reported at cuInit.

use super::*;
use crate::state::driver;
use std::ffi::{c_char, c_int};

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    guard("cuDeviceGetCount", || put(count, driver()?.devices().len() as c_int))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard("cuDeviceGet", || {
        driver()?.device(ordinal)?;
        put(device, ordinal)
    })
}

/// Copies `s` NUL-terminated into an application buffer of `len` bytes (truncating like CUDA).
fn put_str(buf: *mut c_char, len: c_int, s: &str) -> Result<(), CUresult> {
    if buf.is_null() || len <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    // SAFETY: the caller provides `len` writable bytes at `buf`; we write n + 1 <= len of them.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetName", || put_str(name, len, driver()?.device(dev)?.name_str()))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard("cuDeviceTotalMem_v2", || put(bytes, driver()?.device(dev)?.total_mem as usize))
}

/// Attributes of what libcuda itself implements, whatever the device behind it: managed memory
/// is kept coherent by libcuda at synchronization (driver/mirror.rs), so it exists, but not
/// concurrently with kernels, and the host's page tables are not the device's.
fn libcuda_attribute(a: usize) -> Option<i32> {
    use vgpu_uapi::cuda::attr::*;
    match a {
        MANAGED_MEMORY | CAN_MAP_HOST_MEMORY => Some(1),
        CONCURRENT_MANAGED_ACCESS | PAGEABLE_MEMORY_ACCESS | PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES | DIRECT_MANAGED_MEM_ACCESS_FROM_HOST | CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM => Some(0),
        _ => None,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_int, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetAttribute", || {
        let d = driver()?.device(dev)?;
        let a = usize::try_from(attrib).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let v = d.attrs.get(a).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(value, libcuda_attribute(a).unwrap_or(*v))
    })
}

/// CUdevResource (cuda.h, RESOURCE_ABI_VERSION 1): the type, 92 bytes of padding, then the
/// 48-byte union whose SM member is smCount, minSmPartitionSize, smCoscheduledAlignment.
const DEV_RESOURCE_BYTES: usize = 4 + 92 + 48;
const CU_DEV_RESOURCE_TYPE_SM: c_int = 1;
const CUDA_ERROR_INVALID_RESOURCE_TYPE: CUresult = 914;

/// The SM resource of device `dev`, as cuDeviceGetDevResource/cuCtxGetDevResource give it: all of
/// its multiprocessors; partitions of at least 8, as CUDA documents for compute capability 9.0,
/// and co-scheduled in pairs (a Hopper TPC). vgpu makes no green contexts from it (cuGreenCtxCreate
/// and the split functions are not supported); cuSOLVER 12 only reads it (CUDA 13's dgeqrf fails
/// with CUSOLVER_STATUS_EXECUTION_FAILED when this fails).
fn dev_resource(dev: CUdevice, resource: *mut u8, kind: c_int) -> Result<(), CUresult> {
    let d = driver()?.device(dev)?;
    if resource.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if kind != CU_DEV_RESOURCE_TYPE_SM {
        return Err(CUDA_ERROR_INVALID_RESOURCE_TYPE);
    }
    let mut r = [0u8; DEV_RESOURCE_BYTES];
    r[..4].copy_from_slice(&kind.to_le_bytes());
    let sms = d.attrs[vgpu_uapi::cuda::attr::MULTIPROCESSOR_COUNT] as u32;
    for (i, v) in [sms, 8, 2].into_iter().enumerate() {
        r[96 + 4 * i..100 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    // SAFETY: the caller passes a CUdevResource, DEV_RESOURCE_BYTES long (checked non-null).
    unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), resource, r.len()) };
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDevResource(dev: CUdevice, resource: *mut u8, kind: c_int) -> CUresult {
    guard("cuDeviceGetDevResource", || dev_resource(dev, resource, kind))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevResource(ctx: Handle, resource: *mut u8, kind: c_int) -> CUresult {
    guard("cuCtxGetDevResource", || {
        let h = if ctx.is_null() { crate::state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)? } else { ctx as usize };
        let dev = driver()?.contexts().get(h)?.device;
        dev_resource(dev, resource, kind)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, dev: CUdevice) -> CUresult {
    guard("cuDeviceComputeCapability", || {
        let d = driver()?.device(dev)?;
        put(major, d.attrs[vgpu_uapi::cuda::attr::COMPUTE_CAPABILITY_MAJOR])?;
        put(minor, d.attrs[vgpu_uapi::cuda::attr::COMPUTE_CAPABILITY_MINOR])
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    guard("cuDeviceGetUuid", || put(uuid, driver()?.device(dev)?.uuid))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    cuDeviceGetUuid(uuid, dev)
}

/// "dddd:bb:dd.0", the form cuDeviceGetPCIBusId uses.
pub fn pci_bus_id(d: &vgpu_uapi::proto::DeviceInfo) -> String {
    format!("{:04x}:{:02x}:{:02x}.0", d.pci_domain, d.pci_bus, d.pci_device)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(id: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetPCIBusId", || put_str(id, len, &pci_bus_id(driver()?.device(dev)?)))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, id: *const c_char) -> CUresult {
    guard("cuDeviceGetByPCIBusId", || {
        let want = c_str(id)?.to_ascii_lowercase();
        let d = driver()?;
        // Accept both the 4- and the 8-digit domain forms (CUDA and NVML spellings).
        let i = d
            .devices()
            .iter()
            .position(|info| {
                let short = pci_bus_id(info);
                want == short || want == format!("0000{short}")
            })
            .ok_or(CUDA_ERROR_INVALID_DEVICE)?;
        put(dev, i as CUdevice)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceCanAccessPeer(can: *mut c_int, dev: CUdevice, peer: CUdevice) -> CUresult {
    guard("cuDeviceCanAccessPeer", || {
        let d = driver()?;
        d.device(dev)?;
        d.device(peer)?;
        put(can, 0)
    })
}
