//! The cuda backend's isolation between guests: each guest process's work runs in a worker
//! process of its own (`vgpu-hostd --worker`), which loads the CUDA driver and serves that one
//! session with the ordinary request protocol over a socket pair. Each worker has its own CUDA
//! context, so the GPU's own address spaces separate guests: a kernel of one guest that touches
//! another's address faults in its own context only, and a fault or a driver crash ends one
//! worker. That guest process gets the error from then on (sticky, as CUDA's context errors
//! are); the mediator and every other guest go on. The mediator never loads the driver itself.
//! A wait stopped for running past its VM's execution time limit ends the worker the same way:
//! destroying the context is how a kernel on a GPU is stopped.
//!
//! The mediator keeps what is shared (scheduling, quotas, accounting, the client's pinned
//! memory); the worker checks every handle and address again against its own session.

use crate::backend::{Backend, CmdError, CmdResult, DeviceSession, HostFile, HostSpan, LaunchDims, ProcessUsage, Shared, UsageTable};
use vgpu_uapi::share::{KIND_EVENT, KIND_MEMORY, KIND_PHYSICAL};
use crate::cancel::Reason;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use vgpu_uapi::array::{ArrayDesc, Copy3D, ResourceDesc, SamplerDesc};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{DeviceInfo, FunctionInfo, MsgHeader, Op, COPY_CHUNK, HEADER_LEN, HELLO_OBSERVER, MSG_MAGIC};
use vgpu_uapi::wire::{Reader, Writer};

/// What a worker's session shared, as the worker described it (the driver's IPC handle and the
/// size, for the cuda backend; for VMM memory the driver's file descriptor and the size):
/// opaque here, handed to the worker that opens it. The descriptor is closed when the export
/// ends (the owner freed the allocation or went away).
struct WorkerShared {
    kind: u32,
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
}

/// How to start a worker: the executable (vgpu-hostd) and the driver and device it serves.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub exe: PathBuf,
    pub driver: Option<PathBuf>,
    pub device: u32,
}

impl WorkerSpec {
    /// Workers of the running vgpu-hostd (or, from a test binary, of the vgpu-hostd built
    /// beside it).
    pub fn this_executable(driver: Option<&Path>, device: u32) -> Result<WorkerSpec, String> {
        let me = std::env::current_exe().map_err(|e| format!("cannot find our own executable to start workers: {e}"))?;
        let is_hostd = |p: &Path| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vgpu-hostd"));
        let exe = if is_hostd(&me) {
            me
        } else {
            me.ancestors().skip(1).take(2).map(|d| d.join("vgpu-hostd")).find(|p| p.is_file()).ok_or_else(|| format!("{} is not vgpu-hostd and none is built beside it", me.display()))?
        };
        Ok(WorkerSpec { exe, driver: driver.map(Path::to_path_buf), device })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--worker").arg("--cuda-device").arg(self.device.to_string());
        if let Some(d) = &self.driver {
            c.arg("--cuda-driver").arg(d);
        }
        c
    }
}

/// A request the worker could not answer: it replied with an error (the session goes on), or
/// it is gone (every later request fails with this error).
enum Failure {
    Status(CmdError),
    Lost(CmdError),
}

/// A running worker and the mediator's end of its socket.
struct Worker {
    child: Child,
    stream: UnixStream,
    /// The worker's standard output: what the driver prints for kernels (device printf).
    output: Option<std::io::PipeReader>,
    /// Printed and not yet taken by the client, at most `MAX_OUTPUT` bytes; `dropped` beyond.
    printed: Vec<u8>,
    dropped: u64,
    seq: u32,
    /// Requests sent whose replies are still to be read, oldest first.
    unanswered: std::collections::VecDeque<Op>,
    /// Descriptors that came with the replies read (a shareable VMM handle's), not yet taken.
    fds: Vec<OwnedFd>,
}

/// How long a worker may take to free its session and exit once its client is gone.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Most requests sent ahead without reading their replies. Each reply is a bare header, but
/// one the worker writes alone costs the socket's buffer about a kilobyte: this many fit it
/// (about 200 KiB), so the worker never blocks on its replies while we send to it.
const MAX_AHEAD: usize = 64;
/// How long one write to a worker waits before looking at the cancel token again.
const SEND_POLL: Duration = Duration::from_millis(50);
/// Device printf output kept for a client between its collections (as a launch's reply on
/// the sim backend).
const MAX_OUTPUT: usize = 1 << 20;
/// How often a request's wait looks at the client's cancel token.
const CANCEL_POLL_MS: i32 = 20;

