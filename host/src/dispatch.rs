//! Decodes one client request (untrusted bytes), runs it on the client's session and encodes
//! the reply. A malformed request gets CUDA_ERROR_INVALID_VALUE; an unknown opcode gets
//! CUDA_ERROR_NOT_SUPPORTED. Nothing here panics on any input.

use crate::backend::{Backend, CmdError, CmdResult, DeviceSession, HostFile, HostSpan, LaunchDims};
use crate::share::Token;
use vgpu_uapi::share::{KIND_EVENT, KIND_MEMORY, KIND_PHYSICAL};
use crate::vms::{Client, Gpu, Vm};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vgpu_uapi::array::{ArrayDesc, Copy3D, ResourceDesc, SamplerDesc, MEM_ARRAY, MEM_DEVICE, MEM_HOST};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{Op, COPY_CHUNK, HELLO_GUEST_PINNED, HELLO_OBSERVER, HELLO_OUTPUT_AFTER_SYNC, HELLO_PTX_ONLY, MAX_NAME_LEN, MAX_PARAM_BYTES};
use vgpu_uapi::wire::{Reader, Truncated, Writer};
use vgpu_uapi::PROTOCOL_VERSION;

impl From<Truncated> for CmdError {
    fn from(_: Truncated) -> Self {
        CmdError::new(CUDA_ERROR_INVALID_VALUE, "malformed request payload")
    }
}

/// Per-connection state: the session is opened by Hello.
pub struct Connection<'b> {
    backend: &'b dyn Backend,
    session: Option<Box<dyn DeviceSession>>,
    pub client_pid: u32,
    share: Option<Share>,
    /// The client's pinned host memory, shared with us (HostRegister), by handle.
    host: HashMap<u64, HostRegion>,
    next_host: u64,
    /// Descriptors the client sent with its current request.
    fds: Vec<OwnedFd>,
    /// A descriptor to send with the reply to the current request (a worker's shareable VMM
    /// handle, to the mediator): see `take_reply_fd`.
    reply_fd: Option<OwnedFd>,
    /// A module image arriving in parts (ModuleImagePart), loaded by an empty ModuleLoad.
    staged_image: Vec<u8>,
    /// A kernel faulted (CUDA's sticky context errors): every request that needs the context
    /// gets this error until a SessionReset.
    sticky: Option<CmdError>,
    /// Memory this session opened from other processes of its VM, by token: (base, size, times
    /// opened), so that opening it again gives the same mapping, as in CUDA.
    opened: HashMap<Token, (u64, u64, u32)>,
    /// The VM's RAM and pinned pages this connection shares (a device process's control
    /// connection), or reaches (a guest channel's connection): the zero-copy data path.
    guest_control: Option<Arc<crate::guest::GuestMemory>>,
    guest_link: Option<crate::guest::ChannelLink>,
    /// Requests handled so far (GuestChannel must be the first).
    requests: u64,
}

/// Pinned host memory a client may share with the mediator: at most this many regions,
/// this much in all (they are the client's own pages; the limit bounds our address space).
const MAX_HOST_REGIONS: usize = 4096;
const MAX_HOST_BYTES: u64 = 1 << 40;

/// The VM a connection belongs to and the GPU it is served on: its work is scheduled among
/// the GPU's VMs, its memory counts against the VM's quota, and what it does is accounted.
pub struct Share {
    pub vm: Arc<Vm>,
    pub gpu: Arc<Gpu>,
    pub client: Arc<Client>,
}

/// The session a Hello opened.
fn opened(session: &mut Option<Box<dyn DeviceSession>>) -> CmdResult<&mut dyn DeviceSession> {
    match session.as_deref_mut() {
        Some(s) => Ok(s),
        None => Err(CmdError::new(CUDA_ERROR_NOT_INITIALIZED, "request before Hello")),
    }
}

fn not_registered(handle: u64) -> CmdError {
    CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{handle} is not registered host memory"))
}

/// Host memory a client shared (HostRegister): our mapping, and its file where the session
/// reaches host memory through files (`DeviceSession::reaches_host_files`).
struct HostRegion {
    map: memmap2::MmapMut,
    file: Option<Arc<HostFile>>,
}

/// The registered host memory `handle` + [offset, offset + len).
fn host_range(host: &mut HashMap<u64, HostRegion>, handle: u64, offset: u64, len: u64) -> CmdResult<HostSpan<'_>> {
    let m = host.get_mut(&handle).ok_or_else(|| not_registered(handle))?;
    let end = offset.checked_add(len).filter(|&e| e <= m.map.len() as u64);
    let end = end.ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "range outside the registered host memory"))?;
    Ok(HostSpan { file: m.file.as_ref(), offset, bytes: &mut m.map[offset as usize..end as usize] })
}

/// Requests that occupy the GPU (the scheduler's unit of work).
fn is_gpu_work(op: Op) -> bool {
    matches!(op, Op::Launch | Op::LaunchCooperative | Op::MemcpyHtoD | Op::MemcpyDtoH | Op::MemcpyDtoD | Op::Memset | Op::MemcpyHtoDHost | Op::MemcpyDtoHHost | Op::Memcpy3D)
}

/// Requests during which a kernel runs: a launch (the sim runs it then), and the waits for the
/// GPU and copies back that follow it on an asynchronous backend (cuda). Each is bounded by the
/// VM's execution time limit.
fn waits_for_kernels(op: Op) -> bool {
    matches!(op, Op::Launch | Op::LaunchCooperative | Op::Synchronize | Op::StreamSynchronize | Op::EventSynchronize | Op::MemcpyDtoH | Op::MemcpyDtoHHost | Op::Memcpy3D)
}

