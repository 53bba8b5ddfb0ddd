//! Sharing device memory and events with other processes of the same VM: CUDA's IPC handles
//! (cuIpcGetMemHandle / cuIpcOpenMemHandle, cuIpcGetEventHandle / cuIpcOpenEventHandle) and
//! shareable VMM handles (cuMemExportToShareableHandle / cuMemImportFromShareableHandle with
//! POSIX file descriptors), as PyTorch's torch.multiprocessing and its expandable segments use
//! them. The mediator keeps what each handle's token names, per VM (vgpu_uapi::share): a
//! handle opens nothing in another VM.

use super::*;
use crate::state;
use std::ffi::{c_int, c_uint};
use vgpu_uapi::cuda::vmm::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
use vgpu_uapi::proto::Op;
use vgpu_uapi::share::{self, IpcHandle, KIND_EVENT, KIND_MEMORY, KIND_PHYSICAL, TOKEN_LEN};
use vgpu_uapi::wire::Reader;

const CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS: c_uint = 0x1;

/// The token the mediator gives for `what` of `kind`. No current context is needed (what is
/// exported names its device): PyTorch exports from its pickling thread.
fn export(kind: u32, what: u64) -> Result<[u8; TOKEN_LEN], CUresult> {
    let d = state::driver()?;
    let reply = d.call(Op::ShareExport, &[&kind.to_le_bytes(), &what.to_le_bytes()])?;
    reply.get(..TOKEN_LEN).and_then(|t| t.try_into().ok()).ok_or(CUDA_ERROR_UNKNOWN)
}

/// Opens a token of `kind`: (what, size).
fn import(kind: u32, token: &[u8; TOKEN_LEN]) -> Result<(u64, u64), CUresult> {
    let d = state::driver()?;
    let reply = d.call(Op::ShareImport, &[&kind.to_le_bytes(), token])?;
    let mut r = Reader::new(&reply);
    Ok((r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?, r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?))
}

fn put_handle(out: *mut IpcHandle, kind: u32, token: &[u8; TOKEN_LEN]) -> Result<(), CUresult> {
    put(out, IpcHandle { data: share::encode(kind, token) })
}

#[no_mangle]
pub unsafe extern "C" fn cuIpcGetMemHandle(handle: *mut IpcHandle, dptr: CUdeviceptr) -> CUresult {
    guard("cuIpcGetMemHandle", || {
        // Stream-ordered allocations share through pools made shareable, which vgpu does not
        // offer; CUDA refuses cuIpcGetMemHandle for them too.
        if handle.is_null() || super::pool::reserved_by_a_pool(dptr) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put_handle(handle, KIND_MEMORY, &export(KIND_MEMORY, dptr)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuIpcOpenMemHandle_v2(dptr: *mut CUdeviceptr, handle: IpcHandle, flags: c_uint) -> CUresult {
    guard("cuIpcOpenMemHandle", || {
        if dptr.is_null() || flags & !CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // Bytes that are no vgpu handle are no handle of this driver.
        let token = share::decode(KIND_MEMORY, &handle.data).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        put(dptr, import(KIND_MEMORY, &token)?.0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuIpcOpenMemHandle(dptr: *mut CUdeviceptr, handle: IpcHandle, flags: c_uint) -> CUresult {
    cuIpcOpenMemHandle_v2(dptr, handle, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cuIpcCloseMemHandle(dptr: CUdeviceptr) -> CUresult {
    guard("cuIpcCloseMemHandle", || state::driver()?.call(Op::ShareClose, &[&dptr.to_le_bytes()]).map(drop))
}

#[no_mangle]
pub unsafe extern "C" fn cuIpcGetEventHandle(handle: *mut IpcHandle, event: Handle) -> CUresult {
    guard("cuIpcGetEventHandle", || {
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put_handle(handle, KIND_EVENT, &export(KIND_EVENT, handle_of(event))?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuIpcOpenEventHandle(event: *mut Handle, handle: IpcHandle) -> CUresult {
    guard("cuIpcOpenEventHandle", || {
        if event.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let token = share::decode(KIND_EVENT, &handle.data).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let (e, _) = import(KIND_EVENT, &token)?;
        put(event, to_handle(e))?;
        state::driver()?.events.lock().unwrap_or_else(|e| e.into_inner()).insert(e);
        Ok(())
    })
}

/// A sealed memfd holding the handle's bytes: a file descriptor the application may pass to
/// another process like NVIDIA's, and that names nothing outside this VM.
fn handle_fd(kind: u32, token: &[u8; TOKEN_LEN]) -> Result<c_int, CUresult> {
    let bytes = share::encode(kind, token);
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is ours until returned.
    let fd = unsafe { libc::memfd_create(c"vgpu-shareable-handle".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(CUDA_ERROR_OPERATING_SYSTEM);
    }
    // SAFETY: pwrite of `bytes` (a live local) to the descriptor opened above; fcntl sets seals
    // on it. On failure the descriptor is closed and not returned.
    let ok = unsafe {
        libc::pwrite(fd, bytes.as_ptr().cast(), share::ENCODED_LEN, 0) == share::ENCODED_LEN as isize
            && libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL) == 0
    };
    if !ok {
        // SAFETY: closing the descriptor opened above, which nothing else holds.
        unsafe { libc::close(fd) };
        return Err(CUDA_ERROR_OPERATING_SYSTEM);
    }
    Ok(fd)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemExportToShareableHandle(shareable: *mut c_void, handle: u64, ty: c_int, flags: u64) -> CUresult {
    guard("cuMemExportToShareableHandle", || {
        if shareable.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if ty != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            // Fabric handles (multi-node NVLink) and Windows handles.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let fd = handle_fd(KIND_PHYSICAL, &export(KIND_PHYSICAL, handle)?)?;
        put(shareable.cast::<c_int>(), fd)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemImportFromShareableHandle(handle: *mut u64, os_handle: *mut c_void, ty: c_int) -> CUresult {
    guard("cuMemImportFromShareableHandle", || {
        if handle.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if ty != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        // The descriptor travels in the pointer, as in CUDA: (void *)(uintptr_t)fd.
        let fd = c_int::try_from(os_handle as usize).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let mut bytes = [0u8; share::ENCODED_LEN];
        // SAFETY: pread into a live local buffer of its length, from a descriptor number the
        // application gave (a bad one fails with EBADF, which becomes INVALID_VALUE).
        let n = unsafe { libc::pread(fd, bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != bytes.len() as isize {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let token = share::decode(KIND_PHYSICAL, &bytes).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(handle, import(KIND_PHYSICAL, &token)?.0)
    })
}
