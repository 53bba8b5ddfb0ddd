//! Global memory during a launch, shared by the host threads that run its blocks. Blocks may
//! race on global memory as they may on a GPU, so every access is atomic at its natural width
//! (relaxed: plain loads and stores on x86) and `atom.*` is a real read-modify-write; that keeps
//! racing kernels defined behaviour for the mediator, whatever the guest sends.

use super::MemFault;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// One allocation: device address, host pointer, length.
#[derive(Clone, Copy)]
pub struct Region {
    base: u64,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Region only describes memory (its owner may keep a table of them between launches);
// the memory is reached only through a Global, whose lifetime holds the owner's exclusive borrow.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `len` bytes at `ptr`, at device address `base`.
    pub fn new(base: u64, ptr: *mut u8, len: usize) -> Region {
        Region { base, ptr, len }
    }
}

/// The allocations a launch may touch, borrowed mutably from their owner for `'a`.
pub struct Global<'a> {
    /// Sorted by base address. Shared: an owner with many allocations keeps the table between
    /// launches rather than building it for each (a CuPy process holds thousands).
    regions: Arc<[Region]>,
    _borrow: PhantomData<&'a mut [u8]>,
}

// SAFETY: the regions are borrowed exclusively for 'a (no one else touches them meanwhile), and
// all access from the launch's threads goes through atomic operations (AtomicU8..U64::from_ptr).
unsafe impl Sync for Global<'_> {}
// SAFETY: as above; the pointers stay valid wherever the borrow lives.
unsafe impl Send for Global<'_> {}

