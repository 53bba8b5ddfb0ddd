//! vgpu's ABIs, all in one place: the command protocol spoken between a guest's `libcuda.so.1`
//! and the host mediator, its error codes and version, and the device profile layout.
//!
//! `no_std` and dependency-free so that the guest kernel module can include it by source later.
//! All multi-byte fields on the wire are little-endian.
#![no_std]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

pub mod bar0;
pub mod channel;
pub mod cuda;
pub mod image;
pub mod proto;
pub mod wire;

/// Version of the command protocol. A mediator refuses a client whose major differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// Driver version reported to applications (cuDriverGetVersion): CUDA 13.0, so that both
/// cudart 12.x and 13.x accept it.
pub const CUDA_DRIVER_VERSION: i32 = 13000;

/// The NVIDIA display-driver version string reported everywhere (NVML, /proc, nvidia-smi).
pub const NVIDIA_DRIVER_VERSION: &str = "580.65.06";

/// PCI identity of the VGPU-STUB device (an "H100").
pub const PCI_VENDOR_ID: u16 = 0x10de;
pub const PCI_DEVICE_ID: u16 = 0x2331;
pub const PCI_CLASS: u32 = 0x030200;
/// Subsystem id of an H100 SXM5 80GB board.
pub const PCI_SUBSYSTEM_ID: u16 = 0x16c1;

/// Device virtual addresses handed out by the mediator live in this window of every guest
/// process's address space; libcuda reserves it (PROT_NONE) so that no host allocation can ever
/// alias a device pointer, which is what makes unified addressing (cuMemcpy, cudaMemcpyDefault) work.
pub const DEVICE_VA_BASE: u64 = 0x2000_0000_0000;
pub const DEVICE_VA_SIZE: u64 = 0x1000_0000_0000;

