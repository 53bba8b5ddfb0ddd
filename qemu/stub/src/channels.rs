//! Channels (uapi `channel.rs`): each open channel is one connection to the mediator and one
//! worker thread that moves the bytes of its descriptors between guest RAM (the channel area's
//! staging buffer, or pages the guest driver pinned) and that connection. The device never
//! interprets the bytes. After its setup the connection carries them through shared-memory
//! rings (uapi `shm_ring.rs`): a call costs no socket message, and while both sides are busy no
//! thread wake-up; a mediator without them gets them over the socket.

use crate::device::{Effect, Registers};
use crate::link::{Control, Piece};
use crate::ram::GuestRam;
use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use vgpu_client::shm_ring::{self, Ring};
use vgpu_uapi::bar0;
use vgpu_uapi::channel::*;

/// The MSI-X eventfds QEMU gave us (set_irqs), shared with the workers.
pub type Irqs = Arc<Mutex<Vec<Option<File>>>>;

const EINVAL: u32 = libc::EINVAL as u32;
const ENOSPC: u32 = libc::ENOSPC as u32;
const EFAULT: u32 = libc::EFAULT as u32;
const EPIPE: u32 = libc::EPIPE as u32;
const ECONNREFUSED: u32 = libc::ECONNREFUSED as u32;

/// How long a worker keeps watching its ring after it ran dry (a host thread spinning that
/// long, for a guest that calls again within it, saves the guest the doorbell's VM exit).
const POLL_FOR: std::time::Duration = std::time::Duration::from_micros(200);

/// Most bytes copied per step: bounds the worker's buffer and how long it holds the RAM lock.
const CHUNK: usize = 1 << 20;

/// Most reply bytes a worker keeps for the guest while it is still sending (see `held`): far
/// more than vgpu's libcuda ever leaves unread; a guest past it loses its channel rather than
/// host memory.
const MAX_HELD: usize = 256 << 20;

/// Most pinned pages the device keeps track of, over all channels (32 GiB of guest memory;
/// the lists cost 8 bytes a page here).
const MAX_PINNED_PAGES: usize = 1 << 23;

const PAGE: u64 = 4096;

/// A region of a process's memory the guest driver pinned (bar0 CMD_PIN): the guest-physical
/// addresses of its pages, where it starts in the first page, its length.
struct Region {
    pages: Vec<u64>,
    offset: u64,
    len: u64,
    read_only: bool,
}

impl Region {
    /// Whether bytes `at..at + n` may be read, or written (`into`).
    fn allows(&self, at: u64, n: u64, into: bool) -> bool {
        !(into && self.read_only) && at.checked_add(n).is_some_and(|end| end <= self.len)
    }
}

/// A channel's pinned regions by id, shared by the device (CMD_PIN/CMD_UNPIN) and the worker.
/// The worker holds the read lock only while it copies one chunk between guest RAM and its
/// buffer, so an unpin waits at most that long and after it the pages are never touched.
type Regions = Arc<RwLock<HashMap<u32, Region>>>;

fn read_regions(r: &Regions) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Region>> {
    r.read().unwrap_or_else(|e| e.into_inner())
}

fn write_regions(r: &Regions) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, Region>> {
    r.write().unwrap_or_else(|e| e.into_inner())
}

/// How long a worker watches its shared ring for the mediator's reply before it sleeps.
const RING_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Where a worker's bytes to and from the mediator go: the shared rings (uapi `shm_ring.rs`),
/// or the socket with a mediator that has none.
enum Pipe {
    Socket(UnixStream),
    Ring(Ring),
}

/// Why a worker ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The channel was closed.
    Closed,
    /// sq_tail ran more than SQ_ENTRIES ahead of sq_head.
    BrokenRing,
    /// The channel area's header is no longer in guest RAM.
    Fault,
}

