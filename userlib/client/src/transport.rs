//! How libcuda reaches the mediator. `Transport` is the seam: today a Unix socket straight to the
//! mediator; the kernel-device transport (device.rs) behind the same trait.

use vgpu_uapi::cuda::CuResult as CUresult;
use crate::vlog;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{MsgHeader, Op, HEADER_LEN, MSG_MAGIC};

pub trait Transport: Send + Sync {
    /// Sends `op` with a payload made of `parts` (concatenated) and appends the reply payload to
    /// `reply`. A non-success status comes back as Err with the mediator's message logged.
    /// An error of earlier asynchronous work not yet reported is returned instead (the call
    /// itself was carried out), as CUDA reports errors of asynchronous launches.
    fn call(&self, op: Op, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<(), CUresult>;

    /// `call` for a reply whose payload is exactly `out.len()` bytes of data (a device-to-host
    /// copy), put straight into `out` where the transport can.
    fn call_into(&self, op: Op, parts: &[&[u8]], out: &mut [u8]) -> Result<(), CUresult> {
        let mut reply = Vec::with_capacity(out.len());
        self.call(op, parts, &mut reply)?;
        if reply.len() != out.len() {
            vlog!(crate::log::ERROR, "{op:?}: the mediator returned {} bytes, not {}", reply.len(), out.len());
            return Err(CUDA_ERROR_UNKNOWN);
        }
        out.copy_from_slice(&reply);
        Ok(())
    }

    /// Sends `op` without waiting for its reply (asynchronous work: launches, async copies and
    /// memsets). Its failure, if any, is reported by a later `call`; what a launch printed is
    /// collected for `take_async_output`. A transport that cannot queue runs the call now and
    /// returns its reply.
    fn call_async(&self, op: Op, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, CUresult> {
        let mut reply = Vec::new();
        self.call(op, parts, &mut reply)?;
        Ok(Some(reply))
    }

    /// Lets the other end reach page-locked host memory `[p, p + len)` directly: the mediator
    /// maps `memfd` (the sealed memfd backing exactly that range, if there is one), the guest
    /// driver pins the pages for the device. Returns a handle for `copy_host`, or None where this
    /// transport cannot reach that memory (copies then carry the bytes, as for pageable memory).
    /// Err: the range is not memory of this process.
    fn register_host(&self, p: *mut u8, len: usize, memfd: Option<BorrowedFd<'_>>, how: HostUse) -> Result<Option<u64>, CUresult> {
        let _ = (p, len, memfd, how);
        Ok(None)
    }

    /// Undoes `register_host`, after the copies queued on it.
    fn unregister_host(&self, handle: u64) -> Result<(), CUresult> {
        let _ = handle;
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }

    /// Copies `len` bytes between device address `device` and registered host memory `handle`
    /// at `offset` (inside what was registered; the caller checks). `queued`: as `call_async`.
    fn copy_host(&self, dir: Direction, device: u64, handle: u64, offset: usize, len: usize, queued: bool) -> Result<(), CUresult> {
        let _ = (dir, device, handle, offset, len, queued);
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }

    /// What asynchronous launches printed (device printf), once their replies came in.
    fn take_async_output(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Called once the mediator answered the first request (Hello, whose reply flags are
    /// `hello_flags`, HELLO_*): start-up timeouts end.
    fn connected(&self, hello_flags: u32) {
        let _ = hello_flags;
    }
}

/// How registered host memory will be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostUse {
    /// Only copied from (it may be read-only memory).
    pub read_only: bool,
    /// For one copy of pageable memory, unregistered right after.
    pub transient: bool,
}

/// Which way a copy between device memory and host memory goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToDevice,
    FromDevice,
}

/// What every transport's connection has: the process that opened it (by its fork
/// generation), and request numbers.
pub(crate) struct Owner {
    generation: u32,
    seq: AtomicU32,
}

/// Forks this process's children went through: each child counts one more in its copy
/// (pthread_atfork's child handler). Read per request instead of getpid(2), which is a system
/// call each time (glibc no longer caches it): in a guest under emulation that was the one
/// system call an asynchronous launch made.
static FORKS: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

fn fork_generation() -> u32 {
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        // SAFETY: registers a function of this library that only touches an atomic. glibc ties
        // the registration to this library (pthread_atfork passes its __dso_handle) and drops
        // it if the library is unloaded, so it never calls into unmapped code.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    });
    FORKS.load(Ordering::Relaxed)
}

impl Owner {
    pub(crate) fn new() -> Owner {
        Owner { generation: fork_generation(), seq: AtomicU32::new(1) }
    }

    /// The next request's number. A forked child must not talk on its parent's connection
    /// (CUDA does not carry contexts across fork either; a channel's mapping is not even
    /// inherited): it must initialize CUDA itself.
    pub(crate) fn next_seq(&self) -> Result<u32, CUresult> {
        if FORKS.load(Ordering::Relaxed) != self.generation {
            vlog!(crate::log::ERROR, "CUDA used in a child forked after cuInit; it must initialize itself");
            return Err(CUDA_ERROR_NOT_INITIALIZED);
        }
        Ok(self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

/// The socket transport pipelines: requests are written as they come, and a reader thread
/// takes the replies in order, handing each synchronous caller its own and keeping what
/// asynchronous requests left (an error, printf output). The reader always reads, so a client
/// writing a long queue and a mediator writing replies cannot block each other.
pub struct SocketTransport {
    stream: Mutex<UnixStream>,
    owner: Owner,
    replies: Arc<Replies>,
    /// Bounds the wait for a reply until `connected` (start-up).
    hello_timeout: Mutex<Option<Duration>>,
}

#[derive(Default)]
struct Replies {
    state: Mutex<ReplyState>,
    cv: Condvar,
}

#[derive(Default)]
struct ReplyState {
    /// Requests written and not yet answered, in order: (seq, op, asynchronous).
    pending: VecDeque<(u32, Op, bool)>,
    /// Replies for synchronous callers, by seq: (status, payload).
    done: HashMap<u32, (u32, Vec<u8>)>,
    /// The first failure of asynchronous work not yet reported.
    deferred: Option<CUresult>,
    output: Vec<u8>,
    /// The connection broke (or went out of sync): every call fails from now on.
    broken: bool,
}

/// Most asynchronous requests in flight before a caller waits for some replies (bounds the
/// mediator's backlog, not a deadlock guard: the reader thread always reads).
const MAX_IN_FLIGHT: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SocketTransport {
    /// `hello_timeout` bounds each write and the wait for each reply until `connected`.
    pub fn connect(path: &Path, hello_timeout: Duration) -> io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_write_timeout(Some(hello_timeout))?;
        let replies = Arc::new(Replies::default());
        let (r, reader) = (replies.clone(), stream.try_clone()?);
        std::thread::Builder::new().name("vgpu-replies".into()).spawn(move || read_replies(reader, &r))?;
        Ok(SocketTransport { stream: Mutex::new(stream), owner: Owner::new(), replies, hello_timeout: Mutex::new(Some(hello_timeout)) })
    }

    /// Writes one request; registers it as pending first, so the reader can match its reply.
    fn send(&self, op: Op, parts: &[&[u8]], asynchronous: bool, fd: Option<std::os::fd::BorrowedFd<'_>>) -> Result<u32, CUresult> {
        let seq = self.owner.next_seq()?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let payload_len = u32::try_from(len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        // A poisoned lock means another thread panicked mid-message: the stream is out of sync.
        let mut s = self.stream.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        {
            let mut st = lock(&self.replies.state);
            if st.broken {
                return Err(CUDA_ERROR_DEINITIALIZED);
            }
            st.pending.push_back((seq, op, asynchronous));
        }
        let h = MsgHeader { magic: MSG_MAGIC, op: op as u32, seq, status: 0, payload_len, reserved: 0 };
        // Small messages go out in one system call; big ones (copies) without copying them.
        let written = if let Some(fd) = fd {
            let mut msg = Vec::with_capacity(HEADER_LEN + len);
            msg.extend_from_slice(&h.to_bytes());
            parts.iter().for_each(|p| msg.extend_from_slice(p));
            send_with_fd(&s, &msg, fd)
        } else if len <= 64 << 10 {
            let mut msg = Vec::with_capacity(HEADER_LEN + len);
            msg.extend_from_slice(&h.to_bytes());
            parts.iter().for_each(|p| msg.extend_from_slice(p));
            s.write_all(&msg)
        } else {
            s.write_all(&h.to_bytes()).and_then(|()| parts.iter().try_for_each(|p| s.write_all(p)))
        };
        if let Err(e) = written {
            lock(&self.replies.state).broken = true;
            self.replies.cv.notify_all();
            let _ = s.shutdown(std::net::Shutdown::Both);
            return Err(io_err(op, e));
        }
        Ok(seq)
    }
}

/// Writes `msg` with `fd` attached to its first byte (SCM_RIGHTS).
pub fn send_with_fd(s: &UnixStream, msg: &[u8], fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = loop {
        match sendmsg::<()>(s.as_raw_fd(), &[io::IoSlice::new(msg)], &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    };
    (&*s).write_all(&msg[sent..])
}

impl Drop for SocketTransport {
    /// Ends the connection (the reader thread holds a second handle to it): the mediator frees
    /// the session, and the reader thread ends.
    fn drop(&mut self) {
        if let Ok(s) = self.stream.lock() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The reader thread: matches replies to requests in order until the connection ends.
fn read_replies(s: UnixStream, r: &Replies) {
    let mut s = io::BufReader::with_capacity(64 << 10, s);
    loop {
        let mut hb = [0u8; HEADER_LEN];
        let got = s.read_exact(&mut hb).map(|()| MsgHeader::from_bytes(&hb));
        let mut payload = Vec::new();
        let got = got.and_then(|h| {
            payload.resize(h.payload_len as usize, 0);
            s.read_exact(&mut payload).map(|()| h)
        });
        let mut st = lock(&r.state);
        let h = match got {
            Ok(h) if h.validate().is_ok() && st.pending.front().is_some_and(|&(seq, op, _)| seq == h.seq && op as u32 == h.op) => h,
            other => {
                if let Ok(h) = other {
                    vlog!(crate::log::ERROR, "mediator reply out of sync (op {}, seq {})", h.op, h.seq);
                } else if !st.pending.is_empty() {
                    vlog!(crate::log::ERROR, "lost the mediator with {} request(s) unanswered", st.pending.len());
                }
                st.broken = true;
                r.cv.notify_all();
                return;
            }
        };
        let Some((seq, op, asynchronous)) = st.pending.pop_front() else { return };
        if !asynchronous {
            st.done.insert(seq, (h.status, payload));
        } else if h.status != CUDA_SUCCESS {
            let msg = String::from_utf8_lossy(&payload);
            vlog!(crate::log::WARN, "asynchronous {op:?} failed ({}): {msg}", error_name(h.status).map_or("?", |n| n.0));
            st.deferred.get_or_insert(h.status);
        } else if matches!(op, Op::Launch | Op::LaunchCooperative) {
            st.output.extend_from_slice(&payload);
        }
        r.cv.notify_all();
    }
}

impl Transport for SocketTransport {
    fn call(&self, op: Op, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<(), CUresult> {
        self.wait_reply(op, self.send(op, parts, false, None)?, reply)
    }

    /// Memory with a memfd is mapped by the mediator (HostRegister); other memory it cannot
    /// reach.
    fn register_host(&self, _p: *mut u8, len: usize, memfd: Option<BorrowedFd<'_>>, _how: HostUse) -> Result<Option<u64>, CUresult> {
        let Some(fd) = memfd else { return Ok(None) };
        let mut reply = Vec::new();
        let op = Op::HostRegister;
        match self.call_with_fd(op, &[&(len as u64).to_le_bytes()], fd, &mut reply) {
            Ok(()) => Ok(vgpu_uapi::wire::Reader::new(&reply).u64().ok()),
            Err(CUDA_ERROR_DEINITIALIZED) => Err(CUDA_ERROR_DEINITIALIZED),
            Err(_) => Ok(None),
        }
    }

    fn unregister_host(&self, handle: u64) -> Result<(), CUresult> {
        // The mediator finishes queued copies from and to it before it lets go.
        self.call(Op::HostUnregister, &[&handle.to_le_bytes()], &mut Vec::new())
    }

    /// The mediator copies between device memory and its mapping: no bytes on the connection.
    fn copy_host(&self, dir: Direction, device: u64, handle: u64, offset: usize, len: usize, queued: bool) -> Result<(), CUresult> {
        let op = if dir == Direction::ToDevice { Op::MemcpyHtoDHost } else { Op::MemcpyDtoHHost };
        let args: Vec<u8> = [device, handle, offset as u64, len as u64].iter().flat_map(|v| v.to_le_bytes()).collect();
        if queued {
            self.call_async(op, &[&args]).map(drop)
        } else {
            self.call(op, &[&args], &mut Vec::new())
        }
    }

    fn call_async(&self, op: Op, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, CUresult> {
        {
            let mut st = lock(&self.replies.state);
            while st.pending.len() >= MAX_IN_FLIGHT && !st.broken {
                st = self.replies.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.send(op, parts, true, None)?;
        Ok(None)
    }

    fn take_async_output(&self) -> Vec<u8> {
        std::mem::take(&mut lock(&self.replies.state).output)
    }

    fn connected(&self, _hello_flags: u32) {
        *lock(&self.hello_timeout) = None;
        if let Ok(s) = self.stream.lock() {
            let _ = s.set_write_timeout(None);
        }
    }
}

impl SocketTransport {
    /// `call` with a file descriptor attached (SCM_RIGHTS).
    pub fn call_with_fd(&self, op: Op, parts: &[&[u8]], fd: BorrowedFd<'_>, reply: &mut Vec<u8>) -> Result<(), CUresult> {
        self.wait_reply(op, self.send(op, parts, false, Some(fd))?, reply)
    }

    /// Waits for the reply to request `seq`.
    fn wait_reply(&self, op: Op, seq: u32, reply: &mut Vec<u8>) -> Result<(), CUresult> {
        let timeout = *lock(&self.hello_timeout);
        let started = std::time::Instant::now();
        let mut st = lock(&self.replies.state);
        let (status, payload) = loop {
            if let Some(r) = st.done.remove(&seq) {
                break r;
            }
            if st.broken {
                vlog!(crate::log::ERROR, "lost the mediator during {op:?}");
                return Err(CUDA_ERROR_DEINITIALIZED);
            }
            st = match timeout {
                Some(t) => {
                    let left = t.checked_sub(started.elapsed()).ok_or_else(|| {
                        vlog!(crate::log::ERROR, "the mediator did not answer {op:?} within {t:?}");
                        CUDA_ERROR_DEINITIALIZED
                    })?;
                    self.replies.cv.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.replies.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        };
        // Earlier asynchronous work failed: that is this call's result (CUDA reports errors of
        // asynchronous launches at a later call).
        if let Some(e) = st.deferred.take() {
            return Err(e);
        }
        drop(st);
        if status != CUDA_SUCCESS {
            let msg = String::from_utf8_lossy(&payload);
            let level = if status == CUDA_ERROR_NOT_FOUND { crate::log::DEBUG } else { crate::log::WARN };
            vlog!(level, "{op:?} failed ({}): {msg}", error_name(status).map_or("?", |n| n.0));
            return Err(status);
        }
        reply.extend_from_slice(&payload);
        Ok(())
    }
}

fn io_err(op: Op, e: io::Error) -> CUresult {
    vlog!(crate::log::ERROR, "lost the mediator during {op:?}: {e}");
    CUDA_ERROR_DEINITIALIZED
}

/// Writes a request's header to a byte stream (a channel); `payload_len` bytes must follow.
pub(crate) fn write_header<S: Write>(s: &mut S, op: Op, seq: u32, payload_len: usize) -> Result<(), CUresult> {
    let payload_len = u32::try_from(payload_len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let h = MsgHeader { magic: MSG_MAGIC, op: op as u32, seq, status: 0, payload_len, reserved: 0 };
    s.write_all(&h.to_bytes()).map_err(|e| io_err(op, e))
}

/// Writes one request to a byte stream (a channel).
pub(crate) fn write_request<S: Write>(s: &mut S, op: Op, seq: u32, parts: &[&[u8]]) -> Result<(), CUresult> {
    write_header(s, op, seq, parts.iter().map(|p| p.len()).sum())?;
    for p in parts {
        s.write_all(p).map_err(|e| io_err(op, e))?;
    }
    Ok(())
}

/// Reads the header of the reply to request (`op`, `seq`); its payload follows.
pub(crate) fn read_header<S: Read>(s: &mut S, op: Op, seq: u32) -> Result<MsgHeader, CUresult> {
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).map_err(|e| io_err(op, e))?;
    let r = MsgHeader::from_bytes(&hb);
    if r.validate().is_err() || r.seq != seq || r.op != op as u32 {
        vlog!(crate::log::ERROR, "mediator reply out of sync during {op:?}");
        return Err(CUDA_ERROR_DEINITIALIZED);
    }
    Ok(r)
}

/// Reads the reply to request (`op`, `seq`): its status, with its payload appended to `out`.
pub(crate) fn read_reply<S: Read>(s: &mut S, op: Op, seq: u32, out: &mut Vec<u8>) -> Result<u32, CUresult> {
    let r = read_header(s, op, seq)?;
    let start = out.len();
    out.resize(start + r.payload_len as usize, 0);
    s.read_exact(&mut out[start..]).map_err(|e| io_err(op, e))?;
    Ok(r.status)
}

/// A reply's status as the caller's result: on failure the payload (appended to `reply` from
/// `start`) is the mediator's message, logged and taken off.
pub(crate) fn reply_result(op: Op, status: u32, reply: &mut Vec<u8>, start: usize) -> Result<(), CUresult> {
    if status != CUDA_SUCCESS {
        let msg = String::from_utf8_lossy(&reply[start..]).into_owned();
        reply.truncate(start);
        let level = if status == CUDA_ERROR_NOT_FOUND { crate::log::DEBUG } else { crate::log::WARN };
        vlog!(level, "{op:?} failed ({}): {msg}", error_name(status).map_or("?", |n| n.0));
        return Err(status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection made before a fork refuses requests in the child (which must initialize
    /// CUDA itself) and goes on in the parent, also after a child of a child.
    #[test]
    fn a_forked_child_cannot_use_its_parents_connection() {
        let owner = Owner::new();
        assert_eq!(owner.next_seq(), Ok(1));
        let child = |f: &dyn Fn() -> bool| {
            // SAFETY: the child only reads atomics and calls _exit (no allocation, no locks).
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                // SAFETY: ends the child at once, running nothing of the parent's.
                unsafe { libc::_exit(if f() { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: waits for the child just made; `status` is a live local.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        };
        assert!(child(&|| owner.next_seq() == Err(CUDA_ERROR_NOT_INITIALIZED)), "the child used its parent's connection");
        // The child's own connection works in the child.
        assert!(child(&|| Owner::new().next_seq() == Ok(1)), "a connection made in the child was refused");
        assert_eq!(owner.next_seq(), Ok(2), "the parent's connection after its children");
    }
}
