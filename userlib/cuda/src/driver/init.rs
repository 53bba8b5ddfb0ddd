//! Initialization, versions, errors and entry-point lookup.

use super::*;
use crate::state;
use std::ffi::{c_char, c_int};

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: u32) -> CUresult {
    guard("cuInit", || {
        logs::start();
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        match state::init() {
            CUDA_SUCCESS => Ok(()),
            e => Err(e),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    guard("cuDriverGetVersion", || put(version, vgpu_uapi::CUDA_DRIVER_VERSION))
}

fn error_text(code: CUresult, which: usize, out: *mut *const c_char) -> Result<(), CUresult> {
    // Static NUL-terminated copies, since the API hands out `const char*` that live forever.
    static NAMES: std::sync::OnceLock<std::collections::HashMap<(u32, usize), std::ffi::CString>> =
        std::sync::OnceLock::new();
    let table = NAMES.get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        for code in 0..1000u32 {
            if let Some((n, s)) = error_name(code) {
                m.insert((code, 0), std::ffi::CString::new(n).unwrap_or_default());
                m.insert((code, 1), std::ffi::CString::new(s).unwrap_or_default());
            }
        }
        m
    });
    match table.get(&(code, which)) {
        Some(s) => put(out, s.as_ptr()),
        None => {
            put(out, std::ptr::null())?;
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, name: *mut *const c_char) -> CUresult {
    guard("cuGetErrorName", || error_text(error, 0, name))
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, text: *mut *const c_char) -> CUresult {
    guard("cuGetErrorString", || error_text(error, 1, text))
}

/// CUdriverProcAddressQueryResult
const SYMBOL_SUCCESS: c_int = 0;
const SYMBOL_NOT_FOUND: c_int = 1;
const VERSION_NOT_SUFFICIENT: c_int = 2;
const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// Resolves `name` as cuGetProcAddress does: the newest variant introduced at or before
/// `version`, the per-thread-default-stream one when asked for and one exists.
pub fn resolve_proc(name: &str, version: c_int, flags: u64) -> Result<*mut c_void, c_int> {
    let want_pt = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    let rows = || PROCS.iter().filter(|r| r.0 == name);
    if rows().next().is_none() {
        return Err(SYMBOL_NOT_FOUND);
    }
    let has_pt = rows().any(|r| r.2 != b'-');
    let variant_ok = |r: &&(&str, i32, u8, &str)| if want_pt && has_pt { r.2 != b'-' } else { r.2 == b'-' };
    let best = rows().filter(variant_ok).filter(|r| r.1 <= version).max_by_key(|r| r.1);
    match best {
        Some(r) => symbol_address(r.3).ok_or(SYMBOL_NOT_FOUND),
        None => Err(VERSION_NOT_SUFFICIENT),
    }
}

fn get_proc(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) -> CUresult {
    guard("cuGetProcAddress", || {
        if pfn.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(pfn, std::ptr::null_mut())?;
        let name = c_str(symbol)?;
        let r = resolve_proc(name, version, flags);
        if !status.is_null() {
            put(status, r.err().unwrap_or(SYMBOL_SUCCESS))?;
        }
        let p = r.map_err(|_| CUDA_ERROR_NOT_FOUND)?;
        vlog!(crate::log::DEBUG, "cuGetProcAddress({name}, {version}, {flags}) -> {p:?}");
        put(pfn, p)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) -> CUresult {
    get_proc(symbol, pfn, version, flags, std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    get_proc(symbol, pfn, version, flags, status)
}

/// CU_MODULE_LAZY_LOADING: modules are sent to the mediator when loaded, functions resolved on demand.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetLoadingMode(mode: *mut c_int) -> CUresult {
    guard("cuModuleGetLoadingMode", || put(mode, 2))
}