impl Worker {
    fn spawn(spec: &WorkerSpec) -> io::Result<Worker> {
        let (ours, theirs) = UnixStream::pair()?;
        // What the driver prints for kernels (device printf) comes back through a pipe, for
        // the client to collect after synchronizing.
        let (output, output_w) = io::pipe()?;
        let child = spec.command().stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::from(output_w)).spawn()?;
        ours.set_write_timeout(Some(SEND_POLL))?;
        Ok(Worker { child, stream: ours, output: Some(output), printed: Vec::new(), dropped: 0, seq: 0, unanswered: Default::default(), fds: Vec::new() })
    }

    /// Sends one request; its reply is read by `receive`, in order. A send that cannot go on
    /// (the worker is stuck in the GPU and not reading) still watches the cancel token.
    fn send(&mut self, op: Op, parts: &[&[u8]]) -> Result<(), Failure> {
        let header = self.header(op, parts);
        self.send_parts(op, &header, parts)
    }

    fn header(&mut self, op: Op, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
        self.seq = self.seq.wrapping_add(1);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        MsgHeader { magic: MSG_MAGIC, op: op as u32, seq: self.seq, status: 0, payload_len: len as u32, reserved: 0 }.to_bytes()
    }

    /// Sends one small request with `fd` attached to its first byte (SCM_RIGHTS). The worker
    /// must have answered everything before it (it then reads this request, and the
    /// descriptor, alone).
    fn send_with_fd(&mut self, op: Op, parts: &[&[u8]], fd: std::os::fd::BorrowedFd<'_>) -> Result<(), Failure> {
        let header = self.header(op, parts);
        let msg: Vec<u8> = std::iter::once(&header[..]).chain(parts.iter().copied()).flatten().copied().collect();
        if let Err(e) = vgpu_client::transport::send_with_fd(&self.stream, &msg, fd) {
            return Err(self.lost(format!("cannot send {op:?} to the worker: {e}")));
        }
        self.unanswered.push_back(op);
        Ok(())
    }

    fn send_parts(&mut self, op: Op, header: &[u8], parts: &[&[u8]]) -> Result<(), Failure> {
        let token = crate::cancel::token();
        for part in std::iter::once(header).chain(parts.iter().copied()) {
            let mut at = 0;
            while at < part.len() {
                match self.stream.write(&part[at..]) {
                    Ok(0) => return Err(self.lost(format!("cannot send {op:?} to the worker: it closed its socket"))),
                    Ok(n) => at += n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {
                        if let Some(f) = token.as_ref().and_then(|t| t.check()).map(|r| self.cancelled(r)) {
                            return Err(f);
                        }
                    }
                    Err(e) => return Err(self.lost(format!("cannot send {op:?} to the worker: {e}"))),
                }
            }
        }
        self.unanswered.push_back(op);
        Ok(())
    }

    /// The client's work was cancelled while the worker had it: the worker is killed.
    fn cancelled(&mut self, reason: Reason) -> Failure {
        match reason {
            Reason::Hangup => self.kill(CmdError::new(CUDA_ERROR_LAUNCH_FAILED, "the client disconnected or was evicted")),
            Reason::TimeLimit(ms) => {
                let why = format!("the GPU work ran past the VM's execution time limit of {ms} ms: its context was destroyed");
                self.kill(CmdError::new(CUDA_ERROR_LAUNCH_TIMEOUT, why))
            }
        }
    }

    /// The reply to the oldest unanswered request. While the worker works, the serving
    /// thread's cancel token (client gone, time limit) is watched; when it fires the worker is
    /// killed.
    fn receive(&mut self, reply: &mut Vec<u8>) -> Result<(), Failure> {
        let Some(op) = self.unanswered.pop_front() else {
            return Err(self.kill(CmdError::new(CUDA_ERROR_UNKNOWN, "waiting for a reply to no request")));
        };
        // Wait for the reply, reading what the worker prints meanwhile (it could fill the pipe
        // and block before replying) and watching the cancel token.
        let token = crate::cancel::token();
        loop {
            let mut fds = [
                libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.output.as_ref().map_or(-1, |o| o.as_raw_fd()), events: libc::POLLIN, revents: 0 },
            ];
            let timeout = if token.is_some() { CANCEL_POLL_MS } else { -1 };
            // SAFETY: two valid pollfds for descriptors we keep open (a negative fd is ignored).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n > 0 && fds[1].revents != 0 {
                self.read_output();
            }
            if n > 0 && fds[0].revents != 0 {
                break;
            }
            if let Some(reason) = token.as_ref().and_then(|t| t.check()) {
                return Err(self.cancelled(reason));
            }
        }
        let mut hdr = [0u8; HEADER_LEN];
        if let Err(e) = self.read_exact_with_fds(&mut hdr) {
            return Err(self.lost(format!("no reply to {op:?}: {e}")));
        }
        let r = MsgHeader::from_bytes(&hdr);
        if r.validate().is_err() || r.op != op as u32 {
            return Err(self.kill(CmdError::new(CUDA_ERROR_UNKNOWN, format!("the worker's reply to {op:?} is out of sync"))));
        }
        reply.clear();
        reply.resize(r.payload_len as usize, 0);
        if let Err(e) = self.stream.read_exact(reply) {
            return Err(self.lost(format!("truncated reply to {op:?}: {e}")));
        }
        if r.status != CUDA_SUCCESS {
            let message = String::from_utf8_lossy(reply).into_owned();
            return Err(Failure::Status(CmdError::new(r.status, message)));
        }
        Ok(())
    }

    /// Reads exactly `out.len()` bytes, keeping any descriptor that comes with them.
    fn read_exact_with_fds(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            match crate::input::Input::receive(&self.stream, &mut self.fds, &mut out[done..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the worker printed and is waiting in the pipe (none: returns at once).
    fn read_output(&mut self) {
        let Some(pipe) = self.output.as_mut() else { return };
        let mut buf = [0u8; 64 << 10];
        loop {
            let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the pipe we hold.
            if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 || pfd.revents & libc::POLLIN == 0 {
                if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    self.output = None;
                }
                return;
            }
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => {
                    self.output = None;
                    return;
                }
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(self.printed.len()).min(n);
                    self.printed.extend_from_slice(&buf[..room]);
                    self.dropped += (n - room) as u64;
                }
            }
        }
    }

    /// What the worker's kernels printed since the last time.
    fn take_output(&mut self) -> Vec<u8> {
        self.read_output();
        let mut out = std::mem::take(&mut self.printed);
        if self.dropped > 0 {
            out.extend_from_slice(format!("\n[vgpu: {} more bytes of device printf output were dropped]\n", self.dropped).as_bytes());
            self.dropped = 0;
        }
        out
    }

    /// One request and its reply (nothing else unanswered).
    fn call(&mut self, op: Op, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<(), Failure> {
        self.send(op, parts)?;
        self.receive(reply)
    }

    /// The worker stopped answering: why, with how it ended.
    fn lost(&mut self, what: String) -> Failure {
        let deadline = Instant::now() + Duration::from_millis(500);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break format!("it ended ({s})"),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => break "it stopped answering".to_string(),
            }
        };
        tracing::warn!(worker = self.child.id(), "cuda worker lost: {what}; {status}");
        Failure::Lost(CmdError::new(CUDA_ERROR_LAUNCH_FAILED, format!("the GPU context of this process is gone ({what}; {status})")))
    }

    fn kill(&mut self, why: CmdError) -> Failure {
        tracing::warn!(worker = self.child.id(), code = why.code, "stopping cuda worker: {}", why.message);
        let _ = self.child.kill();
        Failure::Lost(why)
    }
}

