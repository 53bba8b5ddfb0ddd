//! Stream-ordered allocation and memory pools (cuMemAllocAsync, cuMemFreeAsync, cuMemPool*),
//! kept here in the library on top of ordinary allocations: a pool's blocks are MemAlloc
//! allocations of the mediator session (so quotas, accounting and the cleanup of a process that
//! dies are the mediator's as for any allocation).
//!
//! Ordering: a block freed with cuMemFreeAsync on a stream is kept by its pool and handed again
//! only to allocations on that same stream (they come after the free in stream order), until a
//! synchronization (of the context, or of that stream) has finished everything before the free;
//! then it is free for any stream, and what the pool holds unused above its release threshold
//! (default 0) goes back to the device, as CUDA releases at synchronization. No event
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

/// A block the pool holds unused: reusable on `stream` only, or (None) on any stream.
struct Cached {
    ptr: u64,
    size: u64,
    stream: Option<u64>,
}

#[derive(Default)]
struct Pool {
    threshold: u64,
    reuse_flags: [i32; 3],
    /// Outstanding allocations (pointer -> size).
    used: HashMap<u64, u64>,
    cached: Vec<Cached>,
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
        self.used_now() + self.cached.iter().map(|c| c.size).sum::<u64>()
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

/// Blocks are handed out in multiples of this (small requests share nothing: each is its own
/// allocation, but sizes that round alike can reuse each other's blocks).
const ROUND: u64 = 512;

fn alloc_from(pool: u64, bytes: usize, stream: Handle) -> Result<u64, CUresult> {
    if bytes == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // Inside a capture it would be a graph memory node: not supported by vgpu yet.
    super::graph::forbid_while_capturing(stream)?;
    let size = (bytes as u64).div_ceil(ROUND) * ROUND;
    let s = handle_of(stream);
    {
        let mut all = pools();
        let p = all.pools.get_mut(&pool).filter(|p| !p.destroyed).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // The smallest cached block that fits and may be used on this stream.
        let fit = p.cached.iter().enumerate().filter(|(_, c)| c.size >= size && c.stream.is_none_or(|cs| cs == s)).min_by_key(|(_, c)| c.size).map(|(i, _)| i);
        if let Some(i) = fit {
            let c = p.cached.swap_remove(i);
            p.used.insert(c.ptr, c.size);
            p.note_highs();
            return Ok(c.ptr);
        }
    }
    let ptr = device_alloc(size)?;
    let mut all = pools();
    match all.pools.get_mut(&pool) {
        Some(p) => {
            p.used.insert(ptr, size);
            p.note_highs();
            Ok(ptr)
        }
        None => {
            drop(all);
            let _ = device_free(ptr);
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
}

/// Releases unused blocks of `pool` beyond `keep` bytes of reserved memory (only blocks free
/// for any stream).
fn trim(pool: u64, keep: u64) -> Result<(), CUresult> {
    let victims: Vec<u64> = {
        let mut all = pools();
        let Some(p) = all.pools.get_mut(&pool) else { return Ok(()) };
        let mut reserved = p.reserved_now();
        let mut out = Vec::new();
        p.cached.sort_by_key(|c| c.size);
        while reserved > keep {
            let Some(i) = p.cached.iter().rposition(|c| c.stream.is_none()) else { break };
            let c = p.cached.remove(i);
            reserved -= c.size;
            out.push(c.ptr);
        }
        if p.destroyed && p.used.is_empty() && p.cached.iter().all(|c| c.stream.is_none()) {
            out.extend(p.cached.drain(..).map(|c| c.ptr));
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

/// cuMemFree of a pointer that came from a pool: it leaves the pool's accounting.
pub(crate) fn forget(ptr: u64) {
    let mut all = pools();
    for p in all.pools.values_mut() {
        if p.used.remove(&ptr).is_some() {
            return;
        }
    }
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
