//! The zero-copy guest data path. A VM's device process (vgpu-stub) has the VM's RAM mapped
//! (QEMU shares it as a memfd over vfio-user) and knows which pages each channel's guest process
//! pinned (bar0 CMD_PIN). It shares both with the mediator on a control connection of its own
//! (`Op::GuestMemory`, `Op::GuestPin`, `Op::GuestUnpin`), so that a copy from or to pinned guest
//! memory names the region (`Op::MemcpyHtoDHost`/`MemcpyDtoHHost`) and the mediator copies
//! straight between the VM's pages and the device: one copy instead of the stub reading the
//! pages, the socket carrying them twice, and the mediator buffering them.
//!
//! Trust: the control connection belongs to the device process (the guest never sees its token);
//! every piece of RAM must be a memfd sealed against shrinking (no access to our mapping can
//! fault), every pinned page must lie in the VM's RAM, and each copy resolves its pages against
//! the RAM as it is then. A channel's connection reaches only that channel's regions, and only
//! while the channel it attached to is the one open (`generation`). Pins, unpins and unmaps take
//! the write locks, copies the read locks: once an unpin or unmap is answered, no copy is
//! touching those pages and none will.

use crate::backend::{CmdError, CmdResult, HostFile, HostSpan};
use crate::share::Token;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use vgpu_uapi::bar0::{MAX_PINS, MAX_PIN_PAGES, PIN_READ_ONLY};
use vgpu_uapi::cuda::CUDA_ERROR_INVALID_VALUE;

const PAGE: u64 = 4096;
/// Most pieces of RAM per VM (QEMU maps a handful: below and above 4 GiB, hot-plugged DIMMs).
const MAX_PIECES: usize = 64;
/// Most pinned pages per VM over all its channels (32 GiB of guest memory), as the device keeps.
const MAX_PINNED_PAGES: usize = 1 << 23;

fn bad(msg: impl Into<String>) -> CmdError {
    CmdError::new(CUDA_ERROR_INVALID_VALUE, msg)
}

/// A piece of the VM's RAM, mapped here (and its file, for a backend in another process to map
/// too: see `DeviceSession::write_host`).
struct Piece {
    gpa: u64,
    map: memmap2::MmapRaw,
    file: Arc<HostFile>,
}

impl Piece {
    fn len(&self) -> u64 {
        self.map.len() as u64
    }
}

struct Pinned {
    pages: Vec<u64>,
    offset: u64,
    len: u64,
    read_only: bool,
}

/// The regions of one open channel.
struct ChannelPins {
    generation: u64,
    regions: HashMap<u32, Pinned>,
}

/// One device process's view of its VM's memory, owned by its control connection.
pub struct GuestMemory {
    pub token: Token,
    ram: RwLock<Vec<Piece>>,
    channels: RwLock<HashMap<u32, ChannelPins>>,
    next_generation: AtomicU64,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A pin request as the control connection sent it.
pub struct PinRequest {
    pub channel: u32,
    pub id: u32,
    pub flags: u32,
    pub offset: u32,
    pub len: u64,
    pub pages: Vec<u64>,
}

impl GuestMemory {
    pub fn new(token: Token) -> Self {
        GuestMemory { token, ram: RwLock::default(), channels: RwLock::default(), next_generation: AtomicU64::new(1) }
    }

    /// Maps `size` bytes of `fd` from `offset` as guest-physical `gpa..gpa + size`.
    pub fn map(&self, gpa: u64, size: u64, offset: u64, fd: OwnedFd) -> CmdResult<()> {
        // SAFETY: F_GET_SEALS on a descriptor we own; no memory is passed.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("guest RAM must be a memfd sealed against shrinking"));
        }
        let file = File::from(fd);
        let flen = file.metadata().map_err(|_| bad("cannot stat the guest RAM's file"))?.len();
        let end = gpa.checked_add(size).filter(|_| size > 0 && gpa % PAGE == 0 && size % PAGE == 0 && offset % PAGE == 0);
        let end = end.ok_or_else(|| bad("guest RAM piece empty, unaligned or wrapping"))?;
        if offset.checked_add(size).is_none_or(|e| e > flen) {
            return Err(bad(format!("guest RAM piece {offset:#x}+{size:#x} is past the end of its file ({flen:#x} bytes)")));
        }
        let len = usize::try_from(size).map_err(|_| bad("guest RAM piece too large"))?;
        let mut ram = write(&self.ram);
        if ram.len() >= MAX_PIECES {
            return Err(bad("too many pieces of guest RAM"));
        }
        if ram.iter().any(|p| p.gpa < end && gpa < p.gpa + p.len()) {
            return Err(bad(format!("guest RAM piece {gpa:#x}+{size:#x} overlaps one already mapped")));
        }
        // The file cannot shrink (sealed, checked above) and the mapping lies inside it, so
        // no access to the mapping can fault; the guest changes its bytes concurrently, which
        // only ever yields bytes.
        let map = memmap2::MmapOptions::new().offset(offset).len(len).map_raw(&file).map_err(|e| bad(format!("cannot map guest RAM: {e}")))?;
        ram.push(Piece { gpa, map, file: HostFile::new(OwnedFd::from(file), offset, size) });
        Ok(())
    }