impl Drop for Worker {
    /// The worker sees end of file, frees its session and exits; one that does not in time is
    /// killed (the driver frees what a dead process held).
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        tracing::warn!(worker = self.child.id(), "cuda worker did not exit within {EXIT_GRACE:?}; killed");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cuda backend as the mediator sees it: one worker per session, started at the session's
/// first request (an NVML observer that never asks for GPU work costs no worker).
pub struct WorkerBackend {
    spec: WorkerSpec,
    info: DeviceInfo,
    usage: Arc<UsageTable>,
}

impl WorkerBackend {
    /// Asks a first worker what the device is; fails, saying why, when the driver does not
    /// load there or has no such device.
    pub fn start(spec: WorkerSpec) -> Result<WorkerBackend, String> {
        let mut w = Worker::spawn(&spec).map_err(|e| format!("cannot start a worker ({}): {e}", spec.exe.display()))?;
        let mut reply = Vec::new();
        let why = |f: Failure| match f {
            Failure::Status(e) | Failure::Lost(e) => e.message,
        };
        w.call(Op::Hello, &[&vgpu_uapi::proto::hello_request(std::process::id(), HELLO_OBSERVER)], &mut reply).map_err(why)?;
        w.call(Op::DeviceInfo, &[&0u32.to_le_bytes()], &mut reply).map_err(why)?;
        let info = Reader::new(&reply).device_info().map_err(|_| "the worker's device description is malformed".to_string())?;
        Ok(WorkerBackend { spec, info, usage: Arc::default() })
    }

    pub fn driver_path(&self) -> &Path {
        self.spec.driver.as_deref().unwrap_or(Path::new(crate::cuda::driver::SYSTEM_DRIVER))
    }

    fn check_device(&self, device: u32) -> CmdResult<()> {
        crate::backend::check_single_device(device)
    }
}


impl Backend for WorkerBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// The driver prints at synchronization, into the worker's stdout.
    fn output_after_sync(&self) -> bool {
        true
    }

    /// Kernels are timed with events in the worker.
    fn measures_gpu_time(&self) -> bool {
        true
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        vec![self.info]
    }

    fn open_session(&self, device: u32, pid: u32, observer: bool) -> CmdResult<Box<dyn DeviceSession>> {
        self.check_device(device)?;
        let usage_id = self.usage.open(pid, observer);
        Ok(Box::new(RemoteSession {
            spec: self.spec.clone(),
            pid,
            worker: RefCell::new(None),
            dead: RefCell::new(None),
            usage: self.usage.clone(),
            usage_id,
            total_mem: self.info.total_mem,
            used: RefCell::new(0),
            gpu_ns: RefCell::new(0),
            gpu_ns_charged: 0,
            timed_work_pending: false,
            deferred: RefCell::new(None),
            host_files: HashMap::new(),
        }))
    }

    fn memory_usage(&self, device: u32) -> CmdResult<(u64, u64)> {
        self.usage.single_device_usage(device, self.info.total_mem)
    }

    fn processes(&self, device: u32) -> CmdResult<Vec<ProcessUsage>> {
        self.usage.single_device_processes(device)
    }
}

/// A session served by its own worker process.
struct RemoteSession {
    spec: WorkerSpec,
    pid: u32,
    worker: RefCell<Option<Worker>>,
    /// Why the worker is gone: every request fails with this from then on.
    dead: RefCell<Option<CmdError>>,
    usage: Arc<UsageTable>,
    usage_id: u64,
    total_mem: u64,
    /// What the worker last said the session holds.
    used: RefCell<u64>,
    /// GPU time of the session's kernels: as the worker last said, and as charged so far.
    gpu_ns: RefCell<u64>,
    gpu_ns_charged: u64,
    /// Kernels were launched whose GPU time may not have been collected yet: waits ask the
    /// worker for it only then (until a synchronization of the whole context has collected all).
    timed_work_pending: bool,
    /// The first failure of work sent ahead, not yet reported.
    deferred: RefCell<Option<CmdError>>,
    /// Host memory of the mediator's (a client's pinned memory, the VM's RAM) that the worker
    /// mapped too, by `HostFile::id`: its handle there (None: the worker could not map it, and
    /// its bytes are sent), and the file, to unmap it there once the mediator has let it go.
    host_files: HashMap<u64, (Option<u64>, Weak<HostFile>)>,
}

