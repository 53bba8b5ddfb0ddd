//! Both ends of the shared-memory rings between a device process and the mediator (layout and
//! wake-up rules in uapi `shm_ring.rs`). A side that waits first watches the ring for a while
//! (`spin`), then sleeps on its eventfd; the socket the rings replaced stays open only so that a
//! sleeper learns the other side is gone (its closing wakes the poll).
//!
//! One thread uses each end. Nothing read from the shared memory is trusted: the other side's
//! counters are checked against the ring's size, and bytes are only ever copied out.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use vgpu_uapi::shm_ring::*;

/// Which end: the device process writes requests and reads replies, the mediator the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Device,
    Mediator,
}

/// Offsets of one end's words and rings.
struct Ends {
    write_ring: usize,
    write_tail: usize,
    peer_head: usize,
    read_ring: usize,
    peer_tail: usize,
    read_head: usize,
    my_waiting: usize,
    peer_waiting: usize,
}

impl Ends {
    fn of(side: Side, size: u32) -> Ends {
        let (req, rep) = (DATA, DATA + size as usize);
        match side {
            Side::Device => Ends {
                write_ring: req,
                write_tail: REQ_TAIL,
                peer_head: REQ_HEAD,
                read_ring: rep,
                peer_tail: REP_TAIL,
                read_head: REP_HEAD,
                my_waiting: DEVICE_WAITING,
                peer_waiting: MEDIATOR_WAITING,
            },
            Side::Mediator => Ends {
                write_ring: rep,
                write_tail: REP_TAIL,
                peer_head: REP_HEAD,
                read_ring: req,
                peer_tail: REQ_TAIL,
                read_head: REQ_HEAD,
                my_waiting: MEDIATOR_WAITING,
                peer_waiting: DEVICE_WAITING,
            },
        }
    }
}

pub struct Ring {
    base: NonNull<u8>,
    map_len: usize,
    size: u32,
    at: Ends,
    /// Our own counters (what we published; never read back from the shared words).
    tail: u32,
    head: u32,
    my_bell: OwnedFd,
    peer_bell: OwnedFd,
    /// The connection's socket: readable (end of stream) once the other side is gone.
    hangup: OwnedFd,
}

