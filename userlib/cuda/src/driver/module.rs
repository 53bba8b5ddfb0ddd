//! Modules and libraries (fatbin / PTX / cubin images), functions, kernels, globals.
//!
//! A CUlibrary is the same mediator module as a CUmodule, and a CUkernel the same handle as its
//! CUfunction: cudart 13 launches a CUkernel through cuLaunchKernel directly.

use super::*;
use crate::state::{self, driver, Driver, KernelMeta};
use std::ffi::{c_char, c_int, c_uint};
use std::sync::Arc;
use vgpu_uapi::image::{self, FATBIN_HEADER_LEN, FATBIN_WRAPPER_MAGIC};
use vgpu_uapi::proto::Op;
use vgpu_uapi::wire::Reader;

/// Reads `N` bytes at `p`.
///
/// SAFETY (for callers): `p` must point at an image of at least `N` bytes, or at a NUL-terminated
/// PTX string; we only read a header's worth after checking the magic of the smaller one.
unsafe fn header<const N: usize>(p: *const u8) -> [u8; N] {
    let mut h = [0u8; N];
    // SAFETY: see above.
    unsafe { std::ptr::copy_nonoverlapping(p, h.as_mut_ptr(), N) };
    h
}

/// The bytes of a module image given by pointer only (cuModuleLoadData's contract).
unsafe fn image_bytes<'a>(p: *const c_void) -> Result<&'a [u8], CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut p = p.cast::<u8>();
    // SAFETY: every image kind is at least 4 bytes (a PTX string has more than its NUL).
    let magic = u32::from_le_bytes(unsafe { header::<4>(p) });
    if magic == FATBIN_WRAPPER_MAGIC {
        // __fatBinC_Wrapper_t { magic u32, version u32, data *const fatbin, ... }
        // SAFETY: a wrapper is 24 bytes; its third field is the fatbin pointer.
        p = unsafe { p.add(8).cast::<*const u8>().read_unaligned() };
        if p.is_null() {
            return Err(CUDA_ERROR_INVALID_IMAGE);
        }
    }
    // SAFETY: p points at a fatbin, an ELF or a PTX string; the 4-byte magic decides which
    // longer header may be read.
    let magic4 = unsafe { header::<4>(p) };
    let len = if u32::from_le_bytes(magic4) == image::FATBIN_MAGIC {
        image::fatbin_len(&unsafe { header::<FATBIN_HEADER_LEN>(p) }).ok_or(CUDA_ERROR_INVALID_IMAGE)?
    } else if &magic4 == b"\x7fELF" {
        image::elf_len(&unsafe { header::<{ image::ELF_HEADER_LEN }>(p) }).ok_or(CUDA_ERROR_INVALID_IMAGE)?
    } else {
        // PTX text: NUL-terminated. SAFETY: the API requires a NUL-terminated string here.
        let n = unsafe { std::ffi::CStr::from_ptr(p.cast()) }.to_bytes().len() as u64;
        if n > image::MAX_IMAGE_LEN {
            return Err(CUDA_ERROR_INVALID_IMAGE);
        }
        n + 1
    };
    // SAFETY: the image's own header says it spans `len` bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

fn load(d: &Driver, img: &[u8]) -> Result<u64, CUresult> {
    let reply = vgpu_uapi::proto::module_load(img, |op, parts| d.call(op, parts))?;
    Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)
}

/// Loads an image given by pointer: on a backend that runs PTX only, a SASS-only image found in
/// a loaded library runs as that library's PTX of the same kernels (ptx_twin.rs).
fn load_in_place(d: &Driver, img: &[u8]) -> Result<u64, CUresult> {
    if d.ptx_only() && vgpu_fatbin::is_sass_only(img) {
        if let Some(ptx) = super::ptx_twin::find(img.as_ptr(), img) {
            let mut text = ptx.into_bytes();
            text.push(0); // PTX travels NUL-terminated
            return load(d, &text);
        }
    }
    load(d, img)
}

