//! A CUDA driver (`libcuda.so.1`) loaded by path, and the Driver API entry points the `cuda`
//! backend calls.
//!
//! The backend must not know or care which driver it loaded: NVIDIA's on a GPU host, or vgpu's
//! own libcuda talking to another mediator (the loopback the tests use). Entry points are
//! resolved by their exact versioned symbol names (`cuMemAlloc_v2`...), which every driver of
//! the CUDA 12 and 13 families exports with these signatures. Results are plain integers (the
//! CUresult codes of `vgpu_uapi::cuda`), not a Rust enum: a driver may return a code newer than
//! our list, and that must be a value we pass on, never undefined behaviour. (That is also why
//! cudarc's `sys` bindings are not used here: their CUresult is such an enum.)

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use vgpu_uapi::array::c as array;
use vgpu_uapi::cuda::vmm::{MemAccessDesc, MemAllocationProp};
use vgpu_uapi::cuda::*;
use vgpu_uapi::share::IpcHandle;

pub type Ptr = *mut c_void;

macro_rules! entry_points {
    ($($name:ident: fn($($arg:ty),*);)*) => {
        /// The Driver API entry points the backend uses, resolved once at load.
        #[allow(non_snake_case)]
        pub struct Api {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> CuResult,)*
        }

        impl Api {
            fn resolve(lib: &libloading::Library) -> Result<Api, String> {
                Ok(Api {
                    $($name: {
                        let sym = concat!(stringify!($name), "\0").as_bytes();
                        // SAFETY: the symbol is the Driver API function of that name, whose C
                        // signature (cuda.h) is the one declared in this table; the library stays
                        // loaded as long as the Api (both live in CudaDriver).
                        unsafe { *lib.get::<unsafe extern "C" fn($($arg),*) -> CuResult>(sym).map_err(|e| format!("{}: {e}", stringify!($name)))? }
                    },)*
                })
            }
        }
    };
}

entry_points! {
    cuInit: fn(c_uint);
    cuDriverGetVersion: fn(*mut c_int);
    cuDeviceGetCount: fn(*mut c_int);
    cuDeviceGet: fn(*mut c_int, c_int);
    cuDeviceGetName: fn(*mut c_char, c_int, c_int);
    cuDeviceGetUuid_v2: fn(*mut [u8; 16], c_int);
    cuDeviceTotalMem_v2: fn(*mut usize, c_int);
    cuDeviceGetAttribute: fn(*mut c_int, c_int, c_int);
    cuDevicePrimaryCtxRetain: fn(*mut Ptr, c_int);
    cuDevicePrimaryCtxRelease_v2: fn(c_int);
    cuDevicePrimaryCtxReset_v2: fn(c_int);
    cuCtxSetCurrent: fn(Ptr);
    cuCtxSynchronize: fn();
    cuGetErrorName: fn(CuResult, *mut *const c_char);
    cuGetErrorString: fn(CuResult, *mut *const c_char);
    cuMemGetInfo_v2: fn(*mut usize, *mut usize);
    cuMemAlloc_v2: fn(*mut u64, usize);
    cuMemFree_v2: fn(u64);
    cuPointerGetAttribute: fn(*mut c_void, c_int, u64);
    cuMemcpyHtoD_v2: fn(u64, *const c_void, usize);
    cuMemcpyDtoH_v2: fn(*mut c_void, u64, usize);
    cuMemcpyDtoD_v2: fn(u64, u64, usize);
    cuMemHostRegister_v2: fn(Ptr, usize, c_uint);
    cuMemHostUnregister: fn(Ptr);
    cuMemsetD8_v2: fn(u64, u8, usize);
    cuMemsetD16_v2: fn(u64, u16, usize);
    cuMemsetD32_v2: fn(u64, u32, usize);
    cuModuleLoadData: fn(*mut Ptr, *const c_void);
    cuModuleUnload: fn(Ptr);
    cuModuleGetFunction: fn(*mut Ptr, Ptr, *const c_char);
    cuModuleGetGlobal_v2: fn(*mut u64, *mut usize, Ptr, *const c_char);
    cuFuncGetAttribute: fn(*mut c_int, c_int, Ptr);
    cuFuncSetAttribute: fn(Ptr, c_int, c_int);
    cuFuncGetParamInfo: fn(Ptr, usize, *mut usize, *mut usize);
    cuLaunchKernel: fn(Ptr, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Ptr, *mut *mut c_void, *mut *mut c_void);
    cuLaunchCooperativeKernel: fn(Ptr, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Ptr, *mut *mut c_void);
    cuStreamCreate: fn(*mut Ptr, c_uint);
    cuStreamDestroy_v2: fn(Ptr);
    cuStreamSynchronize: fn(Ptr);
    cuStreamQuery: fn(Ptr);
    cuStreamWaitEvent: fn(Ptr, Ptr, c_uint);
    cuEventCreate: fn(*mut Ptr, c_uint);
    cuEventDestroy_v2: fn(Ptr);
    cuEventRecord: fn(Ptr, Ptr);
    cuEventSynchronize: fn(Ptr);
    cuEventQuery: fn(Ptr);
    cuEventElapsedTime: fn(*mut f32, Ptr, Ptr);
    cuMemCreate: fn(*mut u64, usize, *const MemAllocationProp, u64);
    cuMemRelease: fn(u64);
    cuMemAddressReserve: fn(*mut u64, usize, usize, u64, u64);
    cuMemAddressFree: fn(u64, usize);
    cuMemMap: fn(u64, usize, usize, u64, u64);
    cuMemUnmap: fn(u64, usize);
    cuMemSetAccess: fn(u64, usize, *const MemAccessDesc, usize);
    cuMemExportToShareableHandle: fn(*mut c_void, u64, c_int, u64);
    cuMemImportFromShareableHandle: fn(*mut u64, *mut c_void, c_int);
    cuArray3DCreate_v2: fn(*mut Ptr, *const array::Array3DDescriptor);
    cuArrayDestroy: fn(Ptr);
    cuMemcpy3D_v2: fn(*const array::Memcpy3D);
    cuTexObjectCreate: fn(*mut u64, *const array::ResourceDesc, *const array::TextureDesc, *const c_void);
    cuTexObjectDestroy: fn(u64);
    cuSurfObjectCreate: fn(*mut u64, *const array::ResourceDesc);
    cuSurfObjectDestroy: fn(u64);
    cuIpcGetMemHandle: fn(*mut IpcHandle, u64);
    cuIpcOpenMemHandle_v2: fn(*mut u64, IpcHandle, c_uint);
    cuIpcCloseMemHandle: fn(u64);
    cuIpcGetEventHandle: fn(*mut IpcHandle, Ptr);
    cuIpcOpenEventHandle: fn(*mut Ptr, IpcHandle);
}

