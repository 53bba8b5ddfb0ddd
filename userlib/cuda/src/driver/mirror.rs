//! Memory both the host and the device address: managed memory (cuMemAllocManaged: one pointer,
//! valid on both sides) and mapped page-locked memory (cuMemHostGetDevicePointer: a device
//! pointer for host memory).
//!
//! The device cannot reach this process's pages (the mediator, or a GPU behind it, runs elsewhere),
//! so each such range is a pair: the device's copy, an ordinary allocation in the mediator, and
//! the host's, here. libcuda keeps them coherent at the points where CUDA makes managed memory
//! coherent on devices without concurrent managed access (what vgpu reports:
//! CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS = 0):
//! - before device work is submitted (a launch, copy or memset), pages the host changed since the
//!   last exchange are pushed to the device. Only the first submission after a wait looks: until
//!   the next wait the host may not touch managed memory (CUDA's rule without concurrent managed
//!   access), so a stream of launches costs one look, not one per launch;
//! - after a call that waited for the device (a synchronize, a completed query, a synchronous
//!   copy), pages the device may have written are pulled, except pages the host changed in the
//!   meantime: those keep the host's bytes and are pushed with the next work.
//!
//! A page's change is seen by its hash (XXH3-64) against the one recorded at the last exchange,
//! 8 bytes per 4 KiB page instead of a second copy. The host copy of managed memory is a sealed
//! memfd mapped at the device pointer's own address (inside the window libcuda keeps free for
//! device pointers), registered with the transport like page-locked memory, so pushes and pulls
//! carry no bytes through the connection.

use super::*;
use crate::state::{self, Driver};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use vgpu_client::transport::{Direction, HostUse};
use vgpu_uapi::cuda::vmm::MemLocation;
use vgpu_uapi::proto::{Op, COPY_CHUNK};

const PAGE: usize = 4096;

/// A hash no page has at the start: every page of a new pair is pushed by the first work.
const UNKNOWN: u64 = 0x5eed_0f_dead_beef;

pub struct Mirror {
    /// Where the host's copy starts (for managed memory, the device pointer itself).
    pub host: usize,
    pub len: usize,
    /// The transport's handle of the host copy (copies then carry no bytes), if it has one.
    handle: Option<u64>,
    /// cuMemAllocManaged (libcuda owns both copies), else page-locked host memory whose device
    /// copy libcuda made for cuMemHostGetDevicePointer.
    pub managed: bool,
    /// Each page's hash at the last exchange.
    hashes: Vec<u64>,
    /// The device allocation holding the device copy (for managed memory, the page before the
    /// page-aligned start may belong to it too: the host copy is mapped at that start).
    alloc: u64,
    /// The size the application asked for (len is whole pages).
    asked: usize,
}

#[derive(Default)]
pub struct Mirrors {
    /// Device address of each pair -> the pair.
    by_device: BTreeMap<u64, Mirror>,
    /// Host address of each pair -> its device address.
    by_host: BTreeMap<usize, u64>,
}

/// The pairs of this process, and two counters that say whether a pull is due: work submitted
/// since the pull that last completed. A counter, not a flag: a wait that began before another
/// thread submitted work must not count that work as pulled.
#[derive(Default)]
pub struct MirrorState {
    table: Mutex<Mirrors>,
    any: AtomicBool,
    submitted: AtomicU64,
    pulled: AtomicU64,
    /// The host's changes were pushed since the last wait ended.
    pushed: AtomicBool,
}

