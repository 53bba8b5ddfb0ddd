//! Device memory of the sim backend: each allocation is an anonymous host mapping (zero-filled,
//! committed lazily, fallible), placed at a device address in vgpu's device VA window.
//! Every access is checked to lie inside one live allocation.

use crate::backend::{CmdError, CmdResult};
use memmap2::MmapMut;
use std::collections::{BTreeMap, HashMap};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::VMM_GRANULARITY;
use vgpu_uapi::{DEVICE_VA_BASE, DEVICE_VA_SIZE};

/// cudaMalloc returns 256-byte aligned pointers; we keep allocations 64 KiB apart (like the
/// real driver's granularity) so that an overrun past one allocation faults instead of landing
/// in the next.
const ALIGN: u64 = 256;
const GAP: u64 = 64 << 10;

pub struct DeviceMemory {
    /// Every region a kernel may touch, by device address: allocations and mapped physical
    /// allocations (VMM). Mapped regions may be adjacent; copies may span them.
    allocs: BTreeMap<u64, MmapMut>,
    next_va: u64,
    used: u64,
    capacity: u64,
    /// Physical allocations (cuMemCreate) by handle.
    physical: HashMap<u64, Physical>,
    next_physical: u64,
    /// Reserved address ranges (cuMemAddressReserve): base -> size.
    reservations: BTreeMap<u64, u64>,
    /// Mapped regions: address -> physical handle.
    mappings: BTreeMap<u64, u64>,
    /// Kernels' malloc/free heap (one of `allocs`), made at the first launch that needs it.
    heap: Option<std::sync::Arc<crate::sim::ptx::heap::DeviceHeap>>,
    /// The cooperative groups grid workspace (one of `allocs`), made likewise.
    grid_ws: Option<u64>,
    /// Texture and surface objects over this memory, by handle (a launch takes a snapshot).
    pub objects: std::sync::Arc<crate::sim::ptx::texture::Objects>,
}

struct Physical {
    /// The memory, while not mapped (when mapped it is in `allocs`).
    mem: Option<MmapMut>,
    size: u64,
    /// cuMemRelease was called: it goes when unmapped.
    released: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub addr: u64,
    pub len: u64,
}