impl Drop for RemoteSession {
    fn drop(&mut self) {
        self.worker.get_mut().take();
        self.usage.close(self.usage_id);
    }
}

fn u64s(v: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(v.len() * 8);
    v.iter().for_each(|&x| b.put_u64(x));
    b
}

fn malformed(op: Op) -> CmdError {
    CmdError::new(CUDA_ERROR_UNKNOWN, format!("the worker's reply to {op:?} is malformed"))
}

/// Requests sent ahead without waiting for their replies, as CUDA queues them on a stream: a
/// failure is reported by a later call, as the driver reports a stream's errors.
fn goes_ahead(op: Op) -> bool {
    matches!(op, Op::Launch | Op::LaunchCooperative | Op::Memset | Op::MemcpyHtoD | Op::MemcpyDtoD | Op::EventRecord | Op::StreamWaitEvent)
}

/// Calls that report an earlier failure of work sent ahead: those that wait for it or read its
/// results, and further queued work. (Not an allocation: a client told it failed would lose it.)
fn reports_deferred(op: Op) -> bool {
    goes_ahead(op) || matches!(op, Op::Synchronize | Op::StreamSynchronize | Op::EventSynchronize | Op::StreamQuery | Op::EventQuery | Op::MemcpyDtoH | Op::MemcpyHtoDHost | Op::MemcpyDtoHHost | Op::Memcpy3D)
}

impl RemoteSession {
    /// The running worker (started on first use), or why there is none.
    fn worker(&self) -> CmdResult<std::cell::RefMut<'_, Worker>> {
        if let Some(e) = &*self.dead.borrow() {
            return Err(e.clone());
        }
        let mut slot = self.worker.borrow_mut();
        if slot.is_none() {
            match self.start_worker() {
                Ok(w) => *slot = Some(w),
                Err(Failure::Status(e) | Failure::Lost(e)) => {
                    *self.dead.borrow_mut() = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(std::cell::RefMut::map(slot, |w| w.as_mut().expect("started above")))
    }

    /// The worker is gone: every call fails with `e` from now on.
    fn died(&self, e: CmdError) -> CmdError {
        *self.dead.borrow_mut() = Some(e.clone());
        self.worker.borrow_mut().take();
        // The driver freed everything the worker held.
        *self.used.borrow_mut() = 0;
        self.usage.set_used(self.usage_id, 0);
        e
    }

    /// Reads replies of work sent ahead until at most `keep` are unanswered; the first failure
    /// is kept for a later call to report.
    fn collect(&self, w: &mut Worker, keep: usize) -> Result<(), CmdError> {
        let mut scratch = Vec::new();
        while w.unanswered.len() > keep {
            match w.receive(&mut scratch) {
                Ok(()) => {}
                Err(Failure::Status(e)) => {
                    self.deferred.borrow_mut().get_or_insert(e);
                }
                Err(Failure::Lost(e)) => return Err(e),
            }
        }
        Ok(())
    }

    fn call_into(&self, op: Op, parts: &[&[u8]], reply: &mut Vec<u8>) -> CmdResult<()> {
        let mut w = self.worker()?;
        let mut exchange = || -> Result<(), Failure> {
            w.send(op, parts)?;
            if goes_ahead(op) {
                reply.clear();
                self.collect(&mut w, MAX_AHEAD).map_err(Failure::Lost)
            } else {
                // Replies come in order: those of the work sent ahead first, then this one's.
                self.collect(&mut w, 1).map_err(Failure::Lost)?;
                w.receive(reply)
            }
        };
        let r = exchange();
        drop(w);
        match r {
            Err(Failure::Lost(e)) => Err(self.died(e)),
            Err(Failure::Status(e)) => Err(e),
            Ok(()) => match reports_deferred(op).then(|| self.deferred.borrow_mut().take()).flatten() {
                Some(e) => Err(e),
                None => Ok(()),
            },
        }
    }

    fn call(&self, op: Op, parts: &[&[u8]]) -> CmdResult<Vec<u8>> {
        let mut reply = Vec::new();
        self.call_into(op, parts, &mut reply)?;
        Ok(reply)
    }

    fn call_u64(&self, op: Op, args: &[u64]) -> CmdResult<u64> {
        let reply = self.call(op, &[&u64s(args)])?;
        let mut r = Reader::new(&reply);
        let v = r.u64().map_err(|_| malformed(op))?;
        r.finish().map_err(|_| malformed(op))?;
        Ok(v)
    }

    fn call_unit(&self, op: Op, args: &[u64]) -> CmdResult<()> {
        self.call(op, &[&u64s(args)]).map(drop)
    }

    /// A sharing request, alone on the socket: every reply before it is read first, so that a
    /// descriptor (`fd`, attached to the request; or one the worker attaches to the reply) goes
    /// with this request and no other. Returns the reply and the descriptor that came with it.
    fn share_call(&self, op: Op, parts: &[&[u8]], fd: Option<std::os::fd::BorrowedFd<'_>>) -> CmdResult<(Vec<u8>, Option<OwnedFd>)> {
        let mut w = self.worker()?;
        let mut reply = Vec::new();
        let mut exchange = || -> Result<Option<OwnedFd>, Failure> {
            self.collect(&mut w, 0).map_err(Failure::Lost)?;
            w.fds.clear();
            match fd {
                Some(fd) => w.send_with_fd(op, parts, fd)?,
                None => w.send(op, parts)?,
            }
            w.receive(&mut reply)?;
            Ok(w.fds.drain(..).next())
        };
        let r = exchange();
        drop(w);
        match r {
            Err(Failure::Lost(e)) => Err(self.died(e)),
            Err(Failure::Status(e)) => Err(e),
            Ok(fd) => Ok((reply, fd)),
        }
    }

    /// What the worker's session shares of `what` (its driver's handle, as bytes, and a file
    /// descriptor for VMM memory: see Connection::share_op_in_worker), with the base address
    /// of memory.
    fn export(&self, kind: u32, what: u64) -> CmdResult<(u64, Shared)> {
        let (reply, fd) = self.share_call(Op::ShareExport, &[&kind.to_le_bytes(), &what.to_le_bytes()], None)?;
        let mut r = Reader::new(&reply);
        let base = r.u64().map_err(|_| malformed(Op::ShareExport))?;
        if (kind == KIND_PHYSICAL) != fd.is_some() {
            return Err(malformed(Op::ShareExport));
        }
        Ok((base, Arc::new(WorkerShared { kind, bytes: r.rest().to_vec(), fd })))
    }

    /// Opens in this worker what another worker of the VM shared: (what, size).
    fn import(&self, kind: u32, shared: &Shared) -> CmdResult<(u64, u64)> {
        use std::os::fd::AsFd;
        let s = shared.downcast_ref::<WorkerShared>().filter(|s| s.kind == kind).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, "not shared through a cuda worker"))?;
        let (reply, _) = self.share_call(Op::ShareImport, &[&kind.to_le_bytes(), &s.bytes], s.fd.as_ref().map(|f| f.as_fd()))?;
        let mut r = Reader::new(&reply);
        let (what, size) = (r.u64().map_err(|_| malformed(Op::ShareImport))?, r.u64().map_err(|_| malformed(Op::ShareImport))?);
        Ok((what, size))
    }