unsafe fn load_ptr(module: *mut Handle, img: *const c_void) -> Result<(), CUresult> {
    let (d, _) = state::current_device()?;
    // SAFETY: forwarded API contract.
    let bytes = unsafe { image_bytes(img)? };
    let m = load_in_place(d, bytes)?;
    put(module, to_handle(m))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, img: *const c_void) -> CUresult {
    guard("cuModuleLoadData", || unsafe { load_ptr(module, img) })
}

/// JIT options are compiler hints and log buffers; the sim backend has no JIT to pass them to,
/// so they are accepted and left untouched.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut Handle,
    img: *const c_void,
    _num_options: c_uint,
    _options: *mut c_int,
    _values: *mut *mut c_void,
) -> CUresult {
    guard("cuModuleLoadDataEx", || unsafe { load_ptr(module, img) })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadFatBinary(module: *mut Handle, fatbin: *const c_void) -> CUresult {
    guard("cuModuleLoadFatBinary", || unsafe { load_ptr(module, fatbin) })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoad(module: *mut Handle, fname: *const c_char) -> CUresult {
    guard("cuModuleLoad", || {
        let (d, _) = state::current_device()?;
        let path = c_str(fname)?;
        let mut bytes = std::fs::read(path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
        if !bytes.starts_with(b"\x7fELF") && !bytes.starts_with(&image::FATBIN_MAGIC.to_le_bytes()) {
            bytes.push(0); // PTX text travels NUL-terminated, as from cuModuleLoadData
        }
        let m = load(d, &bytes)?;
        put(module, to_handle(m))
    })
}

fn unload(m: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    let id = handle_of(m);
    d.call(Op::ModuleUnload, &[&id.to_le_bytes()])?;
    d.functions.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, k| k.module != id);
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(m: Handle) -> CUresult {
    guard("cuModuleUnload", || unload(m))
}

/// Resolves a kernel by name and remembers its parameter layout for launches.
fn get_function(d: &Driver, module: u64, name: &str) -> Result<u64, CUresult> {
    // A NULL module or library is what a caller holds after a failed load (cuBLASLt asks for
    // each of its kernels regardless): nobody's, answered here without a warning each time.
    if module == 0 {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let reply = d.call(Op::ModuleGetFunction, &[&module.to_le_bytes(), name.as_bytes()])?;
    let mut r = Reader::new(&reply);
    let info = r.function_info().map_err(|_| CUDA_ERROR_UNKNOWN)?;
    let mut params = Vec::with_capacity(info.param_count as usize);
    for _ in 0..info.param_count {
        params.push((r.u32().map_err(|_| CUDA_ERROR_UNKNOWN)?, r.u32().map_err(|_| CUDA_ERROR_UNKNOWN)?));
    }
    let h = info.handle;
    d.functions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(h)
        .or_insert_with(|| Arc::new(KernelMeta { info, name: std::ffi::CString::new(name).unwrap_or_default(), params, module, max_dynamic_shared: 48 * 1024 - info.static_shared_bytes as i32 }));
    Ok(h)
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(f: *mut Handle, m: Handle, name: *const c_char) -> CUresult {
    guard("cuModuleGetFunction", || {
        let h = get_function(driver()?, handle_of(m), c_str(name)?)?;
        put(f, to_handle(h))
    })
}

/// The names of a module's (or library's) kernels, as the mediator lists them.
fn function_names(d: &Driver, module: u64) -> Result<Vec<String>, CUresult> {
    if module == 0 {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let reply = d.call(Op::ModuleEnumerateFunctions, &[&module.to_le_bytes()])?;
    let mut r = Reader::new(&reply);
    let bad = |_| CUDA_ERROR_UNKNOWN;
    let n = r.u32().map_err(bad)?;
    let mut names = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let len = r.u32().map_err(bad)? as usize;
        names.push(String::from_utf8_lossy(r.bytes(len).map_err(bad)?).into_owned());
    }
    Ok(names)
}

/// The handles of a module's kernels, at most `limit` of them, in the module's order.
pub(crate) fn module_functions(module: Handle, limit: usize) -> Result<Vec<Handle>, CUresult> {
    let d = driver()?;
    let names = function_names(d, handle_of(module))?;
    names.iter().take(limit).map(|n| get_function(d, handle_of(module), n).map(to_handle)).collect()
}

/// cuModuleGetFunctionCount / cuLibraryGetKernelCount.
fn function_count(count: *mut c_uint, module: Handle) -> Result<(), CUresult> {
    let n = function_names(driver()?, handle_of(module))?.len();
    put(count, n as c_uint)
}

/// cuModuleEnumerateFunctions / cuLibraryEnumerateKernels: up to `n` handles into `out`.
fn enumerate_functions(out: *mut Handle, n: c_uint, module: Handle) -> Result<(), CUresult> {
    if out.is_null() || n == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for (i, f) in module_functions(module, n as usize)?.into_iter().enumerate() {
        // SAFETY: the caller's array holds `n` handles (API contract); i < n.
        put(unsafe { out.add(i) }, f)?;
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunctionCount(count: *mut c_uint, module: Handle) -> CUresult {
    guard("cuModuleGetFunctionCount", || function_count(count, module))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleEnumerateFunctions(functions: *mut Handle, n: c_uint, module: Handle) -> CUresult {
    guard("cuModuleEnumerateFunctions", || enumerate_functions(functions, n, module))
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetKernelCount(count: *mut c_uint, library: Handle) -> CUresult {
    guard("cuLibraryGetKernelCount", || function_count(count, library))
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryEnumerateKernels(kernels: *mut Handle, n: c_uint, library: Handle) -> CUresult {
    guard("cuLibraryEnumerateKernels", || enumerate_functions(kernels, n, library))
}

fn get_global(m: Handle, name: *const c_char, dptr: *mut CUdeviceptr, bytes: *mut usize) -> Result<(), CUresult> {
    let d = driver()?;
    let reply = d.call(Op::ModuleGetGlobal, &[&handle_of(m).to_le_bytes(), c_str(name)?.as_bytes()])?;
    let mut r = Reader::new(&reply);
    let (p, size) = (r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?, r.u64().map_err(|_| CUDA_ERROR_UNKNOWN)?);
    if !dptr.is_null() {
        put(dptr, p)?;
    }
    if !bytes.is_null() {
        put(bytes, size as usize)?;
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(dptr: *mut CUdeviceptr, bytes: *mut usize, m: Handle, name: *const c_char) -> CUresult {
    guard("cuModuleGetGlobal", || get_global(m, name, dptr, bytes))
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryLoadData(
    library: *mut Handle,
    code: *const c_void,
    _jit_options: *mut c_int,
    _jit_values: *mut *mut c_void,
    _num_jit: c_uint,
    _lib_options: *mut c_int,
    _lib_values: *mut *mut c_void,
    _num_lib: c_uint,
) -> CUresult {
    // Library options (BINARY_IS_PRESERVED) only tell us the image outlives the library; we
    // copy it to the mediator anyway.
    guard("cuLibraryLoadData", || {
        let d = driver()?;
        // SAFETY: forwarded API contract.
        let bytes = unsafe { image_bytes(code)? };
        let m = load_in_place(d, bytes)?;
        put(library, to_handle(m))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryUnload(library: Handle) -> CUresult {
    guard("cuLibraryUnload", || unload(library))
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetModule(m: *mut Handle, library: Handle) -> CUresult {
    guard("cuLibraryGetModule", || {
        driver()?;
        if library.is_null() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        put(m, library)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetKernel(k: *mut Handle, library: Handle, name: *const c_char) -> CUresult {
    guard("cuLibraryGetKernel", || {
        let h = get_function(driver()?, handle_of(library), c_str(name)?)?;
        put(k, to_handle(h))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetGlobal(dptr: *mut CUdeviceptr, bytes: *mut usize, library: Handle, name: *const c_char) -> CUresult {
    guard("cuLibraryGetGlobal", || get_global(library, name, dptr, bytes))
}

pub(crate) fn kernel_meta(f: Handle) -> Result<Arc<KernelMeta>, CUresult> {
    let d = driver()?;
    let t = d.functions.lock().unwrap_or_else(|e| e.into_inner());
    t.get(&handle_of(f)).cloned().ok_or(CUDA_ERROR_INVALID_HANDLE)
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetFunction(f: *mut Handle, kernel: Handle) -> CUresult {
    guard("cuKernelGetFunction", || {
        kernel_meta(kernel)?;
        put(f, kernel)
    })
}

/// cuFuncGetName / cuKernelGetName: the name stays valid as long as the function.
fn function_name(name: *mut *const std::ffi::c_char, f: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    let t = d.functions.lock().unwrap_or_else(|e| e.into_inner());
    let m = t.get(&handle_of(f)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    // The CString's buffer lives as long as the function's entry: until its module is
    // unloaded, which is as long as CUDA promises the name.
    put(name, m.name.as_ptr())
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetName(name: *mut *const std::ffi::c_char, f: Handle) -> CUresult {
    guard("cuFuncGetName", || function_name(name, f))
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetName(name: *mut *const std::ffi::c_char, k: Handle) -> CUresult {
    guard("cuKernelGetName", || function_name(name, k))
}

// CUfunction_attribute values.
const FA_MAX_THREADS_PER_BLOCK: c_int = 0;
const FA_SHARED_SIZE_BYTES: c_int = 1;
const FA_CONST_SIZE_BYTES: c_int = 2;
const FA_LOCAL_SIZE_BYTES: c_int = 3;
const FA_NUM_REGS: c_int = 4;
const FA_PTX_VERSION: c_int = 5;
const FA_BINARY_VERSION: c_int = 6;
const FA_CACHE_MODE_CA: c_int = 7;
const FA_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
const FA_PREFERRED_SHARED_MEMORY_CARVEOUT: c_int = 9;
// Thread-block clusters (sm_90): CLUSTER_SIZE_MUST_BE_SET, REQUIRED_CLUSTER_WIDTH/HEIGHT/DEPTH,
// NON_PORTABLE_CLUSTER_SIZE_ALLOWED, CLUSTER_SCHEDULING_POLICY_PREFERENCE. No kernel here
// declares a cluster shape (.reqnctapercluster) or a scheduling policy, so all read 0, as for
// such a kernel on a real H100.
const FA_CLUSTER_SIZE_MUST_BE_SET: c_int = 10;
const FA_REQUIRED_CLUSTER_WIDTH: c_int = 11;
const FA_REQUIRED_CLUSTER_HEIGHT: c_int = 12;
const FA_REQUIRED_CLUSTER_DEPTH: c_int = 13;
const FA_NON_PORTABLE_CLUSTER_SIZE_ALLOWED: c_int = 14;
const FA_CLUSTER_SCHEDULING_POLICY_PREFERENCE: c_int = 15;

fn func_attribute(f: Handle, attrib: c_int) -> Result<c_int, CUresult> {
    let k = kernel_meta(f)?;
    Ok(match attrib {
        FA_MAX_THREADS_PER_BLOCK => k.info.max_threads_per_block as c_int,
        FA_SHARED_SIZE_BYTES => k.info.static_shared_bytes as c_int,
        FA_CONST_SIZE_BYTES => k.info.const_bytes as c_int,
        FA_LOCAL_SIZE_BYTES => k.info.local_bytes as c_int,
        FA_NUM_REGS => k.info.num_regs as c_int,
        FA_PTX_VERSION => k.info.ptx_version as c_int,
        FA_BINARY_VERSION => k.info.binary_version as c_int,
        FA_CACHE_MODE_CA => 0,
        FA_MAX_DYNAMIC_SHARED_SIZE_BYTES => k.max_dynamic_shared,
        FA_PREFERRED_SHARED_MEMORY_CARVEOUT => -1,
        FA_CLUSTER_SIZE_MUST_BE_SET..=FA_CLUSTER_SCHEDULING_POLICY_PREFERENCE => 0,
        _ => {
            vlog!(crate::log::DEBUG, "cuFuncGetAttribute: unknown attribute {attrib}");
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(value: *mut c_int, attrib: c_int, f: Handle) -> CUresult {
    guard("cuFuncGetAttribute", || put(value, func_attribute(f, attrib)?))
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetAttribute(value: *mut c_int, attrib: c_int, kernel: Handle, _dev: CUdevice) -> CUresult {
    guard("cuKernelGetAttribute", || put(value, func_attribute(kernel, attrib)?))
}

fn set_func_attribute(f: Handle, attrib: c_int, value: c_int) -> Result<(), CUresult> {
    let d = driver()?;
    let mut t = d.functions.lock().unwrap_or_else(|e| e.into_inner());
    let k = Arc::make_mut(t.get_mut(&handle_of(f)).ok_or(CUDA_ERROR_INVALID_HANDLE)?);
    match attrib {
        FA_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
            if value < 0 || value as u32 + k.info.static_shared_bytes > 232_448 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            k.max_dynamic_shared = value;
            Ok(())
        }
        // A carveout preference is a hint the hardware may ignore.
        FA_PREFERRED_SHARED_MEMORY_CARVEOUT if (-1..=100).contains(&value) => Ok(()),
        // Clusters: only of one block (what vgpu launches). Allowing non-portable cluster
        // sizes, or a scheduling preference, changes nothing for those.
        FA_REQUIRED_CLUSTER_WIDTH | FA_REQUIRED_CLUSTER_HEIGHT | FA_REQUIRED_CLUSTER_DEPTH if (0..=1).contains(&value) => Ok(()),
        FA_NON_PORTABLE_CLUSTER_SIZE_ALLOWED if (0..=1).contains(&value) => Ok(()),
        FA_CLUSTER_SCHEDULING_POLICY_PREFERENCE if (0..=2).contains(&value) => Ok(()),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(f: Handle, attrib: c_int, value: c_int) -> CUresult {
    guard("cuFuncSetAttribute", || set_func_attribute(f, attrib, value))
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelSetAttribute(attrib: c_int, value: c_int, kernel: Handle, _dev: CUdevice) -> CUresult {
    guard("cuKernelSetAttribute", || set_func_attribute(kernel, attrib, value))
}

/// A cache preference is a hint (the sim has no L1 to split).
#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(f: Handle, config: c_int) -> CUresult {
    guard("cuFuncSetCacheConfig", || cache_config(f, config))
}

fn cache_config(f: Handle, config: c_int) -> Result<(), CUresult> {
    kernel_meta(f)?;
    if !(0..=3).contains(&config) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

/// cuFuncSetCacheConfig for a library's kernel (on the one device).
#[no_mangle]
pub unsafe extern "C" fn cuKernelSetCacheConfig(kernel: Handle, config: c_int, dev: CUdevice) -> CUresult {
    guard("cuKernelSetCacheConfig", || {
        driver()?.device(dev)?;
        cache_config(kernel, config)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetParamInfo(f: Handle, index: usize, offset: *mut usize, size: *mut usize) -> CUresult {
    guard("cuFuncGetParamInfo", || {
        let k = kernel_meta(f)?;
        let &(o, s) = k.params.get(index).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(offset, o as usize)?;
        put(size, s as usize)
    })
}

/// Blocks of kernel `k` with `block_size` threads and `dyn_smem` bytes of dynamic shared memory
/// that fit on one multiprocessor at once, by the limits the device reports in `a` (threads,
/// blocks, registers and shared memory per multiprocessor; 1 KiB of shared memory reserved per
/// block, as on sm_8x/9x). Programs size their grids by this as they would on the GPU the
/// device presents; the sim's speed does not depend on it.
fn occupancy(k: &KernelMeta, a: &[c_int], block_size: c_int, dyn_smem: usize) -> c_int {
    use vgpu_uapi::cuda::attr;
    if block_size <= 0 || block_size as u32 > k.info.max_threads_per_block {
        return 0;
    }
    let warps = (block_size as u64).div_ceil(32);
    let by_threads = a[attr::MAX_THREADS_PER_MULTIPROCESSOR] as u64 / (warps * 32);
    let by_blocks = a[attr::MAX_BLOCKS_PER_MULTIPROCESSOR] as u64;
    let regs_per_block = (k.info.num_regs as u64).max(1) * warps * 32;
    let by_regs = a[attr::MAX_REGISTERS_PER_MULTIPROCESSOR] as u64 / regs_per_block;
    let smem = k.info.static_shared_bytes as u64 + dyn_smem as u64;
    if smem > a[attr::MAX_SHARED_MEMORY_PER_BLOCK_OPTIN] as u64 {
        return 0;
    }
    let by_smem = a[attr::MAX_SHARED_MEMORY_PER_MULTIPROCESSOR] as u64 / (smem + 1024);
    by_threads.min(by_blocks).min(by_regs).min(by_smem).min(c_int::MAX as u64) as c_int
}

/// `f`'s metadata and the current device's attributes, which the occupancy API works from.
fn occupancy_inputs(f: Handle) -> Result<(Arc<KernelMeta>, [c_int; vgpu_uapi::cuda::DEVICE_ATTRIBUTE_SLOTS]), CUresult> {
    let k = kernel_meta(f)?;
    let (d, dev) = state::current_device()?;
    Ok((k, d.device(dev)?.attrs))
}

/// A cooperative launch's check: all of the grid's blocks must be resident on the device at
/// once (the occupancy API's blocks per multiprocessor times the multiprocessors), else
/// CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE, as CUDA answers.
pub(crate) fn check_cooperative(f: Handle, grid: [c_uint; 3], block: [c_uint; 3], dyn_smem: usize) -> Result<(), CUresult> {
    let (k, a) = occupancy_inputs(f)?;
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    let per_sm = occupancy(&k, &a, c_int::try_from(threads).map_err(|_| CUDA_ERROR_INVALID_VALUE)?, dyn_smem).max(0) as u64;
    let resident = per_sm * a[vgpu_uapi::cuda::attr::MULTIPROCESSOR_COUNT].max(0) as u64;
    if grid.iter().map(|&g| g as u64).product::<u64>() > resident {
        return Err(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
    }
    Ok(())
}

fn active_blocks(n: *mut c_int, f: Handle, block_size: c_int, dyn_smem: usize) -> Result<(), CUresult> {
    let (k, a) = occupancy_inputs(f)?;
    put(n, occupancy(&k, &a, block_size, dyn_smem))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(n: *mut c_int, f: Handle, block_size: c_int, dyn_smem: usize) -> CUresult {
    guard("cuOccupancyMaxActiveBlocksPerMultiprocessor", || active_blocks(n, f, block_size, dyn_smem))
}

/// The flags only concern caching hints (CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE) that do not
/// change the count here.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(n: *mut c_int, f: Handle, block_size: c_int, dyn_smem: usize, flags: c_uint) -> CUresult {
    guard("cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", || {
        if flags & !1 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        active_blocks(n, f, block_size, dyn_smem)
    })
}

/// The most dynamic shared memory a block of `block_size` threads may use so that `blocks` of
/// them still fit on a multiprocessor together (0 if they do not fit for other reasons): the
/// inverse of `occupancy`'s shared-memory bound.
fn available_dynamic_smem(out: *mut usize, f: Handle, blocks: c_int, block_size: c_int) -> Result<(), CUresult> {
    use vgpu_uapi::cuda::attr;
    let (k, a) = occupancy_inputs(f)?;
    if blocks <= 0 || block_size <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let fits = occupancy(&k, &a, block_size, 0) >= blocks;
    let per_block = (a[attr::MAX_SHARED_MEMORY_PER_MULTIPROCESSOR] as u64 / blocks as u64).saturating_sub(1024);
    let cap = a[attr::MAX_SHARED_MEMORY_PER_BLOCK_OPTIN] as u64;
    let dynamic = per_block.min(cap).saturating_sub(k.info.static_shared_bytes as u64);
    put(out, if fits { dynamic as usize } else { 0 })
}

/// How many clusters of the configuration's shape can be resident at once: vgpu launches
/// clusters of one block only, so a larger cluster shape gets 0 (it cannot run); a launch
/// without clusters gets as many one-block clusters as blocks fit on the device.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveClusters(out: *mut c_int, f: Handle, config: *const super::launch::LaunchConfig) -> CUresult {
    guard("cuOccupancyMaxActiveClusters", || {
        if config.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null pointer to the application's CUlaunchConfig.
        let c = unsafe { &*config };
        // SAFETY: its attribute array, per the API contract.
        let cluster = unsafe { super::launch::cluster_blocks(c)? };
        let (k, a) = occupancy_inputs(f)?;
        let threads = (c.block[0] as u64 * c.block[1] as u64 * c.block[2] as u64).min(c_int::MAX as u64) as c_int;
        let per_sm = occupancy(&k, &a, threads, c.shared as usize) as i64;
        let sms = a[vgpu_uapi::cuda::attr::MULTIPROCESSOR_COUNT] as i64;
        put(out, if cluster > 1 { 0 } else { (per_sm * sms).min(c_int::MAX as i64) as c_int })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyAvailableDynamicSMemPerBlock(out: *mut usize, f: Handle, blocks: c_int, block_size: c_int) -> CUresult {
    guard("cuOccupancyAvailableDynamicSMemPerBlock", || available_dynamic_smem(out, f, blocks, block_size))
}

/// `size_t (*)(int blockSize)`: dynamic shared memory a block of that size needs.
type SmemForBlock = Option<unsafe extern "C" fn(c_int) -> usize>;

/// The block size (a multiple of 32 up to `limit`, or the kernel's maximum) with the most
/// threads resident per multiprocessor, and the grid that fills the device at it.
fn potential_block_size(min_grid: *mut c_int, block: *mut c_int, f: Handle, smem_of: SmemForBlock, dyn_smem: usize, limit: c_int) -> Result<(), CUresult> {
    let (k, a) = occupancy_inputs(f)?;
    let sms = a[vgpu_uapi::cuda::attr::MULTIPROCESSOR_COUNT];
    let max = if limit > 0 { (limit as u32).min(k.info.max_threads_per_block) } else { k.info.max_threads_per_block } as c_int;
    let (mut best_block, mut best_blocks, mut best_threads) = (0, 0, 0);
    let mut bs = max - max % 32;
    while bs > 0 {
        // SAFETY: the application's callback, per the API contract: takes a block size,
        // returns the dynamic shared memory it needs.
        let smem = match smem_of { Some(cb) => unsafe { cb(bs) }, None => dyn_smem };
        let blocks = occupancy(&k, &a, bs, smem);
        if blocks * bs > best_threads {
            (best_block, best_blocks, best_threads) = (bs, blocks, blocks * bs);
        }
        bs -= 32;
    }
    put(block, best_block)?;
    put(min_grid, best_blocks.saturating_mul(sms))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSize(min_grid: *mut c_int, block: *mut c_int, f: Handle, smem_of: SmemForBlock, dyn_smem: usize, limit: c_int) -> CUresult {
    guard("cuOccupancyMaxPotentialBlockSize", || potential_block_size(min_grid, block, f, smem_of, dyn_smem, limit))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSizeWithFlags(min_grid: *mut c_int, block: *mut c_int, f: Handle, smem_of: SmemForBlock, dyn_smem: usize, limit: c_int, flags: c_uint) -> CUresult {
    guard("cuOccupancyMaxPotentialBlockSizeWithFlags", || {
        if flags & !1 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        potential_block_size(min_grid, block, f, smem_of, dyn_smem, limit)
    })
}