// SAFETY: the mapping is owned by the Ring (unmapped on drop) and only reached through it; the
// shared words are atomics, so moving the Ring to another thread is sound.
unsafe impl Send for Ring {}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("shared ring: {what}"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a descriptor it returns is new and ours alone.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

/// Maps `len` bytes of `file` shared, read and write.
fn map(file: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh mapping chosen by the kernel; no existing memory is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl Ring {
    /// The device process's end: a new memfd and two eventfds. Returns the descriptors to send
    /// with `Op::ShmRing`: the memfd, the mediator's doorbell, ours.
    pub fn create(size: u32, socket: BorrowedFd<'_>) -> io::Result<(Ring, [OwnedFd; 3])> {
        if !valid_size(size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("ring size {size}")));
        }
        let len = file_size(size);
        // SAFETY: the name is a NUL-terminated literal; the descriptor returned is new and ours.
        let fd = cvt(unsafe { libc::memfd_create(c"vgpu-ring".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
        // SAFETY: as above.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate and fcntl on a descriptor we own; no memory passed.
        cvt(unsafe { libc::ftruncate(file.as_raw_fd(), len as libc::off_t) })?;
        // SAFETY: as above. Sealed, so the mediator's mapping of it can never fault.
        cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) })?;
        let (mediator_bell, device_bell) = (eventfd()?, eventfd()?);
        let base = map(file.as_fd(), len)?;
        let ring = Ring {
            base,
            map_len: len,
            size,
            at: Ends::of(Side::Device, size),
            tail: 0,
            head: 0,
            my_bell: device_bell.try_clone()?,
            peer_bell: mediator_bell.try_clone()?,
            hangup: socket.try_clone_to_owned()?,
        };
        Ok((ring, [file, mediator_bell, device_bell]))
    }

    /// The mediator's end of rings of `size` bytes each in `file`, with the doorbells the
    /// device process sent. Refuses a size out of range, a file too small or not sealed against
    /// shrinking, doorbells that are not eventfds.
    pub fn attach(size: u32, file: OwnedFd, mediator_bell: OwnedFd, device_bell: OwnedFd, socket: BorrowedFd<'_>) -> io::Result<Ring> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if !valid_size(size) {
            return Err(bad("ring size out of range or not a power of two"));
        }
        let len = file_size(size);
        // SAFETY: fstat writes one stat into `st`, a live local.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the descriptor is ours for the call.
        cvt(unsafe { libc::fstat(file.as_raw_fd(), &mut st) })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_size as u64) < len as u64 {
            return Err(bad("the rings' file is not a file of their size"));
        }
        // SAFETY: fcntl on a descriptor we own; no memory passed.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("the rings' file must be a memfd sealed against shrinking"));
        }
        if !is_eventfd(mediator_bell.as_fd()) || !is_eventfd(device_bell.as_fd()) {
            return Err(bad("the doorbells must be eventfds"));
        }
        let base = map(file.as_fd(), len)?;
        Ok(Ring {
            base,
            map_len: len,
            size,
            at: Ends::of(Side::Mediator, size),
            tail: 0,
            head: 0,
            my_bell: mediator_bell,
            peer_bell: device_bell,
            hangup: socket.try_clone_to_owned()?,
        })
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: every offset used is one of the header words, 4-aligned and inside the
        // mapping, which lives as long as `self`; the other process only ever writes it whole.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU32>() }
    }

    /// Bytes waiting to be read.
    pub fn readable(&self) -> io::Result<usize> {
        let n = self.word(self.at.peer_tail).load(Ordering::Acquire).wrapping_sub(self.head);
        if n > self.size {
            return Err(corrupt("the other side claims more bytes than the ring holds"));
        }
        Ok(n as usize)
    }

    /// Bytes that can be written without waiting.
    pub fn writable(&self) -> io::Result<usize> {
        let used = self.tail.wrapping_sub(self.word(self.at.peer_head).load(Ordering::Acquire));
        if used > self.size {
            return Err(corrupt("the other side consumed bytes never written"));
        }
        Ok((self.size - used) as usize)
    }

    /// Wakes the other side if it sleeps (after we published bytes or freed space).
    fn notify(&self) {
        // The counter we just published, before the other side's flag is read (uapi).
        fence(Ordering::SeqCst);
        if self.word(self.at.peer_waiting).load(Ordering::Relaxed) != 0 {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live local to an eventfd we own. A full counter
            // (EAGAIN) already means "wake up".
            unsafe { libc::write(self.peer_bell.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }

    /// Reads up to `out.len()` bytes without waiting; 0 if none are there.
    pub fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.readable()?.min(out.len());
        if n == 0 {
            return Ok(0);
        }
        let at = (self.head & (self.size - 1)) as usize;
        let first = n.min(self.size as usize - at);
        // SAFETY: both pieces lie inside the read ring (at < size, first <= size - at,
        // n - first <= at), inside the mapping, which stays while `self` does and cannot fault
        // (the file is sealed against shrinking). The other side may write those bytes at the
        // same time only by breaking the protocol, which gives us wrong bytes, never unsafety
        // in our memory; what they mean is checked by whoever parses them.
        unsafe {
            let ring = self.base.as_ptr().add(self.at.read_ring);
            std::ptr::copy_nonoverlapping(ring.add(at), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(ring, out.as_mut_ptr().add(first), n - first);
        }
        self.head = self.head.wrapping_add(n as u32);
        // Release: our copy is taken before the space is handed back.
        self.word(self.at.read_head).store(self.head, Ordering::Release);
        self.notify();
        Ok(n)
    }

    /// Writes as much of `bytes` as fits without waiting.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.writable()?.min(bytes.len());
        if n == 0 {
            return Ok(0);
        }
        let at = (self.tail & (self.size - 1)) as usize;
        let first = n.min(self.size as usize - at);
        // SAFETY: as in `read`, for the write ring.
        unsafe {
            let ring = self.base.as_ptr().add(self.at.write_ring);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.add(at), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), ring, n - first);
        }
        self.tail = self.tail.wrapping_add(n as u32);
        // Release: the bytes are visible before the tail that publishes them.
        self.word(self.at.write_tail).store(self.tail, Ordering::Release);
        self.notify();
        Ok(n)
    }

    /// Waits until `ready` holds: watches for `spin`, then sleeps on the doorbell. Fails with
    /// BrokenPipe once the other side is gone (and `ready` still does not hold).
    pub fn wait(&mut self, spin: Duration, ready: impl Fn(&Ring) -> io::Result<bool>) -> io::Result<()> {
        if ready(self)? {
            return Ok(());
        }
        // Watching, not sleeping, but giving the CPU to any other thread that wants it: on a
        // host with fewer cores than busy threads (a VM's vCPU, the device process, the
        // mediator), the thread whose answer we watch for may be the one waiting for our CPU.
        let start = Instant::now();
        while start.elapsed() < spin {
            // SAFETY: sched_yield takes no arguments and touches no memory of ours.
            unsafe { libc::sched_yield() };
            if ready(self)? {
                return Ok(());
            }
        }
        let waiting = self.word(self.at.my_waiting);
        loop {
            waiting.store(1, Ordering::Relaxed);
            // The flag before the last look at the ring (uapi: no lost wake-up).
            fence(Ordering::SeqCst);
            if ready(self)? {
                self.word(self.at.my_waiting).store(0, Ordering::Relaxed);
                return Ok(());
            }
            let mut fds = [
                libc::pollfd { fd: self.my_bell.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.hangup.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 },
            ];
            // SAFETY: two valid pollfds in a live local array, descriptors we own.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            self.word(self.at.my_waiting).store(0, Ordering::Relaxed);
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents != 0 {
                let mut b = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a live local from our non-blocking eventfd.
                unsafe { libc::read(self.my_bell.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
            }
            if fds[1].revents != 0 {
                // Nothing comes over the socket after the upgrade: it is the end. Bytes the
                // other side wrote before it went are still taken.
                return if ready(self)? { Ok(()) } else { Err(io::ErrorKind::BrokenPipe.into()) };
            }
            if ready(self)? {
                return Ok(());
            }
        }
    }

    /// Reads exactly `out.len()` bytes, waiting as needed.
    pub fn read_exact(&mut self, out: &mut [u8], spin: Duration) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            let n = self.read(&mut out[done..])?;
            done += n;
            if n == 0 {
                self.wait(spin, |r| Ok(r.readable()? > 0))?;
            }
        }
        Ok(())
    }

    /// Writes all of `bytes`, waiting for space as needed.
    pub fn write_all(&mut self, bytes: &[u8], spin: Duration) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            let n = self.write(&bytes[done..])?;
            done += n;
            if n == 0 {
                self.wait(spin, |r| Ok(r.writable()? > 0))?;
            }
        }
        Ok(())
    }
}

