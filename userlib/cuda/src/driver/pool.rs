//! Stream-ordered allocation and memory pools (cuMemAllocAsync, cuMemFreeAsync, cuMemPool*),
//! kept here in the library on top of ordinary allocations: a pool's blocks are MemAlloc
//! allocations of the mediator session (so quotas, accounting and the cleanup of a process that
//! dies are the mediator's as for any allocation).
//!
//! As CUDA's pools, a pool reserves device memory in chunks (CHUNK, or a large request rounded up
//! to it) and carves blocks (multiples of ROUND bytes) out of them: USED_MEM counts the blocks,
//! RESERVED_MEM the chunks, and a small allocation after the first takes no new device memory.
//!
//! Ordering: a block freed with cuMemFreeAsync on a stream is kept by its pool and handed again
//! only to allocations on that same stream (they come after the free in stream order), until a
//! synchronization (of the context, or of that stream) has finished everything before the free;
//! then it is free for any stream, and the chunks wholly unused above the pool's release
//! threshold (default 0) go back to the device, as CUDA releases at synchronization. No event
//! dependencies are followed across streams (REUSE_FOLLOW_EVENT_DEPENDENCIES and the other reuse
//! flags are kept and reported; being more conservative than they allow is always correct).
//! One device, so access descriptors can only name device 0.

use super::*;
use crate::state;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use vgpu_uapi::proto::Op;

// CUmemPool_attribute (cuda.h).
// 1..=3: the REUSE_* flags (follow event dependencies, allow opportunistic, allow internal
// dependencies), ints.
const ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: u32 = 1;
const ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: u32 = 3;
const ATTR_RELEASE_THRESHOLD: u32 = 4;
const ATTR_RESERVED_MEM_CURRENT: u32 = 5;
const ATTR_RESERVED_MEM_HIGH: u32 = 6;
const ATTR_USED_MEM_CURRENT: u32 = 7;
const ATTR_USED_MEM_HIGH: u32 = 8;

/// First handle value of a pool (well away from the mediator's small handle numbers).
const POOL_HANDLE_BASE: u64 = 0x7e57_0000_0000;
/// The device's default pool.
const DEFAULT_POOL: u64 = POOL_HANDLE_BASE;

/// A range of a chunk the pool holds unused: reusable on `stream` only, or (None) on any stream.
struct Cached {
    ptr: u64,
    size: u64,
    stream: Option<u64>,
}

/// A device allocation the pool carves its blocks from.
struct Chunk {
    base: u64,
    size: u64,
}

#[derive(Default)]
struct Pool {
    threshold: u64,
    reuse_flags: [i32; 3],
    /// Outstanding allocations (pointer -> size).
    used: HashMap<u64, u64>,
    cached: Vec<Cached>,
    chunks: Vec<Chunk>,
    used_high: u64,
    reserved_high: u64,
    /// Destroyed by the application: gone once its last allocation is freed.
    destroyed: bool,
}

impl Pool {
    fn used_now(&self) -> u64 {
        self.used.values().sum()
    }

    fn reserved_now(&self) -> u64 {
        self.chunks.iter().map(|c| c.size).sum()
    }

    fn chunk_of(&self, ptr: u64) -> Option<usize> {
        self.chunks.iter().position(|c| (c.base..c.base + c.size).contains(&ptr))
    }

    /// Merges the unused ranges of a chunk that lie side by side and are free alike.
    fn coalesce(&mut self) {
        let mut ranges = std::mem::take(&mut self.cached);
        ranges.sort_by_key(|c| c.ptr);
        for c in ranges {
            match self.cached.last_mut() {
                Some(last) if last.ptr + last.size == c.ptr && last.stream == c.stream && self.chunks.iter().any(|k| k.base <= last.ptr && c.ptr + c.size <= k.base + k.size) => {
                    last.size += c.size
                }
                _ => self.cached.push(c),
            }
        }
    }

    /// Carves `size` bytes for `stream` out of the smallest unused range that may serve it.
    fn carve(&mut self, size: u64, stream: u64) -> Option<u64> {
        let i = self.cached.iter().enumerate().filter(|(_, c)| c.size >= size && c.stream.is_none_or(|cs| cs == stream)).min_by_key(|(_, c)| c.size).map(|(i, _)| i)?;
        let c = &mut self.cached[i];
        let ptr = c.ptr;
        if c.size == size {
            self.cached.swap_remove(i);
        } else {
            (c.ptr, c.size) = (c.ptr + size, c.size - size);
        }
        self.used.insert(ptr, size);
        self.note_highs();
        Some(ptr)
    }