fn page_hash(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

impl Mirror {
    /// The host copy, all of it.
    fn bytes(&self) -> &[u8] {
        // SAFETY: [host, host + len) is a mapping this pair owns (managed memory, page-locked
        // allocations) or that the application registered and may not unmap before it
        // unregisters it (which removes the pair); it stays mapped while the pair exists.
        unsafe { std::slice::from_raw_parts(self.host as *const u8, self.len) }
    }

    fn page_range(&self, i: usize) -> std::ops::Range<usize> {
        i * PAGE..((i + 1) * PAGE).min(self.len)
    }

    /// Runs of consecutive pages whose hash is (`changed`) or is not different from the one
    /// recorded, as byte ranges; with the current hashes of those pages.
    fn runs(&self, changed: bool) -> (Vec<std::ops::Range<usize>>, Vec<(usize, u64)>) {
        let bytes = self.bytes();
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let mut now = Vec::new();
        for (i, &old) in self.hashes.iter().enumerate() {
            let r = self.page_range(i);
            let h = page_hash(&bytes[r.clone()]);
            if (h != old) == changed {
                now.push((i, h));
                match runs.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => runs.push(r),
                }
            }
        }
        (runs, now)
    }

    /// Copies `[r)` of this pair between the host copy and the device copy at `device`.
    fn copy(&self, d: &Driver, dir: Direction, device: u64, r: std::ops::Range<usize>) -> Result<(), CUresult> {
        let at = device + r.start as u64;
        if let Some(h) = self.handle {
            return d.transport().copy_host(dir, at, h, r.start, r.len(), false);
        }
        // No handle: the bytes go through the connection.
        let t = d.transport();
        for (i, start) in r.clone().step_by(COPY_CHUNK).enumerate() {
            let end = (start + COPY_CHUNK).min(r.end);
            let dev = at + (i * COPY_CHUNK) as u64;
            match dir {
                Direction::ToDevice => t.call(Op::MemcpyHtoD, &[&dev.to_le_bytes(), &self.bytes()[start..end]], &mut Vec::new())?,
                Direction::FromDevice => {
                    // SAFETY: as in bytes(), and the range lies inside the pair; the host copy
                    // is ours to write at a pull (the device's bytes are the newer ones there).
                    let out = unsafe { std::slice::from_raw_parts_mut((self.host + start) as *mut u8, end - start) };
                    t.call_into(Op::MemcpyDtoH, &[&dev.to_le_bytes(), &((end - start) as u64).to_le_bytes()], out)?
                }
            }
        }
        Ok(())
    }
}

impl MirrorState {
    /// Device work is about to be submitted: pushes what the host changed. `writes`: the work
    /// may write mirrored device memory (a kernel may write anything), so a later wait pulls.
    pub fn before_work(&self, d: &Driver, writes: bool) -> Result<(), CUresult> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        if writes {
            self.submitted.fetch_add(1, Ordering::AcqRel);
        }
        if self.pushed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        self.pushed.store(true, Ordering::Release);
        for (&dev, m) in t.by_device.iter_mut() {
            let (runs, now) = m.runs(true);
            for r in runs {
                m.copy(d, Direction::ToDevice, dev, r)?;
            }
            for (i, h) in now {
                m.hashes[i] = h;
            }
        }
        Ok(())
    }

    /// Where a wait starts: the work it will have waited for.
    pub fn wait_begins(&self) -> u64 {
        self.submitted.load(Ordering::Acquire)
    }

    /// A wait that began at `seen` (wait_begins) has ended: pulls what the device may have
    /// written, leaving the pages the host changed meanwhile as they are.
    pub fn after_wait(&self, d: &Driver, seen: u64) -> Result<(), CUresult> {
        // The host may touch managed memory again: the next submission looks for its changes.
        self.pushed.store(false, Ordering::Release);
        if !self.any.load(Ordering::Acquire) || self.pulled.load(Ordering::Acquire) >= seen {
            return Ok(());
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if self.pulled.load(Ordering::Acquire) >= seen {
            return Ok(());
        }
        for (&dev, m) in t.by_device.iter_mut() {
            let (runs, _) = m.runs(false);
            for r in runs.iter().cloned() {
                m.copy(d, Direction::FromDevice, dev, r)?;
            }
            let bytes = m.bytes();
            let fresh: Vec<(usize, u64)> = runs.iter().flat_map(|r| (r.start / PAGE)..r.end.div_ceil(PAGE)).map(|i| (i, page_hash(&bytes[m.page_range(i)]))).collect();
            for (i, h) in fresh {
                m.hashes[i] = h;
            }
        }
        self.pulled.fetch_max(seen, Ordering::AcqRel);
        Ok(())
    }

    /// Whether `[p, p + n)` overlaps the device copy of a pair.
    fn touches(&self, p: u64, n: usize) -> bool {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let end = p.saturating_add(n as u64);
        t.by_device.range(..end).next_back().is_some_and(|(&dev, m)| dev + m.len as u64 > p)
    }

    fn insert(&self, device: u64, m: Mirror) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        // Its first pages go with the next submission.
        self.pushed.store(false, Ordering::Release);
        t.by_host.insert(m.host, device);
        t.by_device.insert(device, m);
        self.any.store(true, Ordering::Release);
    }

    fn remove_device(&self, device: u64) -> Option<Mirror> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let m = t.by_device.remove(&device)?;
        t.by_host.remove(&m.host);
        self.any.store(!t.by_device.is_empty(), Ordering::Release);
        Some(m)
    }

    /// The device copy's address of `p`, in page-locked memory starting at `base` that has one.
    pub fn mapped_device_pointer(&self, base: usize, p: usize) -> Option<u64> {
        self.device_of_host(base).map(|dev| dev + (p - base) as u64)
    }

    /// The pair whose host copy starts at `host`, by its device address.
    fn device_of_host(&self, host: usize) -> Option<u64> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).by_host.get(&host).copied()
    }

    /// Managed memory holding `p`: (start, the size asked for).
    pub fn managed_range(&self, p: u64) -> Option<(u64, usize)> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (&dev, m) = t.by_device.range(..=p).next_back()?;
        (m.managed && p - dev < m.asked as u64).then_some((dev, m.asked))
    }
}