impl<'a> Global<'a> {
    pub fn new(regions: Vec<(u64, &'a mut [u8])>) -> Global<'a> {
        let mut regions: Vec<Region> = regions.into_iter().map(|(base, s)| Region { base, ptr: s.as_mut_ptr(), len: s.len() }).collect();
        regions.sort_by_key(|r| r.base);
        Global { regions: regions.into(), _borrow: PhantomData }
    }

    /// A Global over a table its owner keeps.
    ///
    /// # Safety
    /// `regions` is sorted by base and does not overlap; each region's memory stays valid, and
    /// is touched by nothing but this Global, for `'a` (the caller holds its owner's exclusive
    /// borrow that long).
    pub unsafe fn from_table(regions: Arc<[Region]>) -> Global<'a> {
        Global { regions, _borrow: PhantomData }
    }

    /// The host address of `len` bytes at `addr`, if they lie inside one allocation.
    fn locate(&self, addr: u64, len: usize) -> Result<*mut u8, MemFault> {
        self.locate_near(addr, len, &mut 0)
    }

    /// locate, trying the region `hint` first (a thread's accesses mostly stay in one
    /// allocation); `hint` becomes the region found.
    fn locate_near(&self, addr: u64, len: usize, hint: &mut usize) -> Result<*mut u8, MemFault> {
        let fault = MemFault { addr, len: len as u64 };
        let i = match self.regions.get(*hint) {
            Some(r) if r.base <= addr && addr - r.base < r.len as u64 => *hint,
            _ => self.regions.partition_point(|r| r.base <= addr).checked_sub(1).ok_or(fault)?,
        };
        *hint = i;
        let r = &self.regions[i];
        let off = usize::try_from(addr - r.base).map_err(|_| fault)?;
        if off.checked_add(len).is_none_or(|end| end > r.len) {
            return Err(fault);
        }
        // SAFETY: off + len <= r.len, inside the region's allocation.
        Ok(unsafe { r.ptr.add(off) })
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), MemFault> {
        let p = self.locate(addr, out.len())?;
        // SAFETY: `p..p+len` is inside a live region (locate); the atomics match the alignment
        // they are chosen for.
        unsafe {
            match out.len() {
                8 if (p as usize).is_multiple_of(8) => out.copy_from_slice(&AtomicU64::from_ptr(p.cast()).load(Ordering::Relaxed).to_le_bytes()),
                4 if (p as usize).is_multiple_of(4) => out.copy_from_slice(&AtomicU32::from_ptr(p.cast()).load(Ordering::Relaxed).to_le_bytes()),
                2 if (p as usize).is_multiple_of(2) => out.copy_from_slice(&AtomicU16::from_ptr(p.cast()).load(Ordering::Relaxed).to_le_bytes()),
                _ => {
                    for (k, b) in out.iter_mut().enumerate() {
                        *b = AtomicU8::from_ptr(p.add(k)).load(Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }

    /// The `n`-byte (1, 2, 4 or 8) little-endian value at `addr` (`hint`: see locate_near).
    pub fn load(&self, addr: u64, n: usize, hint: &mut usize) -> Result<u64, MemFault> {
        let p = self.locate_near(addr, n, hint)?;
        // SAFETY: `p..p+n` is inside a live region (locate).
        Ok(unsafe { load_at(p, n) })
    }

    /// `load` for the lanes of a warp: the value at `addrs[l]` into `out[l]` for each lane `l`
    /// of `on`, if every one of those accesses lies inside the region of the first one's (the
    /// common case: a warp reads one array); else false, nothing read, and the caller goes lane
    /// by lane (which finds the fault, if there is one).
    pub fn load_lanes(&self, addrs: &[u64; 32], on: u32, n: usize, hint: &mut usize, out: &mut [u64; 32]) -> bool {
        if on == 0 {
            return true;
        }
        if self.locate_near(addrs[on.trailing_zeros() as usize], n, hint).is_err() {
            return false;
        }
        let r = &self.regions[*hint];
        let lanes = (0..32).filter(|l| on >> l & 1 != 0);
        if !lanes.clone().all(|l| addrs[l] >= r.base && (addrs[l] - r.base).checked_add(n as u64).is_some_and(|e| e <= r.len as u64)) {
            return false;
        }
        for l in lanes {
            // SAFETY: checked just above: `addrs[l] - r.base + n <= r.len`, so `p..p+n` is inside
            // the live region.
            out[l] = unsafe { load_at(r.ptr.add((addrs[l] - r.base) as usize), n) };
        }
        true
    }

    /// Region `i` (as `hint`s number them): its device address, host pointer and length, for
    /// compiled code's loads (exec/jit.rs), which check each access against them.
    pub(crate) fn region(&self, i: usize) -> Option<(u64, *mut u8, usize)> {
        self.regions.get(i).map(|r| (r.base, r.ptr, r.len))
    }

    /// Whether `len` bytes at `addr` lie inside one allocation (`hint`: see locate_near).
    pub(crate) fn contains(&self, addr: u64, len: usize, hint: &mut usize) -> bool {
        self.locate_near(addr, len, hint).is_ok()
    }

    /// Stores the low `n` bytes (1, 2, 4 or 8) of `v` at `addr`, little-endian.
    pub fn store(&self, addr: u64, n: usize, v: u64, hint: &mut usize) -> Result<(), MemFault> {
        let p = self.locate_near(addr, n, hint)?;
        // SAFETY: as in load.
        unsafe {
            match n {
                8 if (p as usize).is_multiple_of(8) => AtomicU64::from_ptr(p.cast()).store(v, Ordering::Relaxed),
                4 if (p as usize).is_multiple_of(4) => AtomicU32::from_ptr(p.cast()).store(v as u32, Ordering::Relaxed),
                2 if (p as usize).is_multiple_of(2) => AtomicU16::from_ptr(p.cast()).store(v as u16, Ordering::Relaxed),
                _ => (0..n.min(8)).for_each(|k| AtomicU8::from_ptr(p.add(k)).store((v >> (8 * k)) as u8, Ordering::Relaxed)),
            }
        }
        Ok(())
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemFault> {
        let p = self.locate(addr, data.len())?;
        // SAFETY: as in read.
        unsafe {
            match data.len() {
                8 if (p as usize).is_multiple_of(8) => AtomicU64::from_ptr(p.cast()).store(u64::from_le_bytes(data.try_into().unwrap_or_default()), Ordering::Relaxed),
                4 if (p as usize).is_multiple_of(4) => AtomicU32::from_ptr(p.cast()).store(u32::from_le_bytes(data.try_into().unwrap_or_default()), Ordering::Relaxed),
                2 if (p as usize).is_multiple_of(2) => AtomicU16::from_ptr(p.cast()).store(u16::from_le_bytes(data.try_into().unwrap_or_default()), Ordering::Relaxed),
                _ => {
                    for (k, b) in data.iter().enumerate() {
                        AtomicU8::from_ptr(p.add(k)).store(*b, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }

    /// Atomically replaces the `size`-byte value (2, 4 or 8, naturally aligned) at `addr` by
    /// `f(old)`; returns `old` (zero-extended), or None if misaligned or of another size.
    pub fn rmw(&self, addr: u64, size: usize, f: &mut dyn FnMut(u64) -> u64) -> Result<Option<u64>, MemFault> {
        let p = self.locate(addr, size)?;
        if !(p as usize).is_multiple_of(size) {
            return Ok(None);
        }
        // SAFETY: `p` is inside a live region and aligned for the atomic type used.
        let old = unsafe {
            match size {
                8 => AtomicU64::from_ptr(p.cast()).fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(f(o))).unwrap_or_default(),
                4 => AtomicU32::from_ptr(p.cast()).fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(f(o as u64) as u32)).unwrap_or_default() as u64,
                2 => AtomicU16::from_ptr(p.cast()).fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(f(o as u64) as u16)).unwrap_or_default() as u64,
                _ => return Ok(None),
            }
        };
        Ok(Some(old))
    }
}

/// The `n`-byte (1, 2, 4 or 8) little-endian value at `p`, with an atomic of its width where `p`
/// has that alignment (other threads may write it meanwhile), else byte by byte.
///
/// # Safety
/// `p..p+n` must lie inside a live region.
unsafe fn load_at(p: *mut u8, n: usize) -> u64 {
    // SAFETY: the caller's promise; each atomic is used only where `p` has its alignment.
    unsafe {
        match n {
            8 if (p as usize).is_multiple_of(8) => AtomicU64::from_ptr(p.cast()).load(Ordering::Relaxed),
            4 if (p as usize).is_multiple_of(4) => AtomicU32::from_ptr(p.cast()).load(Ordering::Relaxed) as u64,
            2 if (p as usize).is_multiple_of(2) => AtomicU16::from_ptr(p.cast()).load(Ordering::Relaxed) as u64,
            _ => (0..n.min(8)).fold(0u64, |v, k| v | (AtomicU8::from_ptr(p.add(k)).load(Ordering::Relaxed) as u64) << (8 * k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warp_loads_at_once_only_inside_one_region() {
        let (mut a, mut b) = ((0u8..64).collect::<Vec<u8>>(), vec![0xee; 16]);
        let g = Global::new(vec![(0x1000, &mut a[..]), (0x2000, &mut b[..])]);
        let (mut hint, mut out) = (0, [0u64; 32]);
        let mut addrs = [0u64; 32];
        for (l, at) in addrs.iter_mut().enumerate() {
            *at = 0x1000 + 2 * l as u64; // 16-bit elements, the last ending at byte 64
        }
        assert!(g.load_lanes(&addrs, u32::MAX, 2, &mut hint, &mut out));
        assert_eq!(out[1], u16::from_le_bytes([2, 3]) as u64);
        assert_eq!(out[31], u16::from_le_bytes([62, 63]) as u64);
        // One byte past the region's end, in another region, below the first: lane by lane.
        for (lane, at) in [(31, 0x103f), (7, 0x2000), (3, 0xfff)] {
            let mut bad = addrs;
            bad[lane] = at;
            out = [0; 32];
            assert!(!g.load_lanes(&bad, u32::MAX, 2, &mut hint, &mut out), "{at:#x}");
            assert_eq!(out, [0; 32]);
            // A lane outside `on` is not looked at.
            assert!(g.load_lanes(&bad, !(1 << lane), 2, &mut hint, &mut out));
        }
        // A first lane outside every region.
        addrs[0] = 0x3000;
        assert!(!g.load_lanes(&addrs, 1, 2, &mut hint, &mut out));
    }
}
