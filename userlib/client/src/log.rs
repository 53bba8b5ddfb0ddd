//! Minimal stderr logging (a logging framework inside every CUDA process would be too heavy).

use std::sync::atomic::{AtomicU8, Ordering};

pub const ERROR: u8 = 1;
pub const WARN: u8 = 2;
pub const INFO: u8 = 3;
pub const DEBUG: u8 = 4;
/// Every CUDA entry point called, with its result.
pub const TRACE: u8 = 5;

static LEVEL: AtomicU8 = AtomicU8::new(0);

pub fn level() -> u8 {
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let l = match std::env::var("VGPU_LOG").as_deref() {
                Ok("error") => ERROR,
                Ok("info") => INFO,
                Ok("debug") => DEBUG,
                Ok("trace") => TRACE,
                Ok("off") => 0xff,
                _ => WARN,
            };
            LEVEL.store(l, Ordering::Relaxed);
            l
        }
        l => l,
    }
}

pub fn enabled(l: u8) -> bool {
    let cur = level();
    cur != 0xff && l <= cur
}

/// Where errors and warnings also go, whatever VGPU_LOG says: libcuda's driver log (the
/// cuLogs* API, which applications read or subscribe to).
static SINK: std::sync::OnceLock<fn(u8, &str)> = std::sync::OnceLock::new();

pub fn set_sink(f: fn(u8, &str)) {
    let _ = SINK.set(f);
}

/// Whether a message of level `l` goes to the sink.
pub fn to_sink(l: u8) -> bool {
    l <= WARN && SINK.get().is_some()
}

pub fn sink(l: u8, msg: &str) {
    if let Some(f) = SINK.get() {
        f(l, msg);
    }
}

#[macro_export]
macro_rules! vlog {
    ($lvl:expr, $($arg:tt)*) => {{
        let lvl = $lvl;
        let to_sink = $crate::log::to_sink(lvl);
        if $crate::log::enabled(lvl) || to_sink {
            let msg = format!($($arg)*);
            if $crate::log::enabled(lvl) {
                // Never eprintln!: it panics when stderr is gone, and we run inside extern "C" calls.
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "vgpu: {msg}");
            }
            if to_sink {
                $crate::log::sink(lvl, &msg);
            }
        }
    }};
}