/// Maps a sealed memfd of `len` bytes at `at` (inside libcuda's device window, replacing its
/// reservation; elsewhere only where nothing is mapped). Returns the file.
fn map_memfd_at(at: u64, len: usize) -> Result<std::fs::File, CUresult> {
    // SAFETY: a NUL-terminated name and valid flags; returns a new descriptor or -1.
    let raw = unsafe { libc::memfd_create(c"vgpu-managed".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let file = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) });
    file.set_len(len as u64).map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
    // SAFETY: fcntl on a descriptor we own with a plain integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) } < 0 {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let fixed = if state::is_device_ptr(at) { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
    // SAFETY: inside the device window the range is part of libcuda's own PROT_NONE reservation
    // (never handed to anyone, and this device allocation's range is ours alone), so replacing
    // it disturbs nothing; outside, MAP_FIXED_NOREPLACE fails rather than replace a mapping.
    let p = unsafe { libc::mmap(at as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | fixed, file.as_raw_fd(), 0) };
    if p != at as *mut libc::c_void {
        if p != libc::MAP_FAILED {
            // SAFETY: the mapping just made, at an address the kernel chose; nobody has it.
            unsafe { libc::munmap(p, len) };
        }
        crate::vlog!(crate::log::ERROR, "managed memory: cannot map the host copy at the device address {at:#x}");
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    Ok(file)
}

/// Gives the host range of a managed pair back: to libcuda's reservation inside the window.
fn unmap_host_copy(at: u64, len: usize) {
    if state::is_device_ptr(at) {
        // SAFETY: [at, at + len) is the managed mapping being freed, ours alone; it becomes
        // reserved, inaccessible address space again, like the rest of the window.
        unsafe {
            libc::mmap(at as *mut libc::c_void, len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED, -1, 0)
        };
    } else {
        // SAFETY: as above, a mapping only this pair had.
        unsafe { libc::munmap(at as *mut libc::c_void, len) };
    }
}

/// A copy or memset around the exchange: pushes first (it may read mirrored memory); counts as
/// work that writes mirrored memory if its destination `writes` overlaps a pair; a `waited` one
/// (synchronous) is a wait, so pulls after.
pub fn copy_work(d: &Driver, writes: Option<(u64, usize)>, waited: bool, f: impl FnOnce() -> Result<(), CUresult>) -> Result<(), CUresult> {
    if !d.mirrors.any.load(Ordering::Acquire) {
        return f();
    }
    d.mirrors.before_work(d, writes.is_some_and(|(p, n)| d.mirrors.touches(p, n)))?;
    let seen = d.mirrors.wait_begins();
    f()?;
    if waited {
        d.mirrors.after_wait(d, seen)?;
    }
    Ok(())
}

fn new_pair(host: usize, len: usize, handle: Option<u64>, managed: bool, alloc: u64) -> Mirror {
    Mirror { host, len, handle, managed, hashes: vec![UNKNOWN; len.div_ceil(PAGE)], alloc, asked: len }
}

const ATTACH_GLOBAL: u32 = 1;
const ATTACH_HOST: u32 = 2;
const ATTACH_SINGLE: u32 = 4;

