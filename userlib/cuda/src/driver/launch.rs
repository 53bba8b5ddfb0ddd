//! Kernel launches: pack the parameters by the layout the mediator gave for the function.

use super::module::kernel_meta;
use super::*;
use crate::state;
use std::ffi::c_uint;
use vgpu_uapi::proto::Op;

const CU_LAUNCH_PARAM_END: usize = 0x00;
const CU_LAUNCH_PARAM_BUFFER_POINTER: usize = 0x01;
const CU_LAUNCH_PARAM_BUFFER_SIZE: usize = 0x02;

/// The packed parameter buffer, from `kernelParams` (one pointer per parameter) or from
/// `extra` (CU_LAUNCH_PARAM_BUFFER_POINTER / _SIZE).
pub(crate) unsafe fn pack_params(meta: &state::KernelMeta, params: *mut *mut c_void, extra: *mut *mut c_void) -> Result<Vec<u8>, CUresult> {
    let mut buf = vec![0u8; meta.info.param_bytes as usize];
    if !params.is_null() {
        for (i, &(offset, size)) in meta.params.iter().enumerate() {
            // SAFETY: kernelParams holds one valid pointer per kernel parameter (API contract).
            let p = unsafe { *params.add(i) };
            if p.is_null() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let dst = buf.get_mut(offset as usize..(offset + size) as usize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            // SAFETY: the i-th pointer addresses a value of the parameter's size.
            dst.copy_from_slice(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size as usize) });
        }
        return Ok(buf);
    }
    if extra.is_null() {
        return if meta.info.param_bytes == 0 { Ok(buf) } else { Err(CUDA_ERROR_INVALID_VALUE) };
    }
    let (mut ptr, mut size): (*const u8, Option<usize>) = (std::ptr::null(), None);
    let mut i = 0;
    loop {
        // SAFETY: `extra` is a CU_LAUNCH_PARAM_END-terminated key/value list (API contract).
        let key = unsafe { *extra.add(i) } as usize;
        match key {
            CU_LAUNCH_PARAM_END => break,
            CU_LAUNCH_PARAM_BUFFER_POINTER => ptr = unsafe { *extra.add(i + 1) }.cast(),
            // SAFETY: the value of BUFFER_SIZE points at a size_t.
            CU_LAUNCH_PARAM_BUFFER_SIZE => size = Some(unsafe { *(*extra.add(i + 1)).cast::<usize>() }),
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        i += 2;
    }
    match size {
        Some(n) if !ptr.is_null() && n >= buf.len() => {
            // SAFETY: the application's buffer holds `n` >= param_bytes bytes.
            let n = buf.len();
            buf.copy_from_slice(unsafe { std::slice::from_raw_parts(ptr, n) });
            Ok(buf)
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn launch(f: Handle, grid: [c_uint; 3], block: [c_uint; 3], shared: c_uint, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) -> Result<(), CUresult> {
    // SAFETY: forwarded API contract.
    unsafe { launch_as(f, grid, block, shared, stream, params, extra, false) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn launch_as(f: Handle, grid: [c_uint; 3], block: [c_uint; 3], shared: c_uint, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void, cooperative: bool) -> Result<(), CUresult> {
    let (d, _) = state::current_device()?;
    let meta = kernel_meta(f)?;
    check_geometry(&meta, grid, block, shared)?;
    if cooperative {
        super::module::check_cooperative(f, grid, block, shared as usize)?;
        // A graph's kernel node does not keep "cooperative" yet: refused (the capture is
        // invalidated, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) rather than lost.
        super::graph::forbid_while_capturing(stream)?;
        // SAFETY: forwarded API contract.
        let packed = unsafe { pack_params(&meta, params, extra)? };
        return submit(d, Op::LaunchCooperative, &meta, grid, block, shared, stream, &packed);
    }
    // SAFETY: forwarded API contract.
    let packed = unsafe { pack_params(&meta, params, extra)? };
    // On a capturing stream the launch becomes a graph node (its parameters copied now).
    if super::graph::record(stream, || super::graph::Work::Kernel(super::graph::KernelNode::new(handle_of(f), grid, block, shared, packed.clone())))? {
        return Ok(());
    }
    submit_launch(d, &meta, grid, block, shared, stream, &packed)
}

/// Sends one launch with its packed parameters, and writes what the kernel printed.
pub(crate) fn submit_launch(d: &state::Driver, meta: &state::KernelMeta, grid: [c_uint; 3], block: [c_uint; 3], shared: c_uint, stream: Handle, packed: &[u8]) -> Result<(), CUresult> {
    submit(d, Op::Launch, meta, grid, block, shared, stream, packed)
}

#[allow(clippy::too_many_arguments)]
fn submit(d: &state::Driver, op: Op, meta: &state::KernelMeta, grid: [c_uint; 3], block: [c_uint; 3], shared: c_uint, stream: Handle, packed: &[u8]) -> Result<(), CUresult> {
    // handle u64, grid and block 3 x u32 each, shared u32, stream u64.
    let mut head = [0u8; 44];
    head[..8].copy_from_slice(&meta.info.handle.to_le_bytes());
    for (i, v) in grid.iter().chain(block.iter()).chain(std::iter::once(&shared)).enumerate() {
        head[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    head[36..].copy_from_slice(&handle_of(stream).to_le_bytes());
    d.mirrors.before_work(d, true)?;
    // Queued: what the kernel prints comes out at the next synchronizing call.
    if let Some(printed) = d.call_async(op, &[&head, packed])? {
        write_device_printf(&printed);
    }
    Ok(())
}

/// What cuLaunchKernel refuses at once (the launch itself is asynchronous, so these checks
/// cannot wait for the mediator): the device's limits on grid, block and shared memory.
fn check_geometry(meta: &state::KernelMeta, grid: [c_uint; 3], block: [c_uint; 3], shared: c_uint) -> Result<(), CUresult> {
    let [bx, by, bz] = block;
    let [gx, gy, gz] = grid;
    let threads = bx as u64 * by as u64 * bz as u64;
    if grid.contains(&0) || block.contains(&0) || bx > 1024 || by > 1024 || bz > 64 || threads > 1024 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if threads > meta.info.max_threads_per_block as u64 && meta.info.max_threads_per_block > 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // `.reqntid`: that block shape and no other.
    if meta.info.req_block != [0; 3] && block != meta.info.req_block {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if shared as i64 > meta.max_dynamic_shared as i64 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

extern "C" {
    /// glibc's `stdout` FILE.
    static mut stdout: *mut libc::FILE;
}

/// Device printf output goes where NVIDIA's driver puts it: C's stdout stream, so it is ordered
/// with the application's own printf output (which may still sit in stdio's buffer).
pub(crate) fn write_device_printf(text: &[u8]) {
    if text.is_empty() {
        return;
    }
    // SAFETY: `stdout` is glibc's initialized FILE*; fwrite/fflush lock the stream themselves,
    // and `text` is a valid buffer of its length.
    unsafe {
        let out = *std::ptr::addr_of!(stdout);
        libc::fwrite(text.as_ptr().cast(), 1, text.len(), out);
        libc::fflush(out);
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    guard("cuLaunchKernel", || unsafe { launch(f, [gx, gy, gz], [bx, by, bz], shared, stream, params, extra) })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
}

/// CUlaunchAttribute: an id, then a 64-byte value union.
#[repr(C)]
pub struct LaunchAttribute {
    id: c_uint,
    pad: [u8; 4],
    value: [u8; 64],
}

/// Launch attributes that only hint or allow overlap keep their meaning when kernels run one
/// after another, as they do in vgpu; the ones that change what a kernel may do (clusters,
/// programmatic events) are refused rather than ignored. Returns whether the launch is
/// cooperative (its grid must then fit on the device at once; the sim keeps every block of a
/// kernel that synchronizes its grid resident, whichever way it is launched).
unsafe fn check_launch_attributes(attrs: *const LaunchAttribute, n: c_uint) -> Result<bool, CUresult> {
    let mut cooperative = false;
    if n == 0 {
        return Ok(false);
    }
    if attrs.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `attrs` points at `n` attributes (caller's contract).
    for a in unsafe { std::slice::from_raw_parts(attrs, n as usize) } {
        let word = |i: usize| u32::from_le_bytes(a.value[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
        let ok = match a.id {
            // IGNORE, ACCESS_POLICY_WINDOW, SYNCHRONIZATION_POLICY, CLUSTER_SCHEDULING_POLICY_PREFERENCE,
            // PROGRAMMATIC_STREAM_SERIALIZATION, PRIORITY, MEM_SYNC_DOMAIN_MAP, MEM_SYNC_DOMAIN,
            // PREFERRED_SHARED_MEMORY_CARVEOUT
            0 | 1 | 3 | 5 | 6 | 8 | 9 | 10 | 14 => true,
            // COOPERATIVE
            2 => {
                cooperative = word(0) != 0;
                true
            }
            // CLUSTER_DIMENSION: only clusters of one block.
            4 => (0..3).all(|i| word(i) <= 1),
            _ => false,
        };
        if !ok {
            vlog!(crate::log::WARN, "cuLaunchKernelEx launch attribute {} is not supported yet", a.id);
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
    }
    Ok(cooperative)
}

/// The cluster shape a launch configuration asks for (CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION),
/// as its number of blocks; 1 without one.
pub(crate) unsafe fn cluster_blocks(c: &LaunchConfig) -> Result<u64, CUresult> {
    if c.num_attrs == 0 {
        return Ok(1);
    }
    if c.attrs.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `attrs` points at `num_attrs` attributes (caller's contract).
    let attrs = unsafe { std::slice::from_raw_parts(c.attrs, c.num_attrs as usize) };
    Ok(attrs
        .iter()
        .filter(|a| a.id == 4)
        .map(|a| (0..3).map(|i| u32::from_le_bytes(a.value[i * 4..i * 4 + 4].try_into().unwrap_or([1, 0, 0, 0])).max(1) as u64).product())
        .next_back()
        .unwrap_or(1))
}

/// CUlaunchConfig.
#[repr(C)]
pub struct LaunchConfig {
    pub(crate) grid: [c_uint; 3],
    pub(crate) block: [c_uint; 3],
    pub(crate) shared: c_uint,
    stream: Handle,
    attrs: *const LaunchAttribute,
    num_attrs: c_uint,
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult {
    guard("cuLaunchKernelEx", || {
        if config.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null pointer to a CUlaunchConfig (API contract).
        let c = unsafe { &*config };
        // SAFETY: `attrs` holds `num_attrs` CUlaunchAttribute (API contract).
        let cooperative = unsafe { check_launch_attributes(c.attrs, c.num_attrs)? };
        // SAFETY: forwarded API contract.
        unsafe { launch_as(f, c.grid, c.block, c.shared, c.stream, params, extra, cooperative) }
    })
}

/// A launch whose blocks may all synchronize (cooperative groups' grid.sync()): the grid must
/// fit on the device at once.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: Handle, params: *mut *mut c_void) -> CUresult {
    guard("cuLaunchCooperativeKernel", || {
        // SAFETY: forwarded API contract (kernelParams as for cuLaunchKernel; no `extra`).
        unsafe { launch_as(f, [gx, gy, gz], [bx, by, bz], shared, stream, params, std::ptr::null_mut(), true) }
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel_ptsz(f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: Handle, params: *mut *mut c_void) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params) }
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult {
    cuLaunchKernelEx(config, f, params, extra)
}
