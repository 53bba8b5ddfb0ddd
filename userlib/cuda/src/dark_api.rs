//! `cuGetExportTable`: the private, UUID-named function tables NVIDIA's cudart, cuBLAS and tools
//! fetch from libcuda. Their layouts are not in any header; what is here is what cudart 12.9 and
//! 13.0 were observed to use (../shared/recipes/cuda/FINDINGS.md, DARK_API_NOTES.md): without
//! the required ones cudaGetDeviceCount fails (801), and a wrong integrity answer gives error 103.
//! Slots that nothing was seen calling return CUDA_ERROR_NOT_SUPPORTED and log once.
//!
//! CUDART_INTERFACE (13 slots, as NVIDIA's 580 driver has it since CUDA 13.1):
//!
//! | slot | contract (as callers use it)                                   | vgpu                      |
//! |------|----------------------------------------------------------------|---------------------------|
//! | 0    | the table's size in bytes                                      | 104                       |
//! | 1    | `(CUmodule *out, const fatbin wrapper *)`: load a module       | cuModuleLoadData          |
//! | 2    | `(CUcontext *out, CUdevice)`: retain the primary context       | cuDevicePrimaryCtxRetain  |
//! | 3-5  | unknown (present in the driver, never seen called)             | NOT_SUPPORTED, logged     |
//! | 6    | as 1 with `(void *, void *, u32)` that must be NULL/0          | cuModuleLoadData          |
//! | 7    | `(usize)`: a notification (probably "module unregistered")     | nothing                   |
//! | 8    | `(const fatbin header *, CUmodule *out, void *, void *, u32)`  | cuModuleLoadData          |
//! | 9-11 | unknown (9 was a launch in 2021's cudart; never seen called)   | NOT_SUPPORTED, logged     |
//! | 12   | `(void) -> CUresult`: load the driver's compilers (PTX, NVVM); cudart 13.2+ calls it in its first runtime call | SUCCESS: vgpu's compiler is the mediator's, always ready |
//!
//! TOOLS_RUNTIME_CALLBACK_HOOKS (7 slots): the runtime API's callbacks for tools (CUPTI), which
//! every cudart from 12.0 to 13.5 calls around its API functions:
//!
//! | slot | contract (as callers use it)                                   | vgpu                      |
//! |------|----------------------------------------------------------------|---------------------------|
//! | 0    | the table's size in bytes                                      | 56                        |
//! | 1    | `(u32 callback id, record *)`: run the tools subscribed to that runtime API function (cudart calls it at entry and exit; it ignores the answer) | no tool can subscribe to vgpu's libcuda: nothing to run, SUCCESS |
//! | 2, 6 | `(void **buffer, usize *size)`: scratch buffers for the records | static buffers of 1024 and 14 bytes |
//! | 4    | `(void *, record field *)`: before the callbacks (answer ignored; cudart 13.5's cudaGetDeviceProperties) | nothing to fill with no tool attached, SUCCESS |
//! | 3, 5 | unknown, never seen called                                     | NOT_SUPPORTED, logged     |
//!
//! Every other table is as long as NVIDIA's (CONTEXT_IDENTITY: 96 slots, CONTEXT_CHECKS 16,
//! TOOLS_TLS 4): each slot not described at its function fails with CUDA_ERROR_NOT_SUPPORTED
//! and logs once, naming itself; none is a null pointer. TOOLS_MODULE (6e163fbe), whose length
//! is not known, has the 8 slots cuFFT checks for; it calls slot 7 (a module's functions).
//! CUBLASLT_DATA (1734dc26), length not known either, has 16 slots, all unknown: cuBLASLt 13 calls
//! slot 4 for some data, goes on without it on an error, and dies if the table is missing.
//!
//! A table vgpu does not know gets CUDA_ERROR_NOT_FOUND, as NVIDIA's driver answers for one it
//! lacks (cudart 13.2+ asks for `f8cff951...` and carries on without it), logged once each.

#![allow(non_snake_case)]