/// Doorbell and stop request of one worker.
#[derive(Default)]
struct Bell {
    /// (rung, stop)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Bell {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ring(&self, stop: bool) {
        let mut s = self.lock();
        s.0 = true;
        s.1 |= stop;
        self.cv.notify_one();
    }

    fn stopped(&self) -> bool {
        self.lock().1
    }

    /// Waits for a doorbell; false once the channel is closing. Clearing `rung` before the
    /// worker reads sq_tail means a doorbell rung after that read is never lost.
    fn wait(&self) -> bool {
        let mut s = self.lock();
        while !s.0 {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 = false;
        !s.1
    }
}

struct Open {
    /// A clone of the worker's socket, to shut it down from here.
    sock: UnixStream,
    bell: Arc<Bell>,
    worker: JoinHandle<Exit>,
    pins: Regions,
    /// The mediator reaches this channel's pinned regions itself (the control link's).
    linked: bool,
}

pub struct Channels {
    pub ram: GuestRam,
    pub irqs: Irqs,
    mediator: PathBuf,
    open: HashMap<u32, Open>,
    /// The zero-copy link to the mediator (link.rs), made at the first channel open.
    control: Option<Control>,
    /// Why the last attempt to make it failed (logged once per reason).
    control_failed: Option<String>,
    /// Whether to make the link at all (`--no-zero-copy`; off for fake mediators in tests).
    pub zero_copy: bool,
    /// Whether channels move their bytes through shared rings with the mediator rather than
    /// their sockets (`--no-shared-rings`; off for fake mediators in tests).
    pub shared_rings: bool,
}

impl Channels {
    pub fn new(mediator: PathBuf) -> Self {
        let irqs = Arc::new(Mutex::new((0..bar0::MSIX_VECTORS).map(|_| None).collect()));
        Channels { ram: GuestRam::default(), irqs, mediator, open: HashMap::new(), control: None, control_failed: None, zero_copy: false, shared_rings: false }
    }

    /// The control link, made (again) if there is none or it broke; None if the mediator
    /// cannot take one (the channels then carry every byte).
    fn control(&mut self) -> Option<&mut Control> {
        if self.control.as_ref().is_some_and(|c| c.broken) {
            self.control = None;
        }
        if self.control.is_none() && self.zero_copy {
            match Control::connect(&self.mediator, &self.ram.pieces()) {
                Ok(c) => {
                    self.control = Some(c);
                    self.control_failed = None;
                }
                Err(e) => {
                    if self.control_failed.as_ref() != Some(&e) {
                        eprintln!("vgpu-stub: no zero-copy link to the mediator ({e}); pinned memory goes through the channels");
                    }
                    self.control_failed = Some(e);
                }
            }
        }
        self.control.as_mut()
    }

    /// QEMU mapped guest RAM (vfio-user DMA_MAP): ours, and the mediator's if linked.
    pub fn map_ram(&mut self, gpa: u64, size: u64, file: File, offset: u64) -> Result<(), String> {
        let shared = file.try_clone().ok();
        self.ram.map(gpa, size, file, offset)?;
        if let (Some(c), Some(file)) = (self.control.as_mut(), shared) {
            if let Err(e) = c.map(&Piece { gpa, size, file, offset }) {
                eprintln!("vgpu-stub: the mediator did not map guest RAM {gpa:#x}+{size:#x}: {e}");
            }
        }
        Ok(())
    }

    /// QEMU took guest RAM back (DMA_UNMAP): the mediator lets go first, then we do.
    pub fn unmap_ram(&mut self, gpa: u64, size: u64, all: bool) -> usize {
        if let Some(c) = self.control.as_mut() {
            let (gpa, size) = if all { (0, u64::MAX) } else { (gpa, size) };
            if let Err(e) = c.unmap(gpa, size) {
                eprintln!("vgpu-stub: the mediator did not unmap guest RAM {gpa:#x}+{size:#x}: {e}");
                // It may still hold the pages: take the link down (it forgets them with it).
                self.control = None;
            }
        }
        self.ram.unmap(gpa, size, all)
    }

