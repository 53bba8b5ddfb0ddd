//! The VGPU-STUB device's BAR0 register map (32-bit registers, little-endian).
//! Self-contained (no `crate::` paths) so the guest kernel module can include this file by source.

/// BAR0 size; the MSI-X table and PBA live in its upper half.
pub const SIZE: u64 = 4096;
/// RO: [`MAGIC_VALUE`].
pub const MAGIC: u64 = 0x000;
pub const MAGIC_VALUE: u32 = 0x5550_4756; // "VGPU"
/// RO: the command protocol version the device speaks (`PROTOCOL_VERSION` in uapi).
pub const VERSION: u64 = 0x004;
/// RO: capability bits ([`CAP_CHANNELS`], [`CAP_PINNED`]).
pub const CAPS: u64 = 0x008;
/// The device serves channels (rings in guest memory, see `channel.rs`).
pub const CAP_CHANNELS: u32 = 1 << 0;
/// The device reaches pinned guest pages directly: [`CMD_PIN`], `OP_SEND_PINNED`, `OP_RECV_PINNED`.
pub const CAP_PINNED: u32 = 1 << 1;
/// RW: scratch register for the driver's self-test.
pub const SCRATCH: u64 = 0x00c;
/// WO: writing N raises MSI-X vector N (the driver's interrupt self-test).
pub const IRQ_TEST: u64 = 0x010;

// Channel control. To open channel N: write the channel area's bus address (CHAN_ADDR_LO/HI)
// and size (CHAN_SIZE), then write `CMD_OPEN << 16 | N` to CHAN_CMD and read CHAN_STATUS
// (0 or an errno value; the read also orders it after the write). Closing is `CMD_CLOSE << 16 | N`.
/// RW: low 32 bits of the channel area's bus address (4 KiB aligned).
pub const CHAN_ADDR_LO: u64 = 0x020;
/// RW: high 32 bits of the channel area's bus address.
pub const CHAN_ADDR_HI: u64 = 0x024;
/// RW: size of the channel area in bytes (multiple of 4 KiB, see `channel::MIN_AREA_SIZE`).
pub const CHAN_SIZE: u64 = 0x028;
/// WO: `cmd << 16 | channel`.
pub const CHAN_CMD: u64 = 0x02c;
pub const CMD_OPEN: u32 = 1;
pub const CMD_CLOSE: u32 = 2;
/// `CMD_PIN << 16 | N`: channel N may use a pinned region from now on. The driver pinned a
/// process's pages and wrote a pin request at CHAN_ADDR_LO/HI (8-byte aligned): the words of
/// [`pin_request`], then one u64 bus address per page, in order. The region is `len` bytes from
/// `offset` in the first page. The device copies the request while handling the command (it may
/// be freed after CHAN_STATUS is read). Status: 0, EINVAL (bad shape), EEXIST (id in use), ENOSPC
/// (over [`MAX_PINS`] or the device's total), EFAULT (request or pages outside guest RAM), ENOENT
/// (channel not open).
pub const CMD_PIN: u32 = 3;
/// `CMD_UNPIN << 16 | N`: forgets region PIN_ID of channel N. Once CHAN_STATUS is read the device
/// no longer touches its pages (a descriptor still using it completes with EFAULT). Closing a
/// channel forgets all its regions.
pub const CMD_UNPIN: u32 = 4;
/// RO: result of the last CHAN_CMD: 0, or a Linux errno value (EINVAL, EBUSY, ECONNREFUSED...).
pub const CHAN_STATUS: u64 = 0x030;
/// WO: the number of a channel with new submissions (its submission ring's tail moved).
pub const DOORBELL: u64 = 0x034;
/// RO: how many channels the device serves (channel numbers are 0..N).
pub const CHANNELS: u64 = 0x038;
/// RO: the GPU behind the device as the mediator reports it, read by the device process when it
/// starts (all zero if the mediator did not answer): GPU_NAME_LEN bytes of its name (ASCII,
/// NUL-padded), then its 16-byte UUID. The guest driver shows them in /proc/driver/nvidia.
pub const GPU_NAME: u64 = 0x040;
pub const GPU_NAME_LEN: usize = 64;
pub const GPU_UUID: u64 = 0x080;
pub const GPU_UUID_LEN: usize = 16;
/// RW: the region the next CMD_UNPIN forgets.
pub const PIN_ID: u64 = 0x090;
/// The region's pages were pinned for reading only: the device never writes them.
pub const PIN_READ_ONLY: u32 = 1 << 0;
/// Largest region (pages; 4 GiB) and most regions per channel.
pub const MAX_PIN_PAGES: u32 = 1 << 20;
pub const MAX_PINS: u32 = 4096;
/// Words of a pin request's head (its page addresses follow).
pub const PIN_REQUEST_WORDS: usize = 3;

/// A pin request's head: region `id` (chosen by the driver, unique per channel), `flags`
/// ([`PIN_READ_ONLY`]), `offset` of the region in the first page, number of `pages`, `len` bytes.
pub const fn pin_request(id: u32, flags: u32, offset: u32, pages: u32, len: u64) -> [u64; PIN_REQUEST_WORDS] {
    [id as u64 | (flags as u64) << 32, offset as u64 | (pages as u64) << 32, len]
}

/// The fields of a pin request's head: (id, flags, offset, pages, len).
pub const fn parse_pin_request(w: [u64; PIN_REQUEST_WORDS]) -> (u32, u32, u32, u32, u64) {
    (w[0] as u32, (w[0] >> 32) as u32, w[1] as u32, (w[1] >> 32) as u32, w[2])
}
/// End of the register block the driver maps.
pub const REGS_END: u64 = 0x094;

/// MSI-X table and pending-bit array offsets. Completions on any channel raise
/// [`COMPLETION_VECTOR`]; the driver then checks the channels' completion rings.
pub const MSIX_TABLE: u32 = 0x800;
pub const MSIX_PBA: u32 = 0xc00;
pub const MSIX_VECTORS: u32 = 4;
pub const COMPLETION_VECTOR: u32 = 0;