/// A loaded driver: the library (kept loaded) and its entry points.
pub struct CudaDriver {
    pub api: Api,
    pub path: PathBuf,
    pub version: i32,
    _lib: libloading::Library,
}

// SAFETY: the Driver API is thread-safe (any thread may call it; a context made current on a
// thread is what that thread's calls use); the table holds only function pointers.
unsafe impl Send for CudaDriver {}
// SAFETY: as above; nothing in CudaDriver is mutated after load.
unsafe impl Sync for CudaDriver {}

/// Where the system's driver is: the name the dynamic loader resolves through ldconfig's cache.
pub const SYSTEM_DRIVER: &str = "libcuda.so.1";

impl CudaDriver {
    /// Loads `path` (a file, or a bare library name for the loader's search) and initializes it.
    pub fn load(path: &Path) -> Result<CudaDriver, String> {
        // SAFETY: loading a library runs its initializers; a CUDA driver's are the vendor's and
        // vgpu's own libcuda's are ours. The path is the operator's choice (option or config).
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let api = Api::resolve(&lib).map_err(|e| format!("{} lacks a Driver API entry point: {e}", path.display()))?;
        let mut version = 0;
        // SAFETY: entry points of the loaded driver, called with valid out-pointers.
        unsafe {
            check(&api, (api.cuInit)(0), "cuInit")?;
            check(&api, (api.cuDriverGetVersion)(&mut version), "cuDriverGetVersion")?;
        }
        Ok(CudaDriver { api, path: path.to_path_buf(), version, _lib: lib })
    }

    /// A failed call as the backend reports it: the driver's code, its name and description.
    pub fn error(&self, code: CuResult, call: &str) -> crate::backend::CmdError {
        crate::backend::CmdError::new(code, format!("{call}: {}", describe(&self.api, code)))
    }

    /// Ok for CUDA_SUCCESS, else the driver's error.
    pub fn ok(&self, code: CuResult, call: &str) -> Result<(), crate::backend::CmdError> {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self.error(code, call))
        }
    }
}

fn check(api: &Api, code: CuResult, call: &str) -> Result<(), String> {
    if code == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{call} failed: {}", describe(api, code)))
    }
}

/// "CUDA_ERROR_X (description)" as the driver names a code.
fn describe(api: &Api, code: CuResult) -> String {
    let mut name: *const c_char = std::ptr::null();
    let mut text: *const c_char = std::ptr::null();
    // SAFETY: valid out-pointers; the driver returns pointers to static NUL-terminated strings
    // (or leaves them null for a code it does not know).
    let (n, t) = unsafe { ((api.cuGetErrorName)(code, &mut name), (api.cuGetErrorString)(code, &mut text)) };
    // SAFETY: non-null results of cuGetErrorName/String are static C strings.
    let s = |r: CuResult, p: *const c_char| if r == CUDA_SUCCESS && !p.is_null() { Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()) } else { None };
    match (s(n, name), s(t, text)) {
        (Some(n), Some(t)) => format!("{n} ({t})"),
        (Some(n), None) => n,
        _ => format!("CUresult {code}"),
    }
}

/// A name as the driver takes it; names with a NUL inside are refused.
pub fn c_name(name: &str) -> Result<CString, crate::backend::CmdError> {
    CString::new(name).map_err(|_| crate::backend::CmdError::new(CUDA_ERROR_INVALID_VALUE, "a name with a NUL byte"))
}