    fn start_worker(&self) -> Result<Worker, Failure> {
        let mut w = Worker::spawn(&self.spec).map_err(|e| Failure::Lost(CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, format!("cannot start a cuda worker: {e}"))))?;
        tracing::debug!(client = self.pid, worker = w.child.id(), "cuda worker started");
        w.call(Op::Hello, &[&vgpu_uapi::proto::hello_request(self.pid, 0)], &mut Vec::new())?;
        Ok(w)
    }

    /// Asks the worker what the session holds now (after anything that allocates or frees)
    /// and how much GPU time its kernels have taken (after waits for them).
    fn refresh_usage(&self) {
        let Ok(reply) = self.call(Op::SessionUsage, &[]) else { return };
        let mut r = Reader::new(&reply);
        if let (Ok(used), Ok(gpu_ns)) = (r.u64(), r.u64()) {
            *self.used.borrow_mut() = used;
            *self.gpu_ns.borrow_mut() = gpu_ns;
            self.usage.set_used(self.usage_id, used);
        }
    }

    /// After a wait for the GPU: collects the GPU time of the kernels it covered, if any were
    /// launched since everything was last collected (`all`: the wait covered every stream).
    fn after_wait(&mut self, all: bool) {
        if self.timed_work_pending {
            self.refresh_usage();
            self.timed_work_pending &= !all;
        }
    }

    /// The worker's handle for host memory of the mediator's, which the worker maps at the
    /// first copy (HostRegister with the file's descriptor, and the driver page-locks it):
    /// None where it cannot. What the mediator has let go of is unmapped there first.
    fn worker_host_file(&mut self, file: &Arc<HostFile>) -> Option<u64> {
        use std::os::fd::AsFd;
        let gone: Vec<(u64, Option<u64>)> = self.host_files.iter().filter(|(_, (_, f))| f.strong_count() == 0).map(|(&id, &(h, _))| (id, h)).collect();
        for (id, h) in gone {
            self.host_files.remove(&id);
            if let Some(h) = h {
                let _ = self.call_unit(Op::HostUnregister, &[h]);
            }
        }
        if let Some(&(h, _)) = self.host_files.get(&file.id) {
            return h;
        }
        if self.dead.borrow().is_some() {
            return None; // the copy reports why
        }
        let h = match self.share_call(Op::HostRegister, &[&u64s(&[file.len, file.offset])], Some(file.fd.as_fd())) {
            Ok((reply, _)) => Reader::new(&reply).u64().ok(),
            Err(e) => {
                tracing::warn!(bytes = file.len, "the cuda worker could not map host memory (its copies are sent as bytes): {}", e.message);
                None
            }
        };
        self.host_files.insert(file.id, (h, Arc::downgrade(file)));
        h
    }

    fn name_request(module: u64, name: &str) -> Vec<u8> {
        let mut b = u64s(&[module]);
        b.extend_from_slice(name.as_bytes());
        b
    }
}

impl DeviceSession for RemoteSession {
    fn mem_get_info(&self) -> (u64, u64) {
        match self.call(Op::MemGetInfo, &[]) {
            Ok(reply) if reply.len() == 16 => {
                let mut r = Reader::new(&reply);
                (r.u64().unwrap_or(0), r.u64().unwrap_or(self.total_mem))
            }
            _ => (self.total_mem.saturating_sub(*self.used.borrow()), self.total_mem),
        }
    }

    /// As of the last call that allocates or frees (each asks the worker afterwards).
    fn used_bytes(&self) -> u64 {
        *self.used.borrow()
    }

