//! Guest RAM as QEMU shares it (vfio-user DMA_MAP: gpa, size, fd, file offset), mapped into
//! this process with rust-vmm's `vm-memory` (already in our tree through `vfio_user`).
//!
//! The map sits behind an `RwLock` rather than vm-memory's `GuestMemoryAtomic`: every access
//! takes the read lock for the duration of one copy, so once `unmap` (write lock) returns no
//! worker is still touching memory QEMU has taken back (an RCU snapshot would keep the old
//! mapping alive and let a worker write into it after DMA_UNMAP returned). Nobody holds the
//! lock across socket I/O, so the vfio-user thread never waits on the mediator.
//!
//! Every access must lie entirely inside one mapped region; anything else is `None` (the
//! callers turn it into EFAULT). Addresses come from the guest: all arithmetic is checked.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};

#[derive(Clone, Default)]
pub struct GuestRam(Arc<RwLock<GuestMemoryMmap>>);

impl GuestRam {
    /// Maps `size` bytes of `file` from `offset` at guest address `gpa`.
    pub fn map(&self, gpa: u64, size: u64, file: File, offset: u64) -> Result<(), String> {
        let len = usize::try_from(size).map_err(|_| "size too large".to_string())?;
        // A mapping past the end of the file would SIGBUS on access: refuse it up front.
        let flen = file.metadata().map_err(|e| e.to_string())?.len();
        if offset.checked_add(size).is_none_or(|end| end > flen) {
            return Err(format!("file is {flen:#x} bytes, mapping needs {offset:#x}+{size:#x}"));
        }
        let region = GuestRegionMmap::from_range(GuestAddress(gpa), len, Some(FileOffset::new(file, offset))).map_err(|e| e.to_string())?;
        let mut mem = self.0.write().unwrap_or_else(|e| e.into_inner());
        *mem = mem.insert_region(Arc::new(region)).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Forgets (and unmaps) every region lying entirely inside `gpa..gpa+size` (all of them if
    /// `all`); returns how many.
    pub fn unmap(&self, gpa: u64, size: u64, all: bool) -> usize {
        let end = gpa.saturating_add(size);
        let mut mem = self.0.write().unwrap_or_else(|e| e.into_inner());
        let doomed: Vec<_> = mem
            .iter()
            .filter(|r| all || (r.start_addr().0 >= gpa && r.start_addr().0.checked_add(r.len()).is_some_and(|e| e <= end)))
            .map(|r| (r.start_addr(), r.len()))
            .collect();
        let mut removed = 0;
        for (base, len) in doomed {
            // Dropping the returned region unmaps it, under the write lock.
            if let Ok((rest, _region)) = mem.remove_region(base, len) {
                *mem = rest;
                removed += 1;
            }
        }
        removed
    }

    /// Every mapped region with a duplicate of its file descriptor (to share with the mediator).
    pub fn pieces(&self) -> Vec<crate::link::Piece> {
        let mem = self.0.read().unwrap_or_else(|e| e.into_inner());
        mem.iter()
            .filter_map(|r| {
                let fo = r.file_offset()?;
                let file = fo.file().try_clone().ok()?;
                Some(crate::link::Piece { gpa: r.start_addr().0, size: r.len(), file, offset: fo.start() })
            })
            .collect()
    }

    /// Runs `f` on the region holding all of `gpa..gpa+len` and the offset of `gpa` in it,
    /// under the read lock.
    fn with<T>(&self, gpa: u64, len: usize, f: impl FnOnce(&GuestRegionMmap, MemoryRegionAddress) -> vm_memory::GuestMemoryResult<T>) -> Option<T> {
        let mem = self.0.read().unwrap_or_else(|e| e.into_inner());
        let r = mem.find_region(GuestAddress(gpa))?;
        let off = gpa.checked_sub(r.start_addr().0)?;
        if off.checked_add(u64::try_from(len).ok()?)? > r.len() {
            return None;
        }
        f(r, MemoryRegionAddress(off)).ok()
    }

    /// Whether `gpa..gpa+len` lies inside one mapped region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        usize::try_from(len).ok().and_then(|l| self.with(gpa, l, |_, _| Ok(()))).is_some()
    }

    /// An aligned atomic u32 load (the guest writes these fields concurrently).
    pub fn load_u32(&self, gpa: u64, order: Ordering) -> Option<u32> {
        self.with(gpa, 4, |r, a| r.load::<u32>(a, order)).map(u32::from_le)
    }

    pub fn store_u32(&self, gpa: u64, v: u32, order: Ordering) -> Option<()> {
        self.with(gpa, 4, |r, a| r.store(v.to_le(), a, order))
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        self.with(gpa, buf.len(), |r, a| r.read_slice(buf, a))
    }

    pub fn write(&self, gpa: u64, buf: &[u8]) -> Option<()> {
        self.with(gpa, buf.len(), |r, a| r.write_slice(buf, a))
    }
}
