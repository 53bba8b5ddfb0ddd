//! The `sim` backend: a GPU simulated on the host CPU (memory, fatbin/PTX modules, PTX interpreter).

pub mod device;
pub use vgpu_fatbin as fatbin;
pub mod memory;
pub mod ptx;

pub use device::SimBackend;

/// The CUresult a failed launch reports.
pub fn exec_error_code(e: &ptx::ExecError) -> vgpu_uapi::cuda::CuResult {
    use ptx::ExecError::*;
    use vgpu_uapi::cuda::*;
    match e {
        IllegalAddress { .. } => CUDA_ERROR_ILLEGAL_ADDRESS,
        Misaligned { .. } => CUDA_ERROR_MISALIGNED_ADDRESS,
        Unsupported(_) => CUDA_ERROR_NOT_SUPPORTED,
        Trap(_) => CUDA_ERROR_LAUNCH_FAILED,
        Assert(_) => CUDA_ERROR_ASSERT,
        BarrierDeadlock(_) | Undefined(_) => CUDA_ERROR_LAUNCH_FAILED,
        Timeout(_) | TimeLimit(_) => CUDA_ERROR_LAUNCH_TIMEOUT,
        OutOfResources(_) => CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        Cancelled => CUDA_ERROR_LAUNCH_FAILED,
    }
}
