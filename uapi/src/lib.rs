//! vgpu's ABIs, all in one place: the command protocol spoken between a guest's `libcuda.so.1`
//! and the host mediator, its error codes and version, and the device profile layout.
//!
//! `no_std` and dependency-free so that the guest kernel module can include it by source later.
//! All multi-byte fields on the wire are little-endian.
#![no_std]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

pub mod array;
pub mod bar0;
pub mod channel;
pub mod cuda;
pub mod image;
pub mod proto;
pub mod share;
pub mod shm_ring;
pub mod version;
pub mod wire;

pub use version::*;

/// Device virtual addresses handed out by the mediator live in this window of every guest
/// process's address space; libcuda reserves it (PROT_NONE) so that no host allocation can ever
/// alias a device pointer, which is what makes unified addressing (cuMemcpy, cudaMemcpyDefault) work.
pub const DEVICE_VA_BASE: u64 = 0x2000_0000_0000;
pub const DEVICE_VA_SIZE: u64 = 0x1000_0000_0000;

