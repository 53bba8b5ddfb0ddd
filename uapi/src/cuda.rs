//! CUDA Driver API values that cross our boundaries: CUresult codes and the device attributes
//! the mediator reports. Values are NVIDIA's (cuda.h); only the ones vgpu uses are named.

/// A CUresult as carried in a reply's `status`.
pub type CuResult = u32;

pub const CUDA_SUCCESS: CuResult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CuResult = 3;
pub const CUDA_ERROR_DEINITIALIZED: CuResult = 4;
pub const CUDA_ERROR_NO_DEVICE: CuResult = 100;
pub const CUDA_ERROR_INVALID_DEVICE: CuResult = 101;
pub const CUDA_ERROR_INVALID_IMAGE: CuResult = 200;
pub const CUDA_ERROR_INVALID_CONTEXT: CuResult = 201;
pub const CUDA_ERROR_MAP_FAILED: CuResult = 205;
pub const CUDA_ERROR_NO_BINARY_FOR_GPU: CuResult = 209;
pub const CUDA_ERROR_INVALID_PTX: CuResult = 218;
pub const CUDA_ERROR_INVALID_SOURCE: CuResult = 300;
pub const CUDA_ERROR_FILE_NOT_FOUND: CuResult = 301;
pub const CUDA_ERROR_INVALID_HANDLE: CuResult = 400;
pub const CUDA_ERROR_NOT_FOUND: CuResult = 500;
pub const CUDA_ERROR_NOT_READY: CuResult = 600;
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CuResult = 700;
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: CuResult = 701;
pub const CUDA_ERROR_LAUNCH_TIMEOUT: CuResult = 702;
pub const CUDA_ERROR_ASSERT: CuResult = 710;
pub const CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: CuResult = 712;
pub const CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED: CuResult = 713;
pub const CUDA_ERROR_HARDWARE_STACK_ERROR: CuResult = 714;
pub const CUDA_ERROR_ILLEGAL_INSTRUCTION: CuResult = 715;
pub const CUDA_ERROR_MISALIGNED_ADDRESS: CuResult = 716;
pub const CUDA_ERROR_INVALID_ADDRESS_SPACE: CuResult = 717;
pub const CUDA_ERROR_INVALID_PC: CuResult = 718;
pub const CUDA_ERROR_LAUNCH_FAILED: CuResult = 719;
pub const CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE: CuResult = 720;
pub const CUDA_ERROR_OPERATING_SYSTEM: CuResult = 304;
pub const CUDA_ERROR_NOT_PERMITTED: CuResult = 800;
pub const CUDA_ERROR_NOT_SUPPORTED: CuResult = 801;
pub const CUDA_ERROR_SYSTEM_NOT_READY: CuResult = 802;
pub const CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: CuResult = 900;
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CuResult = 901;
pub const CUDA_ERROR_STREAM_CAPTURE_UNMATCHED: CuResult = 903;
pub const CUDA_ERROR_STREAM_CAPTURE_UNJOINED: CuResult = 904;
pub const CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: CuResult = 906;
pub const CUDA_ERROR_CAPTURED_EVENT: CuResult = 907;
pub const CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: CuResult = 908;
pub const CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE: CuResult = 910;
pub const CUDA_ERROR_UNKNOWN: CuResult = 999;

/// Errors of a kernel that faulted while it ran. CUDA documents each as leaving the context "in an
/// inconsistent state": every later call in it returns the same error, until the context is
/// destroyed or the primary context reset (cuDevicePrimaryCtxReset, cudaDeviceReset).
/// CUDA_ERROR_LAUNCH_TIMEOUT is one too, where a kernel was stopped; the mediator decides that
/// case by why it stopped (see host/src/dispatch.rs).
pub fn is_sticky(code: CuResult) -> bool {
    matches!(
        code,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_LAUNCH_FAILED
    )
}