/// cuMemAllocManaged.
pub fn alloc_managed(bytes: usize, flags: u32) -> Result<u64, CUresult> {
    let (d, _) = state::current_device()?;
    if bytes == 0 || (flags != ATTACH_GLOBAL && flags != ATTACH_HOST) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let len = bytes.checked_next_multiple_of(PAGE).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    // A page more than needed, so that the pointer can start on a page (device allocations are
    // aligned less): the host copy is a mapping there.
    let reply = d.call(Op::MemAlloc, &[&(len as u64 + PAGE as u64).to_le_bytes()])?;
    let alloc = vgpu_uapi::wire::Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)?;
    let dev = alloc.next_multiple_of(PAGE as u64);
    let file = match map_memfd_at(dev, len) {
        Ok(f) => f,
        Err(e) => {
            let _ = d.call(Op::MemFree, &[&alloc.to_le_bytes()]);
            return Err(e);
        }
    };
    let handle = d.transport().register_host(dev as usize as *mut u8, len, Some(file.as_fd()), HostUse::default()).unwrap_or(None);
    let mut pair = new_pair(dev as usize, len, handle, true, alloc);
    pair.asked = bytes;
    d.mirrors.insert(dev, pair);
    Ok(dev)
}

/// cuMemFree of managed memory: true if `dev` was managed (and is now freed).
pub fn free_managed(d: &Driver, dev: u64) -> Result<bool, CUresult> {
    if d.mirrors.managed_range(dev).is_none_or(|(start, _)| start != dev) {
        return Ok(false);
    }
    let Some(m) = d.mirrors.remove_device(dev) else { return Ok(false) };
    if let Some(h) = m.handle {
        d.transport().unregister_host(h)?;
    }
    unmap_host_copy(dev, m.len);
    d.call(Op::MemFree, &[&m.alloc.to_le_bytes()])?;
    Ok(true)
}

/// cuMemHostGetDevicePointer: the device copy of page-locked host memory `[base, base + len)`
/// (made at the first call for it), plus `p`'s offset.
pub fn device_pointer(d: &Driver, base: usize, len: usize, handle: Option<u64>, p: usize) -> Result<u64, CUresult> {
    let dev = match d.mirrors.device_of_host(base) {
        Some(dev) => dev,
        None => {
            let reply = d.call(Op::MemAlloc, &[&(len as u64).to_le_bytes()])?;
            let dev = vgpu_uapi::wire::Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)?;
            d.mirrors.insert(dev, new_pair(base, len, handle, false, dev));
            dev
        }
    };
    Ok(dev + (p - base) as u64)
}

/// cuDevicePrimaryCtxReset: the device copies go with the session. Managed memory goes entirely
/// (its host copy is unmapped: the pointer is freed memory now, as in CUDA); page-locked host
/// memory keeps its pages and loses only its device copy.
pub fn reset(d: &Driver) {
    let pairs = {
        let mut t = d.mirrors.table.lock().unwrap_or_else(|e| e.into_inner());
        t.by_host.clear();
        std::mem::take(&mut t.by_device)
    };
    d.mirrors.any.store(false, Ordering::Release);
    for (dev, m) in pairs.into_iter().filter(|(_, m)| m.managed) {
        if let Some(h) = m.handle {
            // The connection keeps registered host memory across a reset: ours goes here.
            let _ = d.transport().unregister_host(h);
        }
        unmap_host_copy(dev, m.len);
    }
}

