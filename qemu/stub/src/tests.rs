//! The device end to end without QEMU: guest RAM is a memfd handed over with DMA_MAP (and
//! mapped again here, as the guest's view), the mediator is a UnixListener in a thread, and
//! the test plays the guest driver through BAR0 and the channel area.

use super::*;
use channels::Exit;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_user::ServerBackend;
use vgpu_uapi::channel::*;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

const GPA: u64 = 0x1_0000_0000;
const RAM: u64 = 16 << 20;
const AREA: u64 = GPA + (4 << 20);
const SIZE: u64 = 4 << 20;
const EINVAL: u32 = libc::EINVAL as u32;

fn memfd(size: u64) -> File {
    // SAFETY: a NUL-terminated name and valid flags; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"vgpu-stub-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

fn eventfd() -> File {
    // SAFETY: plain syscall with valid flags; returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    unsafe { File::from_raw_fd(fd) }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fake mediator at a fresh socket path; `serve` runs in a thread per connection.
fn mediator(name: &str, serve: impl Fn(UnixStream) + Send + Sync + 'static) -> PathBuf {
    let path = std::env::temp_dir().join(format!("vgpu-stub-test-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(s));
        }
    });
    path
}

fn echo(mut s: UnixStream) {
    let mut b = [0u8; 4096];
    while let Ok(n @ 1..) = s.read(&mut b) {
        if s.write_all(&b[..n]).is_err() {
            return;
        }
    }
}

/// A fake mediator's connection: its socket, or the shared rings it upgraded to.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// The mediator's end of shared rings as a stream (end of stream once the stub is gone).
struct RingStream {
    ring: vgpu_client::shm_ring::Ring,
    _sock: UnixStream,
}

impl Read for RingStream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self.ring.wait(Duration::ZERO, |r| Ok(r.readable()? > 0)) {
            Ok(()) => self.ring.read(b),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl Write for RingStream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.ring.wait(Duration::ZERO, |r| Ok(r.writable()? > 0))?;
        self.ring.write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes the stub's ShmRing request (as the mediator does, server.rs) and answers it.
fn accept_rings(s: UnixStream) -> RingStream {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsFd, OwnedFd, RawFd};
    use vgpu_uapi::proto::{MsgHeader, Op, HEADER_LEN, MSG_MAGIC};
    let mut msg = [0u8; HEADER_LEN + 4];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [std::io::IoSliceMut::new(&mut msg)];
    let r = recvmsg::<()>(std::os::fd::AsRawFd::as_raw_fd(&s), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
    assert_eq!(r.bytes, HEADER_LEN + 4, "ShmRing comes in one message");
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in r.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let h = MsgHeader::from_bytes(msg[..HEADER_LEN].try_into().unwrap());
    assert_eq!(h.op, Op::ShmRing as u32);
    let size = u32::from_le_bytes(msg[HEADER_LEN..].try_into().unwrap());
    let [file, mb, db]: [OwnedFd; 3] = fds.try_into().expect("three descriptors");
    let ring = vgpu_client::shm_ring::Ring::attach(size, file, mb, db, s.as_fd()).unwrap();
    let reply = MsgHeader { magic: MSG_MAGIC, op: h.op, seq: h.seq, status: 0, payload_len: 0, reserved: 0 };
    (&s).write_all(&reply.to_bytes()).unwrap();
    RingStream { ring, _sock: s }
}

/// `serve` as a fake mediator twice: over the socket, and behind shared rings; with whether
/// the stub should ask for them.
fn mediators(name: &str, serve: impl Fn(&mut dyn Conn) + Send + Sync + 'static) -> [(PathBuf, bool); 2] {
    let serve = Arc::new(serve);
    let s2 = serve.clone();
    [
        (mediator(name, move |mut s| serve(&mut s)), false),
        (mediator(&format!("{name}-rings"), move |s| s2(&mut accept_rings(s))), true),
    ]
}

fn echo_conn(s: &mut dyn Conn) {
    let mut b = [0u8; 4096];
    while let Ok(n @ 1..) = s.read(&mut b) {
        if s.write_all(&b[..n]).is_err() {
            return;
        }
    }
}

struct Guest {
    dev: Vgpu,
    /// The guest's own view of its RAM.
    mem: MmapRegion,
    irq: File,
}

impl Guest {
    fn new(mediator: &Path) -> Self {
        let file = memfd(RAM);
        let mut dev = Vgpu::new(mediator.to_path_buf(), false);
        dev.dma_map(DmaMapFlags::READ_WRITE, 0, GPA, RAM, Some(file.try_clone().unwrap())).unwrap();
        let mem = MmapRegion::from_file(FileOffset::new(file, 0), RAM as usize).unwrap();
        let irq = eventfd();
        dev.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, vec![irq.try_clone().unwrap()]).unwrap();
        Guest { dev, mem, irq }
    }

    /// A guest whose device asks `mediator` for shared rings if `rings`.
    fn with(mediator: &Path, rings: bool) -> Self {
        let mut g = Guest::new(mediator);
        g.dev.chans.shared_rings = rings;
        g
    }

    fn reg_w(&mut self, off: u64, v: u32) {
        self.dev.region_write(VFIO_PCI_BAR0_REGION_INDEX, off, &v.to_le_bytes()).unwrap();
    }

    fn reg_r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.region_read(VFIO_PCI_BAR0_REGION_INDEX, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn open(&mut self, n: u32, addr: u64, size: u64) -> u32 {
        self.reg_w(bar0::CHAN_ADDR_LO, addr as u32);
        self.reg_w(bar0::CHAN_ADDR_HI, (addr >> 32) as u32);
        self.reg_w(bar0::CHAN_SIZE, size as u32);
        self.reg_w(bar0::CHAN_CMD, bar0::CMD_OPEN << 16 | n);
        self.reg_r(bar0::CHAN_STATUS)
    }

    fn close(&mut self, n: u32) -> u32 {
        self.reg_w(bar0::CHAN_CMD, bar0::CMD_CLOSE << 16 | n);
        self.reg_r(bar0::CHAN_STATUS)
    }

    fn off(gpa: u64) -> usize {
        (gpa - GPA) as usize
    }

    fn r32(&self, gpa: u64) -> u32 {
        self.mem.as_volatile_slice().load::<u32>(Self::off(gpa), Ordering::Acquire).unwrap()
    }

    fn w32(&self, gpa: u64, v: u32) {
        self.mem.as_volatile_slice().store(v, Self::off(gpa), Ordering::Release).unwrap();
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        self.mem.as_volatile_slice().write_slice(data, Self::off(gpa)).unwrap();
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.as_volatile_slice().read_slice(&mut v, Self::off(gpa)).unwrap();
        v
    }

    /// Posts `descs` on the channel at `area` without ringing.
    fn post(&self, area: u64, descs: &[Desc]) {
        let tail = self.r32(area + SQ_TAIL as u64);
        for (i, d) in descs.iter().enumerate() {
            self.write(area + sq_slot(tail.wrapping_add(i as u32)) as u64, &d.to_bytes());
        }
        self.w32(area + SQ_TAIL as u64, tail.wrapping_add(descs.len() as u32));
    }

    /// Waits for `n` new completions and consumes them.
    fn reap(&self, area: u64, n: u32) -> Vec<Completion> {
        let head = self.r32(area + CQ_HEAD as u64);
        wait_until("completions", || self.r32(area + CQ_TAIL as u64).wrapping_sub(head) >= n);
        assert_eq!(self.r32(area + CQ_TAIL as u64).wrapping_sub(head), n, "more completions than descriptors");
        let out = (0..n).map(|i| Completion::from_bytes(&self.read(area + cq_slot(head.wrapping_add(i)) as u64, COMPLETION_SIZE).try_into().unwrap())).collect();
        self.w32(area + CQ_HEAD as u64, head.wrapping_add(n));
        out
    }

    fn submit(&mut self, ch: u32, area: u64, descs: &[Desc]) -> Vec<Completion> {
        self.post(area, descs);
        self.reg_w(bar0::DOORBELL, ch);
        self.reap(area, descs.len() as u32)
    }

    fn interrupts(&self) -> u64 {
        let mut b = [0u8; 8];
        match (&self.irq).read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }
}

fn send(tag: u64, offset: u64, len: u64) -> Desc {
    Desc { op: OP_SEND, tag, offset, len, ..Default::default() }
}

fn recv(tag: u64, offset: u64, len: u64) -> Desc {
    Desc { op: OP_RECV, tag, offset, len, ..Default::default() }
}

fn ok(tag: u64, len: u32) -> Completion {
    Completion { tag, status: 0, len }
}

fn pinned(op: u32, tag: u64, id: u32, offset: u64, len: u64) -> Desc {
    Desc { op, tag, flags: id, offset, len }
}

impl Guest {
    /// Pins region `id` of channel `n` whose pages are at `pages` (the request written at `at`).
    fn pin(&mut self, n: u32, id: u32, at: u64, pages: &[u64], offset: u32, len: u64, flags: u32) -> u32 {
        self.pin_shaped(n, at, bar0::pin_request(id, flags, offset, pages.len() as u32, len), pages)
    }

    /// Pins with the request head given word by word.
    fn pin_shaped(&mut self, n: u32, at: u64, head: [u64; bar0::PIN_REQUEST_WORDS], pages: &[u64]) -> u32 {
        self.write(at, &head.iter().chain(pages).flat_map(|p| p.to_le_bytes()).collect::<Vec<_>>());
        self.reg_w(bar0::CHAN_ADDR_LO, at as u32);
        self.reg_w(bar0::CHAN_ADDR_HI, (at >> 32) as u32);
        self.reg_w(bar0::CHAN_CMD, bar0::CMD_PIN << 16 | n);
        self.reg_r(bar0::CHAN_STATUS)
    }

    fn unpin(&mut self, n: u32, id: u32) -> u32 {
        self.reg_w(bar0::PIN_ID, id);
        self.reg_w(bar0::CHAN_CMD, bar0::CMD_UNPIN << 16 | n);
        self.reg_r(bar0::CHAN_STATUS)
    }
}

#[test]
fn pinned_pages_go_straight_to_and_from_the_mediator() {
    let mut g = Guest::new(&mediator("pinned", echo));
    assert_eq!(g.open(3, AREA, SIZE), 0);
    let page = |i: u64| GPA + (10 << 20) + i * 4096;
    // A region over scattered pages (two of them adjacent), starting 100 bytes into the first.
    let (src, dst) = ([page(5), page(1), page(2), page(9)], [page(20), page(30), page(31), page(22)]);
    let len = 4 * 4096 - 100 - 7;
    let data: Vec<u8> = (0..len).map(|i| (i * 13 % 253) as u8).collect();
    let mut at = 0;
    for (i, &p) in src.iter().enumerate() {
        let start = if i == 0 { 100 } else { 0 };
        let n = (4096 - start).min(len - at);
        g.write(p + start as u64, &data[at..at + n]);
        at += n;
    }
    let list = AREA + 0x10_0000;
    assert_eq!(g.pin(3, 7, list, &src, 100, len as u64, bar0::PIN_READ_ONLY), 0);
    assert_eq!(g.pin(3, 8, list, &dst, 0, 4 * 4096, 0), 0);
    assert_eq!(g.pin(3, 8, list, &dst, 0, 4096, 0), libc::EEXIST as u32);
    // The guest may reuse the list buffer at once: the device copied it.
    g.write(list, &[0xff; 80]);
    let n = len as u64 - 50;
    let c = g.submit(3, AREA, &[pinned(OP_SEND_PINNED, 1, 7, 50, n), pinned(OP_RECV_PINNED, 2, 8, 3, n)]);
    assert_eq!(c, [ok(1, n as u32), ok(2, n as u32)]);
    let mut back = g.read(page(20), 4096);
    back.extend(g.read(page(30), 2 * 4096));
    back.extend(g.read(page(22), 4096));
    assert!(back[3..3 + n as usize] == data[50..], "the bytes went through the page lists");
    assert!(back[..3].iter().all(|&b| b == 0), "nothing written before the range");

    // Refused without moving a byte: outside the region, unknown region, writing a read-only one.
    let efault = |tag| Completion { tag, status: libc::EFAULT as u32, len: 0 };
    let bad = [
        pinned(OP_SEND_PINNED, 3, 7, 51, n),
        pinned(OP_SEND_PINNED, 4, 9, 0, 1),
        pinned(OP_RECV_PINNED, 5, 7, 0, 1),
        pinned(OP_RECV_PINNED, 6, 8, u64::MAX, 2),
    ];
    let c = g.submit(3, AREA, &bad);
    assert_eq!(c[..3], [efault(3), efault(4), efault(5)]);
    assert_eq!(c[3].status, EINVAL, "offset + len overflows");
    g.write(AREA + 0x1000, b"next");
    let c = g.submit(3, AREA, &[send(10, 0x1000, 4), pinned(OP_RECV_PINNED, 11, 8, 0, 4)]);
    assert_eq!(c, [ok(10, 4), ok(11, 4)]);
    assert_eq!(g.read(page(20), 4), b"next");

    // Pinning is checked: the shape, the request and every page in guest RAM, pages aligned.
    let efault = libc::EFAULT as u32;
    let one = [page(1)];
    let bad_shapes = [
        (bar0::pin_request(30, 0, 0, 0, 1), "no pages"),
        (bar0::pin_request(30, 0, 0, 1, 0), "empty"),
        (bar0::pin_request(30, 0, 4096, 1, 1), "offset past the first page"),
        (bar0::pin_request(30, 0, 100, 1, 4000), "runs past the last page"),
        (bar0::pin_request(30, 0, 0, bar0::MAX_PIN_PAGES + 1, 1), "too many pages"),
        (bar0::pin_request(30, 2, 0, 1, 1), "unknown flag"),
        (bar0::pin_request(30, 0, 8, 1, u64::MAX), "length overflows"),
    ];
    for (head, what) in bad_shapes {
        assert_eq!(g.pin_shaped(3, list, head, &one), EINVAL, "{what}");
    }
    assert_eq!(g.pin(3, 20, list, &[GPA + RAM], 0, 1, 0), efault, "page outside RAM");
    assert_eq!(g.pin(3, 21, list, &[page(1) + 8], 0, 1, 0), EINVAL, "misaligned page");
    g.reg_w(bar0::CHAN_ADDR_LO, (GPA + RAM - 16) as u32);
    g.reg_w(bar0::CHAN_ADDR_HI, ((GPA + RAM - 16) >> 32) as u32);
    g.reg_w(bar0::CHAN_CMD, bar0::CMD_PIN << 16 | 3);
    assert_eq!(g.reg_r(bar0::CHAN_STATUS), efault, "request running out of RAM");
    assert_eq!(g.pin(4, 23, list, &one, 0, 1, 0), libc::ENOENT as u32, "channel not open");

    // Unpinned or closed: the pages are out of reach.
    assert_eq!(g.unpin(3, 7), 0);
    assert_eq!(g.unpin(3, 7), libc::ENOENT as u32);
    assert_eq!(g.submit(3, AREA, &[pinned(OP_SEND_PINNED, 12, 7, 0, 1)]), [efault_c(12)]);
    assert_eq!(g.close(3), 0);
    assert_eq!(g.open(3, AREA, SIZE), 0);
    assert_eq!(g.submit(3, AREA, &[pinned(OP_SEND_PINNED, 13, 8, 0, 1)]), [efault_c(13)]);
}

fn efault_c(tag: u64) -> Completion {
    Completion { tag, status: libc::EFAULT as u32, len: 0 }
}

#[test]
fn registers_advertise_channels() {
    let mut g = Guest::new(Path::new("/nonexistent"));
    assert_eq!(g.reg_r(bar0::CAPS) & bar0::CAP_CHANNELS, bar0::CAP_CHANNELS);
    assert_eq!(g.reg_r(bar0::CHANNELS), 64);
}

/// A guest that watches its completion ring itself (QUIET = 1) gets no interrupt per
/// completion; one that does not (0, the zeroed area's value) gets them, as before QUIET.
#[test]
fn completions_raise_interrupts_only_for_a_guest_that_is_not_watching() {
    for (path, rings) in mediators("echo", echo_conn) {
        let mut g = Guest::with(&path, rings);
        assert_eq!(g.open(2, AREA, SIZE), 0);
        g.write(AREA + 0x1000, b"ping");
        g.interrupts();
        g.w32(AREA + QUIET as u64, 1);
        for tag in 0..4 {
            assert_eq!(g.submit(2, AREA, &[send(10 + tag, 0x1000, 4), recv(20 + tag, 0x3000, 4)])[1].tag, 20 + tag);
        }
        assert_eq!(g.interrupts(), 0, "interrupts raised while the guest watched the ring (rings {rings})");
        g.w32(AREA + QUIET as u64, 0);
        assert_eq!(g.submit(2, AREA, &[send(30, 0x1000, 4), recv(31, 0x3000, 4)])[1].tag, 31);
        assert!(g.interrupts() >= 1, "no interrupt for a guest about to sleep (rings {rings})");
    }
}

#[test]
fn send_and_recv_through_an_echoing_mediator() {
    for (path, rings) in mediators("echo", echo_conn) {
        send_and_recv_through(&path, rings);
    }
}

fn send_and_recv_through(path: &Path, rings: bool) {
    let mut g = Guest::with(path, rings);
    assert_eq!(g.open(2, AREA, SIZE), 0);
    let msg = b"hello, mediator";
    g.write(AREA + 0x1000, msg);
    let c = g.submit(2, AREA, &[send(11, 0x1000, msg.len() as u64), recv(12, 0x3000, 4096)]);
    assert_eq!(c[0], ok(11, msg.len() as u32));
    assert_eq!(c[1].tag, 12);
    assert_eq!(c[1].status, 0);
    let got = c[1].len as usize;
    assert!(got > 0 && got <= msg.len());
    assert_eq!(g.read(AREA + 0x3000, got), &msg[..got]);
    assert_eq!(g.r32(AREA + SQ_HEAD as u64), 2, "sq_head follows consumption");
    assert!(g.interrupts() >= 1, "completion vector raised");
    // Rounds of up to a full ring: the counters wrap around the slots, order is kept.
    for round in 0..3u64 {
        let descs: Vec<_> = (0..SQ_ENTRIES as u64).map(|i| send(round * 100 + i, 0x1000 + i, 1)).collect();
        g.write(AREA + 0x1000, &(0..32).map(|i| i as u8 + round as u8).collect::<Vec<_>>());
        let c = g.submit(2, AREA, &descs);
        assert_eq!(c, descs.iter().map(|d| ok(d.tag, 1)).collect::<Vec<_>>());
        let mut back = Vec::new();
        while back.len() < 32 {
            let c = g.submit(2, AREA, &[recv(7, 0x5000, 64)]);
            assert_eq!(c[0].status, 0);
            back.extend(g.read(AREA + 0x5000, c[0].len as usize));
        }
        assert_eq!(back, (0..32).map(|i| i as u8 + round as u8).collect::<Vec<_>>());
    }
    assert_eq!(g.close(2), 0);
}

#[test]
fn transfers_larger_than_a_chunk() {
    // Reads the whole request first, then answers with it: no echo deadlock.
    for (path, rings) in mediators("big", |s| {
        let mut b = vec![0u8; BIG];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(&b);
        }
    }) {
        transfer_larger_than_a_chunk(&path, rings);
    }
}

const BIG: usize = (1 << 20) + 12345;

fn transfer_larger_than_a_chunk(path: &Path, rings: bool) {
    let mut g = Guest::with(path, rings);
    assert_eq!(g.open(0, AREA, SIZE), 0);
    let data: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
    g.write(AREA + 0x1000, &data);
    assert_eq!(g.submit(0, AREA, &[send(1, 0x1000, BIG as u64)]), [ok(1, BIG as u32)]);
    let mut got = 0;
    while got < BIG {
        let c = g.submit(0, AREA, &[recv(2, 0x20_0000 + got as u64, (BIG - got) as u64)]);
        assert_eq!(c[0].status, 0);
        assert!(c[0].len > 0);
        got += c[0].len as usize;
    }
    assert_eq!(got, BIG);
    assert!(g.read(AREA + 0x20_0000, BIG) == data);
}

#[test]
fn bad_descriptors_complete_with_einval_and_the_channel_goes_on() {
    let mut g = Guest::new(&mediator("einval", echo));
    assert_eq!(g.open(1, AREA, SIZE), 0);
    let bad = [
        send(1, 0x800, 16),              // in the header page
        recv(2, 0x0, 16),                // over the rings
        send(3, 0x1000, SIZE),           // runs past the area
        send(4, SIZE, 1),                // starts at its end
        recv(5, u64::MAX - 8, 16),       // offset + len overflows
        send(6, 0x1000, u64::MAX),       // len overflows
        Desc { op: 9, tag: 7, offset: 0x1000, len: 1, ..Default::default() },
        recv(8, 0x1000, 0),              // cannot wait for "at least one" of zero bytes
    ];
    let c = g.submit(1, AREA, &bad);
    assert_eq!(c, bad.iter().map(|d| Completion { tag: d.tag, status: EINVAL, len: 0 }).collect::<Vec<_>>());
    // Nothing of the bad ones reached the mediator: the next exchange is exactly ours.
    g.write(AREA + SIZE - 3, b"end");
    let c = g.submit(1, AREA, &[send(9, SIZE - 3, 3), recv(10, 0x1000, 64)]);
    assert_eq!(c[0], ok(9, 3));
    assert_eq!(c[1].status, 0);
    assert_eq!(g.read(AREA + 0x1000, c[1].len as usize), &b"end"[..c[1].len as usize]);
}

#[test]
fn areas_outside_guest_ram_are_efault() {
    let path = mediator("efault", echo);
    let mut g = Guest::new(&path);
    let efault = libc::EFAULT as u32;
    assert_eq!(g.open(0, GPA - 0x2000, 0x2000), efault, "below RAM");
    assert_eq!(g.open(0, GPA + RAM - 0x1000, 0x2000), efault, "straddles its end");
    assert_eq!(g.open(0, 0xffff_ffff_ffff_c000, 0x2000), efault, "top of the address space");
    assert_eq!(g.open(0, 0xffff_ffff_ffff_e000, 0x2000), EINVAL, "wraps around it");
    assert_eq!(g.open(0, AREA + 0x800, SIZE), EINVAL, "misaligned");
    assert_eq!(g.open(0, AREA, 0x1000), EINVAL, "too small");
    // Once QEMU unmaps the RAM, the same area is refused.
    g.dev.dma_unmap(DmaUnmapFlags::empty(), GPA, RAM).unwrap();
    assert_eq!(g.open(0, AREA, SIZE), efault);
    assert_eq!(g.close(0), libc::ENOENT as u32, "failed opens leave nothing open");
}

#[test]
fn open_twice_is_ebusy_and_close_frees_the_channel() {
    let mut g = Guest::new(&mediator("ebusy", echo));
    assert_eq!(g.open(5, AREA, SIZE), 0);
    assert_eq!(g.open(5, AREA, SIZE), libc::EBUSY as u32);
    assert_eq!(g.open(64, AREA, SIZE), EINVAL, "no such channel");
    assert_eq!(g.close(5), 0);
    assert_eq!(g.close(5), libc::ENOENT as u32);
    g.reg_w(bar0::DOORBELL, 5); // closed: ignored
    g.reg_w(bar0::DOORBELL, 1000);
    assert_eq!(g.open(5, AREA, SIZE), 0, "reopens");
    g.write(AREA + 0x1000, b"x");
    assert_eq!(g.submit(5, AREA, &[send(1, 0x1000, 1)]), [ok(1, 1)], "counters continue from the area");
}

#[test]
fn close_unblocks_a_worker_blocked_in_recv() {
    // A mediator that never answers.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    for (path, rings) in mediators("silent", move |_| {
        let _ = tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_secs(30));
    }) {
        close_unblocks_a_worker_in_recv(&path, rings, &rx);
    }
}