    /// Opens channel `n` on the area `addr..addr+size` (its shape already checked by the
    /// register model): 0 or an errno value.
    pub fn open(&mut self, n: u32, addr: u64, size: u64) -> u32 {
        if self.open.contains_key(&n) {
            return libc::EBUSY as u32;
        }
        if !self.ram.contains(addr, size) {
            return EFAULT;
        }
        // The counters go on from the values in the area (a fresh, zeroed area starts at 0).
        let load = |off: usize| addr.checked_add(off as u64).and_then(|a| self.ram.load_u32(a, Ordering::Acquire));
        let (Some(head), Some(cq_tail)) = (load(SQ_HEAD), load(CQ_TAIL)) else {
            return EFAULT;
        };
        let connect = |m: &PathBuf| {
            UnixStream::connect(m).inspect_err(|e| eprintln!("vgpu-stub: channel {n}: cannot reach the mediator at {}: {e}", m.display()))
        };
        let Ok(mut sock) = connect(&self.mediator) else { return ECONNREFUSED };
        let mut linked = false;
        if let Some(c) = self.control() {
            match c.attach(&mut sock, n) {
                Ok(()) => linked = true,
                Err(e) => {
                    eprintln!("vgpu-stub: channel {n}: no zero-copy link ({e}); its pinned memory goes through the channel");
                    // The connection may be out of step: start a clean one.
                    let Ok(s) = connect(&self.mediator) else { return ECONNREFUSED };
                    sock = s;
                }
            }
        }
        let pipe = if self.shared_rings {
            match shm_ring::upgrade(&sock, vgpu_uapi::shm_ring::DEFAULT_SIZE, crate::link::CALL_TIMEOUT) {
                Ok(ring) => Some(Pipe::Ring(ring)),
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    eprintln!("vgpu-stub: channel {n}: no shared rings ({e}); its bytes go over the socket");
                    None
                }
                Err(e) => {
                    eprintln!("vgpu-stub: channel {n}: cannot set up its shared rings with the mediator: {e}");
                    return ECONNREFUSED;
                }
            }
        } else {
            None
        };
        let pipe = match pipe {
            Some(p) => p,
            None => match sock.try_clone() {
                Ok(theirs) => Pipe::Socket(theirs),
                Err(_) => return ECONNREFUSED,
            },
        };
        let bell = Arc::new(Bell { state: Mutex::new((true, false)), cv: Condvar::new() });
        let pins = Regions::default();
        let w = Worker {
            n,
            area: addr,
            size,
            ram: self.ram.clone(),
            irqs: self.irqs.clone(),
            pipe,
            bell: bell.clone(),
            head,
            cq_tail,
            buf: Vec::new(),
            held: std::collections::VecDeque::new(),
            pins: pins.clone(),
        };
        match std::thread::Builder::new().name(format!("vgpu-chan{n}")).spawn(move || w.run()) {
            Ok(worker) => {
                self.open.insert(n, Open { sock, bell, worker, pins, linked });
                0
            }
            Err(e) => {
                eprintln!("vgpu-stub: channel {n}: cannot start its worker: {e}");
                libc::EAGAIN as u32
            }
        }
    }

    /// Shuts channel `n` down and waits for its worker; None if it was not open. When this
    /// returns, the device no longer touches the channel area.
    pub fn close(&mut self, n: u32) -> Option<std::thread::Result<Exit>> {
        let o = self.open.remove(&n)?;
        // Stop first, so a worker woken by the shutdown posts nothing; the shutdown wakes one
        // blocked in read/write on the socket, the bell one waiting for a doorbell.
        o.bell.ring(true);
        let _ = o.sock.shutdown(Shutdown::Both);
        let r = o.worker.join();
        if r.is_err() {
            eprintln!("vgpu-stub: channel {n}: worker panicked");
        }
        if o.linked {
            self.release(n);
        }
        Some(r)
    }

    pub fn close_all(&mut self) {
        let mut ns: Vec<u32> = self.open.keys().copied().collect();
        ns.sort_unstable();
        for n in ns {
            self.close(n);
        }
    }

    pub fn ring(&self, n: u32) {
        if let Some(o) = self.open.get(&n) {
            o.bell.ring(false);
        }
    }

    /// Carries out what a BAR0 write asked of the channels, reporting the outcome to `regs`
    /// (read back from CHAN_STATUS); returns the MSI-X vector to raise for an IRQ_TEST write.
    pub fn carry_out(&mut self, regs: &mut Registers, effect: Effect, trace: bool) -> Option<u32> {
        match effect {
            Effect::None => {}
            Effect::RaiseIrq(vector) => return Some(vector),
            Effect::Open { channel, addr, size } => {
                let status = self.open(channel, addr, size);
                regs.opened(channel, status);
                if trace || status != 0 {
                    eprintln!("vgpu-stub: channel {channel} open at {addr:#x}+{size:#x}: status {status}");
                }
            }
            Effect::Close(channel) => {
                self.close(channel);
            }
            Effect::Doorbell(channel) => self.ring(channel),
            Effect::Pin { channel, request } => {
                let status = self.pin(channel, request);
                regs.done(status);
                if trace || status != 0 {
                    eprintln!("vgpu-stub: channel {channel} pin request at {request:#x}: status {status}");
                }
            }
            Effect::Unpin { channel, id } => regs.done(self.unpin(channel, id)),
        }
        None
    }

    /// Registers the pinned region the pin request at `request` describes (bar0 CMD_PIN) for
    /// channel `n`: copies it and checks its shape and that every page is guest RAM. 0 or an
    /// errno value.
    fn pin(&mut self, n: u32, request: u64) -> u32 {
        let total: usize = self.open.values().map(|o| read_regions(&o.pins).values().map(|r| r.pages.len()).sum::<usize>()).sum();
        let Some(o) = self.open.get(&n) else { return libc::ENOENT as u32 };
        let mut head = [0u8; bar0::PIN_REQUEST_WORDS * 8];
        if self.ram.read(request, &mut head).is_none() {
            return EFAULT;
        }
        let word = |i: usize| u64::from_le_bytes(head[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let (id, flags, offset, pages, len) = bar0::parse_pin_request([word(0), word(1), word(2)]);
        let fits = offset < PAGE as u32 && len > 0 && (offset as u64).checked_add(len).is_some_and(|e| e <= pages as u64 * PAGE);
        if !fits || pages == 0 || pages > bar0::MAX_PIN_PAGES || flags & !bar0::PIN_READ_ONLY != 0 {
            return EINVAL;
        }
        let read_only = flags & bar0::PIN_READ_ONLY != 0;
        let Some(list) = request.checked_add(head.len() as u64) else { return EFAULT };
        {
            let regions = read_regions(&o.pins);
            if regions.contains_key(&id) {
                return libc::EEXIST as u32;
            }
            if regions.len() >= bar0::MAX_PINS as usize || total + pages as usize > MAX_PINNED_PAGES {
                return ENOSPC;
            }
        }
        let mut raw = vec![0u8; pages as usize * 8];
        if self.ram.read(list, &mut raw).is_none() {
            return EFAULT;
        }
        let mut addrs = Vec::with_capacity(pages as usize);
        for entry in raw.chunks_exact(8) {
            let a = u64::from_le_bytes(entry.try_into().unwrap_or([0xff; 8]));
            if a % PAGE != 0 {
                return EINVAL;
            }
            if !self.ram.contains(a, PAGE) {
                return EFAULT;
            }
            addrs.push(a);
        }
        if o.linked {
            // The mediator checks it again and copies it itself; if it cannot, the pin fails
            // (libcuda then copies that memory through staging, as for pageable memory).
            let Some(c) = self.control.as_mut() else { return libc::EIO as u32 };
            if let Err(e) = c.pin(n, id, flags, offset, len, &addrs) {
                eprintln!("vgpu-stub: channel {n}: the mediator refused pinned region {id}: {e}");
                return libc::EIO as u32;
            }
        }
        write_regions(&o.pins).insert(id, Region { pages: addrs, offset: offset as u64, len, read_only });
        0
    }

    /// The mediator forgets channel `n`'s regions; if it cannot say so, the link goes down (and
    /// the mediator forgets every region with it).
    fn release(&mut self, n: u32) {
        if let Some(c) = self.control.as_mut() {
            if let Err(e) = c.release(n) {
                eprintln!("vgpu-stub: channel {n}: the mediator did not release its pinned memory: {e}");
                // Only a link that broke may still hold them (and goes, with them); a refusal
                // means there was nothing to release.
                if c.broken {
                    self.control = None;
                }
            }
        }
    }

    /// Forgets pinned region `id` of channel `n`: once this returns its pages are not touched.
    fn unpin(&mut self, n: u32, id: u32) -> u32 {
        let Some(o) = self.open.get(&n) else { return libc::ENOENT as u32 };
        if o.linked {
            if let Some(c) = self.control.as_mut() {
                if let Err(e) = c.unpin(n, id) {
                    eprintln!("vgpu-stub: channel {n}: the mediator did not unpin region {id}: {e}");
                    if c.broken {
                        self.control = None;
                    }
                }
            }
        }
        let Some(o) = self.open.get(&n) else { return libc::ENOENT as u32 };
        match write_regions(&o.pins).remove(&id) {
            Some(_) => 0,
            None => libc::ENOENT as u32,
        }
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Raises MSI-X `vector` if the guest enabled it (otherwise it polls).
pub fn raise(irqs: &Irqs, vector: u32) -> bool {
    let v = irqs.lock().unwrap_or_else(|e| e.into_inner());
    match v.get(vector as usize).and_then(Option::as_ref) {
        Some(mut f) => {
            if let Err(e) = f.write_all(&1u64.to_ne_bytes()) {
                eprintln!("vgpu-stub: MSI-X vector {vector}: {e}");
            }
            true
        }
        None => false,
    }
}

struct Worker {
    n: u32,
    area: u64,
    size: u64,
    ram: GuestRam,
    irqs: Irqs,
    pipe: Pipe,
    bell: Arc<Bell>,
    /// Device-owned counters (mirrored to sq_head and cq_tail in the area).
    head: u32,
    cq_tail: u32,
    buf: Vec<u8>,
    /// Reply bytes read from the mediator while a SEND was being written (so that neither side
    /// waits for the other to read), handed out first by the next RECVs.
    held: std::collections::VecDeque<u8>,
    pins: Regions,
}

impl Worker {
    fn run(mut self) -> Exit {
        while self.bell.wait() {
            if let Err(e) = self.serve() {
                if e != Exit::Closed {
                    eprintln!("vgpu-stub: channel {}: stopped: {e:?}", self.n);
                }
                return e;
            }
        }
        Exit::Closed
    }

    /// Drains the ring, then keeps watching sq_tail for a while with `polling` set, so that a
    /// guest issuing calls back to back rings no doorbell (each one is a trap out of the VM).
    fn serve(&mut self) -> Result<(), Exit> {
        let flag = self.area.checked_add(POLLING as u64).ok_or(Exit::Fault)?;
        let tail = self.area.checked_add(SQ_TAIL as u64).ok_or(Exit::Fault)?;
        loop {
            self.drain()?;
            self.ram.store_u32(flag, 1, Ordering::SeqCst).ok_or(Exit::Fault)?;
            let since = std::time::Instant::now();
            let mut posted = false;
            while since.elapsed() < POLL_FOR && !self.bell.stopped() {
                if self.ram.load_u32(tail, Ordering::Acquire).ok_or(Exit::Fault)? != self.head {
                    posted = true;
                    break;
                }
                std::hint::spin_loop();
            }
            if posted {
                continue;
            }
            self.ram.store_u32(flag, 0, Ordering::SeqCst).ok_or(Exit::Fault)?;
            std::sync::atomic::fence(Ordering::SeqCst);
            // A descriptor posted while we were clearing the flag had no doorbell: take it.
            if self.ram.load_u32(tail, Ordering::Acquire).ok_or(Exit::Fault)? == self.head {
                return Ok(());
            }
        }
    }

    /// Processes every posted descriptor, in order.
    fn drain(&mut self) -> Result<(), Exit> {
        let area = self.area;
        let hdr = |off: usize| area.checked_add(off as u64).ok_or(Exit::Fault);
        loop {
            if self.bell.stopped() {
                return Err(Exit::Closed);
            }
            // Acquire: the descriptors the guest wrote before publishing sq_tail are visible
            // to the reads below.
            let tail = self.ram.load_u32(hdr(SQ_TAIL)?, Ordering::Acquire).ok_or(Exit::Fault)?;
            let pending = tail.wrapping_sub(self.head);
            if pending == 0 {
                return Ok(());
            }
            if pending > SQ_ENTRIES {
                eprintln!("vgpu-stub: channel {}: sq_tail {tail} is {pending} descriptors ahead of sq_head {}", self.n, self.head);
                return Err(Exit::BrokenRing);
            }
            let mut b = [0u8; DESC_SIZE];
            self.ram.read(hdr(sq_slot(self.head))?, &mut b).ok_or(Exit::Fault)?;
            let d = Desc::from_bytes(&b);
            self.head = self.head.wrapping_add(1);
            // Release: our copy of the descriptor is taken before the guest may reuse the slot.
            self.ram.store_u32(hdr(SQ_HEAD)?, self.head, Ordering::Release).ok_or(Exit::Fault)?;
            let (status, len) = self.execute(&d);
            if self.bell.stopped() {
                // Closing: the guest is about to take the area back; post nothing more.
                return Err(Exit::Closed);
            }
            let c = Completion { tag: d.tag, status, len };
            self.ram.write(hdr(cq_slot(self.cq_tail))?, &c.to_bytes()).ok_or(Exit::Fault)?;
            self.cq_tail = self.cq_tail.wrapping_add(1);
            // Release: the completion entry is visible before the tail that publishes it.
            self.ram.store_u32(hdr(CQ_TAIL)?, self.cq_tail, Ordering::Release).ok_or(Exit::Fault)?;
            // The tail before the guest's flag is read (see QUIET in uapi): a guest watching the
            // ring on its own needs no interrupt.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.ram.load_u32(hdr(QUIET)?, Ordering::Relaxed).ok_or(Exit::Fault)? != 1 {
                raise(&self.irqs, bar0::COMPLETION_VECTOR);
            }
        }
    }

    /// Keeps `bytes` of the mediator's replies for the guest's next RECVs.
    fn hold(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.held.len() + bytes.len() > MAX_HELD {
            eprintln!("vgpu-stub: channel {}: the guest leaves over {MAX_HELD} bytes of replies unread", self.n);
            return Err(ErrorKind::OutOfMemory.into());
        }
        self.held.extend(bytes);
        Ok(())
    }

    /// Writes `self.buf[..n]` to the mediator; while the way there is full, reads what the
    /// mediator sends meanwhile into `held` (it may be answering earlier requests of a batch and
    /// wait for us to read before it reads on).
    fn send_all(&mut self, n: usize) -> std::io::Result<()> {
        match &self.pipe {
            Pipe::Socket(_) => self.send_all_socket(n),
            Pipe::Ring(_) => self.send_all_ring(n),
        }
    }

    fn send_all_ring(&mut self, n: usize) -> std::io::Result<()> {
        let mut tmp = [0u8; 65536];
        let mut done = 0;
        while done < n {
            let Pipe::Ring(ring) = &mut self.pipe else { unreachable!("send_all chose the ring") };
            let w = ring.write(&self.buf[done..n])?;
            let r = ring.read(&mut tmp)?;
            if w == 0 && r == 0 {
                ring.wait(RING_SPIN, |r| Ok(r.writable()? > 0 || r.readable()? > 0))?;
            }
            done += w;
            self.hold(&tmp[..r])?;
        }
        Ok(())
    }

    fn send_all_socket(&mut self, n: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let Pipe::Socket(sock) = &self.pipe else { unreachable!("send_all chose the socket") };
        let fd = sock.as_raw_fd();
        let mut done = 0;
        while done < n {
            let mut pfd = [libc::pollfd { fd, events: libc::POLLOUT | libc::POLLIN, revents: 0 }];
            // SAFETY: one valid pollfd for a descriptor `self.pipe` keeps open.
            if unsafe { libc::poll(pfd.as_mut_ptr(), 1, -1) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let ev = pfd[0].revents;
            if ev & libc::POLLIN != 0 {
                let mut tmp = [0u8; 65536];
                // SAFETY: reads at most tmp.len() bytes into `tmp`, without blocking.
                let r = unsafe { libc::recv(fd, tmp.as_mut_ptr().cast(), tmp.len(), libc::MSG_DONTWAIT) };
                if r > 0 {
                    self.hold(&tmp[..r as usize])?;
                } else if r == 0 {
                    // The mediator closed the session.
                    return Err(ErrorKind::BrokenPipe.into());
                }
            }
            if ev & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 && ev & libc::POLLOUT == 0 {
                return Err(ErrorKind::BrokenPipe.into());
            }
            if ev & libc::POLLOUT != 0 {
                // SAFETY: writes at most n - done bytes of `self.buf`, without blocking or SIGPIPE.
                let w = unsafe { libc::send(fd, self.buf[done..n].as_ptr().cast(), n - done, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
                if w < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted {
                        return Err(e);
                    }
                } else {
                    done += w as usize;
                }
            }
        }
        Ok(())
    }

    /// Copies between `buf` and bytes `at..at + buf.len()` of pinned region `id`, into the
    /// region if `into`: false if the region is gone, too short or read-only (for `into`), or a
    /// page is no longer guest RAM.
    fn pinned_copy(&self, id: u32, at: u64, buf: &mut [u8], into: bool) -> bool {
        let regions = read_regions(&self.pins);
        let Some(r) = regions.get(&id) else { return false };
        if !r.allows(at, buf.len() as u64, into) {
            return false;
        }
        // Within the pages: offset + len <= pages * PAGE was checked when it was pinned.
        let mut pos = r.offset + at;
        let mut done = 0;
        while done < buf.len() {
            let first = (pos / PAGE) as usize;
            let start = r.pages[first] + pos % PAGE;
            // Extend over pages that follow one another in guest-physical memory.
            let mut end = r.pages[first] + PAGE;
            let mut next = first + 1;
            while end - start < (buf.len() - done) as u64 && r.pages.get(next) == Some(&end) {
                end += PAGE;
                next += 1;
            }
            let n = ((end - start) as usize).min(buf.len() - done);
            let ok = if into { self.ram.write(start, &buf[done..done + n]) } else { self.ram.read(start, &mut buf[done..done + n]) };
            if ok.is_none() {
                return false;
            }
            done += n;
            pos += n as u64;
        }
        true
    }

    /// Fills `self.buf[..n]` from the mediator's reply: first what is held, then the socket.
    fn recv_exact(&mut self, n: usize) -> Result<(), u32> {
        self.buf.resize(n, 0);
        let from_held = n.min(self.held.len());
        for (d, s) in self.buf[..from_held].iter_mut().zip(self.held.drain(..from_held)) {
            *d = s;
        }
        let mut got = from_held;
        if let Pipe::Ring(ring) = &mut self.pipe {
            return ring.read_exact(&mut self.buf[got..n], RING_SPIN).map_err(|_| EPIPE);
        }
        let Pipe::Socket(sock) = &mut self.pipe else { unreachable!("the ring returned above") };
        while got < n {
            match sock.read(&mut self.buf[got..n]) {
                Ok(0) => return Err(EPIPE),
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(EPIPE),
            }
        }
        Ok(())
    }

    /// At least one byte of the mediator's reply from `sock`, and what else has arrived already
    /// (a large reply comes in socket-buffer pieces: fewer, fuller receives for the guest, each
    /// one a round trip); None once the mediator closed the session.
    fn recv_some(sock: &mut UnixStream, buf: &mut [u8]) -> Option<usize> {
        use std::os::fd::AsRawFd;
        let mut got = loop {
            match sock.read(buf) {
                Ok(0) => return None,
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        };
        while got < buf.len() {
            let rest = &mut buf[got..];
            // SAFETY: reads at most rest.len() bytes into `rest`, without blocking.
            let r = unsafe { libc::recv(sock.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), libc::MSG_DONTWAIT) };
            if r <= 0 {
                break;
            }
            got += r as usize;
        }
        Some(got)
    }

    /// Runs one descriptor: (status, bytes moved).
    fn execute(&mut self, d: &Desc) -> (u32, u32) {
        if matches!(d.op, OP_SEND_PINNED | OP_RECV_PINNED) {
            return self.execute_pinned(d);
        }
        let in_staging = d.offset >= STAGING as u64 && d.offset.checked_add(d.len).is_some_and(|end| end <= self.size);
        let (Some(addr), Ok(len), true) = (self.area.checked_add(d.offset), u32::try_from(d.len), in_staging) else {
            return (EINVAL, 0);
        };
        let len = len as usize;
        match d.op {
            OP_SEND => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    self.buf.resize(n, 0);
                    // done < len <= u32::MAX and addr + len was checked above.
                    if self.ram.read(addr + done as u64, &mut self.buf[..n]).is_none() {
                        return (EFAULT, done as u32);
                    }
                    if self.send_all(n).is_err() {
                        return (EPIPE, done as u32);
                    }
                    done += n;
                }
                (0, len as u32)
            }
            OP_RECV if len > 0 && !self.held.is_empty() => {
                let n = len.min(self.held.len());
                let (a, b) = self.held.as_slices();
                let from_a = n.min(a.len());
                self.buf.clear();
                self.buf.extend_from_slice(&a[..from_a]);
                self.buf.extend_from_slice(&b[..n - from_a]);
                self.held.drain(..n);
                match self.ram.write(addr, &self.buf[..n]) {
                    Some(()) => (0, n as u32),
                    None => (EFAULT, 0),
                }
            }
            OP_RECV if len > 0 => {
                self.buf.resize(len.min(CHUNK), 0);
                let got = match &mut self.pipe {
                    Pipe::Ring(ring) => match ring.wait(RING_SPIN, |r| Ok(r.readable()? > 0)).and_then(|()| ring.read(&mut self.buf)) {
                        Ok(n) => n,
                        Err(_) => return (EPIPE, 0), // the mediator closed the session
                    },
                    Pipe::Socket(sock) => match Self::recv_some(sock, &mut self.buf) {
                        Some(n) => n,
                        None => return (EPIPE, 0),
                    },
                };
                match self.ram.write(addr, &self.buf[..got]) {
                    Some(()) => (0, got as u32),
                    None => (EFAULT, 0),
                }
            }
            _ => (EINVAL, 0),
        }
    }

    /// OP_SEND_PINNED / OP_RECV_PINNED: the bytes go straight between pinned pages and the
    /// mediator, a chunk at a time.
    fn execute_pinned(&mut self, d: &Desc) -> (u32, u32) {
        let (Ok(len), Some(_)) = (u32::try_from(d.len), d.offset.checked_add(d.len)) else {
            return (EINVAL, 0);
        };
        let (id, into) = (d.flags, d.op == OP_RECV_PINNED);
        // A descriptor that cannot be carried out moves no byte (the stream stays in step).
        let usable = read_regions(&self.pins).get(&id).is_some_and(|r| r.allows(d.offset, d.len, into));
        if !usable {
            return (EFAULT, 0);
        }
        let len = len as usize;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            if into {
                if let Err(e) = self.recv_exact(n) {
                    return (e, done as u32);
                }
            } else {
                self.buf.resize(n, 0);
            }
            let mut buf = std::mem::take(&mut self.buf);
            // d.offset + len was checked above.
            let ok = self.pinned_copy(id, d.offset + done as u64, &mut buf[..n], into);
            self.buf = buf;
            if !ok {
                return (EFAULT, done as u32);
            }
            if !into && self.send_all(n).is_err() {
                return (EPIPE, done as u32);
            }
            done += n;
        }
        (0, len as u32)
    }
}