use crate::driver::{guard, put, CUdevice, CUresult, Handle};
use crate::state;
use crate::vlog;
use std::collections::HashMap;
use std::ffi::c_void;
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
/// Tools' view of modules; cuFFT fetches slot 7 (a module's functions) when it is created.
pub const TOOLS_MODULE: Uuid = hex("6e163fbeb958444d835ce182aff1991e");
/// cuBLASLt 13's (13.10): fetched once before its first heuristic query, then slot 4 is called
/// as `(void **data, usize *len) -> int` without checking that the table came back: without it
/// the process dies (a call through NULL). On a nonzero answer cuBLASLt goes on without the data
/// (its other path); on 0 it reads `len` bytes at `data` and hands both to slot 13 (a release).
/// What the bytes mean is not known, so every slot is an unknown one.
pub const CUBLASLT_DATA: Uuid = hex("1734dc26800d47458726c0f1e7dd8bca");

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

/// Names of the tables, for the log line of a slot nobody was seen calling.
const TABLE_NAMES: [&str; 9] = ["CUDART_INTERFACE", "TOOLS_RUNTIME_CALLBACK_HOOKS", "TOOLS_TLS", "CONTEXT_CHECKS", "INTEGRITY_CHECK", "CONTEXT_IDENTITY", "CONTEXT_LOCAL_STORAGE", "TOOLS_MODULE", "CUBLASLT_DATA"];

/// Slot `SLOT` of table `TABLE_NAMES[TABLE]`, whose meaning is unknown: fails and logs once.
unsafe extern "C" fn unknown_slot<const TABLE: usize, const SLOT: usize>() -> CUresult {
    static LOGGED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    if !logged.contains(&(TABLE, SLOT)) {
        logged.push((TABLE, SLOT));
        vlog!(crate::log::INFO, "export table slot {}[{SLOT}] called: not supported by vgpu", TABLE_NAMES[TABLE]);
    }
    CUDA_ERROR_NOT_SUPPORTED
}

macro_rules! unknown_slots {
    ($table:expr; $($slot:literal)*) => { [$(unknown_slot::<$table, $slot> as *const () as usize),*] };
}

/// A table of `len` slots (at most 128), each an `unknown_slot` until a known one replaces it:
/// no caller ever finds a null pointer or runs off the end of a table NVIDIA's has that long.
fn stub_table<const TABLE: usize>(len: usize) -> Vec<usize> {
    let all: [usize; 128] = unknown_slots!(TABLE; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127);
    all[..len].to_vec()
}

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

/// Slot 12: have the driver's compilers (PTX JIT, NVVM) loaded. vgpu's are in the mediator,
/// which compiles (or interprets) whatever module it is given: nothing to load here.
unsafe extern "C" fn cudart_load_compilers() -> CUresult {
    CUDA_SUCCESS
}

// --- TOOLS_RUNTIME_CALLBACK_HOOKS --------------------------------------------------------------

/// Slots 2 and 6 hand cudart scratch buffers for tool callbacks; nobody reads them back here,
/// they only have to exist for the life of the process. The first is, as cudart reads it, a
/// 32-bit "a tool subscribed to this API" flag per runtime callback id (CUPTI's
/// CUPTI_RUNTIME_TRACE_CBID_*), which cudart indexes without looking at the size we give: cudart
/// 13.1 has 559 ids, cuSOLVER 12's static copy reads id 536 (cudaStreamGetDevResource) at byte
/// 0x865, past the 1024 bytes this once had. So it is large, and zero: no tool subscribed.
static HOOK_BUF1: Mutex<[u8; 8192]> = Mutex::new([0; 8192]);
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

/// Slot 1: `(callback id, record)`: hand a runtime API call's record to the tools subscribed to
/// it. No tool can subscribe through vgpu's libcuda (CUPTI attaches to NVIDIA's driver), so
/// there is nothing to run.
unsafe extern "C" fn hooks_run_callbacks(_callback_id: u32, _record: *mut c_void) -> CUresult {
    CUDA_SUCCESS
}

/// Slot 4: called before slot 1 with a field of the same record; with no tool attached there is
/// nothing to record.
unsafe extern "C" fn hooks_prepare_record(_what: *mut c_void, _field: *mut c_void) -> CUresult {
    CUDA_SUCCESS
}

