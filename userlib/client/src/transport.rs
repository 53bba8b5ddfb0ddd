//! How libcuda reaches the mediator. `Transport` is the seam: today a Unix socket straight to the
//! mediator; the kernel-device transport (device.rs) behind the same trait.

use vgpu_uapi::cuda::CuResult as CUresult;
use crate::vlog;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{MsgHeader, Op, HEADER_LEN, MSG_MAGIC};

pub trait Transport: Send + Sync {
    /// Sends `op` with a payload made of `parts` (concatenated) and appends the reply payload to
    /// `reply`. A non-success status comes back as Err with the mediator's message logged.
    fn call(&self, op: Op, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<(), CUresult>;

    /// Called once the mediator answered the first request: start-up timeouts end.
    fn connected(&self) {}
}

/// What every transport's connection has: the process that opened it, and request numbers.
pub(crate) struct Owner {
    pid: u32,
    seq: AtomicU32,
}

impl Owner {
    pub(crate) fn new() -> Owner {
        Owner { pid: std::process::id(), seq: AtomicU32::new(1) }
    }

    /// The next request's number. A forked child must not talk on its parent's connection
    /// (CUDA does not carry contexts across fork either; a channel's mapping is not even
    /// inherited): it must initialize CUDA itself.
    pub(crate) fn next_seq(&self) -> Result<u32, CUresult> {
        if std::process::id() != self.pid {
            vlog!(crate::log::ERROR, "CUDA used in a child forked after cuInit; it must initialize itself");
            return Err(CUDA_ERROR_NOT_INITIALIZED);
        }
        Ok(self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

pub struct SocketTransport {
    stream: Mutex<UnixStream>,
    owner: Owner,
}

impl SocketTransport {
    /// `hello_timeout` bounds each read and write until `connected`.
    pub fn connect(path: &Path, hello_timeout: Duration) -> io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(hello_timeout))?;
        stream.set_write_timeout(Some(hello_timeout))?;
        Ok(SocketTransport { stream: Mutex::new(stream), owner: Owner::new() })
    }
}

fn io_err(op: Op, e: io::Error) -> CUresult {
    vlog!(crate::log::ERROR, "lost the mediator during {op:?}: {e}");
    CUDA_ERROR_DEINITIALIZED
}

impl Transport for SocketTransport {
    fn call(&self, op: Op, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<(), CUresult> {
        let seq = self.owner.next_seq()?;
        // A poisoned lock means another thread panicked mid-message: the stream is out of sync.
        let mut s = self.stream.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        exchange(&mut *s, op, seq, parts, reply)
    }

    fn connected(&self) {
        if let Ok(s) = self.stream.lock() {
            let _ = s.set_read_timeout(None);
            let _ = s.set_write_timeout(None);
        }
    }
}

/// One request and its reply over any byte stream (socket or channel).
pub(crate) fn exchange<S: Read + Write>(s: &mut S, op: Op, seq: u32, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<(), CUresult> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let payload_len = u32::try_from(len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let h = MsgHeader { magic: MSG_MAGIC, op: op as u32, seq, status: 0, payload_len, reserved: 0 };
    s.write_all(&h.to_bytes()).map_err(|e| io_err(op, e))?;
    for p in parts {
        s.write_all(p).map_err(|e| io_err(op, e))?;
    }
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).map_err(|e| io_err(op, e))?;
    let r = MsgHeader::from_bytes(&hb);
    if r.validate().is_err() || r.seq != seq || r.op != op as u32 {
        vlog!(crate::log::ERROR, "mediator reply out of sync during {op:?}");
        return Err(CUDA_ERROR_DEINITIALIZED);
    }
    let start = reply.len();
    reply.resize(start + r.payload_len as usize, 0);
    s.read_exact(&mut reply[start..]).map_err(|e| io_err(op, e))?;
    if r.status != CUDA_SUCCESS {
        let msg = String::from_utf8_lossy(&reply[start..]).into_owned();
        reply.truncate(start);
        let level = if r.status == CUDA_ERROR_NOT_FOUND { crate::log::DEBUG } else { crate::log::WARN };
        vlog!(level, "{op:?} failed ({}): {msg}", error_name(r.status).map_or("?", |n| n.0));
        return Err(r.status);
    }
    Ok(())
}