    /// Forgets every piece lying inside `gpa..gpa + size`; when this returns no copy touches them.
    pub fn unmap(&self, gpa: u64, size: u64) -> usize {
        let end = gpa.saturating_add(size);
        let mut ram = write(&self.ram);
        let before = ram.len();
        ram.retain(|p| !(p.gpa >= gpa && p.gpa + p.len() <= end));
        before - ram.len()
    }

    fn in_ram(ram: &[Piece], gpa: u64, len: u64) -> Option<(&Piece, usize)> {
        let p = ram.iter().find(|p| gpa >= p.gpa && gpa - p.gpa < p.len())?;
        let off = gpa - p.gpa;
        (off.checked_add(len)? <= p.len()).then_some((p, off as usize))
    }

    /// A channel's connection attached: the channel's regions start empty (a channel number
    /// reopened forgets what the previous holder had). Returns the attachment's generation.
    pub fn attach(&self, channel: u32) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        write(&self.channels).insert(channel, ChannelPins { generation, regions: HashMap::new() });
        generation
    }

    /// The connection of `channel`'s `generation` ended: its regions go (unless the channel
    /// was reopened since).
    pub fn detach(&self, channel: u32, generation: u64) {
        let mut ch = write(&self.channels);
        if ch.get(&channel).is_some_and(|c| c.generation == generation) {
            ch.remove(&channel);
        }
    }

    pub fn pin(&self, req: PinRequest) -> CmdResult<()> {
        let PinRequest { channel, id, flags, offset, len, pages } = req;
        let npages = pages.len() as u64;
        let fits = (offset as u64) < PAGE && len > 0 && (offset as u64).checked_add(len).is_some_and(|e| e <= npages * PAGE);
        if !fits || pages.is_empty() || npages > MAX_PIN_PAGES as u64 || flags & !PIN_READ_ONLY != 0 || id == vgpu_uapi::proto::GUEST_UNPIN_ALL {
            return Err(bad("malformed pin request"));
        }
        {
            let ram = read(&self.ram);
            if let Some(&p) = pages.iter().find(|&&p| p % PAGE != 0 || Self::in_ram(&ram, p, PAGE).is_none()) {
                return Err(bad(format!("pinned page {p:#x} is not a page of the VM's RAM")));
            }
        }
        let mut ch = write(&self.channels);
        let total: usize = ch.values().flat_map(|c| c.regions.values()).map(|r| r.pages.len()).sum();
        let c = ch.get_mut(&channel).ok_or_else(|| bad(format!("channel {channel} is not attached")))?;
        if c.regions.contains_key(&id) {
            return Err(bad(format!("region {id} of channel {channel} is already pinned")));
        }
        if c.regions.len() >= MAX_PINS as usize || total + pages.len() > MAX_PINNED_PAGES {
            return Err(bad("too many pinned regions or pages"));
        }
        c.regions.insert(id, Pinned { pages, offset: offset as u64, len, read_only: flags & PIN_READ_ONLY != 0 });
        Ok(())
    }

    /// Forgets region `id` of `channel` (all of them: GUEST_UNPIN_ALL); when this returns no
    /// copy touches its pages.
    pub fn unpin(&self, channel: u32, id: u32) -> CmdResult<()> {
        let mut ch = write(&self.channels);
        if id == vgpu_uapi::proto::GUEST_UNPIN_ALL {
            // The channel's connection may have ended (and taken its regions) already.
            if let Some(c) = ch.get_mut(&channel) {
                c.regions.clear();
            }
            return Ok(());
        }
        let c = ch.get_mut(&channel).ok_or_else(|| bad(format!("channel {channel} is not attached")))?;
        c.regions.remove(&id).map(drop).ok_or_else(|| bad(format!("region {id} of channel {channel} is not pinned")))
    }

    /// Hands `f` bytes `at..at + len` of region `id` of the channel attached as `(channel,
    /// generation)`, a run of guest-physically contiguous pages at a time, with how far into the
    /// range each run starts (and where they lie in the piece of RAM). `into_guest`: `f` writes
    /// the bytes (refused for a read-only region).
    pub fn copy(
        &self,
        (channel, generation): (u32, u64),
        id: u32,
        at: u64,
        len: u64,
        into_guest: bool,
        mut f: impl FnMut(u64, HostSpan<'_>) -> CmdResult<()>,
    ) -> CmdResult<()> {
        let ch = read(&self.channels);
        let c = ch.get(&channel).filter(|c| c.generation == generation).ok_or_else(|| bad("the channel was closed"))?;
        let r = c.regions.get(&id).ok_or_else(|| bad(format!("{id} is not a pinned region of this channel")))?;
        if into_guest && r.read_only {
            return Err(bad(format!("pinned region {id} is read-only")));
        }
        if at.checked_add(len).is_none_or(|e| e > r.len) {
            return Err(bad(format!("range {at:#x}+{len:#x} outside pinned region {id} ({:#x} bytes)", r.len)));
        }
        let ram = read(&self.ram);
        // offset + len <= pages * PAGE was checked when it was pinned.
        let mut pos = r.offset + at;
        let mut done = 0;
        while done < len {
            let first = (pos / PAGE) as usize;
            let start = r.pages[first] + pos % PAGE;
            // Extend over pages that follow one another in guest-physical memory.
            let (mut end, mut next) = (r.pages[first] + PAGE, first + 1);
            while end - start < len - done && r.pages.get(next) == Some(&end) {
                end += PAGE;
                next += 1;
            }
            let n = (end - start).min(len - done);
            let (piece, off) = Self::in_ram(&ram, start, n).ok_or_else(|| bad(format!("guest page {start:#x} is no longer RAM of the VM")))?;
            // SAFETY: `off + n` lies inside the piece's mapping (in_ram), which stays mapped while
            // we hold the read lock on `ram`; the file cannot shrink (sealed), so the memory is
            // always backed. The guest may change these bytes concurrently: as for any DMA,
            // that yields bytes, never a fault, and no reference outlives this call of `f`.
            let s = unsafe { std::slice::from_raw_parts_mut(piece.map.as_mut_ptr().add(off), n as usize) };
            f(done, HostSpan { file: Some(&piece.file), offset: off as u64, bytes: s })?;
            done += n;
            pos += n;
        }
        Ok(())
    }
}

