//! The kernel-device transport: a channel of /dev/nvidia0 (vgpu's guest driver). The bytes are
//! the same messages the socket carries; they travel through the channel area's staging buffer
//! as SEND/RECV descriptors (uapi/src/channel.rs), the device moving them to and from the
//! mediator. The data of copies from and to pinned host memory goes straight between the
//! pinned pages and the mediator (SEND_PINNED/RECV_PINNED), never through staging.

use crate::transport::{read_header, read_reply, reply_result, write_header, write_request, Direction, HostUse, Owner, Transport};
use crate::vlog;
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vgpu_uapi::channel::*;
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{Op, COPY_CHUNK};

/// The node libcuda opens; its existence selects this transport.
pub const DEVICE_NODE: &str = "/dev/nvidia0";

pub struct DeviceTransport {
    chan: Mutex<Channel>,
    owner: Owner,
}

struct Channel {
    _fd: OwnedFd,
    fd: i32,
    area: *mut u8,
    info: ChannelInfo,
    sq_tail: u32,
    cq_head: u32,
    next_tag: u64,
    /// How long a wait for the mediator may take before the call fails (start-up only).
    deadline: Option<Duration>,
    /// Request bytes gathered in the first half of staging, not yet sent.
    pending: usize,
    /// Asynchronous requests sent or gathered whose replies are still to be read, in order.
    unanswered: VecDeque<Queued>,
    /// How many of `unanswered`, from the front, went to the device in an earlier batch (their
    /// replies are read while the next batch runs: see `settle`).
    in_flight: usize,
    /// Received bytes not yet read: `[rx.0, rx.1)` of the receive half of staging. They outlive
    /// a call: a receive for one batch's replies may bring the start of the next batch's.
    rx: (usize, usize),
    /// Data bytes their replies carry (copies into pinned memory).
    unanswered_bytes: usize,
    /// Pinned regions (VGPU_IOCTL_PIN): id -> the address they start at.
    pins: HashMap<u32, usize>,
    /// The first failure of asynchronous work, not yet reported.
    deferred: Option<CuResult>,
    /// What asynchronous launches printed.
    output: Vec<u8>,
    /// The mediator reaches this channel's pinned regions itself (HELLO_GUEST_PINNED): copies
    /// name them and carry no bytes.
    zero_copy: bool,
}

/// Asynchronous requests gathered at most before they are sent (a batch goes to the device with
/// one doorbell; `settle` reads its replies while the next batch is gathered). Each batch costs
/// a fixed few hundred microseconds in a TCG guest, so larger is faster (measured with empty
/// launches: 64 about 88k/s, 256 about 150k/s). The bound: two batches of launches may be
/// unanswered, each reply carrying up to the sim's 1 MiB of device printf output, and the
/// device refuses to hold more than 256 MiB of unread replies: 2 x 120 x 1 MiB fits.
const MAX_QUEUED: usize = 120;
/// Reply data (copies into pinned memory) left unread at most: what waits for us in the device
/// stays bounded (it refuses to hold more than 256 MiB).
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Largest zero-copy request: each is one turn on the GPU, so other VMs' work can go between.
const ZERO_COPY_CHUNK: usize = 64 << 20;

/// A request whose reply is still to be read; `into`: a copy whose data goes into pinned memory.
struct Queued {
    seq: u32,
    op: Op,
    into: Option<PinnedRange>,
}

/// Bytes `offset..offset + len` of pinned region `id`.
#[derive(Clone, Copy)]
struct PinnedRange {
    id: u32,
    offset: usize,
    len: usize,
}

// SAFETY: the mapping is owned by `Channel` and only touched under the `Mutex` in
// `DeviceTransport`; the device is the only other party and it follows the ring protocol.
unsafe impl Send for Channel {}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: `area` is the mapping of `info.area_size` bytes made in `open`.
        unsafe { libc::munmap(self.area.cast(), self.info.area_size as usize) };
    }
}

