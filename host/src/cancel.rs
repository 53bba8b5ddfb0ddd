//! Work for a client that has gone away stops early. While a connection is served, a watcher
//! thread waits for the peer to hang up and then raises the connection's flag; long-running work
//! for the connection (a kernel in the sim's interpreter, on whatever host threads) takes the
//! flag with `flag()` and polls it, so a killed process or VM does not leave the mediator
//! computing for it.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::cell::RefCell;

thread_local! {
    /// The flag of the connection this thread serves (None outside a connection).
    static FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// The flag of the connection served by this thread, for work it hands to other threads.
pub fn flag() -> Option<Arc<AtomicBool>> {
    FLAG.with(|f| f.borrow().clone())
}

/// Watches `stream`'s peer for the serving thread (the caller) until dropped.
pub struct HangupWatch {
    stream: UnixStream,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl HangupWatch {
    pub fn start(stream: &UnixStream) -> std::io::Result<HangupWatch> {
        let flag = Arc::new(AtomicBool::new(false));
        FLAG.with(|f| *f.borrow_mut() = Some(flag.clone()));
        let watched = stream.try_clone()?;
        let watcher = std::thread::Builder::new().name("vgpu-hangup".into()).spawn(move || {
            let mut pfd = libc::pollfd { fd: watched.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
            loop {
                // SAFETY: one valid pollfd for a descriptor `watched` keeps open.
                let r = unsafe { libc::poll(&mut pfd, 1, -1) };
                if r > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    flag.store(true, Ordering::Relaxed);
                    return;
                }
                if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    return;
                }
            }
        })?;
        Ok(HangupWatch { stream: stream.try_clone()?, watcher: Some(watcher) })
    }
}

impl Drop for HangupWatch {
    fn drop(&mut self) {
        // Our side is done: shutting the socket down wakes the watcher (and the peer sees EOF).
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        FLAG.with(|f| *f.borrow_mut() = None);
    }
}