fn close_unblocks_a_worker_in_recv(path: &Path, rings: bool, rx: &std::sync::mpsc::Receiver<()>) {
    let mut g = Guest::with(path, rings);
    assert_eq!(g.open(3, AREA, SIZE), 0);
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    g.post(AREA, &[recv(1, 0x1000, 16)]);
    g.reg_w(bar0::DOORBELL, 3);
    wait_until("the worker to take the RECV", || g.r32(AREA + SQ_HEAD as u64) == 1);
    std::thread::sleep(Duration::from_millis(50));
    // Close from another thread so a hang fails the test instead of stalling it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let st = g.close(3);
        let _ = done_tx.send((st, g));
    });
    let t = Instant::now();
    let (st, g) = done_rx.recv_timeout(Duration::from_secs(5)).expect("close hung on a blocked worker");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(st, 0);
    assert_eq!(g.r32(AREA + CQ_TAIL as u64), 0, "nothing posted while closing");
}

#[test]
fn recv_after_the_mediator_hangs_up_is_epipe() {
    for (path, rings) in mediators("hangup", |s| {
        let _ = s.write_all(b"bye");
    }) {
        recv_after_hangup(&path, rings);
    }
}

fn recv_after_hangup(path: &Path, rings: bool) {
    let mut g = Guest::with(path, rings);
    assert_eq!(g.open(0, AREA, SIZE), 0);
    let mut got = Vec::new();
    loop {
        let c = g.submit(0, AREA, &[recv(1, 0x1000, 64)]);
        if c[0].status != 0 {
            assert_eq!(c[0], Completion { tag: 1, status: libc::EPIPE as u32, len: 0 });
            break;
        }
        got.extend(g.read(AREA + 0x1000, c[0].len as usize));
    }
    assert_eq!(got, b"bye");
}