    fn mem_alloc(&mut self, bytes: u64) -> CmdResult<u64> {
        let r = self.call_u64(Op::MemAlloc, &[bytes]);
        self.refresh_usage();
        r
    }

    fn mem_free(&mut self, dptr: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::MemFree, &[dptr]);
        self.refresh_usage();
        r
    }

    fn mem_address_range(&self, dptr: u64) -> CmdResult<(u64, u64)> {
        let reply = self.call(Op::MemGetAddressRange, &[&u64s(&[dptr])])?;
        let mut r = Reader::new(&reply);
        Ok((r.u64().map_err(|_| malformed(Op::MemGetAddressRange))?, r.u64().map_err(|_| malformed(Op::MemGetAddressRange))?))
    }

    fn mem_buffer_id(&self, dptr: u64) -> CmdResult<u64> {
        let reply = self.call(Op::MemGetAddressRange, &[&u64s(&[dptr])])?;
        let mut r = Reader::new(&reply);
        r.bytes(16).and_then(|_| r.u64()).map_err(|_| CmdError::new(vgpu_uapi::cuda::CUDA_ERROR_NOT_SUPPORTED, "the cuda worker reports no buffer id"))
    }

    fn write(&mut self, dst: u64, data: &[u8]) -> CmdResult<()> {
        // In chunks, as a client sends them; the first failing chunk is the copy's result.
        let mut at = 0;
        loop {
            let chunk = &data[at..data.len().min(at + COPY_CHUNK)];
            self.call(Op::MemcpyHtoD, &[&u64s(&[dst.wrapping_add(at as u64)]), chunk])?;
            at += chunk.len();
            if at >= data.len() {
                return Ok(());
            }
        }
    }

    fn read(&mut self, src: u64, out: &mut [u8]) -> CmdResult<()> {
        let mut reply = Vec::new();
        for (i, chunk) in out.chunks_mut(COPY_CHUNK).enumerate() {
            let at = src.wrapping_add((i * COPY_CHUNK) as u64);
            self.call_into(Op::MemcpyDtoH, &[&u64s(&[at, chunk.len() as u64])], &mut reply)?;
            if reply.len() != chunk.len() {
                return Err(malformed(Op::MemcpyDtoH));
            }
            chunk.copy_from_slice(&reply);
        }
        if out.is_empty() {
            self.call_into(Op::MemcpyDtoH, &[&u64s(&[src, 0])], &mut reply)?;
        }
        // A copy back waited for the kernels before it: their GPU time is known now.
        self.after_wait(false);
        Ok(())
    }

    /// Straight from the mapping the worker shares (a client's pinned memory, the VM's RAM),
    /// with no bytes on the socket. The copy is finished when this returns: the mediator's
    /// guest pins rely on that (no copy touches pages once they are unpinned).
    fn write_host(&mut self, dst: u64, src: HostSpan<'_>) -> CmdResult<()> {
        match src.file.and_then(|f| self.worker_host_file(f)) {
            Some(h) => self.call_unit(Op::MemcpyHtoDHost, &[dst, h, src.offset, src.bytes.len() as u64]),
            None => self.write(dst, src.bytes),
        }
    }

    fn read_host(&mut self, src: u64, dst: HostSpan<'_>) -> CmdResult<()> {
        match dst.file.and_then(|f| self.worker_host_file(f)) {
            Some(h) => {
                self.call_unit(Op::MemcpyDtoHHost, &[src, h, dst.offset, dst.bytes.len() as u64])?;
                self.after_wait(false);
                Ok(())
            }
            None => self.read(src, dst.bytes),
        }
    }

    fn reaches_host_files(&self) -> bool {
        true
    }

    fn copy(&mut self, dst: u64, src: u64, len: u64) -> CmdResult<()> {
        self.call_unit(Op::MemcpyDtoD, &[dst, src, len])
    }

    fn memset(&mut self, dst: u64, value: u32, elem_size: u32, count: u64) -> CmdResult<()> {
        let mut b = u64s(&[dst]);
        b.put_u32(value);
        b.put_u32(elem_size);
        b.put_u64(count);
        self.call(Op::Memset, &[&b]).map(drop)
    }

    fn module_load(&mut self, image: &[u8]) -> CmdResult<u64> {
        let reply = vgpu_uapi::proto::module_load(image, |op, parts| self.call(op, parts));
        self.refresh_usage();
        let reply = reply?;
        Reader::new(&reply).u64().map_err(|_| malformed(Op::ModuleLoad))
    }

    fn module_unload(&mut self, module: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::ModuleUnload, &[module]);
        self.refresh_usage();
        r
    }

    fn module_get_function(&mut self, module: u64, name: &str) -> CmdResult<(FunctionInfo, Vec<(u32, u32)>)> {
        let reply = self.call(Op::ModuleGetFunction, &[&Self::name_request(module, name)])?;
        let bad = || malformed(Op::ModuleGetFunction);
        let mut r = Reader::new(&reply);
        let info = r.function_info().map_err(|_| bad())?;
        let mut params = Vec::new();
        while r.remaining() > 0 {
            params.push((r.u32().map_err(|_| bad())?, r.u32().map_err(|_| bad())?));
        }
        Ok((info, params))
    }

    fn module_get_global(&mut self, module: u64, name: &str) -> CmdResult<(u64, u64)> {
        let reply = self.call(Op::ModuleGetGlobal, &[&Self::name_request(module, name)])?;
        let mut r = Reader::new(&reply);
        let bad = || malformed(Op::ModuleGetGlobal);
        let v = (r.u64().map_err(|_| bad())?, r.u64().map_err(|_| bad())?);
        self.refresh_usage();
        Ok(v)
    }

    fn module_functions(&self, module: u64) -> CmdResult<Vec<String>> {
        let reply = self.call(Op::ModuleEnumerateFunctions, &[&u64s(&[module])])?;
        let bad = || malformed(Op::ModuleEnumerateFunctions);
        let mut r = Reader::new(&reply);
        let n = r.u32().map_err(|_| bad())?;
        let mut names = Vec::new();
        for _ in 0..n {
            let len = r.u32().map_err(|_| bad())? as usize;
            names.push(String::from_utf8_lossy(r.bytes(len).map_err(|_| bad())?).into_owned());
        }
        Ok(names)
    }

    fn launch(&mut self, function: u64, dims: LaunchDims, params: &[u8]) -> CmdResult<Vec<u8>> {
        let mut b = u64s(&[function]);
        dims.grid.iter().chain(&dims.block).for_each(|&v| b.put_u32(v));
        b.put_u32(dims.dynamic_shared_bytes);
        b.put_u64(dims.stream);
        self.timed_work_pending = true;
        self.call(if dims.cooperative { Op::LaunchCooperative } else { Op::Launch }, &[&b, params])
    }

    fn stream_create(&mut self, flags: u32, priority: i32) -> CmdResult<u64> {
        let mut b = Vec::new();
        b.put_u32(flags);
        b.put_u32(priority as u32);
        let reply = self.call(Op::StreamCreate, &[&b])?;
        Reader::new(&reply).u64().map_err(|_| malformed(Op::StreamCreate))
    }

    fn stream_destroy(&mut self, stream: u64) -> CmdResult<()> {
        self.call_unit(Op::StreamDestroy, &[stream])
    }

    fn stream_synchronize(&mut self, stream: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::StreamSynchronize, &[stream]);
        self.after_wait(false);
        r
    }

    fn stream_query(&mut self, stream: u64) -> CmdResult<()> {
        self.call_unit(Op::StreamQuery, &[stream])
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64) -> CmdResult<()> {
        self.call_unit(Op::StreamWaitEvent, &[stream, event])
    }

    fn event_create(&mut self, flags: u32) -> CmdResult<u64> {
        let reply = self.call(Op::EventCreate, &[&flags.to_le_bytes()])?;
        Reader::new(&reply).u64().map_err(|_| malformed(Op::EventCreate))
    }

    fn event_destroy(&mut self, event: u64) -> CmdResult<()> {
        self.call_unit(Op::EventDestroy, &[event])
    }

    fn event_record(&mut self, event: u64, stream: u64) -> CmdResult<()> {
        self.call_unit(Op::EventRecord, &[event, stream])
    }

    fn event_synchronize(&mut self, event: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::EventSynchronize, &[event]);
        self.after_wait(false);
        r
    }

    fn event_query(&mut self, event: u64) -> CmdResult<()> {
        self.call_unit(Op::EventQuery, &[event])
    }

    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> CmdResult<f32> {
        let reply = self.call(Op::EventElapsedTime, &[&u64s(&[start, end])])?;
        Reader::new(&reply).u32().map(f32::from_bits).map_err(|_| malformed(Op::EventElapsedTime))
    }

    fn array_create(&mut self, desc: &ArrayDesc) -> CmdResult<u64> {
        let mut b = Vec::new();
        desc.encode(&mut b);
        let r = self.call(Op::ArrayCreate, &[&b]).and_then(|reply| Reader::new(&reply).u64().map_err(|_| malformed(Op::ArrayCreate)));
        self.refresh_usage();
        r
    }

    fn array_destroy(&mut self, array: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::ArrayDestroy, &[array]);
        self.refresh_usage();
        r
    }

    fn memcpy_3d(&mut self, c: &Copy3D, host_in: &[u8], host_out: &mut Vec<u8>) -> CmdResult<()> {
        let mut b = Vec::new();
        c.encode(&mut b);
        let reply = self.call(Op::Memcpy3D, &[&b, host_in])?;
        host_out.extend_from_slice(&reply);
        if c.dst.kind == vgpu_uapi::array::MEM_HOST {
            // A copy back waited for the kernels before it: their GPU time is known now.
            self.after_wait(false);
        }
        Ok(())
    }

    fn tex_create(&mut self, res: &ResourceDesc, sampler: &SamplerDesc) -> CmdResult<u64> {
        let mut b = Vec::new();
        res.encode(&mut b);
        sampler.encode(&mut b);
        let reply = self.call(Op::TexObjectCreate, &[&b])?;
        Reader::new(&reply).u64().map_err(|_| malformed(Op::TexObjectCreate))
    }

    fn tex_destroy(&mut self, tex: u64) -> CmdResult<()> {
        self.call_unit(Op::TexObjectDestroy, &[tex])
    }

    fn surf_create(&mut self, res: &ResourceDesc) -> CmdResult<u64> {
        let mut b = Vec::new();
        res.encode(&mut b);
        let reply = self.call(Op::SurfObjectCreate, &[&b])?;
        Reader::new(&reply).u64().map_err(|_| malformed(Op::SurfObjectCreate))
    }

    fn surf_destroy(&mut self, surf: u64) -> CmdResult<()> {
        self.call_unit(Op::SurfObjectDestroy, &[surf])
    }

    fn share_memory(&mut self, dptr: u64) -> CmdResult<(u64, Shared)> {
        self.export(KIND_MEMORY, dptr)
    }

    fn share_event(&mut self, event: u64) -> CmdResult<Shared> {
        self.export(KIND_EVENT, event).map(|(_, s)| s)
    }

    fn open_memory(&mut self, shared: &Shared) -> CmdResult<(u64, u64)> {
        let r = self.import(KIND_MEMORY, shared);
        self.refresh_usage();
        r
    }

    fn open_event(&mut self, shared: &Shared) -> CmdResult<u64> {
        self.import(KIND_EVENT, shared).map(|(e, _)| e)
    }

    fn share_physical(&mut self, handle: u64) -> CmdResult<Shared> {
        self.export(KIND_PHYSICAL, handle).map(|(_, s)| s)
    }

    fn open_physical(&mut self, shared: &Shared) -> CmdResult<(u64, u64)> {
        let r = self.import(KIND_PHYSICAL, shared);
        self.refresh_usage();
        r
    }

    fn close_memory(&mut self, base: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::ShareClose, &[base]);
        self.refresh_usage();
        r
    }

    fn reset(&mut self) -> CmdResult<()> {
        let r = self.call_unit(Op::SessionReset, &[]);
        // What failed before the reset is what it cleared.
        self.deferred.borrow_mut().take();
        self.refresh_usage();
        r
    }

    fn synchronize(&mut self) -> CmdResult<()> {
        let r = self.call_unit(Op::Synchronize, &[]);
        self.after_wait(true);
        r
    }

    fn vmm_create(&mut self, size: u64) -> CmdResult<u64> {
        let r = self.call_u64(Op::MemCreate, &[size]);
        self.refresh_usage();
        r
    }

    fn vmm_release(&mut self, handle: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::MemRelease, &[handle]);
        self.refresh_usage();
        r
    }

    fn vmm_reserve(&mut self, size: u64, alignment: u64, hint: u64) -> CmdResult<u64> {
        self.call_u64(Op::MemAddressReserve, &[size, alignment, hint])
    }

    fn vmm_unreserve(&mut self, va: u64, size: u64) -> CmdResult<()> {
        self.call_unit(Op::MemAddressFree, &[va, size])
    }

    fn vmm_map(&mut self, va: u64, size: u64, offset: u64, handle: u64) -> CmdResult<()> {
        self.call_unit(Op::MemMap, &[va, size, offset, handle])
    }

    fn vmm_unmap(&mut self, va: u64, size: u64) -> CmdResult<()> {
        let r = self.call_unit(Op::MemUnmap, &[va, size]);
        self.refresh_usage();
        r
    }

    fn vmm_set_access(&mut self, va: u64, size: u64) -> CmdResult<()> {
        self.call_unit(Op::MemSetAccess, &[va, size])
    }

    fn take_gpu_time(&mut self) -> u64 {
        let now = *self.gpu_ns.get_mut();
        let d = now.saturating_sub(self.gpu_ns_charged);
        self.gpu_ns_charged = now.max(self.gpu_ns_charged);
        d
    }

    fn take_output(&mut self) -> Vec<u8> {
        self.worker.get_mut().as_mut().map(Worker::take_output).unwrap_or_default()
    }
}

