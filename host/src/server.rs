//! The mediator's Unix-socket front end. Each VM has its own socket (the one its device process
//! connects to), so a connection's VM is known from where it came in, never from what the
//! guest says. One thread per client connection, each with its own device session. A framing
//! error (bad magic, oversized payload) gets an error reply and the connection is closed, since
//! the stream can no longer be trusted to be in sync.

use crate::backend::Backend;
use crate::cancel::{Cancel, HangupWatch};
use crate::config::{SchedulerConfig, VmConfig};
use crate::dispatch::{Connection, Share};
use crate::vms::{Client, Gpu, Vm};
use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vgpu_uapi::cuda::{CUDA_ERROR_INVALID_VALUE, CUDA_SUCCESS};
use vgpu_uapi::proto::{HeaderError, MsgHeader, Op, HEADER_LEN, MSG_MAGIC};

/// Creates `path`'s directory and binds it, replacing a stale socket file. The socket is bound
/// under a temporary name and renamed into place, so that whoever waits for `path` to appear
/// can connect as soon as it does (a bound socket refuses connections until it listens).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let remove = |p: &Path| match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    remove(&tmp)?;
    match UnixListener::bind(&tmp) {
        Ok(l) => {
            std::fs::rename(&tmp, path)?;
            Ok(l)
        }
        // A path at the length limit has no room for the suffix: bind it directly.
        Err(_) => {
            remove(path)?;
            UnixListener::bind(path)
        }
    }
}

/// Serves `backend` to every client of `listener` as one VM without limits (tests, tools).
pub fn serve_listener(listener: UnixListener, backend: Arc<dyn Backend>) -> io::Result<()> {
    let s = SchedulerConfig::default();
    let gpu = Arc::new(Gpu {
        name: "gpu0".into(),
        backend,
        sched: crate::sched::Scheduler::new(Duration::from_millis(s.time_slice_ms), Duration::from_micros(s.anticipation_us)),
    });
    let vm = Arc::new(Vm::new(&VmConfig::unlimited("default", "gpu0", Path::new("")), gpu));
    serve_vm(listener, vm)
}

/// Accepts `vm`'s clients until the VM is removed from the configuration or moves to another
/// socket.
pub fn serve_vm(listener: UnixListener, vm: Arc<Vm>) -> io::Result<()> {
    let mine = vm.socket();
    for stream in listener.incoming() {
        if vm.is_removed() || vm.socket() != mine {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(vm = %vm.name, "accept failed: {e}");
                continue;
            }
        };
        let vm = vm.clone();
        std::thread::Builder::new().name("vgpu-client".into()).spawn(move || {
            let peer = peer_pid(&stream);
            tracing::info!(vm = %vm.name, pid = peer, "client connected");
            match serve_client(stream, &vm) {
                Ok(()) => tracing::info!(vm = %vm.name, pid = peer, "client disconnected; its resources are freed"),
                Err(e) => tracing::warn!(vm = %vm.name, pid = peer, "client connection ended: {e}; its resources are freed"),
            }
        })?;
    }
    tracing::info!(vm = %vm.name, "no longer accepting clients");
    Ok(())
}

fn peer_pid(stream: &UnixStream) -> i32 {
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
    if rc == 0 { cred.pid } else { -1 }
}

/// Takes the client off its VM's list once everything it held is freed.
struct Registered<'v>(&'v Vm, Arc<Client>);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(&self.1);
    }
}

/// Serves one client of `vm` until it disconnects. The session (and everything it owns) is
/// dropped on return.
pub fn serve_client(stream: UnixStream, vm: &Arc<Vm>) -> io::Result<()> {
    // Dropped in reverse order: the session first, then the registration, then the watch.
    let cancel = Arc::new(Cancel::default());
    let _watch = HangupWatch::start(&stream, cancel.clone())?;
    let client = vm.register(&stream, cancel)?;
    let _registered = Registered(vm, client.clone());
    let gpu = vm.gpu();
    let backend = gpu.backend.clone();
    let mut conn = Connection::shared(backend.as_ref(), Share { vm: vm.clone(), gpu, client });
    serve_requests(stream, &mut conn, &vm.name, false)
}

/// How long a connection's thread keeps watching its shared ring for the next request before
/// it sleeps (a device process calling again within it costs no wake-up on either side).
const RING_SPIN: Duration = Duration::from_micros(50);

/// Where a connection's requests come from and its replies go: its socket, until the client
/// upgrades to shared rings (`Op::ShmRing`).
struct Wire {
    stream: UnixStream,
    input: crate::input::Input,
    ring: Option<vgpu_client::shm_ring::Ring>,
}