/// Requests answered while the context has a sticky error: what does not need the context (the
/// device's identity and use, the client's host memory), the reset that clears it, and
/// unloading a module (a cuda backend unloads before it resets; see CudaSession::reset).
fn survives_sticky_error(op: Op) -> bool {
    matches!(
        op,
        Op::Hello
            | Op::DeviceInfo
            | Op::DeviceMemoryInfo
            | Op::DeviceProcesses
            | Op::SessionUsage
            | Op::DeviceOutput
            | Op::SessionReset
            | Op::HostRegister
            | Op::HostUnregister
            | Op::ModuleUnload
    )
}

/// What the session shares of `what` for `kind` (vgpu_uapi::share): the base address of memory
/// (or `what` itself), and the backend's object.
fn share_of(sess: &mut dyn DeviceSession, kind: u32, what: u64) -> CmdResult<(u64, crate::backend::Shared)> {
    match kind {
        KIND_MEMORY => sess.share_memory(what),
        KIND_PHYSICAL => Ok((what, sess.share_physical(what)?)),
        KIND_EVENT => Ok((what, sess.share_event(what)?)),
        _ => Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("unknown kind of shared object {kind}"))),
    }
}

/// Opens in the session what another shared: (base address, physical allocation or event; size).
fn open_shared(sess: &mut dyn DeviceSession, kind: u32, shared: &crate::backend::Shared) -> CmdResult<(u64, u64)> {
    match kind {
        KIND_MEMORY => sess.open_memory(shared),
        KIND_PHYSICAL => sess.open_physical(shared),
        KIND_EVENT => Ok((sess.open_event(shared)?, 0)),
        _ => Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("unknown kind of shared object {kind}"))),
    }
}

fn name_arg(bytes: &[u8]) -> CmdResult<&str> {
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "bad symbol name length"));
    }
    std::str::from_utf8(bytes).map_err(|_| CmdError::new(CUDA_ERROR_INVALID_VALUE, "symbol name is not UTF-8"))
}

impl<'b> Connection<'b> {
    /// A connection outside any VM: no scheduling, quota or accounting (tests, tools).
    pub fn new(backend: &'b dyn Backend) -> Self {
        Connection {
            backend,
            session: None,
            client_pid: 0,
            share: None,
            host: HashMap::new(),
            next_host: 0,
            fds: Vec::new(),
            reply_fd: None,
            staged_image: Vec::new(),
            sticky: None,
            opened: HashMap::new(),
            guest_control: None,
            guest_link: None,
            requests: 0,
        }
    }

    /// Takes the descriptors that arrived with the next request (the rest are closed after it).
    pub fn attach_fds(&mut self, fds: &mut Vec<OwnedFd>) {
        self.fds.append(fds);
    }

