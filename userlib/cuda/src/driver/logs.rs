//! The driver's error log (cuLogsRegisterCallback, cuLogsCurrent, cuLogsDumpToMemory,
//! cuLogsDumpToFile): vgpu's own errors and warnings, the messages it also prints as
//! "vgpu: ..." (whatever VGPU_LOG says), so that an application that reads the driver's log
//! (PyTorch registers a callback) learns why a call failed. Kept as CUDA documents: a buffer of
//! at most 25,600 bytes, oldest messages overwritten, iterators that advance as they are read.

use super::*;
use std::collections::VecDeque;
use std::ffi::{c_char, c_uint, CStr};
use std::sync::Mutex;

/// CUlogsCallback: (userData, CUlogLevel, message, its length).
type Callback = unsafe extern "C" fn(*mut c_void, i32, *mut c_char, usize);
const CU_LOG_LEVEL_ERROR: i32 = 0;
const CU_LOG_LEVEL_WARNING: i32 = 1;
/// The driver's buffer size (cuda.h).
const LOG_BYTES: usize = 25_600;

#[derive(Default)]
struct Logs {
    /// (sequence number, message), oldest first; `bytes` is their length with a newline each.
    entries: VecDeque<(u32, String)>,
    bytes: usize,
    next: u32,
    callbacks: Vec<(usize, Callback, usize)>,
    next_callback: usize,
}

static LOGS: Mutex<Logs> = Mutex::new(Logs { entries: VecDeque::new(), bytes: 0, next: 0, callbacks: Vec::new(), next_callback: 0 });

fn logs() -> std::sync::MutexGuard<'static, Logs> {
    LOGS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts collecting (from the first cuInit or cuLogs* call on).
pub(crate) fn start() {
    crate::log::set_sink(record);
}

/// A message of vgpu's at `level` (crate::log's ERROR or WARN): kept, and given to every
/// registered callback (outside the lock: a callback may call the driver, which may log).
fn record(level: u8, msg: &str) {
    let callbacks = {
        let mut l = logs();
        let seq = l.next;
        l.next = l.next.wrapping_add(1);
        l.bytes += msg.len() + 1;
        l.entries.push_back((seq, msg.to_string()));
        while l.bytes > LOG_BYTES {
            match l.entries.pop_front() {
                Some((_, m)) => l.bytes -= m.len() + 1,
                None => break,
            }
        }
        l.callbacks.clone()
    };
    let level = if level <= crate::log::ERROR { CU_LOG_LEVEL_ERROR } else { CU_LOG_LEVEL_WARNING };
    let mut text: Vec<u8> = msg.bytes().filter(|&b| b != 0).collect();
    let len = text.len();
    text.push(0);
    for (_, f, data) in callbacks {
        // SAFETY: a callback the application registered, with its user data, and a
        // NUL-terminated message of `len` bytes that lives across the call.
        unsafe { f(data as *mut c_void, level, text.as_mut_ptr().cast(), len) };
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuLogsRegisterCallback(f: Option<Callback>, data: *mut c_void, out: *mut Handle) -> CUresult {
    guard("cuLogsRegisterCallback", || {
        start();
        let f = f.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut l = logs();
        l.next_callback += 1;
        let id = l.next_callback;
        l.callbacks.push((id, f, data as usize));
        drop(l);
        if !out.is_null() {
            // The handle is the registration's number (never 0): an opaque pointer to the caller.
            put(out, id as Handle)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLogsUnregisterCallback(callback: Handle) -> CUresult {
    guard("cuLogsUnregisterCallback", || {
        let mut l = logs();
        let n = l.callbacks.len();
        l.callbacks.retain(|&(id, _, _)| id != callback as usize);
        if l.callbacks.len() == n {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLogsCurrent(iterator: *mut c_uint, flags: c_uint) -> CUresult {
    guard("cuLogsCurrent", || {
        start();
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(iterator, logs().next)
    })
}

/// The messages from `*iterator` on (all kept if NULL), each with a newline, the oldest first,
/// with a first line saying so if some were overwritten; the iterator moves past them.
fn take_from(iterator: *mut c_uint) -> Result<Vec<String>, CUresult> {
    let l = logs();
    let from = if iterator.is_null() {
        None
    } else {
        // SAFETY: non-null pointer to the application's iterator (API contract).
        Some(unsafe { *iterator })
    };
    let mut out = Vec::new();
    if let (Some(from), Some(&(oldest, _))) = (from, l.entries.front()) {
        if from.wrapping_sub(oldest) > u32::MAX / 2 {
            out.push("[vgpu: earlier log messages were overwritten]\n".to_string());
        }
    }
    let newer = |seq: u32| from.is_none_or(|f| seq.wrapping_sub(f) <= u32::MAX / 2);
    out.extend(l.entries.iter().filter(|(seq, _)| newer(*seq)).map(|(_, m)| format!("{m}\n")));
    if !iterator.is_null() {
        put(iterator, l.next)?;
    }
    Ok(out)
}

#[no_mangle]
pub unsafe extern "C" fn cuLogsDumpToMemory(iterator: *mut c_uint, buffer: *mut c_char, size: *mut usize, flags: c_uint) -> CUresult {
    guard("cuLogsDumpToMemory", || {
        start();
        if buffer.is_null() || size.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null pointer to the buffer's size (API contract).
        let room = unsafe { *size };
        let lines = take_from(iterator)?;
        if lines.is_empty() {
            put(size, 0)?;
            if room > 0 {
                // SAFETY: the buffer has at least one byte.
                unsafe { *buffer = 0 };
            }
            return Ok(());
        }
        // The newest messages that fit (with the NUL), under a note if some did not.
        const CUT: &str = "[vgpu: older log messages did not fit in the buffer]\n";
        let mut kept: Vec<&String> = Vec::new();
        let mut used = 0;
        for line in lines.iter().rev() {
            let need = used + line.len() + if kept.len() + 1 < lines.len() { CUT.len() } else { 0 };
            if need + 1 > room {
                break;
            }
            used += line.len();
            kept.push(line);
        }
        if kept.is_empty() {
            put(size, 0)?;
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut text = String::new();
        if kept.len() < lines.len() {
            text.push_str(CUT);
        }
        for line in kept.iter().rev() {
            text.push_str(line);
        }
        // SAFETY: `text.len() + 1 <= room` (checked above), the buffer holds `room` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), text.len());
            *buffer.add(text.len()) = 0;
        }
        put(size, text.len())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLogsDumpToFile(iterator: *mut c_uint, path: *const c_char, flags: c_uint) -> CUresult {
    guard("cuLogsDumpToFile", || {
        start();
        if path.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null NUL-terminated path (API contract).
        let path = unsafe { CStr::from_ptr(path) }.to_str().map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let text = take_from(iterator)?.concat();
        std::fs::write(path, text).map_err(|_| CUDA_ERROR_INVALID_VALUE)
    })
}
