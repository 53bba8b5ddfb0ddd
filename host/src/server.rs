//! The mediator's Unix-socket front end: one thread per client connection, each with its own
//! device session. A framing error (bad magic, oversized payload) gets an error reply and the
//! connection is closed, since the stream can no longer be trusted to be in sync.

use crate::backend::Backend;
use crate::dispatch::Connection;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use vgpu_uapi::cuda::{CUDA_ERROR_INVALID_VALUE, CUDA_SUCCESS};
use vgpu_uapi::proto::{MsgHeader, HEADER_LEN, MSG_MAGIC};

/// Binds `path` (replacing a stale socket file) and serves clients until the process ends.
pub fn serve(path: &Path, backend: Arc<dyn Backend>) -> io::Result<()> {
    let listener = bind(path)?;
    tracing::info!(socket = %path.display(), backend = backend.name(), "vgpu mediator listening");
    serve_listener(listener, backend)
}

pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

pub fn serve_listener(listener: UnixListener, backend: Arc<dyn Backend>) -> io::Result<()> {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let backend = backend.clone();
        std::thread::Builder::new().name("vgpu-client".into()).spawn(move || {
            let peer = peer_pid(&stream);
            tracing::info!(pid = peer, "client connected");
            match serve_client(stream, backend.as_ref()) {
                Ok(()) => tracing::info!(pid = peer, "client disconnected; its resources are freed"),
                Err(e) => tracing::warn!(pid = peer, "client connection ended: {e}; its resources are freed"),
            }
        })?;
    }
    Ok(())
}

fn peer_pid(stream: &UnixStream) -> i32 {
    nix_peer_pid(stream).unwrap_or(-1)
}

fn nix_peer_pid(stream: &UnixStream) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live local of that size, on a
    // descriptor owned by `stream` for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.pid)
}

/// Serves one client until it disconnects. The session (and everything it owns) is dropped on return.
pub fn serve_client(mut stream: UnixStream, backend: &dyn Backend) -> io::Result<()> {
    // Dropped after `conn` (declared first): the session is freed before the watch ends.
    let _watch = crate::cancel::HangupWatch::start(&stream)?;
    let mut conn = Connection::new(backend);
    let mut payload = Vec::new();
    let mut reply = Vec::new();
    loop {
        let mut hdr = [0u8; HEADER_LEN];
        match stream.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let h = MsgHeader::from_bytes(&hdr);
        if let Err(e) = h.validate() {
            let msg = format!("{e}; closing connection");
            send(&mut stream, h.op, h.seq, CUDA_ERROR_INVALID_VALUE, msg.as_bytes())?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        payload.clear();
        payload.resize(h.payload_len as usize, 0);
        stream.read_exact(&mut payload)?;
        reply.clear();
        match conn.handle(h.op, &payload, &mut reply) {
            Ok(()) => send(&mut stream, h.op, h.seq, CUDA_SUCCESS, &reply)?,
            Err(e) => {
                tracing::debug!(pid = conn.client_pid, op = h.op, code = e.code, "{}", e.message);
                send(&mut stream, h.op, h.seq, e.code, e.message.as_bytes())?
            }
        }
    }
}

fn send(stream: &mut UnixStream, op: u32, seq: u32, status: u32, payload: &[u8]) -> io::Result<()> {
    let h = MsgHeader { magic: MSG_MAGIC, op, seq, status, payload_len: payload.len() as u32, reserved: 0 };
    stream.write_all(&h.to_bytes())?;
    stream.write_all(payload)
}
