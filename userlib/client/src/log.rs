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

#[macro_export]
macro_rules! vlog {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            // Never eprintln!: it panics when stderr is gone, and we run inside extern "C" calls.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "vgpu: {}", format_args!($($arg)*));
        }
    };
}
