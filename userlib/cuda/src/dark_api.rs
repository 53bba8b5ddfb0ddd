//! `cuGetExportTable`: the private, UUID-named function tables NVIDIA's cudart, cuBLAS and tools
//! fetch from libcuda. Their layouts are not in any header; what is here is what cudart 12.9 and
//! 13.0 were observed to use (../shared/recipes/cuda/FINDINGS.md, DARK_API_NOTES.md): without
//! the required ones cudaGetDeviceCount fails (801), and a wrong integrity answer gives error 103.
//! Slots that nothing was seen calling return CUDA_ERROR_NOT_SUPPORTED and log once.

#![allow(non_snake_case)]

use crate::driver::{guard, put, CUdevice, CUresult, Handle};
use crate::state;
use crate::vlog;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use vgpu_uapi::cuda::*;

pub type Uuid = [u8; 16];

pub const CUDART_INTERFACE: Uuid = hex("6bd5fb6c5bf4e74a8987d93912fd9df9");
pub const TOOLS_RUNTIME_CALLBACK_HOOKS: Uuid = hex("a094798c2e742e7493f20800200c0a66");
pub const TOOLS_TLS: Uuid = hex("42d85a8123f6cb478298f6e78a3aecdc");
pub const CONTEXT_LOCAL_STORAGE: Uuid = hex("c693336e1121df11a8c368f355d89593");
pub const CONTEXT_CHECKS: Uuid = hex("263e88607cd2614392f6bbd5006dfa7e");
pub const INTEGRITY_CHECK: Uuid = hex("d4082055bde6704b8d34ba123c66e1f2");
/// cuBLASLt's: slot 4 (context, u64 *id) before each gemm; without the table cublasSgemm
/// answers CUBLAS_STATUS_NOT_SUPPORTED.
pub const CONTEXT_IDENTITY: Uuid = hex("21318c60971432488ca641ff7324c8f2");

