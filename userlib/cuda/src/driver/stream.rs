//! Streams and events: handles live in the mediator, which orders the work.

use super::*;
use crate::state;
use std::ffi::{c_int, c_uint};
use vgpu_uapi::proto::Op;
use vgpu_uapi::wire::Reader;

/// Hands the application the handle a create request returned; returns it too.
fn new_handle(reply: Vec<u8>, out: *mut Handle) -> Result<u64, CUresult> {
    let h = Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)?;
    put(out, to_handle(h))?;
    Ok(h)
}

fn stream_create(out: *mut Handle, flags: c_uint, priority: c_int) -> Result<(), CUresult> {
    if out.is_null() || flags & !1 != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (d, _) = state::current_device()?;
    let mut args = flags.to_le_bytes().to_vec();
    args.extend_from_slice(&priority.clamp(-5, 0).to_le_bytes());
    new_handle(d.call(Op::StreamCreate, &[&args])?, out).map(drop)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(out: *mut Handle, flags: c_uint) -> CUresult {
    guard("cuStreamCreate", || stream_create(out, flags, 0))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(out: *mut Handle, flags: c_uint, priority: c_int) -> CUresult {
    guard("cuStreamCreateWithPriority", || stream_create(out, flags, priority))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: Handle) -> CUresult {
    guard("cuStreamDestroy", || call_u64s(Op::StreamDestroy, &[handle_of(s)]).map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(s: Handle) -> CUresult {
    guard("cuStreamSynchronize", || {
        super::graph::forbid_while_capturing(s)?;
        call_u64s(Op::StreamSynchronize, &[handle_of(s)])?;
        super::pool::synchronized(Some(s));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize_ptsz(s: Handle) -> CUresult {
    cuStreamSynchronize(s)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(s: Handle) -> CUresult {
    guard("cuStreamQuery", || {
        super::graph::forbid_while_capturing(s)?;
        call_u64s(Op::StreamQuery, &[handle_of(s)]).map(|_| ())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery_ptsz(s: Handle) -> CUresult {
    cuStreamQuery(s)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(s: Handle, e: Handle, flags: c_uint) -> CUresult {
    guard("cuStreamWaitEvent", || {
        if flags & !1 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if super::graph::wait_event(s, e)? {
            return Ok(());
        }
        call_u64s(Op::StreamWaitEvent, &[handle_of(s), handle_of(e)]).map(|_| ())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent_ptsz(s: Handle, e: Handle, flags: c_uint) -> CUresult {
    cuStreamWaitEvent(s, e, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(out: *mut Handle, flags: c_uint) -> CUresult {
    guard("cuEventCreate", || {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (d, _) = state::current_device()?;
        let h = new_handle(d.call(Op::EventCreate, &[&flags.to_le_bytes()])?, out)?;
        d.events.lock().unwrap_or_else(|e| e.into_inner()).insert(h);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: Handle) -> CUresult {
    guard("cuEventDestroy", || {
        let r = call_u64s(Op::EventDestroy, &[handle_of(e)]).map(|_| ());
        if r.is_ok() {
            state::driver()?.events.lock().unwrap_or_else(|e| e.into_inner()).remove(&handle_of(e));
        }
        r
    })
}

/// Records `e` on `s`: an event of ours is queued without waiting (its stream checked by the
/// mediator, a failure reported by a later call, as for launches).
fn record(e: Handle, s: Handle) -> Result<(), CUresult> {
    if super::graph::record_event(e, s)? {
        return Ok(());
    }
    let (d, _) = state::current_device()?;
    if !d.events.lock().unwrap_or_else(|e| e.into_inner()).contains(&handle_of(e)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    d.call_async(Op::EventRecord, &[&u64s(&[handle_of(e), handle_of(s)])]).map(drop)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: Handle, s: Handle) -> CUresult {
    guard("cuEventRecord", || record(e, s))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord_ptsz(e: Handle, s: Handle) -> CUresult {
    cuEventRecord(e, s)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(e: Handle, s: Handle, flags: c_uint) -> CUresult {
    guard("cuEventRecordWithFlags", || {
        // CU_EVENT_RECORD_EXTERNAL (1) only matters inside graph capture, where it would need an
        // event-record node, which is not supported.
        if flags != 0 {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        record(e, s)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags_ptsz(e: Handle, s: Handle, flags: c_uint) -> CUresult {
    cuEventRecordWithFlags(e, s, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(e: Handle) -> CUresult {
    guard("cuEventSynchronize", || {
        super::graph::check_event_not_captured(e)?;
        call_u64s(Op::EventSynchronize, &[handle_of(e)]).map(|_| ())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(e: Handle) -> CUresult {
    guard("cuEventQuery", || {
        super::graph::check_event_not_captured(e)?;
        call_u64s(Op::EventQuery, &[handle_of(e)]).map(|_| ())
    })
}

fn elapsed(ms: *mut f32, a: Handle, b: Handle) -> Result<(), CUresult> {
    let reply = call_u64s(Op::EventElapsedTime, &[handle_of(a), handle_of(b)])?;
    let bits = Reader::new(&reply).u32().map_err(|_| CUDA_ERROR_UNKNOWN)?;
    put(ms, f32::from_bits(bits))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    guard("cuEventElapsedTime", || elapsed(ms, a, b))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    guard("cuEventElapsedTime_v2", || elapsed(ms, a, b))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCtx(s: Handle, pctx: *mut Handle) -> CUresult {
    guard("cuStreamGetCtx", || {
        let _ = s;
        let h = state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        put(pctx, h as Handle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy(s: Handle) -> CUresult {
    cuStreamDestroy_v2(s)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy(e: Handle) -> CUresult {
    cuEventDestroy_v2(e)
}

/// The stream is one the mediator knows (a busy stream is valid too).
pub(crate) fn check_stream(s: Handle) -> Result<(), CUresult> {
    match call_u64s(Op::StreamQuery, &[handle_of(s)]) {
        Ok(_) | Err(CUDA_ERROR_NOT_READY) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Frameworks (CuPy, PyTorch) ask before every copy whether the stream is capturing.
fn capture_status(s: Handle, status: *mut c_int) -> Result<(), CUresult> {
    super::graph::capture_info(s, status, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(s: Handle, status: *mut c_int) -> CUresult {
    guard("cuStreamIsCapturing", || capture_status(s, status))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing_ptsz(s: Handle, status: *mut c_int) -> CUresult {
    cuStreamIsCapturing(s, status)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo(s: Handle, status: *mut c_int, id: *mut u64) -> CUresult {
    guard("cuStreamGetCaptureInfo", || super::graph::capture_info(s, status, id, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_ptsz(s: Handle, status: *mut c_int, id: *mut u64) -> CUresult {
    cuStreamGetCaptureInfo(s, status, id)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v2(s: Handle, status: *mut c_int, id: *mut u64, graph: *mut Handle, deps: *mut *const Handle, num_deps: *mut usize) -> CUresult {
    guard("cuStreamGetCaptureInfo_v2", || super::graph::capture_info(s, status, id, graph, deps, num_deps))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v2_ptsz(s: Handle, status: *mut c_int, id: *mut u64, graph: *mut Handle, deps: *mut *const Handle, num_deps: *mut usize) -> CUresult {
    cuStreamGetCaptureInfo_v2(s, status, id, graph, deps, num_deps)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v3(s: Handle, status: *mut c_int, id: *mut u64, graph: *mut Handle, deps: *mut *const Handle, edges: *mut *const u8, num_deps: *mut usize) -> CUresult {
    guard("cuStreamGetCaptureInfo_v3", || {
        // Edge data: none (all edges are default edges), which CUDA signals with NULL.
        if !edges.is_null() {
            put(edges, std::ptr::null())?;
        }
        super::graph::capture_info(s, status, id, graph, deps, num_deps)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v3_ptsz(s: Handle, status: *mut c_int, id: *mut u64, graph: *mut Handle, deps: *mut *const Handle, edges: *mut *const u8, num_deps: *mut usize) -> CUresult {
    cuStreamGetCaptureInfo_v3(s, status, id, graph, deps, edges, num_deps)
}
