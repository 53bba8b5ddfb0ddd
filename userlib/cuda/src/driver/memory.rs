//! Device memory, copies, memsets, page-locked host memory, pointer attributes.
//!
//! Copies are synchronous over the socket transport: an "async" copy has completed when the call
//! returns, which satisfies every ordering CUDA promises.

use super::*;
use crate::state::{self, is_device_ptr, Driver};
use super::mirror;
use std::ffi::c_uint;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use vgpu_client::transport::{Direction, HostUse};
use vgpu_uapi::proto::{Op, COPY_CHUNK};

fn ctx_driver() -> Result<&'static Driver, CUresult> {
    Ok(state::current_device()?.0)
}

/// Async copies complete before they return (see the module comment), so the stream they name
/// only orders them, which submission order already does; on a capturing stream they become
/// graph nodes instead (true: recorded, not run).
fn captured(stream: Handle, work: super::graph::Work) -> Result<bool, CUresult> {
    super::graph::record(stream, || work)
}

fn captured_copy(stream: Handle, dst: u64, src: u64, bytes: usize) -> Result<bool, CUresult> {
    captured(stream, super::graph::Work::Memcpy { dst, src, bytes })
}

fn captured_memset(stream: Handle, dst: u64, value: u32, elem: u32, count: usize) -> Result<bool, CUresult> {
    captured(stream, super::graph::Work::Memset { dst, pitch: 0, value, elem, width: count, height: 1 })
}

/// One request, waited for, or (`queued`) sent without waiting: its errors come from a later
/// call that waits.
fn send(d: &Driver, op: Op, bytes: &[u8], queued: bool) -> Result<(), CUresult> {
    if queued {
        d.call_async(op, &[bytes]).map(drop)
    } else {
        d.call(op, &[bytes]).map(drop)
    }
}

/// Pageable copies at least this large pin the memory for the copy where the transport can (in a
/// guest the mediator then copies the pages itself: no copy through staging, which under
/// emulation costs more than pinning); smaller ones carry their bytes through the connection.
/// Measured in a TCG guest: from 256 KiB pinning on demand is as fast or faster (1.1-1.4x).
const PIN_FOR_COPY: usize = 256 << 10;

/// Runs `copy` on pageable `[p, p + n)` registered for just this copy; None if it is small or
/// the transport cannot (the caller then copies through the connection).
fn pinned_for_copy(d: &Driver, p: *mut u8, n: usize, read_only: bool, copy: impl FnOnce(u64) -> Result<(), CUresult>) -> Option<Result<(), CUresult>> {
    if n < PIN_FOR_COPY {
        return None;
    }
    // Transient registrations do not fail: at worst there is no handle.
    let h = d.transport().register_host(p, n, None, HostUse { read_only, transient: true }).ok().flatten()?;
    let copied = copy(h);
    let released = d.transport().unregister_host(h);
    Some(copied.and(released))
}

pub(crate) fn htod(d: &Driver, dst: u64, src: *const u8, n: usize) -> Result<(), CUresult> {
    htod_on(d, dst, src, n, false)
}

/// A host-to-device copy. From registered pinned memory the mediator reads the memory itself,
/// and with `queued` it does so when it gets to the copy, as a GPU would; from pageable memory
/// the data is taken now (as CUDA stages it) and the copy completes before returning.
fn htod_on(d: &Driver, dst: u64, src: *const u8, n: usize, queued: bool) -> Result<(), CUresult> {
    mirror::copy_work(d, Some((dst, n)), !queued, || htod_raw(d, dst, src, n, queued))
}

