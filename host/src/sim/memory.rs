//! Device memory of the sim backend: each allocation is an anonymous host mapping (zero-filled,
//! committed lazily, fallible), placed at a device address in vgpu's device VA window.
//! Every access is checked to lie inside one live allocation.

use crate::backend::{CmdError, CmdResult};
use memmap2::MmapMut;
use std::collections::BTreeMap;
use vgpu_uapi::cuda::*;
use vgpu_uapi::{DEVICE_VA_BASE, DEVICE_VA_SIZE};

/// cudaMalloc returns 256-byte aligned pointers; we keep allocations 64 KiB apart (like the
/// real driver's granularity) so that an overrun past one allocation faults instead of landing
/// in the next.
const ALIGN: u64 = 256;
const GAP: u64 = 64 << 10;

pub struct DeviceMemory {
    allocs: BTreeMap<u64, MmapMut>,
    next_va: u64,
    used: u64,
    capacity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub addr: u64,
    pub len: u64,
}

impl DeviceMemory {
    pub fn new(capacity: u64) -> Self {
        DeviceMemory { allocs: BTreeMap::new(), next_va: DEVICE_VA_BASE, used: 0, capacity }
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
        match self.allocs.remove(&dptr) {
            Some(m) => {
                self.used -= m.len() as u64;
                Ok(())
            }
            None => Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, format!("{dptr:#x} is not an allocation"))),
        }
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

    pub fn slice(&self, addr: u64, len: u64) -> Result<&[u8], Fault> {
        let (base, off) = self.locate(addr, len)?;
        Ok(&self.allocs[&base][off..off + len as usize])
    }

    pub fn slice_mut(&mut self, addr: u64, len: u64) -> Result<&mut [u8], Fault> {
        let (base, off) = self.locate(addr, len)?;
        let m = self.allocs.get_mut(&base).ok_or(Fault { addr, len })?;
        Ok(&mut m[off..off + len as usize])
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
        let (sbase, soff) = self.locate(src, len)?;
        let (dbase, doff) = self.locate(dst, len)?;
        let n = len as usize;
        if sbase == dbase {
            let m = self.allocs.get_mut(&dbase).ok_or(Fault { addr: dst, len })?;
            m.copy_within(soff..soff + n, doff);
        } else {
            let tmp = self.allocs[&sbase][soff..soff + n].to_vec();
            self.slice_mut(dst, len)?.copy_from_slice(&tmp);
        }
        Ok(())
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
    fn capacity_is_enforced() {
        let mut m = DeviceMemory::new(4096);
        assert_eq!(m.alloc(4097).unwrap_err().code, CUDA_ERROR_OUT_OF_MEMORY);
        m.alloc(4096).unwrap();
        assert_eq!(m.alloc(1).unwrap_err().code, CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(m.alloc(0).unwrap_err().code, CUDA_ERROR_INVALID_VALUE);
    }
}
