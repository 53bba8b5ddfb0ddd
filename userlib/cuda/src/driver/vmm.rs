//! Virtual memory management (cuMemCreate, cuMemAddressReserve, cuMemMap, cuMemSetAccess...):
//! physical allocations and reserved address ranges live in the mediator, which checks every
//! handle and range; llama.cpp's ggml-cuda grows its memory pool this way when the device
//! reports CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED.

use super::*;
use crate::state;
use std::ffi::c_int;
use vgpu_uapi::proto::{Op, VMM_GRANULARITY};
use vgpu_uapi::wire::Reader;

use vgpu_uapi::cuda::vmm::{MemAccessDesc, MemAllocationProp, MemLocation, CU_MEM_ACCESS_FLAGS_PROT_READ, CU_MEM_ACCESS_FLAGS_PROT_READWRITE, CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, CU_MEM_LOCATION_TYPE_DEVICE};

fn device_location(l: MemLocation) -> Result<(), CUresult> {
    let d = state::driver()?;
    if l.ty != CU_MEM_LOCATION_TYPE_DEVICE || l.id < 0 || l.id as usize >= d.devices().len() {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

/// Device memory, pinned, exportable as a POSIX file descriptor or not at all (ipc.rs).
fn check_prop(prop: *const MemAllocationProp) -> Result<(), CUresult> {
    if prop.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null pointer to the application's CUmemAllocationProp (API contract).
    let p = unsafe { &*prop };
    if p.ty != CU_MEM_ALLOCATION_TYPE_PINNED {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if p.handle_types & !CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR != 0 {
        // Fabric (multi-node NVLink) and Windows handles.
        vlog!(crate::log::WARN, "cuMemCreate: shareable handle types other than POSIX file descriptors are not supported");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    device_location(p.location)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(gran: *mut usize, prop: *const MemAllocationProp, _option: c_int) -> CUresult {
    guard("cuMemGetAllocationGranularity", || {
        check_prop(prop)?;
        // Minimum and recommended are the same.
        put(gran, VMM_GRANULARITY as usize)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(handle: *mut u64, size: usize, prop: *const MemAllocationProp, flags: u64) -> CUresult {
    guard("cuMemCreate", || {
        if handle.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        check_prop(prop)?;
        let reply = call_u64s(Op::MemCreate, &[size as u64])?;
        put(handle, Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    guard("cuMemRelease", || call_u64s(Op::MemRelease, &[handle]).map(drop))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, addr: CUdeviceptr, flags: u64) -> CUresult {
    guard("cuMemAddressReserve", || {
        if ptr.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let reply = call_u64s(Op::MemAddressReserve, &[size as u64, alignment as u64, addr])?;
        put(ptr, Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard("cuMemAddressFree", || call_u64s(Op::MemAddressFree, &[ptr, size as u64]).map(drop))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: u64, flags: u64) -> CUresult {
    guard("cuMemMap", || {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        call_u64s(Op::MemMap, &[ptr, size as u64, offset as u64, handle]).map(drop)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard("cuMemUnmap", || call_u64s(Op::MemUnmap, &[ptr, size as u64]).map(drop))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const MemAccessDesc, count: usize) -> CUresult {
    guard("cuMemSetAccess", || {
        if desc.is_null() || count == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `desc` points at `count` CUmemAccessDesc (API contract).
        for d in unsafe { std::slice::from_raw_parts(desc, count) } {
            device_location(d.location)?;
            if d.flags != CU_MEM_ACCESS_FLAGS_PROT_READ && d.flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE {
                // Taking access away (PROT_NONE) is not enforced by the sim: refuse it.
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        call_u64s(Op::MemSetAccess, &[ptr, size as u64]).map(drop)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAccess(flags: *mut u64, location: *const MemLocation, ptr: CUdeviceptr) -> CUresult {
    guard("cuMemGetAccess", || {
        if location.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null pointer to a CUmemLocation (API contract).
        device_location(unsafe { *location })?;
        call_u64s(Op::MemSetAccess, &[ptr, 1])?;
        put(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE as u64)
    })
}