impl DeviceMemory {
    pub fn new(capacity: u64) -> Self {
        DeviceMemory {
            allocs: BTreeMap::new(),
            next_va: DEVICE_VA_BASE,
            used: 0,
            capacity,
            physical: HashMap::new(),
            next_physical: 0,
            reservations: BTreeMap::new(),
            mappings: BTreeMap::new(),
            heap: None,
            grid_ws: None,
            objects: Default::default(),
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn alloc(&mut self, bytes: u64) -> CmdResult<u64> {
        if bytes == 0 {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "zero-byte allocation"));
        }
        let oom = || CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, format!("cannot allocate {bytes} bytes of device memory"));
        if bytes > self.capacity - self.used {
            return Err(oom());
        }
        let span = bytes.checked_add(GAP + ALIGN - 1).ok_or_else(oom)? & !(ALIGN - 1);
        let base = self.next_va;
        if base.checked_add(span).is_none_or(|end| end > DEVICE_VA_BASE + DEVICE_VA_SIZE) {
            return Err(oom());
        }
        let len = usize::try_from(bytes).map_err(|_| oom())?;
        let map = MmapMut::map_anon(len).map_err(|_| oom())?;
        self.allocs.insert(base, map);
        self.next_va = base + span;
        self.used += bytes;
        Ok(base)
    }

    pub fn free(&mut self, dptr: u64) -> CmdResult<()> {
        if self.mappings.contains_key(&dptr) {
            return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{dptr:#x} is mapped memory: unmap it (cuMemUnmap)")));
        }
        match self.allocs.remove(&dptr) {
            Some(m) => {
                self.used -= m.len() as u64;
                Ok(())
            }
            None => Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{dptr:#x} is not an allocation"))),
        }
    }

    /// Frees every allocation but those at `keep`, and all VMM memory, reservations and
    /// mappings (a reset). Addresses are not reused: a stale pointer never reaches new memory.
    pub fn free_all_but(&mut self, keep: &std::collections::HashSet<u64>) {
        for va in std::mem::take(&mut self.mappings).into_keys() {
            self.allocs.remove(&va);
        }
        self.physical.clear();
        self.reservations.clear();
        self.heap = None;
        self.grid_ws = None;
        self.objects = Default::default();
        self.allocs.retain(|base, _| keep.contains(base));
        self.used = self.allocs.values().map(|m| m.len() as u64).sum();
    }

    /// The device heap, made (as an allocation of HEAP_BYTES) at the first call.
    pub fn heap(&mut self) -> CmdResult<std::sync::Arc<crate::sim::ptx::heap::DeviceHeap>> {
        use crate::sim::ptx::heap::{DeviceHeap, HEAP_BYTES};
        if let Some(h) = &self.heap {
            return Ok(h.clone());
        }
        let base = self.alloc(HEAP_BYTES)?;
        let h = std::sync::Arc::new(DeviceHeap::new(base, HEAP_BYTES));
        self.heap = Some(h.clone());
        Ok(h)
    }

    /// The grid workspace CUDA's cooperative_groups headers find through %envreg1/%envreg2:
    /// `{ u32 wsSize; u32 barrier; }`, the barrier a counter whose top bit flips each time the
    /// grid has arrived (it carries over from one launch to the next, as the driver's does).
    pub fn grid_workspace(&mut self) -> CmdResult<u64> {
        if let Some(p) = self.grid_ws {
            return Ok(p);
        }
        const SIZE: u64 = 256;
        let p = self.alloc(SIZE)?;
        if let Ok(s) = self.slice_mut(p, 4) {
            s.copy_from_slice(&(SIZE as u32).to_le_bytes());
        }
        self.grid_ws = Some(p);
        Ok(p)
    }

    /// (base, size) of the allocation containing `addr`.
    pub fn range_of(&self, addr: u64) -> Option<(u64, u64)> {
        let (&base, m) = self.allocs.range(..=addr).next_back()?;
        let size = m.len() as u64;
        (addr - base < size).then_some((base, size))
    }

    fn locate(&self, addr: u64, len: u64) -> Result<(u64, usize), Fault> {
        let fault = Fault { addr, len };
        let (base, size) = self.range_of(addr).ok_or(fault)?;
        let off = addr - base;
        if len > size - off {
            return Err(fault);
        }
        Ok((base, off as usize))
    }

    /// Within one region only (the tests use it to see accesses confined to allocations;
    /// requests go through `read`, which also runs across adjacent mappings).
    #[cfg(test)]
    pub fn slice(&self, addr: u64, len: u64) -> Result<&[u8], Fault> {
        let (base, off) = self.locate(addr, len)?;
        Ok(&self.allocs[&base][off..off + len as usize])
    }

    pub fn slice_mut(&mut self, addr: u64, len: u64) -> Result<&mut [u8], Fault> {
        let (base, off) = self.locate(addr, len)?;
        let m = self.allocs.get_mut(&base).ok_or(Fault { addr, len })?;
        Ok(&mut m[off..off + len as usize])
    }

    /// The pieces (region base, offset, length) of `len` bytes at `addr`, which may run on
    /// through regions that follow each other without a gap (adjacent VMM mappings).
    fn spans(&self, addr: u64, len: u64) -> Result<Vec<(u64, usize, usize)>, Fault> {
        let fault = Fault { addr, len };
        let mut out = Vec::new();
        let (mut at, mut left) = (addr, len);
        while left > 0 {
            let (base, size) = self.range_of(at).ok_or(fault)?;
            let off = at - base;
            let n = left.min(size - off);
            out.push((base, off as usize, n as usize));
            at = at.checked_add(n).ok_or(fault)?;
            left -= n;
        }
        Ok(out)
    }

    /// Reads `out.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Fault> {
        let mut done = 0;
        for (base, off, n) in self.spans(addr, out.len() as u64)? {
            out[done..done + n].copy_from_slice(&self.allocs[&base][off..off + n]);
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        let mut done = 0;
        for (base, off, n) in self.spans(addr, data.len() as u64)? {
            let m = self.allocs.get_mut(&base).ok_or(Fault { addr, len: data.len() as u64 })?;
            m[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Fills `len` bytes at `addr` with `pattern` repeated (len a multiple of its size).
    pub fn fill(&mut self, addr: u64, len: u64, pattern: &[u8]) -> Result<(), Fault> {
        let mut done = 0usize;
        for (base, off, n) in self.spans(addr, len)? {
            let m = self.allocs.get_mut(&base).ok_or(Fault { addr, len })?;
            let dst = &mut m[off..off + n];
            if pattern.iter().all(|&b| b == pattern[0]) {
                dst.fill(pattern[0]);
            } else {
                // Spans start on element boundaries (regions are granularity-aligned).
                for (i, b) in dst.iter_mut().enumerate() {
                    *b = pattern[(done + i) % pattern.len()];
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Every allocation as (device address, its bytes).
    pub fn regions_mut(&mut self) -> Vec<(u64, &mut [u8])> {
        self.allocs.iter_mut().map(|(&base, m)| (base, &mut m[..])).collect()
    }

    /// Copy between (possibly the same) allocations; overlapping ranges behave like memmove.
    pub fn copy(&mut self, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        if len == 0 {
            return Ok(());
        }
        if let (Ok((sbase, soff)), Ok((dbase, doff))) = (self.locate(src, len), self.locate(dst, len)) {
            let n = len as usize;
            if sbase == dbase {
                let m = self.allocs.get_mut(&dbase).ok_or(Fault { addr: dst, len })?;
                m.copy_within(soff..soff + n, doff);
                return Ok(());
            }
        }
        // Different regions, or ranges spanning adjacent mappings: through a buffer.
        self.spans(dst, len)?;
        let mut tmp = vec![0u8; usize::try_from(len).map_err(|_| Fault { addr: src, len })?];
        self.read(src, &mut tmp)?;
        self.write(dst, &tmp)
    }

    // Virtual memory management: physical allocations mapped into reserved address ranges.

    fn vmm_err(msg: String) -> CmdError {
        CmdError::new(CUDA_ERROR_INVALID_VALUE, msg)
    }

    /// A physical allocation of `size` bytes (a multiple of the granularity).
    pub fn create_physical(&mut self, size: u64) -> CmdResult<u64> {
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(Self::vmm_err(format!("size {size} is not a positive multiple of the {VMM_GRANULARITY}-byte granularity")));
        }
        let oom = || CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, format!("cannot create a physical allocation of {size} bytes"));
        if size > self.capacity - self.used {
            return Err(oom());
        }
        let map = MmapMut::map_anon(usize::try_from(size).map_err(|_| oom())?).map_err(|_| oom())?;
        self.next_physical += 1;
        let h = 0x7000_0000 + self.next_physical;
        self.physical.insert(h, Physical { mem: Some(map), size, released: false });
        self.used += size;
        Ok(h)
    }

    /// cuMemRelease: the allocation goes now, or when its mapping is unmapped.
    pub fn release_physical(&mut self, h: u64) -> CmdResult<()> {
        let p = self.physical.get_mut(&h).filter(|p| !p.released).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, format!("{h:#x} is not a physical allocation")))?;
        p.released = true;
        if p.mem.is_some() {
            self.used -= p.size;
            self.physical.remove(&h);
        }
        Ok(())
    }

    pub fn reserve(&mut self, size: u64, alignment: u64, hint: u64) -> CmdResult<u64> {
        let align = if alignment == 0 { VMM_GRANULARITY } else { alignment };
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) || !align.is_power_of_two() || !align.is_multiple_of(VMM_GRANULARITY) {
            return Err(Self::vmm_err(format!("reservation of {size} bytes aligned to {alignment}: sizes and alignments are multiples of {VMM_GRANULARITY}")));
        }
        // The hint is only a hint: the range goes where the allocator's next free space is.
        let _ = hint;
        let oom = || CmdError::new(CUDA_ERROR_OUT_OF_MEMORY, format!("no {size}-byte range of device addresses left"));
        let base = self.next_va.checked_add(align - 1).ok_or_else(oom)? & !(align - 1);
        let end = base.checked_add(size).ok_or_else(oom)?;
        if end.checked_add(GAP).is_none_or(|e| e > DEVICE_VA_BASE + DEVICE_VA_SIZE) {
            return Err(oom());
        }
        self.reservations.insert(base, size);
        self.next_va = end + GAP;
        Ok(base)
    }

    pub fn unreserve(&mut self, va: u64, size: u64) -> CmdResult<()> {
        if self.reservations.get(&va) != Some(&size) {
            return Err(Self::vmm_err(format!("{size} bytes at {va:#x} is not a reservation")));
        }
        if self.mappings.range(va..va + size).next().is_some() {
            return Err(Self::vmm_err(format!("the reservation at {va:#x} still has mappings")));
        }
        self.reservations.remove(&va);
        Ok(())
    }

    /// The reservation holding [va, va + size), if one does.
    fn reservation_of(&self, va: u64, size: u64) -> Option<(u64, u64)> {
        let (&base, &len) = self.reservations.range(..=va).next_back()?;
        let end = va.checked_add(size)?;
        (end <= base + len).then_some((base, len))
    }

    pub fn map(&mut self, va: u64, size: u64, offset: u64, h: u64) -> CmdResult<()> {
        if !va.is_multiple_of(VMM_GRANULARITY) || size == 0 || self.reservation_of(va, size).is_none() {
            return Err(Self::vmm_err(format!("{size} bytes at {va:#x} are not granularity-aligned inside one reservation")));
        }
        let p = self.physical.get(&h).filter(|p| !p.released).ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_HANDLE, format!("{h:#x} is not a physical allocation")))?;
        if offset != 0 || size != p.size {
            return Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "mapping part of a physical allocation is not supported by the sim backend"));
        }
        if p.mem.is_none() {
            return Err(CmdError::new(CUDA_ERROR_NOT_SUPPORTED, "mapping one physical allocation twice is not supported by the sim backend"));
        }
        if self.allocs.range(va..va + size).next().is_some() || self.range_of(va).is_some() {
            return Err(Self::vmm_err(format!("{size} bytes at {va:#x} overlap a mapping")));
        }
        let mem = self.physical.get_mut(&h).and_then(|p| p.mem.take()).ok_or_else(|| Self::vmm_err("gone".into()))?;
        self.allocs.insert(va, mem);
        self.mappings.insert(va, h);
        Ok(())
    }

    /// Unmaps the mappings making up exactly [va, va + size).
    pub fn unmap(&mut self, va: u64, size: u64) -> CmdResult<()> {
        let end = va.checked_add(size).ok_or_else(|| Self::vmm_err("range overflows".into()))?;
        let inside: Vec<(u64, u64)> = self.mappings.range(va..end).map(|(&a, &h)| (a, h)).collect();
        let mut at = va;
        for &(a, _) in &inside {
            if a != at {
                return Err(Self::vmm_err(format!("{size} bytes at {va:#x} are not exactly mapped ranges")));
            }
            at += self.allocs.get(&a).map_or(0, |m| m.len() as u64);
        }
        if at != end || inside.is_empty() {
            return Err(Self::vmm_err(format!("{size} bytes at {va:#x} are not exactly mapped ranges")));
        }
        for (a, h) in inside {
            self.mappings.remove(&a);
            let mem = self.allocs.remove(&a);
            if let Some(p) = self.physical.get_mut(&h) {
                if p.released {
                    self.used -= p.size;
                    self.physical.remove(&h);
                } else {
                    p.mem = mem;
                }
            }
        }
        Ok(())
    }

    /// Whether [va, va + size) is mapped throughout.
    pub fn is_mapped(&self, va: u64, size: u64) -> bool {
        self.spans(va, size).is_ok_and(|s| s.iter().all(|(b, _, _)| self.mappings.contains_key(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_confined_to_allocations() {
        let mut m = DeviceMemory::new(1 << 30);
        let a = m.alloc(1000).unwrap();
        let b = m.alloc(10).unwrap();
        assert_eq!(a % 256, 0);
        assert!(m.slice(a, 1000).is_ok());
        assert!(m.slice(a, 1001).is_err(), "overrun");
        assert!(m.slice(a + 999, 1).is_ok());
        assert!(m.slice(a + 1000, 1).is_err(), "gap after an allocation");
        assert!(m.slice(a - 1, 1).is_err(), "before the first allocation");
        assert!(m.slice(u64::MAX, 2).is_err());
        m.slice_mut(a, 4).unwrap().copy_from_slice(&[1, 2, 3, 4]);
        m.copy(b, a, 4).unwrap();
        assert_eq!(m.slice(b, 4).unwrap(), &[1, 2, 3, 4]);
        m.copy(a + 1, a, 3).unwrap();
        assert_eq!(m.slice(a, 4).unwrap(), &[1, 1, 2, 3], "overlap is memmove");
        assert_eq!(m.used(), 1010);
        m.free(a).unwrap();
        assert!(m.free(a).is_err(), "double free");
        assert!(m.slice(a, 1).is_err(), "use after free");
        assert_eq!(m.used(), 10);
    }

    #[test]
    fn vmm_mappings_are_contiguous_and_checked() {
        const G: u64 = VMM_GRANULARITY;
        let mut m = DeviceMemory::new(16 * G);
        let va = m.reserve(8 * G, 0, 0).unwrap();
        let (p1, p2) = (m.create_physical(G).unwrap(), m.create_physical(2 * G).unwrap());
        assert_eq!(m.used(), 3 * G);
        assert!(m.create_physical(G + 1).is_err(), "not a multiple of the granularity");
        m.map(va, G, 0, p1).unwrap();
        m.map(va + G, 2 * G, 0, p2).unwrap();
        assert!(m.map(va + 3 * G, G, 0, p1).is_err(), "already mapped");
        let p3 = m.create_physical(G).unwrap();
        assert!(m.map(va + 8 * G, G, 0, p3).is_err(), "outside the reservation");
        // A copy across the boundary of two mappings.
        let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        m.write(va + G - 2048, &data).unwrap();
        let mut back = vec![0; 4096];
        m.read(va + G - 2048, &mut back).unwrap();
        assert_eq!(back, data);
        m.copy(va + 3 * G - 4096, va + G - 2048, 4096).unwrap();
        m.read(va + 3 * G - 4096, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(m.read(va + 3 * G - 1, &mut [0; 2]).is_err(), "past the last mapping");
        assert!(m.is_mapped(va, 3 * G) && !m.is_mapped(va, 4 * G));
        assert!(m.free(va).is_err(), "mapped memory is not freed with cuMemFree");
        // Released while mapped: it goes when unmapped.
        m.release_physical(p1).unwrap();
        assert!(m.release_physical(p1).is_err(), "double release");
        assert!(m.unmap(va, G + 1).is_err(), "not exactly mapped ranges");
        assert!(m.unreserve(va, 8 * G).is_err(), "still mapped");
        m.unmap(va, 3 * G).unwrap();
        assert!(m.read(va, &mut [0; 1]).is_err(), "unmapped");
        m.release_physical(p2).unwrap();
        m.unreserve(va, 8 * G).unwrap();
        assert_eq!(m.used(), G, "only the never-mapped allocation is left");
        m.release_physical(p3).unwrap();
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn capacity_is_enforced() {
        let mut m = DeviceMemory::new(4096);
        assert_eq!(m.alloc(4097).unwrap_err().code, CUDA_ERROR_OUT_OF_MEMORY);
        m.alloc(4096).unwrap();
        assert_eq!(m.alloc(1).unwrap_err().code, CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(m.alloc(0).unwrap_err().code, CUDA_ERROR_INVALID_VALUE);
    }
}
