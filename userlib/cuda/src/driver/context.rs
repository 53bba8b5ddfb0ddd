//! Contexts: primary contexts, the per-thread context stack, limits.

use super::*;
use crate::state::{self, driver};
use std::ffi::{c_int, c_void};
use std::sync::atomic::AtomicBool;

fn ctx_handle(h: usize) -> Handle {
    h as Handle
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRetain", || {
        let d = driver()?;
        d.device(dev)?;
        let mut c = d.contexts();
        let h = c.primary(dev);
        c.get_mut(h)?.refcount += 1;
        put(pctx, ctx_handle(h))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRelease", || {
        let d = driver()?;
        d.device(dev)?;
        let mut c = d.contexts();
        let h = c.primary_if_exists(dev).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        let ctx = c.get_mut(h)?;
        ctx.refcount = ctx.refcount.checked_sub(1).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    cuDevicePrimaryCtxRelease_v2(dev)
}

/// cuDevicePrimaryCtxReset: "explicitly destroys and cleans up all resources associated with the
/// current device in the current process". Every context here shares the process's one mediator
/// session, so that session is reset (device memory, streams, events, VMM freed; a sticky error
/// cleared; modules kept, see DeviceSession::reset in host/src/backend.rs) and libcuda forgets
/// what it kept about what was freed. The primary context stays retained (a reset does not
/// release it) and keeps its handle and flags.
/// Not freed, unlike CUDA: page-locked host memory (cuMemAllocHost) stays mapped and valid until
/// cuMemFreeHost or exit, so that a late access cannot fault.
fn reset_device(d: &'static state::Driver, dev: CUdevice) -> Result<(), CUresult> {
    // Queued work first (its error, if any, is what the reset clears).
    let _ = d.call(vgpu_uapi::proto::Op::Synchronize, &[]);
    super::mirror::reset(d);
    d.call(vgpu_uapi::proto::Op::SessionReset, &[])?;
    d.events.lock().unwrap_or_else(|e| e.into_inner()).clear();
    super::stream::forget_all_streams();
    super::graph::forget_all_graphs();
    super::pool::forget_all_pools();
    super::array::forget_all_arrays();
    if let Some(h) = d.contexts().primary_if_exists(dev) {
        crate::dark_api::cls_forget_context(h);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxReset", || {
        let d = driver()?;
        d.device(dev)?;
        reset_device(d, dev)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    cuDevicePrimaryCtxReset_v2(dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut u32, active: *mut c_int) -> CUresult {
    guard("cuDevicePrimaryCtxGetState", || {
        let d = driver()?;
        d.device(dev)?;
        let c = d.contexts();
        let (f, a) = match c.primary_if_exists(dev).and_then(|h| c.get(h).ok()) {
            Some(ctx) => (ctx.flags, ctx.refcount > 0),
            None => (c.primary_flags.get(&dev).copied().unwrap_or(0), false),
        };
        put(flags, f)?;
        put(active, a as c_int)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: u32) -> CUresult {
    guard("cuDevicePrimaryCtxSetFlags", || {
        let d = driver()?;
        d.device(dev)?;
        // CU_CTX_SCHED_MASK | CU_CTX_MAP_HOST | CU_CTX_LMEM_RESIZE_TO_MAX | CU_CTX_SYNC_MEMOPS
        if flags & !0x9f != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut c = d.contexts();
        c.primary_flags.insert(dev, flags);
        if let Some(h) = c.primary_if_exists(dev) {
            c.get_mut(h)?.flags = flags;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: u32) -> CUresult {
    cuDevicePrimaryCtxSetFlags_v2(dev, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(pctx: *mut Handle, flags: u32, dev: CUdevice) -> CUresult {
    guard("cuCtxCreate", || {
        let d = driver()?;
        d.device(dev)?;
        let h = d.contexts().create(dev, flags, false);
        state::push_ctx(h);
        put(pctx, ctx_handle(h))
    })
}

/// `cuCtxCreate_v3(pctx, paramsArray, numParams, flags, dev)`: without execution-affinity
/// parameters (what Ollama's discovery passes) it is cuCtxCreate_v2; SM-count affinity (green
/// contexts' predecessor) is not supported.
#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v3(pctx: *mut Handle, params: *const c_void, num_params: c_int, flags: u32, dev: CUdevice) -> CUresult {
    if num_params < 0 || (num_params > 0 && params.is_null()) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if num_params > 0 {
        static LOGGED: AtomicBool = AtomicBool::new(false);
        return not_supported("cuCtxCreate_v3 with execution affinity parameters", &LOGGED);
    }
    cuCtxCreate_v2(pctx, flags, dev)
}

/// CUctxCreateParams (CUDA 12.5).
#[repr(C)]
pub struct CtxCreateParams {
    exec_affinity_params: *const c_void,
    num_exec_affinity_params: c_int,
    cig_params: *const c_void,
}

/// `cuCtxCreate_v4(pctx, ctxCreateParams, flags, dev)`: without affinity or CIG parameters it
/// is cuCtxCreate_v2.
#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v4(pctx: *mut Handle, params: *const CtxCreateParams, flags: u32, dev: CUdevice) -> CUresult {
    if !params.is_null() {
        // SAFETY: a non-null pointer to the caller's CUctxCreateParams (API contract).
        let p = unsafe { &*params };
        if p.num_exec_affinity_params != 0 || !p.exec_affinity_params.is_null() || !p.cig_params.is_null() {
            static LOGGED: AtomicBool = AtomicBool::new(false);
            return not_supported("cuCtxCreate_v4 with execution affinity or CIG parameters", &LOGGED);
        }
    }
    cuCtxCreate_v2(pctx, flags, dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CUresult {
    guard("cuCtxDestroy", || {
        let d = driver()?;
        let mut c = d.contexts();
        let h = ctx as usize;
        if c.get(h)?.primary {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        c.table.remove(&h);
        state::forget_ctx(h);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    guard("cuCtxGetCurrent", || {
        driver()?;
        put(pctx, state::current_ctx().map_or(std::ptr::null_mut(), ctx_handle))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    guard("cuCtxSetCurrent", || {
        let d = driver()?;
        if ctx.is_null() {
            state::set_current_ctx(None);
            return Ok(());
        }
        d.contexts().get(ctx as usize)?;
        state::set_current_ctx(Some(ctx as usize));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: Handle) -> CUresult {
    guard("cuCtxPushCurrent", || {
        driver()?.contexts().get(ctx as usize)?;
        state::push_ctx(ctx as usize);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut Handle) -> CUresult {
    guard("cuCtxPopCurrent", || {
        driver()?;
        let h = state::pop_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        if !pctx.is_null() {
            put(pctx, ctx_handle(h))?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    guard("cuCtxGetDevice", || put(dev, state::current_device()?.1))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice_v2(dev: *mut CUdevice, ctx: Handle) -> CUresult {
    guard("cuCtxGetDevice_v2", || {
        if ctx.is_null() {
            return put(dev, state::current_device()?.1);
        }
        let device = driver()?.contexts().get(ctx as usize)?.device;
        put(dev, device)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard("cuCtxSynchronize", || {
        let (d, _) = state::current_device()?;
        d.call(vgpu_uapi::proto::Op::Synchronize, &[])?;
        super::pool::synchronized(None);
        Ok(())
    })
}

/// CUDA 13: synchronize a given context (NULL: the current one). All of a client's work is in
/// one mediator session, so this waits for all of it.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize_v2(ctx: Handle) -> CUresult {
    guard("cuCtxSynchronize_v2", || {
        let d = driver()?;
        if ctx.is_null() {
            state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        } else {
            d.contexts().get(ctx as usize)?;
        }
        d.call(vgpu_uapi::proto::Op::Synchronize, &[])?;
        super::pool::synchronized(None);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut u32) -> CUresult {
    guard("cuCtxGetFlags", || {
        let d = driver()?;
        let h = state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        let f = d.contexts().get(h)?.flags;
        put(flags, f)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetApiVersion(ctx: Handle, version: *mut u32) -> CUresult {
    guard("cuCtxGetApiVersion", || {
        let d = driver()?;
        let h = if ctx.is_null() { state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)? } else { ctx as usize };
        d.contexts().get(h)?;
        put(version, 3020)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetId(ctx: Handle, id: *mut u64) -> CUresult {
    guard("cuCtxGetId", || {
        let d = driver()?;
        let h = if ctx.is_null() { state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)? } else { ctx as usize };
        d.contexts().get(h)?;
        put(id, h as u64)
    })
}

const CUDA_ERROR_UNSUPPORTED_LIMIT: CUresult = 215;

/// CUlimit defaults of a Hopper GPU. CIG_ENABLED (8) must read 0: cuBLAS asks.
fn limit_default(limit: u32) -> Option<usize> {
    Some(match limit {
        0 => 1024,        // STACK_SIZE
        1 => 1 << 20,     // PRINTF_FIFO_SIZE
        2 => 8 << 20,     // MALLOC_HEAP_SIZE
        3 => 2,           // DEV_RUNTIME_SYNC_DEPTH
        4 => 2048,        // DEV_RUNTIME_PENDING_LAUNCH_COUNT
        5 => 64,          // MAX_L2_FETCH_GRANULARITY
        6 => 0,           // PERSISTING_L2_CACHE_SIZE
        8 => 0,           // CIG_ENABLED
        _ => return None,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetLimit(value: *mut usize, limit: u32) -> CUresult {
    guard("cuCtxGetLimit", || {
        let d = driver()?;
        let h = state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        let default = limit_default(limit).ok_or(CUDA_ERROR_UNSUPPORTED_LIMIT)?;
        let v = d.contexts().get(h)?.limits.get(&limit).copied().unwrap_or(default);
        put(value, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetLimit(limit: u32, value: usize) -> CUresult {
    guard("cuCtxSetLimit", || {
        let d = driver()?;
        let h = state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        limit_default(limit).ok_or(CUDA_ERROR_UNSUPPORTED_LIMIT)?;
        if limit == 8 && value != 0 {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        d.contexts().get_mut(h)?.limits.insert(limit, value);
        Ok(())
    })
}

/// Cache configuration is a preference CUDA may ignore; vgpu records nothing and says "no preference".
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCacheConfig(config: *mut c_int) -> CUresult {
    guard("cuCtxGetCacheConfig", || {
        state::current_device()?;
        put(config, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCacheConfig(config: c_int) -> CUresult {
    guard("cuCtxSetCacheConfig", || {
        state::current_device()?;
        if !(0..=3).contains(&config) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) -> CUresult {
    guard("cuCtxGetStreamPriorityRange", || {
        state::current_device()?;
        if !least.is_null() {
            put(least, super::stream::LEAST_PRIORITY)?;
        }
        if !greatest.is_null() {
            put(greatest, super::stream::GREATEST_PRIORITY)?;
        }
        Ok(())
    })
}

// The unsuffixed (CUDA < 4.0) names of the stack calls have the same signatures; cuBLASLt still
// looks them up with dlsym.
#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent(ctx: Handle) -> CUresult {
    cuCtxPushCurrent_v2(ctx)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent(pctx: *mut Handle) -> CUresult {
    cuCtxPopCurrent_v2(pctx)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy(ctx: Handle) -> CUresult {
    cuCtxDestroy_v2(ctx)
}
