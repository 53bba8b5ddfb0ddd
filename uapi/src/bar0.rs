//! The VGPU-STUB device's BAR0 register map (32-bit registers, little-endian).
//! Self-contained (no `crate::` paths) so the guest kernel module can include this file by source.

/// BAR0 size; the MSI-X table and PBA live in its upper half.
pub const SIZE: u64 = 4096;
/// RO: [`MAGIC_VALUE`].
pub const MAGIC: u64 = 0x000;
pub const MAGIC_VALUE: u32 = 0x5550_4756; // "VGPU"
/// RO: the command protocol version the device speaks (`PROTOCOL_VERSION` in uapi).
pub const VERSION: u64 = 0x004;
/// RO: capability bits (none defined yet).
pub const CAPS: u64 = 0x008;
/// RW: scratch register for the driver's self-test.
pub const SCRATCH: u64 = 0x00c;
/// WO: writing N raises MSI-X vector N (the driver's interrupt self-test).
pub const IRQ_TEST: u64 = 0x010;
/// MSI-X table and pending-bit array offsets.
pub const MSIX_TABLE: u32 = 0x800;
pub const MSIX_PBA: u32 = 0xc00;
pub const MSIX_VECTORS: u32 = 4;
