//! The shared-memory rings between a device process (vgpu-stub) and the mediator: after the
//! setup over the Unix socket, a channel's connection upgrades to a pair of byte rings in a
//! memfd (`proto::Op::ShmRing`), so that a call costs no socket message and, while both sides
//! are busy, no thread wake-up. The rings carry exactly the bytes the socket would (the
//! messages of `proto.rs`); the socket stays open only to tell either side the other is gone.
//!
//! ```text
//! 0x000 req_tail         u32  written by the device process: request bytes 0..req_tail written
//! 0x040 req_head         u32  written by the mediator: request bytes 0..req_head consumed
//! 0x080 rep_tail         u32  written by the mediator: reply bytes 0..rep_tail written
//! 0x0c0 rep_head         u32  written by the device process: reply bytes 0..rep_head consumed
//! 0x100 mediator_waiting u32  1 while the mediator sleeps (or is about to) on its doorbell
//! 0x140 device_waiting   u32  the same for the device process
//! 0x1000                      the request ring, `size` bytes
//! 0x1000 + size               the reply ring, `size` bytes
//! ```
//!
//! Counters are free-running u32 byte counts; byte `i` of a ring lives at `i % size`. Each side
//! keeps its own counters and only publishes them: it never reads back what it published (the
//! other side could have changed it), and a counter of the other side's that claims more than
//! `size` bytes in flight ends the connection.
//!
//! Doorbells are two eventfds: a side that found nothing to do sets its `*_waiting` word, reads
//! the ring once more (full fence between), then sleeps on its eventfd; a side that published
//! bytes or freed space reads the other's `*_waiting` (full fence after publishing) and writes
//! the other's eventfd only if it is set. One of the two always sees the other's write, so no
//! wake-up is lost.

pub const REQ_TAIL: usize = 0x000;
pub const REQ_HEAD: usize = 0x040;
pub const REP_TAIL: usize = 0x080;
pub const REP_HEAD: usize = 0x0c0;
pub const MEDIATOR_WAITING: usize = 0x100;
pub const DEVICE_WAITING: usize = 0x140;
/// Where the request ring starts; the reply ring follows it.
pub const DATA: usize = 0x1000;
/// Each ring's size: a power of two in this range.
pub const MIN_SIZE: u32 = 64 << 10;
pub const MAX_SIZE: u32 = 16 << 20;
/// What the device process asks for: a chunk of the stub's copies (1 MiB) fits whole.
pub const DEFAULT_SIZE: u32 = 2 << 20;

/// Bytes of the memfd for rings of `size` bytes each.
pub const fn file_size(size: u32) -> usize {
    DATA + 2 * size as usize
}

/// Whether `size` is a ring size both sides accept.
pub const fn valid_size(size: u32) -> bool {
    size >= MIN_SIZE && size <= MAX_SIZE && size.is_power_of_two()
}