// --- TOOLS_TLS ---------------------------------------------------------------------------------

/// Slot 2: `(CUcontext *out)`: the calling thread's current context (NULL when it has none), as
/// cuCtxGetCurrent gives it. cudart asks before its API callbacks; cuBLASLt asks before each
/// gemm and hands the answer to CONTEXT_IDENTITY's slot 4. (Leaving `out` unwritten gave
/// cuBLASLt whatever its stack held: an invalid context, so CUBLAS_STATUS_NOT_SUPPORTED, on
/// every gemm after the first.)
unsafe extern "C" fn tls_current_context(out: *mut Handle) -> CUresult {
    guard("export-table TOOLS_TLS[2]", || put(out, state::current_ctx().unwrap_or(0) as Handle))
}

// --- TOOLS_MODULE ------------------------------------------------------------------------------

/// The callback slot 7 hands each function to: `(user, CUfunction)`.
type FunctionVisitor = unsafe extern "C" fn(user: *mut c_void, function: Handle);

/// Slot 7: `(context, module, visitor, user) -> 1 on success`: calls `visitor(user, f)` for each
/// function of `module`. cuFFT 12 (CUDA 13) loads each of its kernels as a module of its own and
/// gets that one kernel this way instead of by name; it reads nothing inside the handle, and fails
/// the plan (CUFFT_INTERNAL_ERROR) unless the answer is 1. Modules are the process's in vgpu, so
/// the context is not needed to find one.
unsafe extern "C" fn tools_module_visit_functions(_ctx: Handle, module: Handle, visitor: Option<FunctionVisitor>, user: *mut c_void) -> u32 {
    let Some(visitor) = visitor else { return 0 };
    let mut functions = Vec::new();
    if guard("export-table module functions", || {
        functions = crate::driver::module::module_functions(module, usize::MAX)?;
        Ok(())
    }) != CUDA_SUCCESS
    {
        return 0;
    }
    for f in functions {
        // SAFETY: the caller's visitor, called as its contract says, with a live handle; no lock
        // of libcuda is held across the call.
        unsafe { visitor(user, f) };
    }
    1
}

// --- CONTEXT_IDENTITY --------------------------------------------------------------------------

/// Slot 4: a context's unique id, as cuCtxGetId gives it (the current context for NULL).
unsafe extern "C" fn identity_context_id(ctx: Handle, id: *mut u64) -> CUresult {
    // SAFETY: same contract as cuCtxGetId.
    unsafe { crate::driver::cuCtxGetId(ctx, id) }
}

/// Slot 51: `(context, stream, void **object, flags)`: the driver's object of a stream, which
/// cudart 13.5 asks for to describe the stream to tools (cudaStreamIsCapturing and others) and
/// cuBLAS before a gemm, then hands to slot 39. vgpu's stream handles are their own objects;
/// NULL is the legacy default stream, whose handle is CU_STREAM_LEGACY.
unsafe extern "C" fn identity_stream_object(_ctx: Handle, stream: Handle, object: *mut Handle, _flags: u32) -> CUresult {
    guard("export-table stream object", || {
        if stream as usize == usize::MAX {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let stream = if stream.is_null() { vgpu_uapi::proto::STREAM_LEGACY as usize as Handle } else { stream };
        put(object, stream)
    })
}

/// Slot 39: `(context, object, u64 *id)`: the unique id of a stream object from slot 51 (what
/// cuStreamGetId gives): vgpu's stream handles are unique in a process.
unsafe extern "C" fn identity_stream_id(_ctx: Handle, object: Handle, id: *mut u64) -> CUresult {
    guard("export-table stream id", || {
        if object.is_null() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        put(id, object as u64)
    })
}

// --- CONTEXT_LOCAL_STORAGE ---------------------------------------------------------------------

type ClsDtor = Option<unsafe extern "C" fn(Handle, *mut c_void, *mut c_void)>;

struct ClsEntry {
    value: usize,
    _dtor: ClsDtor,
}

/// (context, key) -> value. cudart keeps its per-context state here.
fn cls() -> &'static Mutex<rustc_hash::FxHashMap<(usize, usize), ClsEntry>> {
    static CLS: OnceLock<Mutex<rustc_hash::FxHashMap<(usize, usize), ClsEntry>>> = OnceLock::new();
    CLS.get_or_init(|| Mutex::new(Default::default()))
}