/// A backend whose driver did not load: every session is refused with the reason.
struct NoDriver(String);

impl Backend for NoDriver {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn devices(&self) -> Vec<DeviceInfo> {
        Vec::new()
    }
    fn open_session(&self, _: u32, _: u32, _: bool) -> CmdResult<Box<dyn DeviceSession>> {
        Err(CmdError::new(CUDA_ERROR_NO_DEVICE, self.0.clone()))
    }
    fn memory_usage(&self, _: u32) -> CmdResult<(u64, u64)> {
        Err(CmdError::new(CUDA_ERROR_NO_DEVICE, self.0.clone()))
    }
    fn processes(&self, _: u32) -> CmdResult<Vec<ProcessUsage>> {
        Err(CmdError::new(CUDA_ERROR_NO_DEVICE, self.0.clone()))
    }
}

/// `vgpu-hostd --worker`: serves the one session of the mediator's socket on standard input
/// until it closes; returns the exit status.
pub fn run(driver: Option<&Path>, device: u32) -> i32 {
    // SAFETY: the mediator starts workers with their socket as standard input; the worker takes
    // descriptor 0 over, and nothing else in this process uses it.
    let stream = unsafe { UnixStream::from_raw_fd(0) };
    if stream.local_addr().is_err() {
        // Not a socket: the descriptor stays stdin's.
        std::mem::forget(stream);
        eprintln!("vgpu-hostd --worker is started by vgpu-hostd itself, with its socket as standard input");
        return 2;
    }
    // SAFETY: prctl with integer arguments only. A worker ends with the mediator: the kernel
    // kills it when the thread that started it is gone.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let backend: Box<dyn Backend> = match crate::cuda::CudaBackend::load(driver, device) {
        Ok(b) => {
            tracing::debug!(driver = %b.driver_path().display(), version = b.driver_version(), "cuda worker serving");
            Box::new(b)
        }
        Err(why) => Box::new(NoDriver(format!("backend cuda: {why}"))),
    };
    let mut conn = crate::dispatch::Connection::new(backend.as_ref());
    // The driver's device printf goes through C's stdout: flushed before each reply, so that
    // what a synchronization printed is in the pipe when the mediator hears it is done.
    match crate::server::serve_requests(stream, &mut conn, "cuda-worker", true) {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!("cuda worker: connection ended: {e}");
            0
        }
    }
}