#[test]
fn unreachable_mediator_is_econnrefused() {
    let path = std::env::temp_dir().join(format!("vgpu-stub-test-{}-gone.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    drop(UnixListener::bind(&path).unwrap()); // the socket file stays, nobody listens
    let mut g = Guest::new(&path);
    assert_eq!(g.open(0, AREA, SIZE), libc::ECONNREFUSED as u32);
    assert_eq!(g.close(0), libc::ENOENT as u32);
    let mut g = Guest::new(Path::new("/nonexistent/hostd.sock"));
    assert_eq!(g.open(0, AREA, SIZE), libc::ECONNREFUSED as u32);
}

#[test]
fn a_broken_sq_tail_stops_the_worker() {
    let mut g = Guest::new(&mediator("broken", echo));
    assert_eq!(g.open(0, AREA, SIZE), 0);
    g.w32(AREA + SQ_TAIL as u64, SQ_ENTRIES + 1);
    g.reg_w(bar0::DOORBELL, 0);
    std::thread::sleep(Duration::from_millis(100));
    // Repaired, but the device gave up on the channel: nothing is processed any more.
    g.write(AREA + 0x1000, b"x");
    g.write(AREA + sq_slot(0) as u64, &send(1, 0x1000, 1).to_bytes());
    g.w32(AREA + SQ_TAIL as u64, 1);
    g.reg_w(bar0::DOORBELL, 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(g.r32(AREA + SQ_HEAD as u64), 0);
    assert_eq!(g.r32(AREA + CQ_TAIL as u64), 0);
    assert!(matches!(g.dev.chans.close(0), Some(Ok(Exit::BrokenRing))));
}

#[test]
fn unmapping_the_area_stops_the_worker() {
    let mut g = Guest::new(&mediator("unmap", echo));
    assert_eq!(g.open(0, AREA, SIZE), 0);
    g.dev.dma_unmap(DmaUnmapFlags::UNMAP_ALL, 0, 0).unwrap();
    g.reg_w(bar0::DOORBELL, 0);
    let t = Instant::now();
    assert!(matches!(g.dev.chans.close(0), Some(Ok(Exit::Fault | Exit::Closed))));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn reset_closes_every_channel() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let path = mediator("reset", move |mut s| {
        // Reports when the device hangs up.
        let _ = s.read(&mut [0u8; 16]);
        let _ = tx.lock().unwrap().send(());
    });
    let mut g = Guest::new(&path);
    assert_eq!(g.open(0, AREA, 0x2000), 0);
    assert_eq!(g.open(1, AREA + 0x2000, 0x2000), 0);
    g.dev.reset().unwrap();
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(5)).expect("connection closed by reset");
    }
    assert_eq!(g.reg_r(bar0::CHAN_STATUS), 0);
    assert_eq!(g.close(0), libc::ENOENT as u32);
    assert_eq!(g.open(0, AREA, 0x2000), 0, "RAM survives a reset");
}

#[test]
fn bar0_identity_registers_carry_the_mediators_gpu() {
    let mut r = Registers::default();
    assert_eq!(r.read(bar0::GPU_NAME), 0, "zero until the mediator answered");
    let uuid: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
    r.set_identity("NVIDIA H100 80GB HBM3\u{7}\u{e9}", uuid);
    fn bytes(r: &Registers, base: u64, n: usize) -> Vec<u8> {
        (0..n as u64 / 4).flat_map(|k| r.read(base + 4 * k).to_le_bytes()).collect()
    }
    let name = bytes(&r, bar0::GPU_NAME, bar0::GPU_NAME_LEN);
    assert_eq!(&name[..22], b"NVIDIA H100 80GB HBM3\0", "ASCII only, NUL-padded");
    assert_eq!(bytes(&r, bar0::GPU_UUID, bar0::GPU_UUID_LEN), uuid);
    assert_eq!(r.read(bar0::GPU_NAME + 1), 0, "unaligned reads are 0");
    let mut r = r.reset();
    assert_eq!(bytes(&r, bar0::GPU_UUID, bar0::GPU_UUID_LEN), uuid, "a device reset keeps the identity");
    r.set_identity(&"x".repeat(200), uuid);
    assert_eq!(bytes(&r, bar0::GPU_NAME, bar0::GPU_NAME_LEN)[63], 0, "a long name is cut and stays terminated");
}

/// The stub_guest fuzz target's seeds and every input it once failed on (fuzz/), replayed.
#[test]
fn fuzz_inputs_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["seeds/stub_guest", "regressions/stub_guest"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if e.file_name() == "README" {
                continue;
            }
            vgpu_stub::fuzz::guest(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0);
}

/// What a fake mediator was asked on the zero-copy link and the channels: (op, payload).
type Asked = Arc<std::sync::Mutex<Vec<(u32, Vec<u8>)>>>;

/// A mediator that answers the zero-copy link's requests (refusing GuestPin of region 9), and
/// echoes a channel's bytes once its GuestChannel is answered.
fn zero_copy_mediator(name: &str, asked: Asked) -> PathBuf {
    use vgpu_uapi::proto::{MsgHeader, Op, HEADER_LEN, MSG_MAGIC};
    mediator(name, move |mut s| loop {
        let mut hb = [0u8; HEADER_LEN];
        if s.read_exact(&mut hb).is_err() {
            return;
        }
        let h = MsgHeader::from_bytes(&hb);
        let mut payload = vec![0u8; h.payload_len as usize];
        s.read_exact(&mut payload).unwrap();
        let refused = h.op == Op::GuestPin as u32 && payload[4..8] == 9u32.to_le_bytes();
        let reply: Vec<u8> = if h.op == Op::GuestMemory as u32 { vec![0x5a; 16] } else { Vec::new() };
        asked.lock().unwrap().push((h.op, payload));
        let r = MsgHeader { magic: MSG_MAGIC, op: h.op, seq: h.seq, status: if refused { 1 } else { 0 }, payload_len: reply.len() as u32, reserved: 0 };
        s.write_all(&[&r.to_bytes()[..], &reply].concat()).unwrap();
        if h.op == Op::GuestChannel as u32 {
            return echo(s);
        }
    })
}

/// The device shares the VM's RAM and each pin with the mediator before it answers the guest,
/// starts each channel's connection with GuestChannel, and takes back what the guest unpins,
/// closes or QEMU unmaps; a pin the mediator refuses fails (the guest then copies through
/// staging). The channel's own bytes flow as before.
#[test]
fn the_zero_copy_link_shares_ram_and_pins_before_the_guest_uses_them() {
    use vgpu_uapi::proto::{Op, GUEST_UNPIN_ALL};
    let asked = Asked::default();
    let path = zero_copy_mediator("zero-copy", asked.clone());
    let mut g = Guest::new(&path);
    g.dev.chans.zero_copy = true;
    let take = |a: &Asked| std::mem::take(&mut *a.lock().unwrap());
    let u32s = |v: &[u32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
    let u64s = |v: &[u64]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
    assert_eq!(g.open(3, AREA, SIZE), 0);
    let mut attach = vec![0x5a; 16];
    attach.extend(3u32.to_le_bytes());
    assert_eq!(take(&asked), [(Op::GuestMemory as u32, u64s(&[GPA, RAM, 0])), (Op::GuestChannel as u32, attach)]);

    let page = |i: u64| GPA + (10 << 20) + i * 4096;
    let list = AREA + 0x10_0000;
    assert_eq!(g.pin(3, 7, list, &[page(5), page(1)], 100, 5000, bar0::PIN_READ_ONLY), 0);
    let mut pin = u32s(&[3, 7, bar0::PIN_READ_ONLY, 100]);
    pin.extend(u64s(&[5000]));
    pin.extend(u32s(&[2]));
    pin.extend(u64s(&[page(5), page(1)]));
    assert_eq!(take(&asked), [(Op::GuestPin as u32, pin)]);
    assert_eq!(g.pin(3, 9, list, &[page(2)], 0, 10, 0), libc::EIO as u32, "refused by the mediator");
    asked.lock().unwrap().clear();
    assert_eq!(g.submit(3, AREA, &[pinned(OP_SEND_PINNED, 1, 9, 0, 1)]), [efault_c(1)], "a refused pin is no region");
    // The channel's bytes still flow (after the mediator's answer to GuestChannel).
    g.write(AREA + 0x1000, b"ping");
    let c = g.submit(3, AREA, &[send(2, 0x1000, 4), recv(3, 0x3000, 4)]);
    assert_eq!((c[1].status, g.read(AREA + 0x3000, c[1].len as usize)), (0, b"ping"[..c[1].len as usize].to_vec()));

    assert_eq!(g.unpin(3, 7), 0);
    assert_eq!(take(&asked), [(Op::GuestUnpin as u32, u32s(&[3, 7]))]);
    assert_eq!(g.close(3), 0);
    assert_eq!(take(&asked), [(Op::GuestUnpin as u32, u32s(&[3, GUEST_UNPIN_ALL]))]);
    g.dev.dma_unmap(DmaUnmapFlags::empty(), GPA, RAM).unwrap();
    assert_eq!(take(&asked), [(Op::GuestMemoryUnmap as u32, u64s(&[GPA, RAM]))]);
}

#[test]
fn a_mediator_answering_before_it_reads_a_long_request_does_not_block_the_channel() {
    // The mediator writes 3 MiB of replies (more than the socket's buffers or a ring hold)
    // before it reads the guest's 3 MiB request: the device must keep the replies while it
    // sends, and hand them out in order.
    const N: usize = 3 << 20;
    let pattern = |i: usize, seed: usize| ((i * 31 + seed) % 253) as u8;
    for (path, rings) in mediators("answers-early", move |s| {
        let out: Vec<u8> = (0..N).map(|i| pattern(i, 5)).collect();
        if s.write_all(&out).is_err() {
            return;
        }
        let mut b = vec![0u8; N];
        if s.read_exact(&mut b).is_ok() {
            let ok = b.iter().enumerate().all(|(i, &x)| x == pattern(i, 9));
            let _ = s.write_all(if ok { b"same" } else { b"diff" });
        }
    }) {
        let mut g = Guest::with(&path, rings);
        assert_eq!(g.open(0, AREA, SIZE), 0);
        // The request in two SENDs of the staging's size (the area is 4 MiB).
        let half = N / 2;
        for part in 0..2 {
            let data: Vec<u8> = (part * half..(part + 1) * half).map(|i| pattern(i, 9)).collect();
            g.write(AREA + 0x1000, &data);
            assert_eq!(g.submit(0, AREA, &[send(part as u64, 0x1000, half as u64)]), [ok(part as u64, half as u32)], "rings {rings}");
        }
        let mut got = Vec::new();
        while got.len() < N + 4 {
            let c = g.submit(0, AREA, &[recv(9, 0x1000, (N + 4 - got.len()).min(1 << 20) as u64)]);
            assert_eq!(c[0].status, 0, "rings {rings}");
            got.extend(g.read(AREA + 0x1000, c[0].len as usize));
        }
        assert!(got[..N].iter().enumerate().all(|(i, &x)| x == pattern(i, 5)), "replies out of order (rings {rings})");
        assert_eq!(&got[N..], b"same", "the request arrived changed (rings {rings})");
        assert_eq!(g.close(0), 0);
    }
}