    fn note_highs(&mut self) {
        self.used_high = self.used_high.max(self.used_now());
        self.reserved_high = self.reserved_high.max(self.reserved_now());
    }
}

#[derive(Default)]
struct Pools {
    pools: HashMap<u64, Pool>,
    next: u64,
    /// The pool cuMemAllocAsync uses (cuDeviceSetMemPool), None: the default pool.
    current: Option<u64>,
}

fn fresh_pools(next: u64) -> Pools {
    let mut p = Pools { next, ..Pools::default() };
    p.pools.insert(DEFAULT_POOL, Pool::default());
    p
}

fn pools() -> MutexGuard<'static, Pools> {
    static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
    let m = POOLS.get_or_init(|| Mutex::new(fresh_pools(DEFAULT_POOL + 1)));
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// cuDevicePrimaryCtxReset: the pools' memory went with the session; the default pool starts
/// empty and the pools the application made are destroyed (their handles are not reused).
pub(crate) fn forget_all_pools() {
    let mut p = pools();
    let next = p.next;
    *p = fresh_pools(next);
}

fn pool_of(p: &mut Pools, h: Handle) -> Result<&mut Pool, CUresult> {
    p.pools.get_mut(&handle_of(h)).filter(|p| !p.destroyed).ok_or(CUDA_ERROR_INVALID_VALUE)
}