/// Name and description of a CUresult, as cuGetErrorName / cuGetErrorString report them.
pub fn error_name(code: CuResult) -> Option<(&'static str, &'static str)> {
    Some(match code {
        CUDA_SUCCESS => ("CUDA_SUCCESS", "no error"),
        CUDA_ERROR_INVALID_VALUE => ("CUDA_ERROR_INVALID_VALUE", "invalid argument"),
        CUDA_ERROR_OUT_OF_MEMORY => ("CUDA_ERROR_OUT_OF_MEMORY", "out of memory"),
        CUDA_ERROR_NOT_INITIALIZED => ("CUDA_ERROR_NOT_INITIALIZED", "initialization error"),
        CUDA_ERROR_DEINITIALIZED => ("CUDA_ERROR_DEINITIALIZED", "driver shutting down"),
        CUDA_ERROR_NO_DEVICE => ("CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"),
        CUDA_ERROR_INVALID_DEVICE => ("CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"),
        CUDA_ERROR_INVALID_IMAGE => ("CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"),
        CUDA_ERROR_INVALID_CONTEXT => ("CUDA_ERROR_INVALID_CONTEXT", "invalid device context"),
        CUDA_ERROR_MAP_FAILED => ("CUDA_ERROR_MAP_FAILED", "mapping of buffer object failed"),
        CUDA_ERROR_OPERATING_SYSTEM => ("CUDA_ERROR_OPERATING_SYSTEM", "OS call failed or operation not supported on this OS"),
        CUDA_ERROR_NO_BINARY_FOR_GPU => {
            ("CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device")
        }
        CUDA_ERROR_INVALID_PTX => ("CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"),
        CUDA_ERROR_INVALID_SOURCE => ("CUDA_ERROR_INVALID_SOURCE", "device kernel image is invalid"),
        CUDA_ERROR_FILE_NOT_FOUND => ("CUDA_ERROR_FILE_NOT_FOUND", "file not found"),
        CUDA_ERROR_INVALID_HANDLE => ("CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"),
        CUDA_ERROR_NOT_FOUND => ("CUDA_ERROR_NOT_FOUND", "named symbol not found"),
        CUDA_ERROR_NOT_READY => ("CUDA_ERROR_NOT_READY", "device not ready"),
        CUDA_ERROR_ILLEGAL_ADDRESS => {
            ("CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered")
        }
        CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES => {
            ("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch")
        }
        CUDA_ERROR_LAUNCH_TIMEOUT => ("CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"),
        CUDA_ERROR_ASSERT => ("CUDA_ERROR_ASSERT", "device-side assert triggered"),
        CUDA_ERROR_HARDWARE_STACK_ERROR => ("CUDA_ERROR_HARDWARE_STACK_ERROR", "hardware stack error"),
        CUDA_ERROR_ILLEGAL_INSTRUCTION => {
            ("CUDA_ERROR_ILLEGAL_INSTRUCTION", "an illegal instruction was encountered")
        }
        CUDA_ERROR_MISALIGNED_ADDRESS => ("CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"),
        CUDA_ERROR_INVALID_ADDRESS_SPACE => ("CUDA_ERROR_INVALID_ADDRESS_SPACE", "operation not supported on global/shared address space"),
        CUDA_ERROR_INVALID_PC => ("CUDA_ERROR_INVALID_PC", "invalid program counter"),
        CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED => {
            ("CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped")
        }
        CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED => {
            ("CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region")
        }
        CUDA_ERROR_LAUNCH_FAILED => ("CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"),
        CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE => ("CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE", "too many blocks in cooperative launch"),
        CUDA_ERROR_NOT_PERMITTED => ("CUDA_ERROR_NOT_PERMITTED", "operation not permitted"),
        CUDA_ERROR_NOT_SUPPORTED => ("CUDA_ERROR_NOT_SUPPORTED", "operation not supported"),
        CUDA_ERROR_SYSTEM_NOT_READY => ("CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized"),
        CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED => {
            ("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing")
        }
        CUDA_ERROR_STREAM_CAPTURE_INVALIDATED => {
            ("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture")
        }
        CUDA_ERROR_STREAM_CAPTURE_IMPLICIT => {
            ("CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "operation would make the legacy stream depend on a capturing blocking stream")
        }
        CUDA_ERROR_STREAM_CAPTURE_UNMATCHED => {
            ("CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", "capture was not initiated in this stream")
        }
        CUDA_ERROR_STREAM_CAPTURE_UNJOINED => {
            ("CUDA_ERROR_STREAM_CAPTURE_UNJOINED", "capturing stream has unjoined work")
        }
        CUDA_ERROR_CAPTURED_EVENT => ("CUDA_ERROR_CAPTURED_EVENT", "operation not permitted on an event last recorded in a capturing stream"),
        CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD => {
            ("CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "attempt to terminate a thread-local capture sequence from another thread")
        }
        CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE => ("CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE", "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update"),
        CUDA_ERROR_UNKNOWN => ("CUDA_ERROR_UNKNOWN", "unknown error"),
        _ => return None,
    })
}

/// Number of CUdevice_attribute slots carried in a device profile (attribute ids are < this).
pub const DEVICE_ATTRIBUTE_SLOTS: usize = 160;

/// CUdevice_attribute ids the mediator's profiles set explicitly (cuda.h numbering).
pub mod attr {
    pub const MAX_THREADS_PER_BLOCK: usize = 1;
    pub const MAX_BLOCK_DIM_X: usize = 2;
    pub const MAX_BLOCK_DIM_Y: usize = 3;
    pub const MAX_BLOCK_DIM_Z: usize = 4;
    pub const MAX_GRID_DIM_X: usize = 5;
    pub const MAX_GRID_DIM_Y: usize = 6;
    pub const MAX_GRID_DIM_Z: usize = 7;
    pub const MAX_SHARED_MEMORY_PER_BLOCK: usize = 8;
    pub const TOTAL_CONSTANT_MEMORY: usize = 9;
    pub const WARP_SIZE: usize = 10;
    pub const MAX_PITCH: usize = 11;
    pub const MAX_REGISTERS_PER_BLOCK: usize = 12;
    pub const CLOCK_RATE: usize = 13;
    pub const TEXTURE_ALIGNMENT: usize = 14;
    pub const GPU_OVERLAP: usize = 15;
    pub const MULTIPROCESSOR_COUNT: usize = 16;
    pub const KERNEL_EXEC_TIMEOUT: usize = 17;
    pub const INTEGRATED: usize = 18;
    pub const CAN_MAP_HOST_MEMORY: usize = 19;
    pub const COMPUTE_MODE: usize = 20;
    pub const CONCURRENT_KERNELS: usize = 31;
    pub const ECC_ENABLED: usize = 32;
    pub const PCI_BUS_ID: usize = 33;
    pub const PCI_DEVICE_ID: usize = 34;
    pub const TCC_DRIVER: usize = 35;
    pub const MEMORY_CLOCK_RATE: usize = 36;
    pub const GLOBAL_MEMORY_BUS_WIDTH: usize = 37;
    pub const L2_CACHE_SIZE: usize = 38;
    pub const MAX_THREADS_PER_MULTIPROCESSOR: usize = 39;
    pub const ASYNC_ENGINE_COUNT: usize = 40;
    pub const UNIFIED_ADDRESSING: usize = 41;
    pub const PCI_DOMAIN_ID: usize = 50;
    pub const COMPUTE_CAPABILITY_MAJOR: usize = 75;
    pub const COMPUTE_CAPABILITY_MINOR: usize = 76;
    pub const STREAM_PRIORITIES_SUPPORTED: usize = 78;
    pub const GLOBAL_L1_CACHE_SUPPORTED: usize = 79;
    pub const LOCAL_L1_CACHE_SUPPORTED: usize = 80;
    pub const MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: usize = 81;
    pub const MAX_REGISTERS_PER_MULTIPROCESSOR: usize = 82;
    pub const MANAGED_MEMORY: usize = 83;
    pub const MULTI_GPU_BOARD: usize = 84;
    pub const MULTI_GPU_BOARD_GROUP_ID: usize = 85;
    pub const HOST_NATIVE_ATOMIC_SUPPORTED: usize = 86;
    pub const SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO: usize = 87;
    pub const PAGEABLE_MEMORY_ACCESS: usize = 88;
    pub const CONCURRENT_MANAGED_ACCESS: usize = 89;
    pub const COMPUTE_PREEMPTION_SUPPORTED: usize = 90;
    pub const CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: usize = 91;
    pub const PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES: usize = 100;
    pub const DIRECT_MANAGED_MEM_ACCESS_FROM_HOST: usize = 101;
    pub const COOPERATIVE_LAUNCH: usize = 95;
    pub const MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: usize = 97;
    pub const CAN_FLUSH_REMOTE_WRITES: usize = 98;
    pub const HOST_REGISTER_SUPPORTED: usize = 99;
    pub const MAX_BLOCKS_PER_MULTIPROCESSOR: usize = 106;
    pub const GENERIC_COMPRESSION_SUPPORTED: usize = 107;
    pub const MAX_PERSISTING_L2_CACHE_SIZE: usize = 108;
    pub const MAX_ACCESS_POLICY_WINDOW_SIZE: usize = 109;
    pub const RESERVED_SHARED_MEMORY_PER_BLOCK: usize = 111;
    pub const SPARSE_CUDA_ARRAY_SUPPORTED: usize = 112;
    pub const READ_ONLY_HOST_REGISTER_SUPPORTED: usize = 113;
    pub const MEMORY_POOLS_SUPPORTED: usize = 115;
    pub const VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: usize = 102;
    pub const HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: usize = 103;
    pub const MEMPOOL_SUPPORTED_HANDLE_TYPES: usize = 119;
    pub const IPC_EVENT_SUPPORTED: usize = 125;
    pub const HANDLE_TYPE_FABRIC_SUPPORTED: usize = 128;
}

/// CU_MEMHOSTALLOC_* and CU_MEMHOSTREGISTER_* flags (cuda.h: the two families share values).
pub mod host_flags {
    pub const PORTABLE: u32 = 1;
    pub const DEVICEMAP: u32 = 2;
    /// CU_MEMHOSTALLOC_WRITECOMBINED, CU_MEMHOSTREGISTER_IOMEMORY.
    pub const WRITECOMBINED_OR_IOMEMORY: u32 = 4;
    pub const REGISTER_READ_ONLY: u32 = 8;
}

/// The virtual memory management structures of cuda.h, as libcuda receives them from
/// applications and the host's cuda backend passes them to a real driver.
pub mod vmm {
    use core::ffi::{c_int, c_void};

    /// CUmemLocation.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct MemLocation {
        pub ty: c_int,
        pub id: c_int,
    }

    /// CUmemAllocationProp.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct MemAllocationProp {
        pub ty: c_int,
        pub handle_types: c_int,
        pub location: MemLocation,
        pub win32_metadata: *mut c_void,
        pub alloc_flags: [u8; 8],
    }

    /// CUmemAccessDesc.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct MemAccessDesc {
        pub location: MemLocation,
        pub flags: c_int,
    }

    pub const CU_MEM_ALLOCATION_TYPE_PINNED: c_int = 1;
    pub const CU_MEM_LOCATION_TYPE_DEVICE: c_int = 1;
    pub const CU_MEM_ACCESS_FLAGS_PROT_READ: c_int = 1;
    pub const CU_MEM_ACCESS_FLAGS_PROT_READWRITE: c_int = 3;
    /// CUmemAllocationHandleType: a POSIX file descriptor (an `int`).
    pub const CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR: c_int = 1;
}