/// A VM's device processes' memories by token (weak: each lives as long as its control
/// connection).
#[derive(Default)]
pub struct Guests {
    by_token: Mutex<HashMap<Token, Weak<GuestMemory>>>,
}

impl Guests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Weak<GuestMemory>>> {
        self.by_token.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create(&self) -> CmdResult<Arc<GuestMemory>> {
        let g = Arc::new(GuestMemory::new(crate::share::random_token()?));
        let mut m = self.lock();
        m.retain(|_, w| w.strong_count() > 0);
        m.insert(g.token, Arc::downgrade(&g));
        Ok(g)
    }

    pub fn find(&self, token: &Token) -> Option<Arc<GuestMemory>> {
        self.lock().get(token).and_then(Weak::upgrade)
    }

    pub fn forget(&self, token: &Token) {
        self.lock().remove(token);
    }
}

/// A channel connection's link: the memory it reaches and the channel it attached as.
pub struct ChannelLink {
    pub memory: Weak<GuestMemory>,
    pub channel: u32,
    pub generation: u64,
}

impl ChannelLink {
    pub fn memory(&self) -> CmdResult<Arc<GuestMemory>> {
        self.memory.upgrade().ok_or_else(|| bad("the VM's device process is gone"))
    }
}

impl Drop for ChannelLink {
    fn drop(&mut self) {
        if let Some(m) = self.memory.upgrade() {
            m.detach(self.channel, self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(size: u64, seal: bool) -> OwnedFd {
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor is ours.
        let fd = unsafe { libc::memfd_create(c"vgpu-guest-test".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let f = File::from(fd);
        f.set_len(size).unwrap();
        if seal {
            // SAFETY: F_ADD_SEALS on a descriptor we own.
            assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) }, 0);
        }
        OwnedFd::from(f)
    }

    fn gather(m: &GuestMemory, link: (u32, u64), id: u32, at: u64, len: u64) -> CmdResult<Vec<u8>> {
        let mut v = vec![0u8; len as usize];
        m.copy(link, id, at, len, false, |o, s| {
            v[o as usize..o as usize + s.bytes.len()].copy_from_slice(s.bytes);
            Ok(())
        })?;
        Ok(v)
    }

    #[test]
    fn pinned_pages_are_gathered_in_order_and_every_bad_request_is_refused() {
        let m = GuestMemory::new([7; 16]);
        // RAM at 1 MiB (16 pages) from file offset 4096; a second piece at 4 GiB.
        let fd = memfd(20 * PAGE, true);
        let file = File::from(fd.try_clone().unwrap());
        for i in 0..20u64 {
            std::os::unix::fs::FileExt::write_at(&file, &[i as u8; PAGE as usize], i * PAGE).unwrap();
        }
        m.map(1 << 20, 16 * PAGE, PAGE, fd.try_clone().unwrap()).unwrap();
        m.map(1 << 32, 2 * PAGE, 0, fd.try_clone().unwrap()).unwrap();
        assert!(m.map(1 << 20, PAGE, 0, fd.try_clone().unwrap()).is_err(), "overlap");
        assert!(m.map(2 << 20, 100 * PAGE, 0, fd.try_clone().unwrap()).is_err(), "past the file's end");
        assert!(m.map(2 << 20, PAGE, 0, memfd(PAGE, false)).is_err(), "unsealed");
        let ch = (3, m.attach(3));
        // Pages 5, 6 (contiguous), then 2, then the piece at 4 GiB; 100 bytes into the first.
        let pages = vec![(1 << 20) + 4 * PAGE, (1 << 20) + 5 * PAGE, (1 << 20) + PAGE, 1 << 32];
        let req = |id, pages: Vec<u64>, len| PinRequest { channel: 3, id, flags: 0, offset: 100, len, pages };
        m.pin(req(1, pages.clone(), 4 * PAGE - 100)).unwrap();
        let v = gather(&m, ch, 1, 0, 4 * PAGE - 100).unwrap();
        // File page of gpa 1 MiB + k pages is k + 1.
        let want: Vec<u8> = [5u8, 6, 2, 0].iter().flat_map(|&b| vec![b; PAGE as usize]).skip(100).collect();
        assert_eq!(v, want);
        assert_eq!(gather(&m, ch, 1, PAGE, 10).unwrap(), vec![6; 10]);
        // Refused: beyond the region, another channel's view, an unknown region, a stale
        // generation, writing a read-only region, pages outside RAM, unaligned, duplicates.
        assert!(gather(&m, ch, 1, 1, 4 * PAGE - 100).is_err());
        assert!(gather(&m, (4, ch.1), 1, 0, 1).is_err());
        assert!(gather(&m, ch, 2, 0, 1).is_err());
        assert!(gather(&m, (3, ch.1 + 1), 1, 0, 1).is_err());
        m.pin(PinRequest { flags: PIN_READ_ONLY, ..req(2, vec![1 << 20], 10) }).unwrap();
        assert!(m.copy(ch, 2, 0, 10, true, |_, _| Ok(())).is_err());
        assert!(m.pin(req(3, vec![3 << 20], 10)).is_err());
        assert!(m.pin(req(3, vec![(1 << 20) + 1], 10)).is_err());
        assert!(m.pin(req(3, vec![(1 << 20) + 16 * PAGE], 10)).is_err(), "one page past the piece");
        assert!(m.pin(req(1, vec![1 << 20], 10)).is_err());
        assert!(m.pin(req(3, vec![1 << 20], PAGE)).is_err(), "offset + len past the pages");
        assert!(m.pin(PinRequest { channel: 9, ..req(3, vec![1 << 20], 10) }).is_err(), "channel not attached");
        // Writing lands in the file, where the span says it lies (what a cuda worker maps).
        m.copy(ch, 1, PAGE - 100, 3, true, |_, s| {
            let file = s.file.expect("a piece of RAM keeps its file");
            assert_eq!((file.offset + s.offset, file.len), (6 * PAGE, 16 * PAGE));
            s.bytes.copy_from_slice(b"abc");
            Ok(())
        })
        .unwrap();
        let mut b = [0u8; 3];
        std::os::unix::fs::FileExt::read_at(&file, &mut b, 6 * PAGE).unwrap();
        assert_eq!(&b, b"abc");
        // Unpinned, and unmapped RAM under a region still pinned: refused, never touched.
        m.unpin(3, 2).unwrap();
        assert!(m.unpin(3, 2).is_err());
        assert_eq!(m.unmap(1 << 32, 2 * PAGE), 1);
        assert!(gather(&m, ch, 1, 0, 4 * PAGE - 100).is_err());
        assert_eq!(gather(&m, ch, 1, 0, PAGE).unwrap().len(), PAGE as usize);
        // A reopened channel starts empty; the old connection's detach leaves it alone.
        let again = m.attach(3);
        assert!(gather(&m, (3, again), 1, 0, 1).is_err());
        m.pin(req(1, vec![1 << 20], 10)).unwrap();
        m.detach(3, ch.1);
        assert_eq!(gather(&m, (3, again), 1, 0, 10).unwrap(), vec![1; 10]);
        m.unpin(3, vgpu_uapi::proto::GUEST_UNPIN_ALL).unwrap();
        assert!(gather(&m, (3, again), 1, 0, 10).is_err());
        // Releasing a channel whose connection already ended (and took its regions) is no error.
        m.unpin(9, vgpu_uapi::proto::GUEST_UNPIN_ALL).unwrap();
        assert!(m.unpin(9, 1).is_err());
    }
}