fn ioctl<T>(fd: i32, request: u32, arg: *mut T) -> io::Result<()> {
    // SAFETY: `arg` points to a value of the size `request` encodes (see uapi), or is unused.
    let r = unsafe { libc::ioctl(fd, request as libc::c_ulong, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Why [`DeviceTransport::open`] failed: opening the node itself (permissions, a node without
/// its driver), or what came after (the driver or the device refused a channel).
#[derive(Debug)]
pub enum OpenError {
    Node(io::Error),
    /// The driver and this library disagree (versions, layout).
    Driver(io::Error),
    Channel(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Channel(e)
    }
}

impl OpenError {
    /// One line for the user: what failed on `node`, and what to do about it.
    pub fn explain(&self, path: &Path) -> String {
        let node = path.display();
        match self {
            OpenError::Node(e) => match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => {
                    let owner = std::fs::metadata(path).map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        format!("mode {:o}, owner {}, group {}", m.mode() & 0o777, m.uid(), m.gid())
                    });
                    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
                    format!(
                        "permission denied on {node} ({}; this process is uid {uid}, gid {gid}): add the user to the node's group, \
                         or load vgpu with NVreg_DeviceFileMode=0666 (the default; see modinfo vgpu)",
                        owner.unwrap_or_else(|e| e.to_string())
                    )
                }
                Some(libc::ENODEV | libc::ENXIO) => {
                    format!("{node} has no device behind it ({e}): the VGPU-STUB device was removed or the vgpu driver unbound it")
                }
                Some(libc::ENOENT) => format!("{node} disappeared ({e}): was the vgpu module unloaded?"),
                _ => format!("cannot open {node} ({e})"),
            },
            OpenError::Driver(e) => format!("{e} (install vgpu-libs and vgpu-dkms of the same version)"),
            OpenError::Channel(e) => {
                format!("cannot open a channel on {node} ({e}); is the vgpu device connected to its mediator?")
            }
        }
    }
}

impl DeviceTransport {
    pub fn open(path: &Path, hello_timeout: Duration) -> Result<Self, OpenError> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| OpenError::Node(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(OpenError::Node(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut version = VersionInfo::default();
        ioctl(fd, VGPU_IOCTL_VERSION, &mut version)?;
        if version.abi_version != DRIVER_ABI_VERSION {
            return Err(OpenError::Driver(io::Error::other(format!(
                "the vgpu kernel driver speaks interface version {}, this library {}",
                version.abi_version, DRIVER_ABI_VERSION
            ))));
        }
        let mut info = ChannelInfo::default();
        ioctl(fd, VGPU_IOCTL_CHANNEL_OPEN, &mut info)?;
        let valid = info.area_size as usize >= STAGING
            && info.staging_offset as usize >= STAGING
            && info.staging_offset.checked_add(info.staging_size).is_some_and(|e| e <= info.area_size)
            && info.staging_size >= 8192
            && info.cq_entries >= 2;
        if !valid {
            return Err(OpenError::Driver(io::Error::other(format!("the vgpu kernel driver described an unusable channel: {info:?}"))));
        }
        // SAFETY: maps the channel area the driver just allocated for this file.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                info.area_size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(io::Error::last_os_error().into());
        }
        let mut ch = Channel {
            _fd: owned,
            fd,
            area: area.cast(),
            info,
            sq_tail: 0,
            cq_head: 0,
            next_tag: 1,
            deadline: Some(hello_timeout),
            pending: 0,
            unanswered: VecDeque::new(),
            in_flight: 0,
            rx: (0, 0),
            unanswered_bytes: 0,
            pins: HashMap::new(),
            deferred: None,
            output: Vec::new(),
            zero_copy: false,
        };
        // The rings start where the device starts: zeroed by the driver.
        ch.sq_tail = ch.load(SQ_TAIL);
        ch.cq_head = ch.load(CQ_HEAD);
        // We watch the completion ring ourselves; `complete` asks for an interrupt only when it
        // is about to sleep.
        ch.store(QUIET, 1);
        Ok(DeviceTransport { chan: Mutex::new(ch), owner: Owner::new() })
    }
}

/// How long a caller watches the completion ring before it sleeps until the completion
/// interrupt. An interrupt costs a guest far more than the host takes for a short call (under
/// TCG, measured: a synchronous launch at about half the rate without this), and NVIDIA's
/// driver also spins first by default.
const POLL_FOR: std::time::Duration = std::time::Duration::from_micros(30);
/// Looks at the completion ring per reading of the clock while polling.
const CLOCK_EVERY: u32 = 64;

impl Channel {
    fn load(&self, off: usize) -> u32 {
        // SAFETY: `off` is one of the header words, inside the mapping.
        u32::from_le(unsafe { std::ptr::read_volatile(self.area.add(off).cast::<u32>()) })
    }

    fn store(&self, off: usize, v: u32) {
        // SAFETY: as in `load`.
        unsafe { std::ptr::write_volatile(self.area.add(off).cast::<u32>(), v.to_le()) }
    }

    fn staging(&self) -> (usize, usize) {
        (self.info.staging_offset as usize, self.info.staging_size as usize)
    }

    /// Posts one descriptor (not yet announced to the device).
    fn post(&mut self, op: u32, flags: u32, offset: usize, len: usize) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        let d = Desc { op, flags, tag, offset: offset as u64, len: len as u64 };
        let bytes = d.to_bytes();
        // SAFETY: `sq_slot` is inside the header page of the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.area.add(sq_slot(self.sq_tail)), bytes.len()) };
        self.sq_tail = self.sq_tail.wrapping_add(1);
        tag
    }

    /// Publishes the posted descriptors and rings the doorbell, unless the device is watching
    /// the ring anyway (see POLLING in uapi).
    fn kick(&mut self) -> io::Result<()> {
        // Descriptors before the tail (the device reads the tail, then the descriptors).
        fence(Ordering::Release);
        self.store(SQ_TAIL, self.sq_tail);
        // The tail before the flag is read: the device clears the flag before it reads the
        // tail a last time, so one of us sees the other's write.
        fence(Ordering::SeqCst);
        if self.load(POLLING) == 1 {
            return Ok(());
        }
        ioctl::<u8>(self.fd, VGPU_IOCTL_DOORBELL, std::ptr::null_mut())
    }

    /// Waits for the next completion and consumes it.
    fn complete(&mut self) -> io::Result<Completion> {
        // Set at the first look at the clock, not before: most calls complete sooner.
        let mut started: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            let tail = self.load(CQ_TAIL);
            if tail != self.cq_head {
                fence(Ordering::Acquire);
                let mut b = [0u8; COMPLETION_SIZE];
                // SAFETY: `cq_slot` is inside the header page of the mapping.
                unsafe { std::ptr::copy_nonoverlapping(self.area.add(cq_slot(self.cq_head)), b.as_mut_ptr(), b.len()) };
                self.cq_head = self.cq_head.wrapping_add(1);
                self.store(CQ_HEAD, self.cq_head);
                return Ok(Completion::from_bytes(&b));
            }
            // Short waits are polled; long ones sleep until the completion interrupt. The clock
            // is read once every CLOCK_EVERY looks: in a guest whose clock has no vDSO (TCG's
            // guests run on jiffies) each reading is a system call, measured at 5 us.
            spins = spins.wrapping_add(1);
            if spins % CLOCK_EVERY != 0 {
                std::hint::spin_loop();
                continue;
            }
            let start = *started.get_or_insert_with(Instant::now);
            if start.elapsed() < POLL_FOR {
                continue;
            }
            if let Some(limit) = self.deadline {
                if start.elapsed() > limit {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            // Interrupts on, then the tail once more (full fence between; see QUIET in uapi): a
            // completion published before the device could see the flag is seen here.
            self.store(QUIET, 0);
            fence(Ordering::SeqCst);
            let tail = self.load(CQ_TAIL);
            let slept = if tail != self.cq_head {
                Ok(())
            } else {
                let mut w = WaitArgs { seen: tail, timeout_ms: 1000 };
                ioctl(self.fd, VGPU_IOCTL_WAIT, &mut w)
            };
            self.store(QUIET, 1);
            match slept {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIMEDOUT) | Some(libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn expect(&mut self, tag: u64) -> io::Result<u32> {
        let c = self.complete()?;
        if c.tag != tag {
            return Err(io::Error::other(format!("channel out of order: completion {} for request {tag}", c.tag)));
        }
        match c.status {
            0 => Ok(c.len),
            s if s == libc::EPIPE as u32 => Err(io::Error::new(io::ErrorKind::BrokenPipe, "the mediator closed the session")),
            e => Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}

/// A channel as a byte stream: writes gather in the first half of staging (across calls, for
/// queued asynchronous requests) and go out as one SEND together with the RECV for the replies
/// (one doorbell for a whole batch when it fits).
struct ChannelIo<'a> {
    ch: &'a mut Channel,
    /// Receive no more than a read asks for (a header whose payload goes into pinned memory).
    precise: bool,
}

/// A descriptor to post after the gathered bytes' SEND: (op, flags, offset, len).
type Extra = (u32, u32, usize, usize);

impl<'a> ChannelIo<'a> {
    fn new(ch: &'a mut Channel) -> Self {
        ChannelIo { ch, precise: false }
    }

    /// Posts the gathered bytes (and `extra`, if any) and waits for them; returns the length
    /// `extra` moved.
    fn send(&mut self, extra: Option<Extra>) -> io::Result<usize> {
        let (off, _) = self.ch.staging();
        let pending = self.ch.pending;
        let send = (pending > 0).then(|| self.ch.post(OP_SEND, 0, off, pending));
        let recv = extra.map(|(op, flags, at, len)| self.ch.post(op, flags, at, len));
        self.ch.kick()?;
        if let Some(tag) = send {
            let n = self.ch.expect(tag)? as usize;
            self.ch.pending = 0;
            if n != pending {
                return Err(io::Error::other("the device sent a partial chunk"));
            }
        }
        match recv {
            Some(tag) => Ok(self.ch.expect(tag)? as usize),
            None => Ok(0),
        }
    }

    /// Sends the gathered bytes, then `r` of pinned memory.
    fn send_pinned(&mut self, r: PinnedRange) -> io::Result<()> {
        if self.send(Some((OP_SEND_PINNED, r.id, r.offset, r.len)))? != r.len {
            return Err(io::Error::other("the device sent part of a pinned range"));
        }
        Ok(())
    }

    /// Receives `r.len` bytes into pinned memory: what was already received into staging is
    /// copied, the rest the device writes there itself.
    fn recv_pinned(&mut self, r: PinnedRange) -> io::Result<()> {
        let base = *self.ch.pins.get(&r.id).ok_or_else(|| io::Error::other("no such pinned region"))?;
        let (off, size) = self.ch.staging();
        let have = (self.ch.rx.1 - self.ch.rx.0).min(r.len);
        // SAFETY: the source lies in the receive half of staging; the destination is inside the
        // pinned range the caller registered and vouched for (`copy_host`'s contract).
        unsafe { std::ptr::copy_nonoverlapping(self.ch.area.add(off + size / 2 + self.ch.rx.0), (base + r.offset) as *mut u8, have) };
        self.ch.rx.0 += have;
        if have < r.len {
            let rest = r.len - have;
            if self.send(Some((OP_RECV_PINNED, r.id, r.offset + have, rest)))? != rest {
                return Err(io::Error::other("the device received part of a pinned range"));
            }
        }
        Ok(())
    }
}

impl io::Write for ChannelIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (off, size) = self.ch.staging();
        if self.ch.pending == size / 2 {
            self.send(None)?;
        }
        let n = buf.len().min(size / 2 - self.ch.pending);
        // SAFETY: `[off + pending, off + pending + n)` is inside the first half of staging.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ch.area.add(off + self.ch.pending), n) };
        self.ch.pending += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send(None).map(|_| ())
    }
}

impl io::Read for ChannelIo<'_> {
    /// Receives as much as the device has (up to half of staging) and hands it out from
    /// staging: a reply's header and payload usually arrive in one RECV.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (off, size) = self.ch.staging();
        let rx = off + size / 2;
        if self.ch.rx.0 == self.ch.rx.1 {
            let want = if self.precise { buf.len().min(size - size / 2) } else { size - size / 2 };
            let n = self.send(Some((OP_RECV, 0, rx, want)))?;
            if n > want {
                return Err(io::Error::other("the device returned more than asked"));
            }
            self.ch.rx = (0, n);
        }
        let n = buf.len().min(self.ch.rx.1 - self.ch.rx.0);
        // SAFETY: `[rx + rx.0, rx + rx.0 + n)` is inside the second half of staging.
        unsafe { std::ptr::copy_nonoverlapping(self.ch.area.add(rx + self.ch.rx.0), buf.as_mut_ptr(), n) };
        self.ch.rx.0 += n;
        Ok(n)
    }
}

/// Reads, in order, the replies of the queued asynchronous requests (sending what is
/// gathered first): a failure is kept for the caller (`deferred`), what a launch printed for
/// the next synchronizing call.
fn read_queued(io: &mut ChannelIo<'_>) -> Result<(), CuResult> {
    let all = io.ch.unanswered.len();
    read_replies(io, all)
}

/// Reads the replies of the first `count` queued requests, as `read_queued`.
fn read_replies(io: &mut ChannelIo<'_>, count: usize) -> Result<(), CuResult> {
    let mut payload = Vec::new();
    for _ in 0..count {
        let Some(Queued { seq, op, into }) = io.ch.unanswered.pop_front() else { break };
        io.ch.in_flight = io.ch.in_flight.saturating_sub(1);
        io.ch.unanswered_bytes = io.ch.unanswered_bytes.saturating_sub(into.map_or(0, |r| r.len));
        payload.clear();
        let status = match into {
            Some(r) => read_data_reply(io, op, seq, r.len, true, |io| io.recv_pinned(r), &mut payload)?,
            None => read_reply(io, op, seq, &mut payload)?,
        };
        if status != CUDA_SUCCESS {
            let msg = String::from_utf8_lossy(&payload);
            vlog!(crate::log::WARN, "asynchronous {op:?} failed ({}): {msg}", error_name(status).map_or("?", |n| n.0));
            io.ch.deferred.get_or_insert(status);
        } else if matches!(op, Op::Launch | Op::LaunchCooperative) {
            io.ch.output.extend_from_slice(&payload);
        }
    }
    Ok(())
}

/// `read_reply` for a reply whose payload is `len` bytes of data (a device-to-host copy), which
/// `take` reads from the channel to where it belongs; a failure's message goes to `message`. A
/// success with another length is not data: CUDA_ERROR_UNKNOWN. `precise`: receive the header
/// alone (the data is not to pass through staging).
fn read_data_reply(
    io: &mut ChannelIo<'_>,
    op: Op,
    seq: u32,
    len: usize,
    precise: bool,
    take: impl FnOnce(&mut ChannelIo<'_>) -> io::Result<()>,
    message: &mut Vec<u8>,
) -> Result<u32, CuResult> {
    io.precise = precise;
    let h = read_header(io, op, seq);
    io.precise = false;
    let h = h?;
    let lost = |e: io::Error| {
        vlog!(crate::log::ERROR, "lost the mediator during {op:?}: {e}");
        CUDA_ERROR_DEINITIALIZED
    };
    if h.status == CUDA_SUCCESS && h.payload_len as usize == len {
        take(io).map_err(lost)?;
        return Ok(CUDA_SUCCESS);
    }
    message.resize(h.payload_len as usize, 0);
    io::Read::read_exact(io, message).map_err(lost)?;
    if h.status == CUDA_SUCCESS {
        vlog!(crate::log::ERROR, "{op:?}: the mediator returned {} bytes, not {len}", h.payload_len);
        return Ok(CUDA_ERROR_UNKNOWN);
    }
    Ok(h.status)
}

impl DeviceTransport {
    /// Sends what `queued` asks for now if the batch is full, or everything if it is not a
    /// queued operation (its failure, or an earlier one, is then the result).
    ///
    /// A full batch is pipelined: it goes to the device, then the replies of the batch before
    /// it are read (ready by then, as a rule), and its own are left for the next. So the guest
    /// gathers a batch while the mediator runs the one before, rather than each waiting for the
    /// other (under TCG a round trip costs as much as gathering 64 launches). At most two
    /// batches are unanswered; copies into pinned memory still wait for all (bounded bytes).
    fn settle(&self, io: &mut ChannelIo<'_>, queued: bool) -> Result<(), CuResult> {
        if !queued || io.ch.unanswered_bytes >= MAX_QUEUED_BYTES {
            read_queued(io)?;
        } else if io.ch.unanswered.len() - io.ch.in_flight >= MAX_QUEUED {
            if io.ch.pending > 0 {
                io.send(None).map_err(|e| {
                    vlog!(crate::log::ERROR, "lost the mediator sending a batch: {e}");
                    CUDA_ERROR_DEINITIALIZED
                })?;
            }
            let older = io.ch.in_flight;
            read_replies(io, older)?;
            io.ch.in_flight = io.ch.unanswered.len();
        }
        match io.ch.deferred.take() {
            Some(e) if !queued => Err(e),
            other => {
                io.ch.deferred = other;
                Ok(())
            }
        }
    }
}

impl Transport for DeviceTransport {
    /// The driver pins the pages and gives the device their addresses.
    fn register_host(&self, p: *mut u8, len: usize, _memfd: Option<std::os::fd::BorrowedFd<'_>>, how: HostUse) -> Result<Option<u64>, CuResult> {
        let mut ch = self.chan.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        let flags = if how.read_only { PIN_READ_ONLY } else { 0 } | if how.transient { PIN_TRANSIENT } else { 0 };
        let mut a = PinArgs { addr: p as u64, len: len as u64, flags, id: 0 };
        match ioctl(ch.fd, VGPU_IOCTL_PIN, &mut a) {
            Ok(()) => {
                ch.pins.insert(a.id, p as usize);
                Ok(Some(a.id as u64))
            }
            Err(e) => {
                let level = if how.transient { crate::log::DEBUG } else { crate::log::INFO };
                vlog!(level, "the vgpu driver did not pin {len} bytes ({e}); copies from and to them go through staging");
                // Registering memory that is not the caller's is the caller's error; a copy of
                // such memory fails later, where it is read or written.
                match e.raw_os_error() {
                    Some(libc::EFAULT) if !how.transient => Err(CUDA_ERROR_INVALID_VALUE),
                    _ => Ok(None),
                }
            }
        }
    }

    fn unregister_host(&self, handle: u64) -> Result<(), CuResult> {
        let id = u32::try_from(handle).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let mut ch = self.chan.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        // Copies into the region whose replies are unread must land before it goes.
        read_queued(&mut ChannelIo::new(&mut ch))?;
        let mut arg = id;
        ioctl(ch.fd, VGPU_IOCTL_UNPIN, &mut arg).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        ch.pins.remove(&id);
        Ok(())
    }

    /// Zero-copy (HELLO_GUEST_PINNED): MemcpyHtoDHost/MemcpyDtoHHost naming the region, the
    /// mediator copying between its pages and the device. Otherwise plain MemcpyHtoD/MemcpyDtoH
    /// requests (split into COPY_CHUNK pieces) whose data the device takes from or puts into the
    /// pinned pages.
    fn copy_host(&self, dir: Direction, device: u64, handle: u64, offset: usize, len: usize, queued: bool) -> Result<(), CuResult> {
        let id = u32::try_from(handle).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let mut ch = self.chan.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        let mut io = ChannelIo::new(&mut ch);
        let mut done = 0;
        if io.ch.zero_copy {
            let op = if dir == Direction::ToDevice { Op::MemcpyHtoDHost } else { Op::MemcpyDtoHHost };
            while done < len {
                let n = (len - done).min(ZERO_COPY_CHUNK);
                let at = device.checked_add(done as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
                let seq = self.owner.next_seq()?;
                let args = [at, id as u64, (offset + done) as u64, n as u64].map(u64::to_le_bytes);
                write_request(&mut io, op, seq, &[&args[0], &args[1], &args[2], &args[3]])?;
                io.ch.unanswered.push_back(Queued { seq, op, into: None });
                done += n;
                if done < len {
                    self.settle(&mut io, true)?;
                }
            }
            return self.settle(&mut io, queued);
        }
        while done < len {
            let n = (len - done).min(COPY_CHUNK);
            let at = device.checked_add(done as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            let r = PinnedRange { id, offset: offset + done, len: n };
            let seq = self.owner.next_seq()?;
            match dir {
                Direction::ToDevice => {
                    write_header(&mut io, Op::MemcpyHtoD, seq, 8 + n)?;
                    io::Write::write_all(&mut io, &at.to_le_bytes()).and_then(|()| io.send_pinned(r)).map_err(|e| {
                        vlog!(crate::log::ERROR, "lost the mediator during a pinned copy: {e}");
                        CUDA_ERROR_DEINITIALIZED
                    })?;
                    io.ch.unanswered.push_back(Queued { seq, op: Op::MemcpyHtoD, into: None });
                }
                Direction::FromDevice => {
                    write_request(&mut io, Op::MemcpyDtoH, seq, &[&at.to_le_bytes(), &(n as u64).to_le_bytes()])?;
                    io.ch.unanswered.push_back(Queued { seq, op: Op::MemcpyDtoH, into: Some(r) });
                    io.ch.unanswered_bytes += n;
                }
            }
            done += n;
            if done < len {
                self.settle(&mut io, true)?;
            }
        }
        self.settle(&mut io, queued)
    }

    fn call(&self, op: Op, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<(), CuResult> {
        let seq = self.owner.next_seq()?;
        let mut ch = self.chan.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        // This request goes out behind the queued ones, in the same SEND; their replies come
        // first.
        let mut io = ChannelIo::new(&mut ch);
        write_request(&mut io, op, seq, parts)?;
        read_queued(&mut io)?;
        let start = reply.len();
        let status = read_reply(&mut io, op, seq, reply)?;
        if let Some(e) = io.ch.deferred.take() {
            reply.truncate(start);
            return Err(e);
        }
        reply_result(op, status, reply, start)
    }

    /// The payload goes from staging straight into `out` (one copy in the guest, not three).
    fn call_into(&self, op: Op, parts: &[&[u8]], out: &mut [u8]) -> Result<(), CuResult> {
        let seq = self.owner.next_seq()?;
        let mut ch = self.chan.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        let mut io = ChannelIo::new(&mut ch);
        write_request(&mut io, op, seq, parts)?;
        read_queued(&mut io)?;
        let mut message = Vec::new();
        let len = out.len();
        let status = read_data_reply(&mut io, op, seq, len, false, |io| io::Read::read_exact(io, out), &mut message)?;
        if let Some(e) = io.ch.deferred.take() {
            return Err(e);
        }
        reply_result(op, status, &mut message, 0)
    }

    fn call_async(&self, op: Op, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, CuResult> {
        let seq = self.owner.next_seq()?;
        let mut ch = self.chan.lock().map_err(|_| CUDA_ERROR_DEINITIALIZED)?;
        let mut io = ChannelIo::new(&mut ch);
        write_request(&mut io, op, seq, parts)?;
        io.ch.unanswered.push_back(Queued { seq, op, into: None });
        // A full batch is sent and its replies taken now: bounds what waits in the device and
        // the mediator for us to read.
        self.settle(&mut io, true)?;
        Ok(None)
    }

    fn take_async_output(&self) -> Vec<u8> {
        self.chan.lock().map(|mut c| std::mem::take(&mut c.output)).unwrap_or_default()
    }

    fn connected(&self, hello_flags: u32) {
        if let Ok(mut ch) = self.chan.lock() {
            ch.deadline = None;
            ch.zero_copy = hello_flags & vgpu_uapi::proto::HELLO_GUEST_PINNED != 0;
        }
    }
}
