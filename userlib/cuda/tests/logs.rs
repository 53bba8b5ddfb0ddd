//! The driver's error log (cuLogs*): vgpu's errors and warnings reach a registered callback and
//! the buffer that cuLogsDumpToMemory / cuLogsDumpToFile read, with CUDA's iterator semantics.

use cuda::driver::{cuLogsCurrent, cuLogsDumpToFile, cuLogsDumpToMemory, cuLogsRegisterCallback, cuLogsUnregisterCallback, resolve_proc};
use std::ffi::{c_char, c_void};
use std::sync::Mutex;

static SEEN: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn collect(data: *mut c_void, level: i32, msg: *mut c_char, len: usize) {
    assert_eq!(data as usize, 0x1234, "the user data comes back");
    // SAFETY: the driver passes `len` bytes and a NUL after them.
    let text = unsafe {
        assert_eq!(*msg.add(len), 0, "NUL-terminated");
        std::slice::from_raw_parts(msg as *const u8, len)
    };
    SEEN.lock().unwrap().push((level, String::from_utf8_lossy(text).into_owned()));
}

/// Calls an entry point vgpu does not implement: it fails and warns (once per entry point).
fn warn_with(name: &str) {
    let f = resolve_proc(name, 12090, 0).unwrap();
    // SAFETY: every stub is `extern "C" fn() -> CUresult` and ignores its arguments.
    let stub: unsafe extern "C" fn() -> u32 = unsafe { std::mem::transmute(f) };
    assert_eq!(unsafe { stub() }, vgpu_uapi::cuda::CUDA_ERROR_NOT_SUPPORTED);
}

fn dump(it: Option<&mut u32>, room: usize) -> (u32, usize, String) {
    let mut buf = vec![0x7f as c_char; room.max(1)];
    let mut n = room;
    let it = it.map_or(std::ptr::null_mut(), |i| i as *mut u32);
    // SAFETY: a buffer of `room` bytes, its size and an iterator (or NULL).
    let rc = unsafe { cuLogsDumpToMemory(it, buf.as_mut_ptr(), &mut n, 0) };
    let text = if n > 0 { String::from_utf8_lossy(&buf[..n].iter().map(|&c| c as u8).collect::<Vec<_>>()).into_owned() } else { String::new() };
    if n > 0 {
        assert_eq!(buf[n], 0, "NUL-terminated");
    }
    (rc, n, text)
}

#[test]
fn vgpu_errors_and_warnings_reach_the_driver_log() {
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid callback and out-pointer.
    assert_eq!(unsafe { cuLogsRegisterCallback(Some(collect), 0x1234 as *mut c_void, &mut handle) }, 0);
    assert!(!handle.is_null());
    // SAFETY: NULL callback: refused.
    assert_eq!(unsafe { cuLogsRegisterCallback(None, std::ptr::null_mut(), std::ptr::null_mut()) }, 1);
    let mut it = 0u32;
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { cuLogsCurrent(&mut it, 0) }, 0);
    assert_eq!(unsafe { cuLogsCurrent(&mut it, 1) }, 1, "flags must be 0");

    warn_with("cuCheckpointProcessLock");
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, 1, "CU_LOG_LEVEL_WARNING");
    assert!(seen[0].1.contains("cuCheckpointProcessLock is not supported by vgpu"), "{seen:?}");

    // From the iterator: that one message, with a newline; the iterator moves past it.
    let (rc, n, text) = dump(Some(&mut it), 4096);
    assert_eq!((rc, text.clone()), (0, format!("{}\n", seen[0].1)));
    assert_eq!(n, text.len());
    assert_eq!(dump(Some(&mut it), 4096), (0, 0, String::new()), "nothing new");

    // A buffer too small for any message: INVALID_VALUE and size 0.
    warn_with("cuCoredumpGetAttribute");
    let mut small = it;
    assert_eq!(dump(Some(&mut small), 8), (1, 0, String::new()));
    // One that holds only the newest: a note that older ones did not fit, then the newest.
    warn_with("cuCheckpointProcessUnlock");
    let newest = SEEN.lock().unwrap().last().unwrap().1.clone();
    // Room for the note, the newest line and the NUL, not for the line before it too.
    let note = "[vgpu: older log messages did not fit in the buffer]\n".len();
    let (rc, _, text) = dump(Some(&mut it), note + newest.len() + 1 + 1 + 5);
    assert_eq!(rc, 0);
    assert!(text.ends_with(&format!("{newest}\n")) && text.starts_with("[vgpu: older log messages did not fit"), "{text:?}");

    // Unregistered: no more callbacks; a second unregistration is an error.
    // SAFETY: the handle registered above.
    assert_eq!(unsafe { cuLogsUnregisterCallback(handle) }, 0);
    assert_eq!(unsafe { cuLogsUnregisterCallback(handle) }, 1);
    warn_with("cuCheckpointProcessRestore");
    assert_eq!(SEEN.lock().unwrap().len(), 3);

    // The whole buffer to a file (NULL iterator: everything kept).
    let path = std::env::temp_dir().join(format!("vgpu-logs-{}.txt", std::process::id()));
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; NULL iterator.
    assert_eq!(unsafe { cuLogsDumpToFile(std::ptr::null_mut(), cpath.as_ptr(), 0) }, 0);
    let file = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    for name in ["cuCheckpointProcessLock", "cuCoredumpGetAttribute", "cuCheckpointProcessUnlock", "cuCheckpointProcessRestore"] {
        assert!(file.contains(name), "{name} missing from {file:?}");
    }
}