/// cuDevicePrimaryCtxReset: what was stored for context `ctx` goes, so that cudart finds no
/// state of its own there and sets the context up again (its modules were freed with it).
/// The destructors are not called: their arguments' meaning is not known (never seen called).
pub(crate) fn cls_forget_context(ctx: usize) {
    cls().lock().unwrap_or_else(|e| e.into_inner()).retain(|&(c, _), _| c != ctx);
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
        let f = |p: *const ()| p as usize;
        // Slot 0 of most tables is the table's size in bytes.
        let sized = |mut t: Vec<usize>| -> Box<[usize]> {
            t[0] = t.len() * std::mem::size_of::<usize>();
            t.into_boxed_slice()
        };
        let mut m = HashMap::new();
        let mut cudart = stub_table::<0>(13);
        cudart[1] = f(cudart_module_from_wrapper as *const ());
        cudart[2] = f(cudart_get_primary_context as *const ());
        cudart[6] = f(cudart_module_from_wrapper_ex1 as *const ());
        cudart[7] = f(cudart_notify as *const ());
        cudart[8] = f(cudart_module_from_fatbin_ex2 as *const ());
        cudart[12] = f(cudart_load_compilers as *const ());
        m.insert(CUDART_INTERFACE, sized(cudart));
        let mut hooks = stub_table::<1>(7);
        hooks[1] = f(hooks_run_callbacks as *const ());
        hooks[4] = f(hooks_prepare_record as *const ());
        hooks[2] = f(hooks_buffer1 as *const ());
        hooks[6] = f(hooks_buffer2 as *const ());
        m.insert(TOOLS_RUNTIME_CALLBACK_HOOKS, sized(hooks));
        let mut tls = stub_table::<2>(4);
        tls[2] = f(tls_current_context as *const ());
        m.insert(TOOLS_TLS, sized(tls));
        // No size slot in this one.
        let mut storage = stub_table::<6>(4);
        storage[0] = f(cls_put as *const ());
        storage[1] = f(cls_delete as *const ());
        storage[2] = f(cls_get as *const ());
        m.insert(CONTEXT_LOCAL_STORAGE, storage.into_boxed_slice());
        let mut checks = stub_table::<3>(16);
        checks[2] = f(checks_unwrap_context as *const ());
        checks[3] = f(checks_flags as *const ());
        m.insert(CONTEXT_CHECKS, sized(checks));
        let mut integrity = stub_table::<4>(3);
        integrity[1] = f(integrity_check as *const ());
        m.insert(INTEGRITY_CHECK, sized(integrity));
        // NVIDIA's has 95 functions; cudart 13.5 calls 39 and 51, cuBLASLt 4.
        let mut identity = stub_table::<5>(96);
        identity[4] = f(identity_context_id as *const ());
        identity[39] = f(identity_stream_id as *const ());
        identity[51] = f(identity_stream_object as *const ());
        m.insert(CONTEXT_IDENTITY, sized(identity));
        // NVIDIA's length is not known; cuFFT checks that slot 7 is there.
        let mut tools_module = stub_table::<7>(8);
        tools_module[7] = f(tools_module_visit_functions as *const ());
        m.insert(TOOLS_MODULE, sized(tools_module));
        // NVIDIA's length is not known; cuBLASLt 13 calls slot 4, and slot 13 after a success.
        m.insert(CUBLASLT_DATA, sized(stub_table::<8>(16)));
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
                static LOGGED: Mutex<Vec<Uuid>> = Mutex::new(Vec::new());
                let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
                if !logged.contains(&uuid) {
                    logged.push(uuid);
                    vlog!(crate::log::INFO, "cuGetExportTable: table {} is not provided by vgpu", uuid.iter().map(|b| format!("{b:02x}")).collect::<String>());
                }
                put(out, std::ptr::null())?;
                Err(CUDA_ERROR_NOT_FOUND)
            }
        }
    })
}
