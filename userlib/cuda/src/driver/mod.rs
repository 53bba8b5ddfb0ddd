//! The exported CUDA Driver API. Each submodule implements one area; `driver_api.rs` (generated
//! by build.rs from driver_api.txt) adds a NOT_SUPPORTED stub for every other entry point and the
//! table cuGetProcAddress resolves names from.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use crate::vlog;
use std::ffi::c_void;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use vgpu_uapi::cuda::*;

/// `_ptds`/`_ptsz` entry points that behave as their base entry point: rows of
/// `cuX_ptds => cuX(args);`. (Copies and memsets complete before they return, so the per-thread
/// and the legacy default stream are alike for them.)
macro_rules! per_thread {
    ($($pt:ident => $base:ident($($a:ident: $t:ty),*);)*) => {
        $(
            #[no_mangle]
            pub unsafe extern "C" fn $pt($($a: $t),*) -> CUresult {
                $base($($a),*)
            }
        )*
    };
}

mod array;
mod context;
mod device;
mod graph;
mod init;
mod ipc;
mod launch;
pub(crate) mod link;
pub(crate) mod logs;
mod memory;
pub(crate) mod mirror;
pub(crate) mod module;
mod ptx_twin;
pub(crate) mod pool;
mod stream;
mod vmm;

pub use array::*;
pub use context::*;
pub use device::*;
pub use graph::*;
pub use init::*;
pub use ipc::*;
pub use launch::*;
pub use link::*;
pub use logs::*;
pub use memory::*;
pub use mirror::*;
pub use module::*;
pub use stream::*;
pub use pool::*;
pub use vmm::*;
pub use crate::dark_api::cuGetExportTable;

/// Writes what kernels printed to the application's stdout (see launch.rs).
pub(crate) fn launch_output(text: &[u8]) {
    launch::write_device_printf(text);
}

pub type CUresult = u32;
pub type CUdevice = i32;
pub type CUdeviceptr = u64;
pub type Handle = *mut c_void;

include!(concat!(env!("OUT_DIR"), "/driver_api.rs"));

/// Runs an entry point's body: converts its Result into a CUresult and stops any panic at the
/// `extern "C"` boundary (it becomes CUDA_ERROR_UNKNOWN).
pub(crate) fn guard(name: &str, f: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            vlog!(crate::log::TRACE, "{name} -> 0");
            CUDA_SUCCESS
        }
        Ok(Err(e)) => {
            vlog!(crate::log::DEBUG, "{name} -> {e}");
            e
        }
        Err(_) => {
            vlog!(crate::log::ERROR, "internal error (panic) in {name}");
            CUDA_ERROR_UNKNOWN
        }
    }
}

/// What every unimplemented entry point does: fail honestly, and say so once.
pub(crate) fn not_supported(name: &str, logged: &AtomicBool) -> CUresult {
    if !logged.swap(true, Ordering::Relaxed) {
        vlog!(crate::log::WARN, "{name} is not supported by vgpu yet (returning CUDA_ERROR_NOT_SUPPORTED)");
    }
    CUDA_ERROR_NOT_SUPPORTED
}

/// Request arguments as the wire carries them: little-endian u64s.
pub(crate) fn u64s(args: &[u64]) -> Vec<u8> {
    args.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A request of u64 arguments to the current device's mediator session, waited for.
pub(crate) fn call_u64s(op: vgpu_uapi::proto::Op, args: &[u64]) -> Result<Vec<u8>, CUresult> {
    let (d, _) = crate::state::current_device()?;
    d.call(op, &[&u64s(args)])
}

/// Writes `v` through an application's out-pointer, rejecting NULL.
pub(crate) fn put<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null; the Driver API contract makes the caller pass a valid, writable `T*`.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Handles issued by the mediator travel to the application as pointer-typed CUDA handles.
pub(crate) fn handle_of(h: Handle) -> u64 {
    h as usize as u64
}

pub(crate) fn to_handle(v: u64) -> Handle {
    v as usize as Handle
}

/// A NUL-terminated string argument.
pub(crate) fn c_str<'a>(p: *const std::ffi::c_char) -> Result<&'a str, CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null; the caller passes a NUL-terminated string that outlives this call.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_str().map_err(|_| CUDA_ERROR_INVALID_VALUE)
}
