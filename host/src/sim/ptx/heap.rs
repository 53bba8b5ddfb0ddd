//! The device heap: what kernels' `malloc` and `free` hand out (CUDA's device-side malloc).
//!
//! One region of the session's device memory (CUDA's default size, `cudaLimitMallocHeapSize`:
//! 8 MiB), made at the first launch of a kernel that allocates, kept across launches (memory a
//! kernel allocated stays valid until freed, as in CUDA) and freed with the session or a reset.
//! Blocks are 16-byte aligned (as CUDA's malloc returns them) and found first-fit; `malloc`
//! returns NULL when no block fits, as CUDA's does. The host threads running a launch's blocks
//! share it under a lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// CUDA's default device heap size.
pub const HEAP_BYTES: u64 = 8 << 20;
const ALIGN: u64 = 16;

pub struct DeviceHeap {
    base: u64,
    size: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Free ranges: offset -> length, never adjacent (freeing merges them).
    free: BTreeMap<u64, u64>,
    /// Live blocks: address -> length.
    live: HashMap<u64, u64>,
}

impl DeviceHeap {
    /// A heap over the `size` bytes of device memory at `base`.
    pub fn new(base: u64, size: u64) -> DeviceHeap {
        let mut st = State::default();
        st.free.insert(0, size);
        DeviceHeap { base, size, state: Mutex::new(st) }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// A block of at least `n` bytes, or 0 (NULL) when none fits or `n` is 0.
    pub fn malloc(&self, n: u64) -> u64 {
        let Some(want) = n.checked_next_multiple_of(ALIGN).filter(|&w| w > 0) else { return 0 };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some((&off, &len)) = st.free.iter().find(|(_, &len)| len >= want) else { return 0 };
        st.free.remove(&off);
        if len > want {
            st.free.insert(off + want, len - want);
        }
        st.live.insert(self.base + off, want);
        self.base + off
    }

    /// Frees a block `malloc` returned; NULL is nothing to free. Anything else is an error
    /// (undefined in CUDA).
    pub fn free(&self, p: u64) -> Result<(), String> {
        if p == 0 {
            return Ok(());
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let len = st.live.remove(&p).ok_or_else(|| format!("free({p:#x}) of a pointer that device-side malloc did not return (or freed twice)"))?;
        let (mut off, mut len) = (p - self.base, len);
        if let Some((&prev, &plen)) = st.free.range(..off).next_back() {
            if prev + plen == off {
                st.free.remove(&prev);
                (off, len) = (prev, plen + len);
            }
        }
        if let Some(next_len) = st.free.remove(&(off + len)) {
            len += next_len;
        }
        st.free.insert(off, len);
        Ok(())
    }

    /// Bytes in live blocks.
    pub fn in_use(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).live.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_apart_and_reused_after_free() {
        let h = DeviceHeap::new(0x1000, 256);
        let a = h.malloc(1);
        let b = h.malloc(17);
        assert_eq!((a, b), (0x1000, 0x1010), "16-byte aligned, first fit");
        assert_eq!(h.malloc(0), 0);
        assert_eq!(h.malloc(1 << 40), 0, "NULL when nothing fits");
        assert_eq!(h.malloc(u64::MAX), 0);
        h.free(a).unwrap();
        h.free(b).unwrap();
        assert_eq!(h.in_use(), 0);
        assert_eq!(h.malloc(256), 0x1000, "freed neighbours merge back into one range");
        assert!(h.free(0x1008).is_err(), "not a block");
        h.free(0x1000).unwrap();
        assert!(h.free(0x1000).is_err(), "double free");
        h.free(0).unwrap();
    }
}
