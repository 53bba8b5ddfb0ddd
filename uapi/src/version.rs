//! Versions and PCI identity. Self-contained (no `crate::` paths) so the guest kernel module
//! can include it by source.

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
