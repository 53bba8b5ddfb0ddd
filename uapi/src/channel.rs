//! Channels: how a guest process talks to the mediator through the VGPU-STUB device.
//! Self-contained (no `crate::` paths) so the guest kernel module can include it by source.
//!
//! Each open file of /dev/nvidiactl or /dev/nvidia<N> may open one channel. The driver
//! allocates a DMA-coherent *channel area*, tells the device its bus address (BAR0 CHAN_*),
//! and lets the process mmap it. The area holds a submission ring, a completion ring and a
//! staging buffer:
//!
//! ```text
//! 0x000 sq_tail  u32   written by the guest: descriptors 0..sq_tail have been posted
//! 0x040 sq_head  u32   written by the device: descriptors 0..sq_head have been consumed
//! 0x080 cq_tail  u32   written by the device: completions 0..cq_tail are valid
//! 0x0c0 cq_head  u32   written by the guest: completions 0..cq_head have been read
//! 0x0e0 polling  u32   written by the device: 1 while it watches sq_tail on its own, so a
//!                      guest that posts then needs no doorbell
//! 0x0f0 quiet    u32   written by the guest: 1 while it watches cq_tail on its own, so a
//!                      completion then needs no interrupt
//! 0x100 sq[SQ_ENTRIES] of Desc (32 bytes each)
//! 0x800 cq[CQ_ENTRIES] of Completion (16 bytes each)
//! 0x1000 staging buffer up to the end of the area
//! ```
//!
//! Indices are free-running u32 counters; entry `i` lives in slot `i % ENTRIES`. The guest
//! never has more than `CQ_ENTRIES` descriptors outstanding, so completions cannot overrun.
//!
//! A channel is a byte stream to one mediator session, carrying exactly the messages of
//! `proto.rs` (the socket transport carries the same bytes): [`OP_SEND`] hands the mediator
//! `len` bytes taken from the area, [`OP_RECV`] waits for at least one byte of the mediator's
//! reply and writes up to `len` bytes into the area; its completion says how many.
//! The device validates every descriptor; a bad one completes with `EINVAL` and the channel
//! goes on. The driver never interprets what goes through.

pub const SQ_TAIL: usize = 0x000;
pub const SQ_HEAD: usize = 0x040;
pub const CQ_TAIL: usize = 0x080;
pub const CQ_HEAD: usize = 0x0c0;
/// The device's "watching sq_tail" flag. Lost wake-ups are ruled out by ordering: the guest
/// stores sq_tail, then (full fence) reads `polling`; the device clears `polling`, then (full
/// fence) reads sq_tail once more before it waits for a doorbell.
pub const POLLING: usize = 0x0e0;
/// The guest's "watching cq_tail" flag, the mirror image of POLLING: while it is 1 the device
/// raises no completion interrupt (under emulation each one costs the guest more than a short
/// call). 0, what the zeroed area starts with and what a guest that never writes it leaves,
/// means an interrupt per completion. Lost wake-ups are ruled out by ordering: the device
/// stores cq_tail, then (full fence) reads `quiet`; a guest about to sleep clears `quiet`, then
/// (full fence) reads cq_tail once more.
pub const QUIET: usize = 0x0f0;
pub const SQ_RING: usize = 0x100;
pub const CQ_RING: usize = 0x800;
pub const SQ_ENTRIES: u32 = 32;
pub const CQ_ENTRIES: u32 = 32;
/// Where the staging buffer starts.
pub const STAGING: usize = 0x1000;
/// Smallest and largest channel areas the device accepts.
pub const MIN_AREA_SIZE: u64 = 0x2000;
pub const MAX_AREA_SIZE: u64 = 64 << 20;
/// The area the driver allocates per channel (header page + staging).
pub const AREA_SIZE: usize = 2 << 20;