    /// The descriptors that came with the request `what`, exactly `N` of them; none are kept.
    pub fn take_fds<const N: usize>(&mut self, what: &str) -> CmdResult<[OwnedFd; N]> {
        let fds = std::mem::take(&mut self.fds);
        let n = fds.len();
        <[OwnedFd; N]>::try_from(fds).map_err(|_| CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{what} takes {N} file descriptors, not {n}")))
    }

    /// The descriptor the reply to the request just handled carries (SCM_RIGHTS), if any.
    pub fn take_reply_fd(&mut self) -> Option<OwnedFd> {
        self.reply_fd.take()
    }

    /// The first descriptor that came with the request `what`.
    fn take_fd(&mut self, what: &str) -> CmdResult<OwnedFd> {
        if self.fds.is_empty() {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{what} without a file descriptor")));
        }
        Ok(self.fds.remove(0))
    }

    /// Maps a client's pinned memory: `size` bytes from `offset` of a memfd that can no longer
    /// shrink (so that no access to our mapping can fault).
    fn host_register(&mut self, size: u64, offset: u64) -> CmdResult<u64> {
        let fd = self.take_fd("HostRegister")?;
        let bad = |m: &str| CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("host memory registration: {m}"));
        let total: u64 = self.host.values().map(|m| m.map.len() as u64).sum();
        if size == 0 || self.host.len() >= MAX_HOST_REGIONS || total.saturating_add(size) > MAX_HOST_BYTES {
            return Err(bad("size zero or over the limits"));
        }
        // SAFETY: F_GET_SEALS on a descriptor we own; no memory is passed.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("the memory must be a memfd sealed against shrinking"));
        }
        let file = std::fs::File::from(fd);
        let len = file.metadata().map_err(|_| bad("cannot stat it"))?.len();
        if offset % 4096 != 0 || offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(bad("the range given is not page-aligned or not inside the file"));
        }
        let len = usize::try_from(size).map_err(|_| bad("too large"))?;
        // SAFETY: a shared mapping of a memfd that cannot shrink (checked above), so every
        // access within `len` bytes is backed; the client may write to it concurrently, which
        // is the point (it is its pinned buffer) and only ever yields bytes, never a fault.
        let mut map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map_mut(&file) }.map_err(|_| bad("cannot map it"))?;
        let mut keep_file = false;
        if let Some(sess) = self.session.as_deref_mut() {
            sess.host_mapped(map.as_mut_ptr(), len);
            keep_file = sess.reaches_host_files();
        }
        let file = keep_file.then(|| HostFile::new(OwnedFd::from(file), offset, size));
        self.next_host += 1;
        self.host.insert(self.next_host, HostRegion { map, file });
        Ok(self.next_host)
    }

    /// A connection of `share.vm`, served on `backend` (that of `share.gpu`).
    pub fn shared(backend: &'b dyn Backend, share: Share) -> Self {
        let mut c = Connection::new(backend);
        c.share = Some(share);
        c
    }

    /// Charges the VM for the session's memory as it is now.
    fn reconcile_memory(&mut self) {
        let (Some(sh), Some(sess)) = (&self.share, &self.session) else { return };
        let now = sess.used_bytes();
        let before = sh.client.used.swap(now, Ordering::Relaxed);
        if now >= before {
            sh.vm.stats.memory_used.fetch_add(now - before, Ordering::Relaxed);
        } else {
            sh.vm.stats.memory_used.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Allocation under the VM's memory quota: the bytes are reserved against the quota first,
    /// so that two processes of one VM cannot both pass the check.
    fn mem_alloc(&mut self, bytes: u64) -> CmdResult<u64> {
        self.charged_alloc(bytes, |s| s.mem_alloc(bytes))
    }

    fn charged_alloc(&mut self, bytes: u64, alloc: impl FnOnce(&mut dyn DeviceSession) -> CmdResult<u64>) -> CmdResult<u64> {
        let mut reserved = 0;
        if let Some(sh) = &self.share {
            if let Some(quota) = sh.vm.settings().memory_quota {
                let used = sh.vm.stats.memory_used.fetch_add(bytes, Ordering::Relaxed);
                reserved = bytes;
                if used.saturating_add(bytes) > quota {
                    sh.vm.stats.memory_used.fetch_sub(bytes, Ordering::Relaxed);
                    sh.vm.stats.quota_rejections.fetch_add(1, Ordering::Relaxed);
                    return Err(CmdError::new(
                        CUDA_ERROR_OUT_OF_MEMORY,
                        format!("allocating {bytes} bytes would exceed VM {}'s memory quota of {quota} bytes ({used} in use)", sh.vm.name),
                    ));
                }
            }
        }
        let r = self.session().and_then(alloc);
        if let Some(sh) = &self.share {
            sh.vm.stats.memory_used.fetch_sub(reserved, Ordering::Relaxed);
        }
        self.reconcile_memory();
        r
    }

    /// Runs a GPU command in the VM's turn on the GPU, accounting its time; a launch is
    /// stopped when it runs past the VM's execution time limit.
    fn gpu_work(&mut self, op: Op, payload: &[u8], out: &mut Vec<u8>) -> CmdResult<()> {
        let Some(sh) = &self.share else { return self.run(op, payload, out) };
        let (vm, gpu, cancel) = (sh.vm.clone(), sh.gpu.clone(), sh.client.cancel.clone());
        let gone = || CmdError::new(CUDA_ERROR_LAUNCH_FAILED, format!("VM {} was evicted or its client disconnected", vm.name));
        let settings = vm.settings();
        if !vm.pace(settings.rate_limit, &cancel) {
            return Err(gone());
        }
        let grant = gpu.sched.acquire(vm.id, settings.weight, &|| cancel.is_hung_up()).map_err(|_| gone())?;
        vm.stats.queue_wait_ns.fetch_add(grant.waited.as_nanos() as u64, Ordering::Relaxed);
        let limit = if waits_for_kernels(op) { settings.exec_time_limit } else { None };
        cancel.arm(limit);
        let r = self.run(op, payload, out);
        cancel.arm(None);
        let ran = grant.started.elapsed();
        drop(grant);
        if !self.backend.measures_gpu_time() {
            vm.stats.gpu_ns.fetch_add(ran.as_nanos() as u64, Ordering::Relaxed);
        }
        match (&r, op) {
            (Err(e), _) if e.code == CUDA_ERROR_LAUNCH_TIMEOUT && limit.is_some_and(|l| ran >= l) => {
                vm.stats.time_limit_kills.fetch_add(1, Ordering::Relaxed);
                // A kernel stopped by the limit leaves its context unusable, as a GPU's watchdog does.
                self.sticky.get_or_insert_with(|| e.clone());
            }
            (Ok(()), Op::Launch | Op::LaunchCooperative) => {
                vm.stats.launches.fetch_add(1, Ordering::Relaxed);
            }
            (Ok(()), Op::MemcpyHtoD) => {
                let n = payload.len().saturating_sub(8) as u64;
                vm.stats.bytes_to_device.fetch_add(n, Ordering::Relaxed);
                vm.stats.bytes_staged.fetch_add(n, Ordering::Relaxed);
            }
            (Ok(()), Op::MemcpyDtoH) => {
                vm.stats.bytes_from_device.fetch_add(out.len() as u64, Ordering::Relaxed);
                vm.stats.bytes_staged.fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            (Ok(()), Op::MemcpyHtoDHost | Op::MemcpyDtoHHost) if payload.len() >= 32 => {
                let len = u64::from_le_bytes(payload[24..32].try_into().unwrap_or([0; 8]));
                let counter = if op == Op::MemcpyHtoDHost { &vm.stats.bytes_to_device } else { &vm.stats.bytes_from_device };
                counter.fetch_add(len, Ordering::Relaxed);
                vm.stats.bytes_zero_copy.fetch_add(len, Ordering::Relaxed);
            }
            _ => {}
        }
        r
    }

    /// A wait for the client's queued GPU work, under the VM's execution time limit.
    fn wait_for_kernels(&mut self, op: Op, payload: &[u8], out: &mut Vec<u8>) -> CmdResult<()> {
        let Some(sh) = &self.share else { return self.run(op, payload, out) };
        let (vm, cancel) = (sh.vm.clone(), sh.client.cancel.clone());
        let limit = vm.settings().exec_time_limit;
        let started = std::time::Instant::now();
        cancel.arm(limit);
        let r = self.run(op, payload, out);
        cancel.arm(None);
        if let Err(e) = &r {
            if e.code == CUDA_ERROR_LAUNCH_TIMEOUT && limit.is_some_and(|l| started.elapsed() >= l) {
                vm.stats.time_limit_kills.fetch_add(1, Ordering::Relaxed);
                self.sticky.get_or_insert_with(|| e.clone());
            }
        }
        r
    }

    fn session(&mut self) -> CmdResult<&mut dyn DeviceSession> {
        opened(&mut self.session)
    }

    /// The guest memory this control connection shares, made by its first GuestMemory. A
    /// connection that is a client (a session) or a guest channel cannot be one.
    fn guest_control(&mut self) -> CmdResult<Arc<crate::guest::GuestMemory>> {
        if let Some(g) = &self.guest_control {
            return Ok(g.clone());
        }
        let sh = self.share.as_ref().ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "no VM here"))?;
        if self.session.is_some() || self.guest_link.is_some() {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "guest memory is shared on a device process's own connection"));
        }
        let g = sh.vm.guests.create()?;
        self.guest_control = Some(g.clone());
        Ok(g)
    }

    /// Sharing requests in a worker (crate::worker): the mediator keeps the tokens, the counts
    /// and the VM's table; here what is shared travels as the backend's own bytes, and a file
    /// descriptor where the driver shares one (VMM memory), attached to the message. ShareExport
    /// replies what u64 and those bytes; ShareImport takes kind u32 and those bytes.
    fn share_op_in_worker(&mut self, op: Op, r: &mut Reader<'_>, out: &mut Vec<u8>) -> CmdResult<()> {
        let fd = (!self.fds.is_empty()).then(|| self.fds.remove(0));
        let sess = opened(&mut self.session)?;
        match op {
            Op::ShareExport => {
                let (kind, what) = (r.u32()?, r.u64()?);
                r.finish()?;
                let (what, shared) = share_of(sess, kind, what)?;
                let (bytes, fd) = sess.shared_to_wire(&shared)?;
                out.put_u64(what);
                out.extend_from_slice(&bytes);
                self.reply_fd = fd;
            }
            Op::ShareImport => {
                let kind = r.u32()?;
                let shared = sess.shared_from_wire(kind, r.rest(), fd)?;
                let (what, size) = open_shared(sess, kind, &shared)?;
                out.put_u64(what);
                out.put_u64(size);
            }
            _ => {
                let base = r.u64()?;
                r.finish()?;
                sess.close_memory(base)?;
            }
        }
        Ok(())
    }

    /// The client freed `what`: what it exported of it can no longer be opened.
    fn unshare(&self, kind: u32, what: u64) {
        if let Some(sh) = &self.share {
            sh.vm.shares.forget(sh.client.id, kind, what);
        }
    }

    /// Sharing with other processes of the VM (vgpu_uapi::share).
    fn share_op(&mut self, op: Op, r: &mut Reader<'_>, out: &mut Vec<u8>) -> CmdResult<()> {
        let Some(sh) = &self.share else {
            return self.share_op_in_worker(op, r, out);
        };
        let (vm, client) = (sh.vm.clone(), sh.client.id);
        let sess = opened(&mut self.session)?;
        match op {
            Op::ShareExport => {
                let (kind, what) = (r.u32()?, r.u64()?);
                r.finish()?;
                let (what, shared) = share_of(sess, kind, what)?;
                out.extend_from_slice(&vm.shares.export(client, kind, what, shared)?);
            }
            Op::ShareImport => {
                let kind = r.u32()?;
                let token: Token = r.bytes(vgpu_uapi::share::TOKEN_LEN)?.try_into().map_err(|_| CmdError::new(CUDA_ERROR_INVALID_VALUE, "bad token"))?;
                r.finish()?;
                let shared = vm.shares.get(kind, &token)?;
                let (what, size) = match kind {
                    KIND_MEMORY => match self.opened.get_mut(&token) {
                        Some((base, size, n)) => {
                            *n += 1;
                            (*base, *size)
                        }
                        None => {
                            let (base, size) = open_shared(sess, kind, &shared)?;
                            self.opened.insert(token, (base, size, 1));
                            (base, size)
                        }
                    },
                    _ => open_shared(sess, kind, &shared)?,
                };
                out.put_u64(what);
                out.put_u64(size);
                self.reconcile_memory();
            }
            _ => {
                let base = r.u64()?;
                r.finish()?;
                let bad = || CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{base:#x} is not memory opened with cuIpcOpenMemHandle"));
                let (&token, (_, _, n)) = self.opened.iter_mut().find(|(_, (b, _, _))| *b == base).ok_or_else(bad)?;
                if *n > 1 {
                    *n -= 1;
                } else {
                    sess.close_memory(base)?;
                    self.opened.remove(&token);
                    self.reconcile_memory();
                }
            }
        }
        Ok(())
    }

    /// Handles one request; on success the reply payload is appended to `out`.
    pub fn handle(&mut self, op: u32, payload: &[u8], out: &mut Vec<u8>) -> CmdResult<()> {
        let start = out.len();
        let r = match Op::from_u32(op) {
            None => Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, format!("unknown opcode {op}"))),
            Some(op) if self.sticky.is_some() && !survives_sticky_error(op) => {
                let e = self.sticky.as_ref().map_or(CUDA_ERROR_UNKNOWN, |e| e.code);
                let name = vgpu_uapi::cuda::error_name(e).map_or("?", |n| n.0);
                Err(CmdError::new(e, format!("the context keeps an earlier kernel's {name} (sticky, as in CUDA) until cudaDeviceReset or cuDevicePrimaryCtxReset")))
            }
            Some(op) if is_gpu_work(op) => self.gpu_work(op, payload, out),
            Some(op) if waits_for_kernels(op) => self.wait_for_kernels(op, payload, out),
            Some(op) => self.run(op, payload, out),
        };
        // A kernel that faulted leaves the context unusable (CUDA's sticky errors); the sim's
        // instruction budget (LAUNCH_TIMEOUT, not a fault of the kernel) does not.
        if let Err(e) = &r {
            if vgpu_uapi::cuda::is_sticky(e.code) && self.sticky.is_none() && self.session.is_some() {
                tracing::info!(pid = self.client_pid, code = e.code, "sticky error: {}", e.message);
                self.sticky = Some(e.clone());
            }
        }
        // Descriptors not claimed by this request are closed; one for a failed reply too.
        self.fds.clear();
        if r.is_err() {
            self.reply_fd = None;
        }
        self.requests += 1;
        // GPU time the backend measured itself (an asynchronous GPU's kernels, timed by events):
        // the VM's, and its scheduling share's.
        if let (Some(sh), Some(sess)) = (&self.share, self.session.as_deref_mut()) {
            let ns = sess.take_gpu_time();
            if ns > 0 {
                sh.vm.stats.gpu_ns.fetch_add(ns, Ordering::Relaxed);
                sh.gpu.sched.charge(sh.vm.id, std::time::Duration::from_nanos(ns));
            }
        }
        if let Some(sh) = &self.share {
            sh.vm.stats.calls.fetch_add(1, Ordering::Relaxed);
            if r.is_err() {
                sh.vm.stats.errors.fetch_add(1, Ordering::Relaxed);
                out.truncate(start);
            }
        }
        r
    }

    fn run(&mut self, op: Op, payload: &[u8], out: &mut Vec<u8>) -> CmdResult<()> {
        let mut r = Reader::new(payload);
        match op {
            Op::Hello => {
                let (version, pid, flags) = (r.u32()?, r.u32()?, r.u32()?);
                r.finish()?;
                if version != PROTOCOL_VERSION {
                    return Err(CmdError::new(
                        CUDA_ERROR_NOT_SUPPORTED,
                        format!("protocol version {version} not supported (mediator speaks {PROTOCOL_VERSION})"),
                    ));
                }
                let observer = flags & HELLO_OBSERVER != 0;
                if let Some(sh) = &self.share {
                    if sh.vm.is_evicted() {
                        return Err(CmdError::new(CUDA_ERROR_NO_DEVICE, format!("VM {} is evicted from its GPU", sh.vm.name)));
                    }
                }
                if self.session.is_none() {
                    self.session = Some(self.backend.open_session(0, pid, observer)?);
                }
                self.client_pid = pid;
                if let Some(sh) = &self.share {
                    sh.client.pid.store(pid, Ordering::Relaxed);
                    sh.client.observer.store(observer, Ordering::Relaxed);
                }
                out.put_u32(PROTOCOL_VERSION);
                out.put_u32(self.backend.devices().len() as u32);
                let guest = if self.guest_link.is_some() { HELLO_GUEST_PINNED } else { 0 };
                let ptx_only = if self.backend.runs_ptx_only() { HELLO_PTX_ONLY } else { 0 };
                out.put_u32(if self.backend.output_after_sync() { HELLO_OUTPUT_AFTER_SYNC } else { 0 } | guest | ptx_only);
            }
            Op::SessionReset => {
                r.finish()?;
                self.staged_image = Vec::new();
                let r = self.session()?.reset();
                self.opened.clear();
                if let Some(sh) = &self.share {
                    sh.vm.shares.forget_owner(sh.client.id);
                }
                self.reconcile_memory();
                r?;
                self.sticky = None;
            }
            Op::DeviceInfo => {
                let ordinal = r.u32()?;
                r.finish()?;
                let devices = self.backend.devices();
                let d = devices
                    .get(ordinal as usize)
                    .ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_DEVICE, format!("no device {ordinal}")))?;
                // A VM's device has the VM's memory: its quota, as a vGPU has its framebuffer.
                let mut d = *d;
                if let Some(q) = self.share.as_ref().and_then(|sh| sh.vm.settings().memory_quota) {
                    d.total_mem = d.total_mem.min(q);
                }
                out.put_device_info(&d);
            }
            Op::DeviceMemoryInfo => {
                let ordinal = r.u32()?;
                r.finish()?;
                let (mut total, mut used) = self.backend.memory_usage(ordinal)?;
                // Inside a VM the device is the VM's part of it: its quota and its use.
                if let Some(sh) = &self.share {
                    total = sh.vm.settings().memory_quota.map_or(total, |q| q.min(total));
                    used = sh.vm.stats.memory_used.load(Ordering::Relaxed);
                }
                out.put_u64(total);
                out.put_u64(used);
            }
            Op::DeviceProcesses => {
                let ordinal = r.u32()?;
                r.finish()?;
                let mut procs = self.backend.processes(ordinal)?;
                if let Some(sh) = &self.share {
                    procs = sh.vm.processes();
                }
                out.put_u32(procs.len() as u32);
                for p in procs {
                    out.put_u32(p.pid);
                    out.put_u64(p.used_bytes);
                }
            }
            Op::MemGetInfo => {
                r.finish()?;
                let (mut free, mut total) = self.session()?.mem_get_info();
                if let Some(sh) = &self.share {
                    if let Some(q) = sh.vm.settings().memory_quota {
                        total = total.min(q);
                        free = free.min(q.saturating_sub(sh.vm.stats.memory_used.load(Ordering::Relaxed)));
                    }
                }
                out.put_u64(free);
                out.put_u64(total);
            }
            Op::MemAlloc => {
                let bytes = r.u64()?;
                r.finish()?;
                let p = self.mem_alloc(bytes)?;
                out.put_u64(p);
            }
            Op::MemFree => {
                let p = r.u64()?;
                r.finish()?;
                let r = self.session()?.mem_free(p);
                self.reconcile_memory();
                r?;
                self.unshare(KIND_MEMORY, p);
            }
            Op::MemGetAddressRange => {
                let p = r.u64()?;
                r.finish()?;
                let (base, size) = self.session()?.mem_address_range(p)?;
                out.put_u64(base);
                out.put_u64(size);
                // Where the backend has them: older clients read only the range.
                if let Ok(id) = self.session()?.mem_buffer_id(p) {
                    out.put_u64(id);
                }
            }
            Op::MemcpyHtoD => {
                let dst = r.u64()?;
                let data = r.rest();
                self.session()?.write(dst, data)?;
            }
            Op::MemcpyDtoH => {
                let (src, len) = (r.u64()?, r.u64()?);
                r.finish()?;
                if len > COPY_CHUNK as u64 {
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "read larger than one chunk"));
                }
                let start = out.len();
                out.resize(start + len as usize, 0);
                self.session()?.read(src, &mut out[start..])?;
            }
            Op::MemcpyDtoD => {
                let (dst, src, len) = (r.u64()?, r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.copy(dst, src, len)?;
            }
            Op::Memset => {
                let (dst, value, elem, count) = (r.u64()?, r.u32()?, r.u32()?, r.u64()?);
                r.finish()?;
                self.session()?.memset(dst, value, elem, count)?;
            }
            Op::ModuleImagePart => {
                let offset = r.u64()?;
                let part = r.rest();
                self.session()?;
                let expected = self.staged_image.len() as u64;
                if offset != expected {
                    self.staged_image = Vec::new();
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("module image part at offset {offset}, expected {expected}; the staged image is dropped")));
                }
                if offset + part.len() as u64 > vgpu_uapi::image::MAX_IMAGE_LEN {
                    self.staged_image = Vec::new();
                    return Err(CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, format!("module image over the {}-byte limit", vgpu_uapi::image::MAX_IMAGE_LEN)));
                }
                self.staged_image.try_reserve(part.len()).map_err(|_| CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, "no memory for the module image"))?;
                self.staged_image.extend_from_slice(part);
            }
            Op::ModuleLoad => {
                let staged;
                let image = match r.rest() {
                    [] => {
                        staged = std::mem::take(&mut self.staged_image);
                        if staged.is_empty() {
                            return Err(CmdError::new(CUDA_ERROR_INVALID_IMAGE, "an empty module image"));
                        }
                        &staged[..]
                    }
                    image => image,
                };
                let m = self.session()?.module_load(image);
                self.reconcile_memory();
                let m = m?;
                if let Some(sh) = &self.share {
                    // Module variables are device memory too: a module that takes the VM past
                    // its quota is not loaded.
                    if let Some(q) = sh.vm.settings().memory_quota {
                        let used = sh.vm.stats.memory_used.load(Ordering::Relaxed);
                        if used > q {
                            let _ = self.session()?.module_unload(m);
                            self.reconcile_memory();
                            return Err(CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, "the module's variables exceed the VM's memory quota"));
                        }
                    }
                }
                out.put_u64(m);
            }
            Op::ModuleUnload => {
                let m = r.u64()?;
                r.finish()?;
                let r = self.session()?.module_unload(m);
                self.reconcile_memory();
                r?;
            }
            Op::ModuleGetFunction => {
                let m = r.u64()?;
                let name = name_arg(r.rest())?;
                let (info, params) = self.session()?.module_get_function(m, name)?;
                out.put_function_info(&info);
                for (offset, size) in params {
                    out.put_u32(offset);
                    out.put_u32(size);
                }
            }
            Op::ModuleGetGlobal => {
                let m = r.u64()?;
                let name = name_arg(r.rest())?;
                let (p, size) = self.session()?.module_get_global(m, name)?;
                out.put_u64(p);
                out.put_u64(size);
            }
            Op::ModuleEnumerateFunctions => {
                let m = r.u64()?;
                r.finish()?;
                let names = self.session()?.module_functions(m)?;
                out.put_u32(names.len() as u32);
                for n in names {
                    out.put_u32(n.len() as u32);
                    out.put(n.as_bytes());
                }
            }
            Op::Launch | Op::LaunchCooperative => {
                let f = r.u64()?;
                let grid = [r.u32()?, r.u32()?, r.u32()?];
                let block = [r.u32()?, r.u32()?, r.u32()?];
                let dynamic_shared_bytes = r.u32()?;
                let stream = r.u64()?;
                let params = r.rest();
                if params.len() > MAX_PARAM_BYTES as usize {
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "kernel parameters exceed 32764 bytes"));
                }
                let dims = LaunchDims { grid, block, dynamic_shared_bytes, stream, cooperative: op == Op::LaunchCooperative };
                let printed = self.session()?.launch(f, dims, params)?;
                out.extend_from_slice(&printed);
            }
            Op::StreamCreate => {
                let (flags, prio) = (r.u32()?, r.i32()?);
                r.finish()?;
                let s = self.session()?.stream_create(flags, prio)?;
                out.put_u64(s);
            }
            Op::StreamDestroy | Op::StreamSynchronize | Op::StreamQuery => {
                let s = r.u64()?;
                r.finish()?;
                let sess = self.session()?;
                match op {
                    Op::StreamDestroy => sess.stream_destroy(s)?,
                    Op::StreamSynchronize => sess.stream_synchronize(s)?,
                    _ => sess.stream_query(s)?,
                }
            }
            Op::StreamWaitEvent => {
                let (s, e) = (r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.stream_wait_event(s, e)?;
            }
            Op::EventCreate => {
                let flags = r.u32()?;
                r.finish()?;
                let e = self.session()?.event_create(flags)?;
                out.put_u64(e);
            }
            Op::EventDestroy | Op::EventSynchronize | Op::EventQuery => {
                let e = r.u64()?;
                r.finish()?;
                let sess = self.session()?;
                match op {
                    Op::EventDestroy => {
                        sess.event_destroy(e)?;
                        self.unshare(KIND_EVENT, e);
                    }
                    Op::EventSynchronize => sess.event_synchronize(e)?,
                    _ => sess.event_query(e)?,
                }
            }
            Op::EventRecord => {
                let (e, s) = (r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.event_record(e, s)?;
            }
            Op::EventElapsedTime => {
                let (a, b) = (r.u64()?, r.u64()?);
                r.finish()?;
                let ms = self.session()?.event_elapsed_ms(a, b)?;
                out.put_u32(ms.to_bits());
            }
            Op::Synchronize => {
                r.finish()?;
                self.session()?.synchronize()?;
            }
            Op::HostRegister => {
                let size = r.u64()?;
                let offset = if r.remaining() > 0 { r.u64()? } else { 0 };
                r.finish()?;
                let h = self.host_register(size, offset)?;
                out.put_u64(h);
            }
            Op::HostUnregister => {
                let h = r.u64()?;
                r.finish()?;
                let mut region = self.host.remove(&h).ok_or_else(|| not_registered(h))?;
                if let Some(sess) = self.session.as_deref_mut() {
                    sess.host_unmapped(region.map.as_mut_ptr());
                }
            }
            Op::MemcpyHtoDHost | Op::MemcpyDtoHHost => {
                let (dev, h, off, len) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
                r.finish()?;
                let to_device = op == Op::MemcpyHtoDHost;
                let Connection { session, host, guest_link, .. } = self;
                let sess = opened(session)?;
                let copy = |sess: &mut dyn DeviceSession, at: u64, span: HostSpan<'_>| {
                    let at = dev.checked_add(at).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "device range wraps"))?;
                    if to_device { sess.write_host(at, span) } else { sess.read_host(at, span) }
                };
                match guest_link {
                    // A guest channel: the region is pinned guest memory, copied page run by run.
                    Some(link) => {
                        let id = u32::try_from(h).map_err(|_| CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{h} is not a pinned region")))?;
                        link.memory()?.copy((link.channel, link.generation), id, off, len, !to_device, |at, b| copy(sess, at, b))?;
                    }
                    None => copy(sess, 0, host_range(host, h, off, len)?)?,
                }
            }
            Op::GuestMemory => {
                let (gpa, size, offset) = (r.u64()?, r.u64()?, r.u64()?);
                r.finish()?;
                let fd = self.take_fd("GuestMemory")?;
                let mem = self.guest_control()?;
                mem.map(gpa, size, offset, fd)?;
                out.extend_from_slice(&mem.token);
            }
            Op::GuestMemoryUnmap => {
                let (gpa, size) = (r.u64()?, r.u64()?);
                r.finish()?;
                self.guest_control()?.unmap(gpa, size);
            }
            Op::GuestPin => {
                let (channel, id, flags, offset, len, n) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u64()?, r.u32()?);
                if n as usize > r.remaining() / 8 {
                    return Err(Truncated.into());
                }
                let pages = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
                r.finish()?;
                self.guest_control()?.pin(crate::guest::PinRequest { channel, id, flags, offset, len, pages })?;
            }
            // Only a served connection (server.rs) can change how its bytes travel.
            Op::ShmRing => return Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "ShmRing is answered by the connection, not a session")),
            Op::GuestUnpin => {
                let (channel, id) = (r.u32()?, r.u32()?);
                r.finish()?;
                self.guest_control()?.unpin(channel, id)?;
            }
            Op::GuestChannel => {
                let token: Token = r.bytes(16)?.try_into().map_err(|_| Truncated)?;
                let channel = r.u32()?;
                r.finish()?;
                if self.requests != 0 || self.guest_control.is_some() {
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "GuestChannel must be a connection's first request"));
                }
                let sh = self.share.as_ref().ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "no VM here"))?;
                let mem = sh.vm.guests.find(&token).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, "no such device process"))?;
                let generation = mem.attach(channel);
                self.guest_link = Some(crate::guest::ChannelLink { memory: Arc::downgrade(&mem), channel, generation });
            }
            Op::ShareExport | Op::ShareImport | Op::ShareClose => self.share_op(op, &mut r, out)?,
            Op::MemCreate => {
                let size = r.u64()?;
                r.finish()?;
                let h = self.charged_alloc(size, |s| s.vmm_create(size))?;
                out.put_u64(h);
            }
            Op::MemRelease => {
                let h = r.u64()?;
                r.finish()?;
                let res = self.session()?.vmm_release(h);
                self.reconcile_memory();
                res?;
                self.unshare(KIND_PHYSICAL, h);
            }
            Op::MemAddressReserve => {
                let (size, align, hint) = (r.u64()?, r.u64()?, r.u64()?);
                r.finish()?;
                let va = self.session()?.vmm_reserve(size, align, hint)?;
                out.put_u64(va);
            }
            Op::MemAddressFree => {
                let (va, size) = (r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.vmm_unreserve(va, size)?;
            }
            Op::MemMap => {
                let (va, size, offset, h) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.vmm_map(va, size, offset, h)?;
            }
            Op::MemUnmap => {
                let (va, size) = (r.u64()?, r.u64()?);
                r.finish()?;
                let res = self.session()?.vmm_unmap(va, size);
                self.reconcile_memory();
                res?;
            }
            Op::MemSetAccess => {
                let (va, size) = (r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.vmm_set_access(va, size)?;
            }
            Op::ArrayCreate => {
                let desc = ArrayDesc::decode(&mut r)?;
                r.finish()?;
                match desc.validate() {
                    Err(m) => return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{m}: {desc:?}"))),
                    Ok(Err(m)) => return Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, m)),
                    Ok(Ok(())) => {}
                }
                let h = self.charged_alloc(desc.bytes(), |s| s.array_create(&desc))?;
                out.put_u64(h);
            }
            Op::ArrayDestroy => {
                let a = r.u64()?;
                r.finish()?;
                let res = self.session()?.array_destroy(a);
                self.reconcile_memory();
                res?;
            }
            Op::Memcpy3D => {
                let c = Copy3D::decode(&mut r)?;
                let data = r.rest();
                // Host data travels in the request or the reply: at most a chunk of it.
                let carried = c.src.kind == MEM_HOST || c.dst.kind == MEM_HOST;
                let bytes = c.bytes().filter(|&n| !carried || n <= COPY_CHUNK as u64);
                let bytes = bytes.ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("a 3D copy of {}x{}x{} bytes: more host data than one request carries ({COPY_CHUNK})", c.width_bytes, c.height, c.depth)))?;
                for side in [&c.src, &c.dst] {
                    if !matches!(side.kind, MEM_HOST | MEM_DEVICE | MEM_ARRAY) {
                        return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("unknown memory type {} in a 3D copy", side.kind)));
                    }
                }
                if c.src.kind == MEM_HOST && c.dst.kind == MEM_HOST {
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "a host-to-host copy is the client's own"));
                }
                let host_in = if c.src.kind == MEM_HOST { bytes } else { 0 };
                if data.len() as u64 != host_in {
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("a 3D copy carrying {} bytes where it needs {host_in}", data.len())));
                }
                let start = out.len();
                self.session()?.memcpy_3d(&c, data, out)?;
                let host_out = if c.dst.kind == MEM_HOST { bytes } else { 0 };
                if (out.len() - start) as u64 != host_out {
                    out.truncate(start);
                    return Err(CmdError::new(CUDA_ERROR_UNKNOWN, "the backend returned the wrong amount of data for a 3D copy"));
                }
            }
            Op::TexObjectCreate | Op::SurfObjectCreate => {
                let res = ResourceDesc::decode(&mut r)?;
                let sampler = if op == Op::TexObjectCreate { Some(SamplerDesc::decode(&mut r)?) } else { None };
                r.finish()?;
                if let Some(s) = &sampler {
                    s.validate().map_err(|m| CmdError::new(CUDA_ERROR_INVALID_VALUE, m))?;
                }
                let sess = self.session()?;
                let h = match &sampler {
                    Some(s) => sess.tex_create(&res, s)?,
                    None => sess.surf_create(&res)?,
                };
                out.put_u64(h);
            }
            Op::TexObjectDestroy | Op::SurfObjectDestroy => {
                let h = r.u64()?;
                r.finish()?;
                let sess = self.session()?;
                if op == Op::TexObjectDestroy {
                    sess.tex_destroy(h)?;
                } else {
                    sess.surf_destroy(h)?;
                }
            }
            Op::DeviceOutput => {
                r.finish()?;
                let printed = self.session()?.take_output();
                out.extend_from_slice(&printed);
            }
            Op::SessionUsage => {
                r.finish()?;
                let sess = self.session()?;
                let used = sess.used_bytes();
                let gpu_ns = sess.gpu_time_ns();
                out.put_u64(used);
                out.put_u64(gpu_ns);
            }
        }
        Ok(())
    }
}

impl Drop for Connection<'_> {
    /// The session goes with the connection: so does what it was charged.
    fn drop(&mut self) {
        self.session = None;
        if let (Some(sh), Some(g)) = (&self.share, &self.guest_control) {
            sh.vm.guests.forget(&g.token);
        }
        if let Some(sh) = &self.share {
            let used = sh.client.used.swap(0, Ordering::Relaxed);
            sh.vm.stats.memory_used.fetch_sub(used, Ordering::Relaxed);
        }
    }
}