impl Wire {
    fn buffered(&self) -> usize {
        match &self.ring {
            Some(r) => r.readable().unwrap_or(HEADER_LEN),
            None => self.input.buffered(),
        }
    }

    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        match &mut self.ring {
            // The device process went away: the same as a socket's end of stream.
            Some(r) => r.read_exact(out, RING_SPIN).map_err(|e| if e.kind() == io::ErrorKind::BrokenPipe { io::ErrorKind::UnexpectedEof.into() } else { e }),
            None => self.input.read_exact(out),
        }
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut scratch = vec![0u8; 64 << 10];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.ring {
            Some(r) => r.write_all(bytes, RING_SPIN),
            None => self.stream.write_all(bytes),
        }
    }

    /// Writes `bytes` with `fd` attached to the first of them (SCM_RIGHTS). Only on the socket:
    /// a connection on shared rings has no way to pass one, and the peer gets the reply alone.
    fn send_with_fd(&mut self, bytes: &[u8], fd: std::os::fd::OwnedFd) -> io::Result<()> {
        if self.ring.is_some() {
            tracing::warn!("a file descriptor cannot travel over shared rings; the reply goes without it");
            return self.write_all(bytes);
        }
        vgpu_client::transport::send_with_fd(&self.stream, bytes, std::os::fd::AsFd::as_fd(&fd))
    }

    /// `Op::ShmRing`: checks the request and maps the rings; the caller answers on the socket.
    fn upgrade(&mut self, conn: &mut Connection<'_>, payload: &[u8]) -> Result<vgpu_client::shm_ring::Ring, String> {
        use std::os::fd::AsFd;
        let fds = conn.take_fds::<3>("ShmRing");
        let size = <[u8; 4]>::try_from(payload).map(u32::from_le_bytes).map_err(|_| "ShmRing takes a ring size (u32)".to_string())?;
        let [file, mediator_bell, device_bell] = fds.map_err(|e| e.message)?;
        if self.ring.is_some() || self.input.buffered() != 0 {
            return Err("ShmRing must come alone, once, with nothing sent after it before its answer".into());
        }
        vgpu_client::shm_ring::Ring::attach(size, file, mediator_bell, device_bell, self.stream.as_fd()).map_err(|e| e.to_string())
    }
}

/// Serves requests of `stream` on `conn` until the peer disconnects (`who`: for the log);
/// `flush_c_stdio`: flush C's output streams after each request (a worker, whose driver prints).
pub fn serve_requests(stream: UnixStream, conn: &mut Connection<'_>, who: &str, flush_c_stdio: bool) -> io::Result<()> {
    // Requests are read through a buffer and replies collected in one, written out only when
    // no further request is already waiting: a client that queues many requests (asynchronous
    // launches) costs one read and one write system call per batch, not per request.
    let input = crate::input::Input::new(stream.try_clone()?, 256 << 10);
    let mut wire = Wire { stream, input, ring: None };
    let mut output: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut payload = Vec::new();
    let mut reply = Vec::new();
    loop {
        if wire.buffered() < HEADER_LEN && !output.is_empty() {
            wire.write_all(&output)?;
            output.clear();
        }
        let mut hdr = [0u8; HEADER_LEN];
        match wire.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let h = MsgHeader::from_bytes(&hdr);
        if let Err(e @ HeaderError::TooLong(_)) = h.validate() {
            // Refused at once, and the connection goes on: its payload is read past, not kept.
            tracing::warn!(vm = who, pid = conn.client_pid, op = h.op, "{e}; request refused");
            push_reply(&mut output, h.op, h.seq, CUDA_ERROR_INVALID_VALUE, format!("{e}; request refused").as_bytes());
            wire.write_all(&output)?;
            output.clear();
            wire.skip(h.payload_len as u64)?;
            continue;
        }
        if let Err(e) = h.validate() {
            // A bad magic: where the next request starts is unknown.
            let msg = format!("{e}; closing connection");
            push_reply(&mut output, h.op, h.seq, CUDA_ERROR_INVALID_VALUE, msg.as_bytes());
            wire.write_all(&output)?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        payload.clear();
        payload.resize(h.payload_len as usize, 0);
        wire.read_exact(&mut payload)?;
        // Descriptors that came with this request (HostRegister's memfd).
        conn.attach_fds(&mut wire.input.fds);
        if h.op == Op::ShmRing as u32 {
            // Earlier replies go out on the socket first; this one too, then the rings take over.
            let upgraded = wire.upgrade(conn, &payload);
            match &upgraded {
                Ok(_) => push_reply(&mut output, h.op, h.seq, CUDA_SUCCESS, &[]),
                Err(m) => {
                    tracing::warn!(vm = who, pid = conn.client_pid, "shared rings refused: {m}");
                    push_reply(&mut output, h.op, h.seq, CUDA_ERROR_INVALID_VALUE, m.as_bytes())
                }
            }
            wire.write_all(&output)?;
            output.clear();
            if let Ok(ring) = upgraded {
                wire.ring = Some(ring);
            }
            continue;
        }
        reply.clear();
        let handled = conn.handle(h.op, &payload, &mut reply);
        if flush_c_stdio {
            // SAFETY: fflush(NULL) flushes every C output stream; it takes no memory of ours.
            unsafe { libc::fflush(std::ptr::null_mut()) };
        }
        let this_reply = output.len();
        match handled {
            Ok(()) => push_reply(&mut output, h.op, h.seq, CUDA_SUCCESS, &reply),
            Err(e) => {
                tracing::debug!(vm = who, pid = conn.client_pid, op = h.op, code = e.code, "{}", e.message);
                push_reply(&mut output, h.op, h.seq, e.code, e.message.as_bytes())
            }
        }
        if let Some(fd) = conn.take_reply_fd() {
            // A descriptor rides on the first byte of its own reply (a worker's shareable VMM
            // handle): the replies before it go out first, so the peer's read that gets this
            // reply's header gets the descriptor.
            wire.write_all(&output[..this_reply])?;
            wire.send_with_fd(&output[this_reply..], fd)?;
            output.clear();
        }
        // Large replies (device-to-host data) go out at once rather than being copied along.
        if output.len() >= 1 << 20 {
            wire.write_all(&output)?;
            output.clear();
            if output.capacity() > 16 << 20 {
                output.shrink_to(64 << 10);
            }
        }
    }
}

fn push_reply(out: &mut Vec<u8>, op: u32, seq: u32, status: u32, payload: &[u8]) {
    let h = MsgHeader { magic: MSG_MAGIC, op, seq, status, payload_len: payload.len() as u32, reserved: 0 };
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(payload);
}