/// Page-locked host memory at `base` is being freed or unregistered: its device copy goes too.
pub fn forget_host(d: &Driver, base: usize) -> Result<(), CUresult> {
    if let Some(dev) = d.mirrors.device_of_host(base) {
        d.mirrors.remove_device(dev);
        d.call(Op::MemFree, &[&dev.to_le_bytes()])?;
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytes: usize, flags: std::ffi::c_uint) -> CUresult {
    guard("cuMemAllocManaged", || {
        if dptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(dptr, alloc_managed(bytes, flags)?)
    })
}

/// Attaching managed memory to a stream only narrows which work may touch it; coherence here is
/// the same for every attachment, so after its checks it changes nothing.
#[no_mangle]
pub unsafe extern "C" fn cuStreamAttachMemAsync(_stream: Handle, dptr: CUdeviceptr, length: usize, flags: std::ffi::c_uint) -> CUresult {
    guard("cuStreamAttachMemAsync", || {
        let d = state::driver()?;
        let (start, len) = d.mirrors.managed_range(dptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // A whole allocation only (length 0, or from its start), as without concurrent access.
        if ![ATTACH_GLOBAL, ATTACH_HOST, ATTACH_SINGLE].contains(&flags) || (length != 0 && (dptr != start || length > len)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    })
}

/// Prefetching moves nothing here (both copies always exist); the range must be managed.
fn prefetch(dptr: CUdeviceptr, count: usize) -> Result<(), CUresult> {
    let d = state::driver()?;
    let (start, len) = d.mirrors.managed_range(dptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if dptr - start + count as u64 > len as u64 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPrefetchAsync(dptr: CUdeviceptr, count: usize, dst_device: CUdevice, _stream: Handle) -> CUresult {
    guard("cuMemPrefetchAsync", || {
        check_target(dst_device)?;
        prefetch(dptr, count)
    })
}

/// CU_DEVICE_CPU: the host as a prefetch or advice target.
const CU_DEVICE_CPU: CUdevice = -1;

/// A prefetch or advice's target: the host or a device of this driver.
fn check_target(dev: CUdevice) -> Result<(), CUresult> {
    if dev != CU_DEVICE_CPU && (dev < 0 || dev as usize >= state::driver()?.devices().len()) {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

/// A CUmemLocation as a target: a device of this driver, or the host (HOST, HOST_NUMA,
/// HOST_NUMA_CURRENT).
fn check_location(l: MemLocation) -> Result<(), CUresult> {
    match l.ty {
        vgpu_uapi::cuda::vmm::CU_MEM_LOCATION_TYPE_DEVICE if l.id >= 0 => check_target(l.id),
        2..=4 => Ok(()),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// CUDA 12.2's form, with a location (device or host) instead of a device ordinal.
#[no_mangle]
pub unsafe extern "C" fn cuMemPrefetchAsync_v2(dptr: CUdeviceptr, count: usize, location: MemLocation, _flags: std::ffi::c_uint, _stream: Handle) -> CUresult {
    guard("cuMemPrefetchAsync", || {
        check_location(location)?;
        prefetch(dptr, count)
    })
}

/// Advice is a hint about placement, which here is fixed: checked, then nothing to do.
#[no_mangle]
pub unsafe extern "C" fn cuMemAdvise(dptr: CUdeviceptr, count: usize, advice: std::ffi::c_int, device: CUdevice) -> CUresult {
    guard("cuMemAdvise", || {
        // The read-mostly advice (1, 2) names no location; the others do.
        if (3..=6).contains(&advice) {
            check_target(device)?;
        }
        if (1..=6).contains(&advice) { prefetch(dptr, count) } else { Err(CUDA_ERROR_INVALID_VALUE) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAdvise_v2(dptr: CUdeviceptr, count: usize, advice: std::ffi::c_int, location: MemLocation) -> CUresult {
    guard("cuMemAdvise", || {
        if (3..=6).contains(&advice) {
            check_location(location)?;
        }
        if (1..=6).contains(&advice) { prefetch(dptr, count) } else { Err(CUDA_ERROR_INVALID_VALUE) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPrefetchAsync_ptsz(dptr: CUdeviceptr, count: usize, dst_device: CUdevice, stream: Handle) -> CUresult {
    cuMemPrefetchAsync(dptr, count, dst_device, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPrefetchAsync_v2_ptsz(dptr: CUdeviceptr, count: usize, location: MemLocation, flags: std::ffi::c_uint, stream: Handle) -> CUresult {
    cuMemPrefetchAsync_v2(dptr, count, location, flags, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamAttachMemAsync_ptsz(stream: Handle, dptr: CUdeviceptr, length: usize, flags: std::ffi::c_uint) -> CUresult {
    cuStreamAttachMemAsync(stream, dptr, length, flags)
}

/// With no profiler attached, NVIDIA's driver answers these with success and does nothing.
#[no_mangle]
pub unsafe extern "C" fn cuProfilerStart() -> CUresult {
    guard("cuProfilerStart", || state::driver().map(drop))
}

#[no_mangle]
pub unsafe extern "C" fn cuProfilerStop() -> CUresult {
    guard("cuProfilerStop", || state::driver().map(drop))
}