fn htod_raw(d: &Driver, dst: u64, src: *const u8, n: usize, queued: bool) -> Result<(), CUresult> {
    if n == 0 {
        return Ok(());
    }
    if src.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if let Some((h, off)) = pinned_range(d, src as u64, n) {
        return d.transport().copy_host(Direction::ToDevice, dst, h, off, n, queued);
    }
    if let Some(r) = pinned_for_copy(d, src.cast_mut(), n, true, |h| d.transport().copy_host(Direction::ToDevice, dst, h, 0, n, false)) {
        return r;
    }
    // SAFETY: the caller of the copy API guarantees `n` readable bytes at `src`.
    let data = unsafe { std::slice::from_raw_parts(src, n) };
    for (i, chunk) in data.chunks(COPY_CHUNK).enumerate() {
        let at = dst.checked_add((i * COPY_CHUNK) as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        d.call(Op::MemcpyHtoD, &[&at.to_le_bytes(), chunk])?;
    }
    Ok(())
}

pub(crate) fn dtoh(d: &Driver, dst: *mut u8, src: u64, n: usize) -> Result<(), CUresult> {
    dtoh_on(d, dst, src, n, false)
}

/// A device-to-host copy. Into registered pinned memory the mediator writes itself, and with
/// `queued` the data is there after a synchronizing call; into pageable memory the copy
/// completes before returning.
fn dtoh_on(d: &Driver, dst: *mut u8, src: u64, n: usize, queued: bool) -> Result<(), CUresult> {
    mirror::copy_work(d, None, !queued, || dtoh_raw(d, dst, src, n, queued))
}

fn dtoh_raw(d: &Driver, dst: *mut u8, src: u64, n: usize, queued: bool) -> Result<(), CUresult> {
    if n == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if let Some((h, off)) = pinned_range(d, dst as u64, n) {
        return d.transport().copy_host(Direction::FromDevice, src, h, off, n, queued);
    }
    if let Some(r) = pinned_for_copy(d, dst, n, false, |h| d.transport().copy_host(Direction::FromDevice, src, h, 0, n, false)) {
        return r;
    }
    // SAFETY: the caller of the copy API guarantees `n` writable bytes at `dst`.
    let out = unsafe { std::slice::from_raw_parts_mut(dst, n) };
    for (i, chunk) in out.chunks_mut(COPY_CHUNK).enumerate() {
        let at = src.checked_add((i * COPY_CHUNK) as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        d.transport().call_into(Op::MemcpyDtoH, &[&at.to_le_bytes(), &(chunk.len() as u64).to_le_bytes()], chunk)?;
    }
    Ok(())
}

pub(crate) fn dtod(d: &Driver, dst: u64, src: u64, n: usize) -> Result<(), CUresult> {
    dtod_on(d, dst, src, n, false)
}

fn dtod_on(d: &Driver, dst: u64, src: u64, n: usize, queued: bool) -> Result<(), CUresult> {
    if n == 0 {
        return Ok(());
    }
    mirror::copy_work(d, Some((dst, n)), !queued, || send(d, Op::MemcpyDtoD, &u64s(&[dst, src, n as u64]), queued))
}

/// cuMemcpy with unified addressing: the pointers' values say where they live.
pub(crate) fn copy_any(d: &Driver, dst: u64, src: u64, n: usize) -> Result<(), CUresult> {
    match (is_device_ptr(dst), is_device_ptr(src)) {
        (true, true) => dtod(d, dst, src, n),
        (true, false) => htod(d, dst, src as usize as *const u8, n),
        (false, true) => dtoh(d, dst as usize as *mut u8, src, n),
        (false, false) => {
            if n > 0 && (dst == 0 || src == 0) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            // SAFETY: both are host pointers the caller vouches for, `n` bytes each; CUDA
            // leaves overlapping host copies undefined, copy() (memmove) is safe for them too.
            unsafe { std::ptr::copy(src as usize as *const u8, dst as usize as *mut u8, n) };
            Ok(())
        }
    }
}

/// A memset of `height` rows of `width` elements, `pitch` bytes apart.
pub(crate) fn memset_2d(dst: u64, pitch: usize, value: u32, elem: u32, width: usize, height: usize) -> Result<(), CUresult> {
    for row in 0..height as u64 {
        let at = row.checked_mul(pitch as u64).and_then(|o| dst.checked_add(o)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        memset(at, value, elem, width)?;
    }
    Ok(())
}

fn memset(dst: u64, value: u32, elem: u32, count: usize) -> Result<(), CUresult> {
    memset_on(dst, value, elem, count, false)
}

/// A memset, waited for or (async memsets) `queued`.
fn memset_on(dst: u64, value: u32, elem: u32, count: usize, queued: bool) -> Result<(), CUresult> {
    let d = ctx_driver()?;
    if count == 0 {
        return Ok(());
    }
    let bytes = [&dst.to_le_bytes()[..], &value.to_le_bytes(), &elem.to_le_bytes(), &(count as u64).to_le_bytes()].concat();
    let n = (count as u64).saturating_mul(elem as u64) as usize;
    mirror::copy_work(d, Some((dst, n)), !queued, || send(d, Op::Memset, &bytes, queued))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard("cuMemGetInfo", || {
        let reply = ctx_driver()?.call(Op::MemGetInfo, &[])?;
        let mut r = vgpu_uapi::wire::Reader::new(&reply);
        let (f, t) = (r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?, r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?);
        put(free, f as usize)?;
        put(total, t as usize)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    guard("cuMemAlloc", || {
        if dptr.is_null() || bytes == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let reply = ctx_driver()?.call(Op::MemAlloc, &[&(bytes as u64).to_le_bytes()])?;
        let p = vgpu_uapi::wire::Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)?;
        put(dptr, p)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard("cuMemFree", || {
        if dptr == 0 {
            return Ok(());
        }
        // No current context needed: the pointer names its allocation (unified addressing), and
        // numba frees its pending deallocations after popping its contexts (numba.cuda.close()).
        let d = state::driver()?;
        if mirror::free_managed(d, dptr)? || super::pool::free_now(dptr)? {
            return Ok(());
        }
        d.call(Op::MemFree, &[&dptr.to_le_bytes()]).map(drop)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAddressRange_v2(base: *mut CUdeviceptr, size: *mut usize, dptr: CUdeviceptr) -> CUresult {
    guard("cuMemGetAddressRange", || {
        let d = ctx_driver()?;
        let (b, s) = match d.mirrors.managed_range(dptr).map(|(b, s)| (b, s as u64)).or_else(|| super::pool::block_of(dptr)) {
            Some(range) => range,
            None => {
                let reply = d.call(Op::MemGetAddressRange, &[&dptr.to_le_bytes()])?;
                let mut r = vgpu_uapi::wire::Reader::new(&reply);
                (r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?, r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?)
            }
        };
        if !base.is_null() {
            put(base, b)?;
        }
        if !size.is_null() {
            put(size, s as usize)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) -> CUresult {
    guard("cuMemcpyHtoD", || htod(ctx_driver()?, dst, src.cast(), n))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    guard("cuMemcpyDtoH", || dtoh(ctx_driver()?, dst.cast(), src, n))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    guard("cuMemcpyDtoD", || dtod(ctx_driver()?, dst, src, n))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    guard("cuMemcpy", || copy_any(ctx_driver()?, dst, src, n))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, stream: Handle) -> CUresult {
    guard("cuMemcpyHtoDAsync", || {
        if captured_copy(stream, dst, src as u64, n)? {
            return Ok(());
        }
        htod_on(ctx_driver()?, dst, src.cast(), n, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, stream: Handle) -> CUresult {
    guard("cuMemcpyDtoHAsync", || {
        if captured_copy(stream, dst as u64, src, n)? {
            return Ok(());
        }
        dtoh_on(ctx_driver()?, dst.cast(), src, n, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, stream: Handle) -> CUresult {
    guard("cuMemcpyDtoDAsync", || {
        if captured_copy(stream, dst, src, n)? {
            return Ok(());
        }
        dtod_on(ctx_driver()?, dst, src, n, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, stream: Handle) -> CUresult {
    guard("cuMemcpyAsync", || {
        if captured_copy(stream, dst, src, n)? {
            return Ok(());
        }
        let d = ctx_driver()?;
        match (is_device_ptr(dst), is_device_ptr(src)) {
            (true, false) => htod_on(d, dst, src as usize as *const u8, n, true),
            (false, true) => dtoh_on(d, dst as usize as *mut u8, src, n, true),
            _ => copy_any(d, dst, src, n),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    guard("cuMemsetD8", || memset(dst, v as u32, 1, n))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16_v2(dst: CUdeviceptr, v: u16, n: usize) -> CUresult {
    guard("cuMemsetD16", || memset(dst, v as u32, 2, n))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) -> CUresult {
    guard("cuMemsetD32", || memset(dst, v, 4, n))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, stream: Handle) -> CUresult {
    guard("cuMemsetD8Async", || {
        if captured_memset(stream, dst, v as u32, 1, n)? {
            return Ok(());
        }
        memset_on(dst, v as u32, 1, n, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16Async(dst: CUdeviceptr, v: u16, n: usize, stream: Handle) -> CUresult {
    guard("cuMemsetD16Async", || {
        if captured_memset(stream, dst, v as u32, 2, n)? {
            return Ok(());
        }
        memset_on(dst, v as u32, 2, n, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(dst: CUdeviceptr, v: c_uint, n: usize, stream: Handle) -> CUresult {
    guard("cuMemsetD32Async", || {
        if captured_memset(stream, dst, v, 4, n)? {
            return Ok(());
        }
        memset_on(dst, v, 4, n, true)
    })
}

const PAGE: usize = 4096;

/// Page-locked host memory: a shared mapping of a sealed memfd, which the transport makes
/// reachable to the other end (the mediator maps it over the Unix socket; in a guest the driver
/// pins its pages for the device): copies from and to it then carry no bytes through the
/// connection or staging, and asynchronous ones really are asynchronous.
fn host_alloc(pp: *mut *mut c_void, bytes: usize, flags: u32) -> Result<(), CUresult> {
    let d = ctx_driver()?;
    if pp.is_null() || bytes == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let len = bytes.checked_next_multiple_of(PAGE).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    // SAFETY: a NUL-terminated name and valid flags; returns a new descriptor or -1.
    let raw = unsafe { libc::memfd_create(c"vgpu-pinned".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let file = std::fs::File::from(fd);
    file.set_len(len as u64).map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
    // Sealed: its size can never change, so a mapping of it can never fault.
    // SAFETY: fcntl on a descriptor we own with a plain integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) } < 0 {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    // SAFETY: a new shared mapping of `len` bytes of our memfd (exactly its size); the kernel
    // picks the address.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    // Without a handle it is still correct page-locked memory; copies carry its bytes.
    let handle = d.transport().register_host(p.cast(), len, Some(file.as_fd()), HostUse::default()).unwrap_or(None);
    d.host_allocs.lock().unwrap_or_else(|e| e.into_inner()).insert(p as usize, state::HostAlloc { len, handle, registered: false, flags, buffer_id: state::HostAlloc::new_buffer_id() });
    put(pp, p)
}

/// The page-locked memory the transport reaches that holds all of `[p, p + n)` (n > 0):
/// (handle, offset).
fn pinned_range(d: &Driver, p: u64, n: usize) -> Option<(u64, usize)> {
    let (base, a) = host_alloc_of(d, p)?;
    let off = p as usize - base;
    (off.checked_add(n)? <= a.len).then_some((a.handle?, off))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytes: usize) -> CUresult {
    guard("cuMemAllocHost", || host_alloc(pp, bytes, 0))
}

use vgpu_uapi::cuda::host_flags::{DEVICEMAP as HOST_DEVICEMAP, PORTABLE as HOST_PORTABLE, REGISTER_READ_ONLY as HOST_REGISTER_READ_ONLY, WRITECOMBINED_OR_IOMEMORY as HOST_WRITECOMBINED_OR_IOMEMORY};

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(pp: *mut *mut c_void, bytes: usize, flags: c_uint) -> CUresult {
    guard("cuMemHostAlloc", || {
        // PORTABLE is meaningless with one device, WRITECOMBINED is a hint; DEVICEMAP memory
        // gets its device copy at cuMemHostGetDevicePointer (driver/mirror.rs), as any
        // page-locked memory can under unified addressing.
        if flags & !(HOST_PORTABLE | HOST_DEVICEMAP | HOST_WRITECOMBINED_OR_IOMEMORY) != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        host_alloc(pp, bytes, flags)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    guard("cuMemFreeHost", || {
        let d = state::driver()?;
        let a = take_host(d, p, false).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        mirror::forget_host(d, p as usize)?;
        if let Some(h) = a.handle {
            // After the copies queued on it.
            d.transport().unregister_host(h)?;
        }
        // SAFETY: `p` is the start of a mapping of `a.len` bytes made in host_alloc, removed
        // from the table above so it is unmapped once.
        unsafe { libc::munmap(p, a.len) };
        Ok(())
    })
}

/// Whether every page of `[p, p + len)` is mapped in this process.
fn is_mapped(p: usize, len: usize) -> bool {
    let start = p & !(PAGE - 1);
    let Some(end) = p.checked_add(len) else { return false };
    let mut vec = vec![0u8; (end - start).div_ceil(PAGE)];
    // SAFETY: mincore only reads the page tables of the range and writes one byte per page
    // into `vec`, which has that many; it fails with ENOMEM where a page is not mapped.
    unsafe { libc::mincore(start as *mut c_void, end - start, vec.as_mut_ptr()) == 0 }
}

fn host_register(p: *mut c_void, bytes: usize, flags: u32) -> Result<(), CUresult> {
    let d = ctx_driver()?;
    if p.is_null() || bytes == 0 || flags & !(HOST_PORTABLE | HOST_DEVICEMAP | HOST_WRITECOMBINED_OR_IOMEMORY | HOST_REGISTER_READ_ONLY) != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // IOMEMORY: a device's registers. (DEVICEMAP: see cuMemHostGetDevicePointer.)
    if flags & HOST_WRITECOMBINED_OR_IOMEMORY != 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let base = p as usize;
    if !is_mapped(base, bytes) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut t = d.host_allocs.lock().unwrap_or_else(|e| e.into_inner());
    let end = base.checked_add(bytes).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let overlaps = t.range(..end).next_back().is_some_and(|(&b, a)| b + a.len > base);
    if overlaps {
        return Err(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
    }
    let how = HostUse { read_only: flags & HOST_REGISTER_READ_ONLY != 0, transient: false };
    let handle = d.transport().register_host(p.cast(), bytes, None, how)?;
    t.insert(base, state::HostAlloc { len: bytes, handle, registered: true, flags, buffer_id: state::HostAlloc::new_buffer_id() });
    Ok(())
}

/// cuMemHostRegister: the range becomes page-locked memory as far as copies go; in a guest the
/// driver pins it for the device, so copies from and to it are not copied in the guest.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostRegister_v2(p: *mut c_void, bytes: usize, flags: c_uint) -> CUresult {
    guard("cuMemHostRegister", || host_register(p, bytes, flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostRegister(p: *mut c_void, bytes: usize, flags: c_uint) -> CUresult {
    guard("cuMemHostRegister", || host_register(p, bytes, flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostUnregister(p: *mut c_void) -> CUresult {
    guard("cuMemHostUnregister", || {
        let d = ctx_driver()?;
        let a = take_host(d, p, true).ok_or(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED)?;
        mirror::forget_host(d, p as usize)?;
        match a.handle {
            Some(h) => d.transport().unregister_host(h),
            None => Ok(()),
        }
    })
}

/// The page-locked memory containing `p`, with its base.
fn host_alloc_of(d: &Driver, p: u64) -> Option<(usize, state::HostAlloc)> {
    let t = d.host_allocs.lock().unwrap_or_else(|e| e.into_inner());
    let (&base, a) = t.range(..=(p as usize)).next_back()?;
    ((p as usize) - base < a.len).then_some((base, *a))
}

/// Takes the page-locked memory starting at `p` out of the table if it is of the kind asked
/// for: registered by the application (cuMemHostRegister) or allocated by us.
fn take_host(d: &Driver, p: *mut c_void, registered: bool) -> Option<state::HostAlloc> {
    let mut t = d.host_allocs.lock().unwrap_or_else(|e| e.into_inner());
    t.get(&(p as usize)).filter(|a| a.registered == registered)?;
    t.remove(&(p as usize))
}

/// The device's pointer for page-locked memory: a device copy kept coherent with it
/// (driver/mirror.rs), made at the first call for that allocation.
fn host_device_pointer(pdptr: *mut CUdeviceptr, p: *mut c_void, flags: c_uint) -> Result<(), CUresult> {
    let d = ctx_driver()?;
    if pdptr.is_null() || flags != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (base, a) = host_alloc_of(d, p as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    put(pdptr, mirror::device_pointer(d, base, a.len, a.handle, p as usize)?)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer_v2(pdptr: *mut CUdeviceptr, p: *mut c_void, flags: c_uint) -> CUresult {
    guard("cuMemHostGetDevicePointer", || host_device_pointer(pdptr, p, flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetFlags(flags: *mut c_uint, p: *mut c_void) -> CUresult {
    guard("cuMemHostGetFlags", || {
        let d = state::driver()?;
        let (_, a) = host_alloc_of(d, p as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(flags, a.flags)
    })
}

// CUpointer_attribute values.
const PA_CONTEXT: i32 = 1;
const PA_MEMORY_TYPE: i32 = 2;
const PA_DEVICE_POINTER: i32 = 3;
const PA_HOST_POINTER: i32 = 4;
const PA_BUFFER_ID: i32 = 7;
const PA_IS_MANAGED: i32 = 8;
const PA_DEVICE_ORDINAL: i32 = 9;
const PA_RANGE_START_ADDR: i32 = 11;
const PA_RANGE_SIZE: i32 = 12;
const PA_MAPPED: i32 = 13;
const MEMORYTYPE_HOST: u32 = 1;
const MEMORYTYPE_DEVICE: u32 = 2;

enum Owner {
    /// `buffer_id`: from the mediator's range reply, when it was asked (not for managed memory).
    Device { base: u64, size: u64, buffer_id: Option<u64> },
    PinnedHost { base: usize, len: usize, buffer_id: u64 },
    Unknown,
}

fn owner_of(d: &Driver, p: u64) -> Owner {
    if let Some((base, size)) = d.mirrors.managed_range(p) {
        return Owner::Device { base, size: size as u64, buffer_id: None };
    }
    if is_device_ptr(p) {
        if let Ok(reply) = d.call(Op::MemGetAddressRange, &[&p.to_le_bytes()]) {
            let mut r = vgpu_uapi::wire::Reader::new(&reply);
            if let (Ok(base), Ok(size)) = (r.u64(), r.u64()) {
                return Owner::Device { base, size, buffer_id: r.u64().ok() };
            }
        }
        return Owner::Unknown;
    }
    match host_alloc_of(d, p) {
        Some((base, a)) => Owner::PinnedHost { base, len: a.len, buffer_id: a.buffer_id },
        None => Owner::Unknown,
    }
}

/// The mediator's buffer id of the device memory at `p` (after its range in the reply), for
/// memory whose owner was found without asking (managed memory).
fn device_buffer_id(d: &Driver, p: u64) -> Result<u64, CUresult> {
    let reply = d.call(Op::MemGetAddressRange, &[&p.to_le_bytes()])?;
    let mut r = vgpu_uapi::wire::Reader::new(&reply);
    r.bytes(16).and_then(|_| r.u64()).map_err(|_| CUDA_ERROR_NOT_SUPPORTED)
}

/// Writes one attribute of `p` to `data`; Err(INVALID_VALUE) for memory CUDA does not know.
unsafe fn pointer_attribute(d: &Driver, owner: &Owner, attr: i32, data: *mut c_void, p: u64) -> Result<(), CUresult> {
    let ctx = state::current_ctx().unwrap_or(0);
    match (owner, attr) {
        (Owner::Unknown, _) => Err(CUDA_ERROR_INVALID_VALUE),
        (_, PA_CONTEXT) => put(data.cast::<Handle>(), ctx as Handle),
        (Owner::Device { .. }, PA_MEMORY_TYPE) => put(data.cast::<u32>(), MEMORYTYPE_DEVICE),
        (Owner::PinnedHost { .. }, PA_MEMORY_TYPE) => put(data.cast::<u32>(), MEMORYTYPE_HOST),
        (Owner::Device { .. }, PA_DEVICE_POINTER) => put(data.cast::<u64>(), p),
        (Owner::PinnedHost { .. }, PA_HOST_POINTER) => put(data.cast::<u64>(), p),
        // Managed memory: one pointer for both sides.
        (Owner::Device { .. }, PA_HOST_POINTER) if d.mirrors.managed_range(p).is_some() => put(data.cast::<u64>(), p),
        // Page-locked memory that has a device copy (cuMemHostGetDevicePointer made it).
        (Owner::PinnedHost { base, .. }, PA_DEVICE_POINTER) => match d.mirrors.mapped_device_pointer(*base, p as usize) {
            Some(dp) => put(data.cast::<u64>(), dp),
            None => Err(CUDA_ERROR_INVALID_VALUE),
        },
        (_, PA_IS_MANAGED) => put(data.cast::<u32>(), d.mirrors.managed_range(p).is_some() as u32),
        (_, PA_MAPPED) => put(data.cast::<u32>(), matches!(owner, Owner::Device { .. }) as u32),
        (_, PA_DEVICE_ORDINAL) => put(data.cast::<i32>(), 0),
        (Owner::Device { base, .. }, PA_RANGE_START_ADDR) => put(data.cast::<u64>(), *base),
        (Owner::Device { size, .. }, PA_RANGE_SIZE) => put(data.cast::<usize>(), *size as usize),
        (Owner::PinnedHost { base, .. }, PA_RANGE_START_ADDR) => put(data.cast::<u64>(), *base as u64),
        (Owner::PinnedHost { len, .. }, PA_RANGE_SIZE) => put(data.cast::<usize>(), *len),
        (Owner::PinnedHost { buffer_id, .. }, PA_BUFFER_ID) => put(data.cast::<u64>(), *buffer_id),
        (Owner::Device { buffer_id: Some(id), .. }, PA_BUFFER_ID) => put(data.cast::<u64>(), *id),
        (Owner::Device { buffer_id: None, .. }, PA_BUFFER_ID) => put(data.cast::<u64>(), device_buffer_id(d, p)?),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttribute(data: *mut c_void, attr: i32, p: CUdeviceptr) -> CUresult {
    guard("cuPointerGetAttribute", || {
        let d = state::driver()?;
        let owner = owner_of(d, p);
        // SAFETY: `data` points at storage for the attribute's type (API contract).
        unsafe { pointer_attribute(d, &owner, attr, data, p) }
    })
}

/// Like cuPointerGetAttribute, but memory CUDA does not know is reported as such (zeros / NULL)
/// rather than as an error, as the real driver does.
#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttributes(n: c_uint, attrs: *const i32, data: *mut *mut c_void, p: CUdeviceptr) -> CUresult {
    guard("cuPointerGetAttributes", || {
        let d = state::driver()?;
        if n > 0 && (attrs.is_null() || data.is_null()) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let owner = owner_of(d, p);
        for i in 0..n as usize {
            // SAFETY: the caller passes arrays of `n` attributes and `n` output pointers.
            let (a, out) = unsafe { (*attrs.add(i), *data.add(i)) };
            if out.is_null() {
                continue;
            }
            // SAFETY: as in cuPointerGetAttribute.
            if unsafe { pointer_attribute(d, &owner, a, out, p) }.is_err() {
                let zero_len = match a {
                    PA_CONTEXT | PA_DEVICE_POINTER | PA_HOST_POINTER | PA_RANGE_START_ADDR | PA_RANGE_SIZE => 8,
                    _ => 4,
                };
                // SAFETY: `out` has room for the attribute's type, whose size is `zero_len`.
                unsafe { std::ptr::write_bytes(out.cast::<u8>(), 0, zero_len) };
                if a == PA_DEVICE_ORDINAL {
                    put(out.cast::<i32>(), -2)?;
                }
            }
        }
        Ok(())
    })
}

// Per-thread-default-stream variants (per_thread! in driver/mod.rs).

per_thread! {
    cuMemcpyHtoD_v2_ptds => cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize);
    cuMemcpyDtoH_v2_ptds => cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize);
    cuMemcpyDtoD_v2_ptds => cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize);
    cuMemcpy_ptds => cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize);
    cuMemcpyHtoDAsync_v2_ptsz => cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, s: Handle);
    cuMemcpyDtoHAsync_v2_ptsz => cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, s: Handle);
    cuMemcpyDtoDAsync_v2_ptsz => cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: Handle);
    cuMemcpyAsync_ptsz => cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: Handle);
    cuMemsetD8_v2_ptds => cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize);
    cuMemsetD16_v2_ptds => cuMemsetD16_v2(dst: CUdeviceptr, v: u16, n: usize);
    cuMemsetD32_v2_ptds => cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize);
    cuMemsetD8Async_ptsz => cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: Handle);
    cuMemsetD16Async_ptsz => cuMemsetD16Async(dst: CUdeviceptr, v: u16, n: usize, s: Handle);
    cuMemsetD32Async_ptsz => cuMemsetD32Async(dst: CUdeviceptr, v: c_uint, n: usize, s: Handle);
}