/// Descriptor opcodes.
pub const OP_SEND: u32 = 1;
pub const OP_RECV: u32 = 2;
/// Pinned memory (devices with `bar0::CAP_PINNED`): the bytes come from or go to a region of a
/// process's memory the driver pinned ([`VGPU_IOCTL_PIN`]), not staging: `flags` is the region's
/// id, `offset` is relative to the region's start. `OP_SEND_PINNED` hands the mediator `len`
/// bytes of the region; `OP_RECV_PINNED` writes exactly `len` bytes of the mediator's reply into
/// it (waiting for all of them). So a copy from or to pinned memory is not copied in the guest.
/// Where the mediator reaches the channel's pinned regions itself (its Hello answers
/// `proto::HELLO_GUEST_PINNED`: the device shared them, see `qemu/stub/src/link.rs`), libcuda
/// names the region in its request instead and neither op carries the bytes.
pub const OP_SEND_PINNED: u32 = 3;
pub const OP_RECV_PINNED: u32 = 4;

/// A submission (32 bytes). For SEND/RECV `offset` is relative to the channel area and the bytes
/// must lie in staging; for the pinned ops see [`OP_SEND_PINNED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub op: u32,
    pub flags: u32,
    /// Returned in the completion unchanged.
    pub tag: u64,
    pub offset: u64,
    pub len: u64,
}
pub const DESC_SIZE: usize = 32;
const _: () = assert!(core::mem::size_of::<Desc>() == DESC_SIZE);

/// A completion (16 bytes): `status` 0 or a Linux errno value (EINVAL: bad descriptor;
/// EPIPE: the mediator closed the session), `len` bytes moved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub tag: u64,
    pub status: u32,
    pub len: u32,
}
pub const COMPLETION_SIZE: usize = 16;
const _: () = assert!(core::mem::size_of::<Completion>() == COMPLETION_SIZE);

impl Desc {
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..4].copy_from_slice(&self.op.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.tag.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| (u32_at(o) as u64) | ((u32_at(o + 4) as u64) << 32);
        Desc { op: u32_at(0), flags: u32_at(4), tag: u64_at(8), offset: u64_at(16), len: u64_at(24) }
    }
}

impl Completion {
    pub fn to_bytes(&self) -> [u8; COMPLETION_SIZE] {
        let mut b = [0u8; COMPLETION_SIZE];
        b[0..8].copy_from_slice(&self.tag.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; COMPLETION_SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Completion { tag: (u32_at(0) as u64) | ((u32_at(4) as u64) << 32), status: u32_at(8), len: u32_at(12) }
    }
}

/// Byte offset of submission slot `index % SQ_ENTRIES`.
pub const fn sq_slot(index: u32) -> usize {
    SQ_RING + (index % SQ_ENTRIES) as usize * DESC_SIZE
}

/// Byte offset of completion slot `index % CQ_ENTRIES`.
pub const fn cq_slot(index: u32) -> usize {
    CQ_RING + (index % CQ_ENTRIES) as usize * COMPLETION_SIZE
}

const _: () = assert!(SQ_RING + SQ_ENTRIES as usize * DESC_SIZE <= CQ_RING);
const _: () = assert!(CQ_RING + CQ_ENTRIES as usize * COMPLETION_SIZE <= STAGING);

// ioctls of /dev/nvidiactl and /dev/nvidia<N> (type 'V'; numbers from 0x40).
// Encoded like Linux's _IOC on x86/arm: dir << 30 | size << 16 | type << 8 | nr.
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}

/// Version of the driver interface below; userlib refuses a driver with another.
pub const DRIVER_ABI_VERSION: u32 = 1;

/// `VGPU_IOCTL_VERSION`: what the driver and device speak.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionInfo {
    /// [`DRIVER_ABI_VERSION`].
    pub abi_version: u32,
    /// The device's protocol version (BAR0 VERSION), i.e. the mediator protocol.
    pub protocol_version: u32,
    /// Minor number of the GPU this file reaches (N of /dev/nvidia<N>).
    pub gpu_index: u32,
    pub reserved: u32,
}

