//! `libcuda.so.1` for vgpu: the CUDA Driver API, forwarded to the vgpu mediator.
//!
//! Applications keep NVIDIA's own cudart/cuBLAS; those find us through the normal loader
//! (ldconfig), ask for entry points with `cuGetProcAddress`, and for the private tables with
//! `cuGetExportTable`. Every entry point NVIDIA's headers declare is exported; the ones vgpu does
//! not implement return CUDA_ERROR_NOT_SUPPORTED and say so once on stderr.
//!
//! Environment: see vgpu-client (`VGPU_SOCKET`, `VGPU_LOG`).

pub mod dark_api;
pub mod driver;
pub mod integrity;
pub mod state;

pub use driver::CUresult;
pub use vgpu_client::{log, vlog};
