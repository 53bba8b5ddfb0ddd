//! Work for a client stops early when the client goes away, is evicted, or runs past its VM's
//! execution time limit. Each served connection has a `Cancel` token: a watcher thread raises
//! it when the peer hangs up, the admin raises it on eviction, and the dispatcher arms a
//! deadline around each launch. Long-running work for the connection (a kernel in the sim's
//! interpreter, on whatever host threads) takes the token with `token()` and polls `check()`.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Why work was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client disconnected or was evicted.
    Hangup,
    /// The launch ran past its VM's execution time limit (the limit, in ms).
    TimeLimit(u64),
}

#[derive(Default)]
pub struct Cancel {
    hangup: AtomicBool,
    /// Nanoseconds since `epoch()` after which work stops; 0 = no deadline.
    deadline_ns: AtomicU64,
    limit_ms: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Cancel {
    pub fn hang_up(&self) {
        self.hangup.store(true, Ordering::Relaxed);
    }

    pub fn is_hung_up(&self) -> bool {
        self.hangup.load(Ordering::Relaxed)
    }

    /// Work started from now on stops after `limit` (None: no limit).
    pub fn arm(&self, limit: Option<Duration>) {
        match limit {
            Some(l) => {
                let at = (Instant::now() + l).duration_since(epoch()).as_nanos() as u64;
                self.limit_ms.store(l.as_millis() as u64, Ordering::Relaxed);
                self.deadline_ns.store(at.max(1), Ordering::Relaxed);
            }
            None => self.deadline_ns.store(0, Ordering::Relaxed),
        }
    }

    pub fn check(&self) -> Option<Reason> {
        if self.hangup.load(Ordering::Relaxed) {
            return Some(Reason::Hangup);
        }
        let d = self.deadline_ns.load(Ordering::Relaxed);
        if d != 0 && Instant::now().duration_since(epoch()).as_nanos() as u64 >= d {
            return Some(Reason::TimeLimit(self.limit_ms.load(Ordering::Relaxed)));
        }
        None
    }
}

thread_local! {
    /// The token of the connection this thread serves (None outside a connection).
    static TOKEN: RefCell<Option<Arc<Cancel>>> = const { RefCell::new(None) };
}

/// The token of the connection served by this thread, for work it hands to other threads.
pub fn token() -> Option<Arc<Cancel>> {
    TOKEN.with(|f| f.borrow().clone())
}

/// Watches `stream`'s peer for the serving thread (the caller) until dropped, raising `token`
/// when the peer hangs up.
pub struct HangupWatch {
    stream: UnixStream,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl HangupWatch {
    pub fn start(stream: &UnixStream, token: Arc<Cancel>) -> std::io::Result<HangupWatch> {
        TOKEN.with(|f| *f.borrow_mut() = Some(token.clone()));
        let watched = stream.try_clone()?;
        let watcher = std::thread::Builder::new().name("vgpu-hangup".into()).spawn(move || {
            let mut pfd = libc::pollfd { fd: watched.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
            loop {
                // SAFETY: one valid pollfd for a descriptor `watched` keeps open.
                let r = unsafe { libc::poll(&mut pfd, 1, -1) };
                if r > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    token.hang_up();
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
        TOKEN.with(|f| *f.borrow_mut() = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_and_hangup() {
        let c = Cancel::default();
        assert_eq!(c.check(), None);
        c.arm(Some(Duration::ZERO));
        assert_eq!(c.check(), Some(Reason::TimeLimit(0)));
        c.arm(None);
        assert_eq!(c.check(), None);
        c.arm(Some(Duration::from_secs(3600)));
        assert_eq!(c.check(), None);
        c.hang_up();
        assert_eq!(c.check(), Some(Reason::Hangup));
    }
}