fn check_device(dev: CUdevice) -> Result<(), CUresult> {
    let d = state::driver()?;
    if dev < 0 || dev as usize >= d.devices().len() {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

fn device_alloc(bytes: u64) -> Result<u64, CUresult> {
    let (d, _) = state::current_device()?;
    let reply = d.call(Op::MemAlloc, &[&bytes.to_le_bytes()])?;
    vgpu_uapi::wire::Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)
}

fn device_free(ptr: u64) -> Result<(), CUresult> {
    let (d, _) = state::current_device()?;
    d.call(Op::MemFree, &[&ptr.to_le_bytes()]).map(drop)
}

/// Blocks are handed out in multiples of this (CuPy's allocation unit, which its pool tests
/// count in).
const ROUND: u64 = 512;

/// A pool reserves device memory in multiples of this (a GPU's large-page granularity).
const CHUNK: u64 = 2 << 20;

fn alloc_from(pool: u64, bytes: usize, stream: Handle) -> Result<u64, CUresult> {
    if bytes == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // Inside a capture it would be a graph memory node: not supported by vgpu yet.
    super::graph::forbid_while_capturing(stream)?;
    let size = (bytes as u64).checked_next_multiple_of(ROUND).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    let s = handle_of(stream);
    {
        let mut all = pools();
        let p = all.pools.get_mut(&pool).filter(|p| !p.destroyed).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if let Some(ptr) = p.carve(size, s) {
            return Ok(ptr);
        }
        p.coalesce();
        if let Some(ptr) = p.carve(size, s) {
            return Ok(ptr);
        }
    }
    // A new chunk; what the block leaves of it is free for any stream.
    let chunk = size.checked_next_multiple_of(CHUNK).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    let base = device_alloc(chunk)?;
    let mut all = pools();
    match all.pools.get_mut(&pool) {
        Some(p) => {
            p.chunks.push(Chunk { base, size: chunk });
            if chunk > size {
                p.cached.push(Cached { ptr: base + size, size: chunk - size, stream: None });
            }
            p.used.insert(base, size);
            p.note_highs();
            Ok(base)
        }
        None => {
            drop(all);
            let _ = device_free(base);
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
}

/// Releases chunks of `pool` that hold no block and are free for any stream, largest first,
/// while it reserves more than `keep` bytes.
fn trim(pool: u64, keep: u64) -> Result<(), CUresult> {
    let victims: Vec<u64> = {
        let mut all = pools();
        let Some(p) = all.pools.get_mut(&pool) else { return Ok(()) };
        p.coalesce();
        let mut reserved = p.reserved_now();
        let mut out = Vec::new();
        p.chunks.sort_by_key(|c| std::cmp::Reverse(c.size));
        let mut k = 0;
        while reserved > keep && k < p.chunks.len() {
            let (base, size) = (p.chunks[k].base, p.chunks[k].size);
            match p.cached.iter().position(|c| c.ptr == base && c.size == size && c.stream.is_none()) {
                Some(i) => {
                    p.cached.swap_remove(i);
                    p.chunks.remove(k);
                    reserved -= size;
                    out.push(base);
                }
                None => k += 1,
            }
        }
        if p.destroyed && p.used.is_empty() && p.cached.iter().all(|c| c.stream.is_none()) {
            out.extend(p.chunks.drain(..).map(|c| c.base));
            all.pools.remove(&pool);
        }
        out
    };
    victims.into_iter().try_for_each(device_free)
}

/// After a synchronization of `stream` (None: of the whole context): blocks freed on it are
/// free for any stream, and each pool releases what it holds above its threshold.
pub(crate) fn synchronized(stream: Option<Handle>) {
    let thresholds: Vec<(u64, u64)> = {
        let mut all = pools();
        for p in all.pools.values_mut() {
            for c in &mut p.cached {
                if stream.is_none() || c.stream == stream.map(handle_of) {
                    c.stream = None;
                }
            }
        }
        all.pools.iter().map(|(&h, p)| (h, if p.destroyed { 0 } else { p.threshold })).collect()
    };
    for (h, keep) in thresholds {
        let _ = trim(h, keep);
    }
}

/// cuMemFree of a pool's block (CUDA allows it, the device synchronized first): the block goes
/// back to its pool. False if `ptr` is no pool's block.
pub(crate) fn free_now(ptr: u64) -> Result<bool, CUresult> {
    if !pools().pools.values().any(|p| p.used.contains_key(&ptr)) {
        return Ok(false);
    }
    state::driver()?.call(Op::Synchronize, &[])?;
    if let Some(p) = pools().pools.values_mut().find(|p| p.used.contains_key(&ptr)) {
        let size = p.used.remove(&ptr).unwrap_or(0);
        p.cached.push(Cached { ptr, size, stream: None });
    }
    synchronized(None);
    Ok(true)
}

/// The block of a pool that holds `ptr` (its base and size), for cuMemGetAddressRange: the
/// chunk around it is the pool's, not the application's allocation.
pub(crate) fn block_of(ptr: u64) -> Option<(u64, u64)> {
    pools().pools.values().flat_map(|p| p.used.iter()).find(|(&b, &s)| (b..b + s).contains(&ptr)).map(|(&b, &s)| (b, s))
}

/// Whether `ptr` lies in memory a pool reserved (IPC handles are not for pool memory).
pub(crate) fn reserved_by_a_pool(ptr: u64) -> bool {
    pools().pools.values().any(|p| p.chunk_of(ptr).is_some())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytes: usize, stream: Handle) -> CUresult {
    guard("cuMemAllocAsync", || {
        if dptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let pool = pools().current.unwrap_or(DEFAULT_POOL);
        put(dptr, alloc_from(pool, bytes, stream)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytes: usize, pool: Handle, stream: Handle) -> CUresult {
    guard("cuMemAllocFromPoolAsync", || {
        if dptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(dptr, alloc_from(handle_of(pool), bytes, stream)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: Handle) -> CUresult {
    guard("cuMemFreeAsync", || {
        super::graph::forbid_while_capturing(stream)?;
        let s = handle_of(stream);
        let mut all = pools();
        for p in all.pools.values_mut() {
            if let Some(size) = p.used.remove(&dptr) {
                p.cached.push(Cached { ptr: dptr, size, stream: Some(s) });
                return Ok(());
            }
        }
        drop(all);
        // Not from a pool: CUDA frees ordinary allocations this way too, in stream order.
        if dptr == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        call_u64s(Op::StreamSynchronize, &[s])?;
        synchronized(Some(stream));
        device_free(dptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytes: usize, stream: Handle) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemAllocAsync(dptr, bytes, stream) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, bytes: usize, pool: Handle, stream: Handle) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemAllocFromPoolAsync(dptr, bytes, pool, stream) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: Handle) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemFreeAsync(dptr, stream) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetDefaultMemPool", || {
        check_device(dev)?;
        put(pool, to_handle(DEFAULT_POOL))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut Handle, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetMemPool", || {
        check_device(dev)?;
        put(pool, to_handle(pools().current.unwrap_or(DEFAULT_POOL)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceSetMemPool(dev: CUdevice, pool: Handle) -> CUresult {
    guard("cuDeviceSetMemPool", || {
        check_device(dev)?;
        let mut all = pools();
        pool_of(&mut all, pool)?;
        all.current = Some(handle_of(pool));
        Ok(())
    })
}

/// CUmemPoolProps' leading fields (cuda.h); the rest (maxSize, usage, reserved) is not read.
#[repr(C)]
pub struct MemPoolPropsHead {
    alloc_type: u32,
    handle_types: u32,
    location_type: u32,
    location_id: i32,
}

const ALLOCATION_TYPE_PINNED: u32 = 1;
const LOCATION_TYPE_DEVICE: u32 = 1;

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolCreate(pool: *mut Handle, props: *const MemPoolPropsHead) -> CUresult {
    guard("cuMemPoolCreate", || {
        if pool.is_null() || props.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null; the API contract makes it a CUmemPoolProps, which starts with these.
        let p = unsafe { props.read_unaligned() };
        if p.alloc_type != ALLOCATION_TYPE_PINNED || p.location_type != LOCATION_TYPE_DEVICE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        check_device(p.location_id)?;
        if p.handle_types != 0 {
            // Pools shareable between processes (POSIX fds, fabric handles).
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let mut all = pools();
        let h = all.next;
        all.next += 1;
        all.pools.insert(h, Pool::default());
        put(pool, to_handle(h))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolDestroy(pool: Handle) -> CUresult {
    guard("cuMemPoolDestroy", || {
        let h = handle_of(pool);
        if h == DEFAULT_POOL {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        {
            let mut all = pools();
            pool_of(&mut all, pool)?.destroyed = true;
            if all.current == Some(h) {
                all.current = None;
            }
        }
        // What is unused goes now; the rest once it is freed and synchronized.
        trim(h, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: Handle, keep: usize) -> CUresult {
    guard("cuMemPoolTrimTo", || {
        pool_of(&mut pools(), pool)?;
        trim(handle_of(pool), keep as u64)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAttribute(pool: Handle, attr: u32, value: *mut c_void) -> CUresult {
    guard("cuMemPoolSetAttribute", || {
        if value.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut all = pools();
        let p = pool_of(&mut all, pool)?;
        // SAFETY (each read): non-null; the attribute says its type (int or cuuint64_t).
        match attr {
            ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES..=ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => {
                p.reuse_flags[(attr - 1) as usize] = unsafe { value.cast::<i32>().read_unaligned() };
            }
            ATTR_RELEASE_THRESHOLD => p.threshold = unsafe { value.cast::<u64>().read_unaligned() },
            // Only a reset to 0 (the current value becomes the high watermark).
            ATTR_RESERVED_MEM_HIGH | ATTR_USED_MEM_HIGH => {
                if unsafe { value.cast::<u64>().read_unaligned() } != 0 {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                if attr == ATTR_RESERVED_MEM_HIGH {
                    p.reserved_high = p.reserved_now();
                } else {
                    p.used_high = p.used_now();
                }
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAttribute(pool: Handle, attr: u32, value: *mut c_void) -> CUresult {
    guard("cuMemPoolGetAttribute", || {
        let mut all = pools();
        let p = pool_of(&mut all, pool)?;
        match attr {
            ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES..=ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => put(value.cast::<i32>(), p.reuse_flags[(attr - 1) as usize]),
            ATTR_RELEASE_THRESHOLD => put(value.cast::<u64>(), p.threshold),
            ATTR_RESERVED_MEM_CURRENT => put(value.cast::<u64>(), p.reserved_now()),
            ATTR_RESERVED_MEM_HIGH => put(value.cast::<u64>(), p.reserved_high),
            ATTR_USED_MEM_CURRENT => put(value.cast::<u64>(), p.used_now()),
            ATTR_USED_MEM_HIGH => put(value.cast::<u64>(), p.used_high),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    })
}

/// CUmemAccessDesc: location (type, id), flags.
#[repr(C)]
pub struct MemAccessDescRaw {
    location_type: u32,
    location_id: i32,
    flags: u32,
}

const ACCESS_FLAGS_PROT_READWRITE: u32 = 3;

/// The device always has read-write access to its own pools; that is the only access there is.
#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAccess(pool: Handle, map: *const MemAccessDescRaw, count: usize) -> CUresult {
    guard("cuMemPoolSetAccess", || {
        pool_of(&mut pools(), pool)?;
        if count > 0 && map.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        for i in 0..count {
            // SAFETY: non-null, `count` descriptors (API contract).
            let d = unsafe { map.add(i).read_unaligned() };
            if d.location_type != LOCATION_TYPE_DEVICE || d.location_id != 0 || d.flags != ACCESS_FLAGS_PROT_READWRITE {
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAccess(flags: *mut u32, pool: Handle, location: *const [u32; 2]) -> CUresult {
    guard("cuMemPoolGetAccess", || {
        pool_of(&mut pools(), pool)?;
        if location.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null CUmemLocation (API contract).
        let [ty, id] = unsafe { location.read_unaligned() };
        if ty != LOCATION_TYPE_DEVICE || id != 0 {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        put(flags, ACCESS_FLAGS_PROT_READWRITE)
    })
}