const fn hex(s: &str) -> Uuid {
    let b = s.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (nib(b[2 * i]) << 4) | nib(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nib(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("bad hex"),
    }
}

/// A slot whose meaning is unknown: fail, and log once (at info level: cudart 12/13 call
/// TOOLS_RUNTIME_CALLBACK_HOOKS[5] in every process and carry on when it fails).
macro_rules! unused_slot {
    ($name:ident, $what:expr) => {
        unsafe extern "C" fn $name() -> CUresult {
            static LOGGED: AtomicBool = AtomicBool::new(false);
            if !LOGGED.swap(true, Ordering::Relaxed) {
                vlog!(crate::log::INFO, "export table slot {} called: not supported by vgpu", $what);
            }
            CUDA_ERROR_NOT_SUPPORTED
        }
    };
}

/// Fills the unused slots of a table with stubs that name their slot.
macro_rules! unused_slots {
    ($table:literal, $($name:ident = $slot:literal),*) => {
        $(unused_slot!($name, concat!($table, "[", $slot, "]"));)*
    };
}

unused_slots!("CUDART_INTERFACE", cudart_3 = 3, cudart_4 = 4, cudart_5 = 5, cudart_9 = 9);
unused_slots!("TOOLS_RUNTIME_CALLBACK_HOOKS", hooks_1 = 1, hooks_3 = 3, hooks_4 = 4, hooks_5 = 5);
unused_slots!("TOOLS_TLS", tls_1 = 1);
unused_slots!("CONTEXT_CHECKS", checks_1 = 1);
unused_slots!("CONTEXT_IDENTITY", identity_1 = 1, identity_2 = 2, identity_3 = 3);

// --- CUDART_INTERFACE -------------------------------------------------------------------------

/// Slot 2: retain the device's primary context (cudart's way to get it).
unsafe extern "C" fn cudart_get_primary_context(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    // SAFETY: same contract as cuDevicePrimaryCtxRetain.
    unsafe { crate::driver::cuDevicePrimaryCtxRetain(pctx, dev) }
}

/// Slot 1: load the module of a `__fatBinC_Wrapper_t` (older cudart's registration path).
unsafe extern "C" fn cudart_module_from_wrapper(module: *mut Handle, wrapper: *const c_void) -> CUresult {
    // SAFETY: same contract as cuModuleLoadData (the wrapper is a module image).
    unsafe { crate::driver::cuModuleLoadData(module, wrapper) }
}

/// Slot 6: as slot 1, with two extra pointers that must be NULL for plain modules.
unsafe extern "C" fn cudart_module_from_wrapper_ex1(module: *mut Handle, wrapper: *const c_void, a: *mut c_void, b: *mut c_void, _n: usize) -> CUresult {
    if !a.is_null() || !b.is_null() {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    // SAFETY: as in slot 1.
    unsafe { crate::driver::cuModuleLoadData(module, wrapper) }
}

/// Slot 8: load from a fatbin header (argument order swapped relative to slot 1).
unsafe extern "C" fn cudart_module_from_fatbin_ex2(fatbin: *const c_void, module: *mut Handle, a: *mut c_void, b: *mut c_void, n: u32) -> CUresult {
    if !a.is_null() || !b.is_null() || n != 0 {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    // SAFETY: a fatbin header starts a module image.
    unsafe { crate::driver::cuModuleLoadData(module, fatbin) }
}

/// Slot 7: a notification with no observable effect on the driver's answers.
unsafe extern "C" fn cudart_notify(_arg: usize) {}

// --- TOOLS_RUNTIME_CALLBACK_HOOKS --------------------------------------------------------------

/// Slots 2 and 6 hand cudart scratch buffers (1024 and 14 bytes) for tool callbacks; nobody
/// reads them back here, they only have to exist for the life of the process.
static HOOK_BUF1: Mutex<[u8; 1024]> = Mutex::new([0; 1024]);
static HOOK_BUF2: Mutex<[u8; 14]> = Mutex::new([0; 14]);

unsafe extern "C" fn hooks_buffer1(ptr: *mut *mut c_void, size: *mut usize) -> CUresult {
    guard("export-table hooks[2]", || {
        let mut b = HOOK_BUF1.lock().unwrap_or_else(|e| e.into_inner());
        put(ptr, b.as_mut_ptr().cast())?;
        put(size, b.len())
    })
}

unsafe extern "C" fn hooks_buffer2(ptr: *mut *mut c_void, size: *mut usize) -> CUresult {
    guard("export-table hooks[6]", || {
        let mut b = HOOK_BUF2.lock().unwrap_or_else(|e| e.into_inner());
        put(ptr, b.as_mut_ptr().cast())?;
        put(size, b.len())
    })
}

// --- TOOLS_TLS ---------------------------------------------------------------------------------

/// Slot 2: called before most runtime calls; 0 means "no tool is attached".
unsafe extern "C" fn tls_no_tool() -> CUresult {
    CUDA_SUCCESS
}

// --- CONTEXT_IDENTITY --------------------------------------------------------------------------

/// Slot 4: a context's unique id, as cuCtxGetId gives it (the current context for NULL).
unsafe extern "C" fn identity_context_id(ctx: Handle, id: *mut u64) -> CUresult {
    // SAFETY: same contract as cuCtxGetId.
    unsafe { crate::driver::cuCtxGetId(ctx, id) }
}

// --- CONTEXT_LOCAL_STORAGE ---------------------------------------------------------------------

type ClsDtor = Option<unsafe extern "C" fn(Handle, *mut c_void, *mut c_void)>;

struct ClsEntry {
    value: usize,
    _dtor: ClsDtor,
}

/// (context, key) -> value. cudart keeps its per-context state here.
fn cls() -> &'static Mutex<HashMap<(usize, usize), ClsEntry>> {
    static CLS: OnceLock<Mutex<HashMap<(usize, usize), ClsEntry>>> = OnceLock::new();
    CLS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cls_ctx(ctx: Handle) -> Result<usize, CUresult> {
    if ctx.is_null() {
        state::current_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)
    } else {
        Ok(ctx as usize)
    }
}

unsafe extern "C" fn cls_put(ctx: Handle, key: *mut c_void, value: *mut c_void, dtor: ClsDtor) -> CUresult {
    guard("export-table cls put", || {
        let c = cls_ctx(ctx)?;
        cls().lock().unwrap_or_else(|e| e.into_inner()).insert((c, key as usize), ClsEntry { value: value as usize, _dtor: dtor });
        Ok(())
    })
}

unsafe extern "C" fn cls_delete(ctx: Handle, key: *mut c_void) -> CUresult {
    guard("export-table cls delete", || {
        let c = cls_ctx(ctx)?;
        cls().lock().unwrap_or_else(|e| e.into_inner()).remove(&(c, key as usize));
        Ok(())
    })
}

unsafe extern "C" fn cls_get(value: *mut *mut c_void, ctx: Handle, key: *mut c_void) -> CUresult {
    guard("export-table cls get", || {
        let c = cls_ctx(ctx)?;
        let v = cls().lock().unwrap_or_else(|e| e.into_inner()).get(&(c, key as usize)).map(|e| e.value);
        match v {
            Some(v) => put(value, v as *mut c_void),
            None => Err(CUDA_ERROR_INVALID_VALUE),
        }
    })
}

// --- CONTEXT_CHECKS ----------------------------------------------------------------------------

/// Slot 2: is `ctx` a wrapper around another context? Never, for the contexts vgpu creates.
unsafe extern "C" fn checks_unwrap_context(_ctx: Handle, wrapped: *mut u32, _unwrapped: *mut Handle) -> CUresult {
    guard("export-table context wrapper", || put(wrapped, 0))
}

/// Slot 3: flags; none set.
unsafe extern "C" fn checks_flags() -> CUresult {
    CUDA_SUCCESS
}

// --- INTEGRITY_CHECK ---------------------------------------------------------------------------

unsafe extern "C" fn integrity_check(version: u32, unix_seconds: u64, result: *mut [u8; 16]) -> CUresult {
    guard("export-table integrity check", || {
        let d = state::driver()?;
        let devices = d
            .devices()
            .iter()
            .map(|dev| crate::integrity::DeviceIdentity {
                uuid: dev.uuid,
                pci_domain: dev.pci_domain,
                pci_bus: dev.pci_bus,
                pci_device: dev.pci_device,
            })
            .collect();
        let inputs = crate::integrity::IntegrityInputs {
            driver_version: vgpu_uapi::CUDA_DRIVER_VERSION as u32,
            version,
            pid: std::process::id(),
            // SAFETY: pthread_self has no preconditions. Its low 32 bits are what is hashed.
            thread: unsafe { libc::pthread_self() } as u32,
            cudart_table_addr: table(&CUDART_INTERFACE).map_or(0, |t| t as u64),
            integrity_table_addr: table(&INTEGRITY_CHECK).map_or(0, |t| t as u64),
            check_fn_addr: integrity_check as *const () as usize as u64,
            unix_seconds,
            devices,
        };
        put(result, crate::integrity::integrity_check(&inputs))
    })
}

// --- the tables --------------------------------------------------------------------------------

/// Builds each table once; their addresses never change (the integrity check hashes one).
fn tables() -> &'static HashMap<Uuid, Box<[usize]>> {
    static TABLES: OnceLock<HashMap<Uuid, Box<[usize]>>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let f = |p: unsafe extern "C" fn() -> CUresult| p as *const () as usize;
        let sized = |slots: Vec<usize>| -> Box<[usize]> {
            let mut t = slots;
            t[0] = t.len() * std::mem::size_of::<usize>();
            t.into_boxed_slice()
        };
        let mut m = HashMap::new();
        let cudart = vec![
            0,
            cudart_module_from_wrapper as *const () as usize,
            cudart_get_primary_context as *const () as usize,
            f(cudart_3),
            f(cudart_4),
            f(cudart_5),
            cudart_module_from_wrapper_ex1 as *const () as usize,
            cudart_notify as *const () as usize,
            cudart_module_from_fatbin_ex2 as *const () as usize,
            f(cudart_9),
        ];
        m.insert(CUDART_INTERFACE, sized(cudart));
        let mut hooks = vec![0, f(hooks_1), 0, f(hooks_3), f(hooks_4), f(hooks_5), 0];
        hooks[2] = hooks_buffer1 as *const () as usize;
        hooks[6] = hooks_buffer2 as *const () as usize;
        m.insert(TOOLS_RUNTIME_CALLBACK_HOOKS, sized(hooks));
        let mut tls = vec![0, f(tls_1), 0];
        tls[2] = tls_no_tool as *const () as usize;
        m.insert(TOOLS_TLS, sized(tls));
        m.insert(
            CONTEXT_LOCAL_STORAGE,
            vec![cls_put as *const () as usize, cls_delete as *const () as usize, cls_get as *const () as usize, 0].into_boxed_slice(),
        );
        let mut checks = vec![0, f(checks_1), 0, 0];
        checks[2] = checks_unwrap_context as *const () as usize;
        checks[3] = checks_flags as *const () as usize;
        m.insert(CONTEXT_CHECKS, sized(checks));
        m.insert(INTEGRITY_CHECK, sized(vec![0, integrity_check as *const () as usize, 0]));
        let identity = vec![0, f(identity_1), f(identity_2), f(identity_3), identity_context_id as *const () as usize];
        m.insert(CONTEXT_IDENTITY, sized(identity));
        m
    })
}

fn table(id: &Uuid) -> Option<*const usize> {
    tables().get(id).map(|t| t.as_ptr())
}

#[no_mangle]
pub unsafe extern "C" fn cuGetExportTable(out: *mut *const c_void, id: *const Uuid) -> CUresult {
    guard("cuGetExportTable", || {
        if out.is_null() || id.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `id` points at a 16-byte CUuuid (API contract).
        let uuid = unsafe { *id };
        match table(&uuid) {
            Some(t) => put(out, t.cast()),
            None => {
                vlog!(crate::log::INFO, "cuGetExportTable: unknown table {}", uuid.iter().map(|b| format!("{b:02x}")).collect::<String>());
                put(out, std::ptr::null())?;
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    })
}
