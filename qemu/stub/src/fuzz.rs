//! Entry point for the `stub_guest` fuzz target (`fuzz/`) and its regression tests: a guest
//! that writes anything into BAR0 and into its channel areas. The device must neither panic
//! nor hang, and must not touch memory outside guest RAM (all guest RAM accesses go through
//! `GuestRam`, which refuses them).

use crate::channels::Channels;
use crate::device::{Effect, Registers};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Connections the fake mediator is still serving (each input waits for its own to end, so
/// that no thread of one input is still running into the next: leak checkers look in between).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Connections the fake mediator has accepted so far.
static ACCEPTED: AtomicUsize = AtomicUsize::new(0);

/// Guest RAM of the fuzzed device: 8 MiB at 1 GiB.
pub const GPA: u64 = 0x4000_0000;
pub const RAM: u64 = 8 << 20;

/// A mediator that answers every connection with a fixed stream of bytes and swallows what it
/// is sent, so that a channel's receives never wait for long.
fn mediator() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vgpu-stub-fuzz-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind the fuzz mediator");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                ACTIVE.fetch_add(1, Ordering::SeqCst);
                ACCEPTED.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    if let Ok(mut w) = s.try_clone() {
                        let writer = std::thread::spawn(move || {
                            let chunk = [0x5au8; 4096];
                            for _ in 0..64 {
                                if w.write_all(&chunk).is_err() {
                                    return;
                                }
                            }
                        });
                        let mut r = s;
                        let mut sink = [0u8; 65536];
                        while let Ok(1..) = r.read(&mut sink) {}
                        let _ = writer.join();
                    }
                    ACTIVE.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        path
    })
}

fn memfd(size: u64) -> Option<File> {
    // SAFETY: a NUL-terminated name and valid flags; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"vgpu-stub-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).ok()?;
    Some(f)
}

/// Input: a 4-byte length L, L bytes written into guest RAM at GPA (the channel areas'
/// headers, rings and descriptors), then BAR0 writes of (offset u16 LE, value u32 LE) each.
/// Channels are closed at the end, as a guest's reset would.
pub fn guest(data: &[u8]) {
    let Some(f) = memfd(RAM) else { return };
    let mut chans = Channels::new(mediator().clone());
    if chans.ram.map(GPA, RAM, f, 0).is_err() {
        return;
    }
    let (len, rest) = match data {
        [a, b, c, d, rest @ ..] => ((u32::from_le_bytes([*a, *b, *c, *d]) as usize).min(rest.len()), rest),
        _ => return,
    };
    let _ = chans.ram.write(GPA, &rest[..len.min(RAM as usize)]);
    let mut regs = Registers::default();
    let accepted_before = ACCEPTED.load(Ordering::SeqCst);
    let mut connected = 0;
    for w in rest[len..].chunks_exact(6) {
        let off = u16::from_le_bytes([w[0], w[1]]) as u64 & !3;
        let v = u32::from_le_bytes([w[2], w[3], w[4], w[5]]);
        let _ = regs.read(off);
        let effect = regs.write(off, v);
        let opening = matches!(effect, Effect::Open { .. });
        chans.carry_out(&mut regs, effect, false);
        connected += usize::from(opening && regs.read(vgpu_uapi::bar0::CHAN_STATUS) == 0);
    }
    chans.close_all();
    // The fake mediator's side of the closed channels ends too.
    let t = Instant::now();
    while (ACCEPTED.load(Ordering::SeqCst) < accepted_before + connected || ACTIVE.load(Ordering::SeqCst) != 0) && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(100));
    }
}