/// Upgrades `sock`, a connection to the mediator with nothing in flight, to shared rings of
/// `size` bytes each way (`Op::ShmRing`): the device process's end. An error leaves the
/// connection as it was (an older mediator refuses the request and goes on over the socket),
/// except a broken or out-of-step one, which the caller should drop.
pub fn upgrade(sock: &std::os::unix::net::UnixStream, size: u32, timeout: Duration) -> io::Result<Ring> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::Read;
    use vgpu_uapi::proto::{MsgHeader, Op, HEADER_LEN, MSG_MAGIC};
    let (ring, fds) = Ring::create(size, sock.as_fd())?;
    let h = MsgHeader { magic: MSG_MAGIC, op: Op::ShmRing as u32, seq: 0, status: 0, payload_len: 4, reserved: 0 };
    let mut msg = h.to_bytes().to_vec();
    msg.extend_from_slice(&size.to_le_bytes());
    let raw = fds.each_ref().map(|f| f.as_raw_fd());
    let sent = loop {
        match sendmsg::<()>(sock.as_raw_fd(), &[io::IoSlice::new(&msg)], &[ControlMessage::ScmRights(&raw)], MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    std::io::Write::write_all(&mut &*sock, &msg[sent..])?;
    drop(fds);
    sock.set_read_timeout(Some(timeout))?;
    let mut hb = [0u8; HEADER_LEN];
    (&*sock).read_exact(&mut hb)?;
    let r = MsgHeader::from_bytes(&hb);
    if r.validate().is_err() || r.op != h.op || r.payload_len > 4096 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the answer to ShmRing is out of step"));
    }
    let mut body = vec![0u8; r.payload_len as usize];
    (&*sock).read_exact(&mut body)?;
    sock.set_read_timeout(None)?;
    match r.status {
        0 => Ok(ring),
        s => Err(io::Error::new(io::ErrorKind::Unsupported, format!("ShmRing refused (CUresult {s}): {}", String::from_utf8_lossy(&body)))),
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in create/attach, of this length; nothing borrows it any
        // more (every borrow of it is tied to `&self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair(size: u32) -> (Ring, Ring, UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (dev, [file, mb, db]) = Ring::create(size, a.as_fd()).unwrap();
        let med = Ring::attach(size, file, mb, db, b.as_fd()).unwrap();
        (dev, med, a, b)
    }

    /// Deterministic bytes: position `i` of a stream seeded `s`.
    fn byte(s: u64, i: u64) -> u8 {
        (i.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(s) >> 29) as u8
    }

    #[test]
    fn bytes_cross_both_ways_in_order_across_wraps_and_waits() {
        let (mut dev, mut med, _a, _b) = pair(MIN_SIZE);
        // More than 40 ring sizes each way, in pieces of odd sizes (some larger than the ring),
        // with the mediator echoing, so both rings fill, wrap and wake their sleepers.
        let total: u64 = 40 * MIN_SIZE as u64 + 12345;
        let echo = std::thread::spawn(move || {
            let mut buf = vec![0u8; 100_000];
            let mut moved = 0u64;
            let mut k = 0usize;
            while moved < total {
                let want = ((k * 7919) % buf.len()).max(1).min((total - moved) as usize);
                k += 1;
                med.read_exact(&mut buf[..want], Duration::ZERO).unwrap();
                med.write_all(&buf[..want], Duration::from_micros(5)).unwrap();
                moved += want as u64;
            }
            med
        });
        let mut sent = 0u64;
        let mut got = 0u64;
        let mut chunk = vec![0u8; 150_000];
        let mut back = vec![0u8; 150_000];
        let mut k = 0usize;
        while got < total {
            // Write what fits, read what came back, wait only when neither moves.
            let want = ((k * 104_729) % chunk.len()).max(1).min((total - sent) as usize);
            k += 1;
            for (j, b) in chunk[..want].iter_mut().enumerate() {
                *b = byte(7, sent + j as u64);
            }
            let w = dev.write(&chunk[..want]).unwrap();
            sent += w as u64;
            let r = dev.read(&mut back).unwrap();
            for (j, b) in back[..r].iter().enumerate() {
                assert_eq!(*b, byte(7, got + j as u64), "byte {} came back wrong", got + j as u64);
            }
            got += r as u64;
            if w == 0 && r == 0 {
                dev.wait(Duration::ZERO, |r| Ok(r.readable()? > 0 || r.writable()? > 0)).unwrap();
            }
        }
        assert_eq!(sent, total);
        echo.join().unwrap();
    }

    #[test]
    fn a_sleeper_learns_the_other_side_is_gone_after_taking_its_last_bytes() {
        let (mut dev, mut med, a, b) = pair(MIN_SIZE);
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 4];
            med.read_exact(&mut buf, Duration::ZERO).unwrap();
            assert_eq!(&buf, b"ping");
            let mut more = [0u8; 1];
            med.read_exact(&mut more, Duration::ZERO).unwrap_err().kind()
        });
        dev.write_all(b"ping", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(dev);
        drop(a);
        assert_eq!(t.join().unwrap(), io::ErrorKind::BrokenPipe);
        drop(b);
    }

    #[test]
    fn the_mediator_refuses_bad_files_and_lying_counters() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (dev, [file, mb, db]) = Ring::create(MIN_SIZE, a.as_fd()).unwrap();
        let dup = |f: &OwnedFd| f.try_clone().unwrap();
        // Sizes: not a power of two, too small, larger than the file.
        for size in [MIN_SIZE + 4096, MIN_SIZE / 2, MIN_SIZE * 2] {
            assert!(Ring::attach(size, dup(&file), dup(&mb), dup(&db), a.as_fd()).is_err(), "size {size}");
        }
        // A doorbell that is not an eventfd.
        assert!(Ring::attach(MIN_SIZE, dup(&file), dup(&file), dup(&db), a.as_fd()).is_err());
        // An unsealed file of the right size.
        // SAFETY: test-only memfd; name is a literal.
        let raw = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: a new descriptor, ours.
        let unsealed = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our descriptor.
        assert_eq!(unsafe { libc::ftruncate(raw, file_size(MIN_SIZE) as libc::off_t) }, 0);
        assert!(Ring::attach(MIN_SIZE, unsealed, dup(&mb), dup(&db), a.as_fd()).is_err());
        // Counters that lie: a tail past the ring's size, a head past what was written.
        let mut med = Ring::attach(MIN_SIZE, file, mb, db, a.as_fd()).unwrap();
        dev.word(REQ_TAIL).store(MIN_SIZE + 1, Ordering::Release);
        assert_eq!(med.read(&mut [0u8; 8]).unwrap_err().kind(), io::ErrorKind::InvalidData);
        dev.word(REP_HEAD).store(5, Ordering::Release);
        assert_eq!(med.write(b"x").unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