/// `VGPU_IOCTL_CHANNEL_OPEN`: opens this file's channel (EBUSY if it has one; ENOSPC if the
/// device has no free channel; ECONNREFUSED if the device cannot reach the mediator) and
/// tells where things are in the area, which the caller then maps with
/// `mmap(NULL, area_size, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelInfo {
    pub area_size: u64,
    pub staging_offset: u64,
    pub staging_size: u64,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub channel: u32,
    pub reserved: u32,
}

/// `VGPU_IOCTL_WAIT`: sleeps until the completion ring's tail differs from `seen` (returns 0),
/// the timeout passes (ETIMEDOUT), a signal arrives (EINTR), or the device goes away (ENODEV).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitArgs {
    pub seen: u32,
    pub timeout_ms: u32,
}

/// `VGPU_IOCTL_PIN`: pins `len` bytes of the caller's memory at `addr` (page-locked until
/// unpinned or the file is closed) and lets the device reach them; returns the region's `id`
/// for `OP_SEND_PINNED`/`OP_RECV_PINNED`. Needs an open channel (EINVAL). EOPNOTSUPP: the device
/// cannot; ENOSPC: too many regions; E2BIG: over 512 MiB; EFAULT: the range is not (writable)
/// memory of the caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinArgs {
    pub addr: u64,
    pub len: u64,
    /// [`PIN_READ_ONLY`], [`PIN_TRANSIENT`].
    pub flags: u32,
    /// Out: the region's id.
    pub id: u32,
}
/// Pin for reading only (the memory may be read-only; the device only sends from it).
pub const PIN_READ_ONLY: u32 = 1;
/// Pinned for the duration of one copy (pageable memory, file mappings included), not kept
/// page-locked for long.
pub const PIN_TRANSIENT: u32 = 2;

pub const VGPU_IOCTL_VERSION: u32 = ioc(IOC_READ, 0x40, core::mem::size_of::<VersionInfo>());
pub const VGPU_IOCTL_CHANNEL_OPEN: u32 = ioc(IOC_READ, 0x41, core::mem::size_of::<ChannelInfo>());
/// `VGPU_IOCTL_DOORBELL` (no argument): tells the device this channel's submission tail moved.
pub const VGPU_IOCTL_DOORBELL: u32 = ioc(0, 0x42, 0);
pub const VGPU_IOCTL_WAIT: u32 = ioc(IOC_WRITE, 0x43, core::mem::size_of::<WaitArgs>());
pub const VGPU_IOCTL_PIN: u32 = ioc(IOC_READ | IOC_WRITE, 0x44, core::mem::size_of::<PinArgs>());
/// `VGPU_IOCTL_UNPIN` (argument: the region's id, u32): the device forgets the region, then its
/// pages are released. ENOENT: no such region.
pub const VGPU_IOCTL_UNPIN: u32 = ioc(IOC_WRITE, 0x45, 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip() {
        let d = Desc { op: OP_RECV, flags: 7, tag: 0x1122_3344_5566_7788, offset: STAGING as u64, len: 1 << 40 };
        assert_eq!(Desc::from_bytes(&d.to_bytes()), d);
        let c = Completion { tag: u64::MAX - 1, status: 22, len: 4096 };
        assert_eq!(Completion::from_bytes(&c.to_bytes()), c);
    }

    #[test]
    fn ioctl_numbers_match_linux_encoding() {
        // _IOR('V', 0x40, 16-byte struct) as Linux computes it.
        assert_eq!(VGPU_IOCTL_VERSION, 0x8010_5640);
        assert_eq!(VGPU_IOCTL_DOORBELL, 0x0000_5642);
        assert_eq!(VGPU_IOCTL_WAIT, 0x4008_5643);
        // _IOWR('V', 0x44, 24-byte struct), _IOW('V', 0x45, u32).
        assert_eq!(VGPU_IOCTL_PIN, 0xc018_5644);
        assert_eq!(VGPU_IOCTL_UNPIN, 0x4004_5645);
        assert_eq!(sq_slot(SQ_ENTRIES + 1), SQ_RING + DESC_SIZE);
    }
}
