//! The VGPU-STUB device model: PCI configuration space and BAR0 registers. Pure state, no I/O,
//! so it can be unit-tested; `main.rs` serves it over vfio-user.

use vgpu_uapi::{bar0, channel};

const CFG_SIZE: usize = 256;
const MSIX_CAP: usize = 0x40;

/// Type-0 PCI configuration space with per-byte write masks (what the guest may change).
pub struct Config {
    bytes: [u8; CFG_SIZE],
    wmask: [u8; CFG_SIZE],
}

impl Default for Config {
    fn default() -> Self {
        let mut c = Config { bytes: [0; CFG_SIZE], wmask: [0; CFG_SIZE] };
        let b = &mut c.bytes;
        let put16 = |b: &mut [u8; CFG_SIZE], o: usize, v: u16| b[o..o + 2].copy_from_slice(&v.to_le_bytes());
        let put32 = |b: &mut [u8; CFG_SIZE], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put16(b, 0x00, vgpu_uapi::PCI_VENDOR_ID);
        put16(b, 0x02, vgpu_uapi::PCI_DEVICE_ID);
        put16(b, 0x06, 0x0010); // status: capabilities list
        b[0x08] = 0xa1; // revision
        b[0x09] = (vgpu_uapi::PCI_CLASS & 0xff) as u8; // prog-if
        b[0x0a] = ((vgpu_uapi::PCI_CLASS >> 8) & 0xff) as u8; // subclass: 3D controller
        b[0x0b] = ((vgpu_uapi::PCI_CLASS >> 16) & 0xff) as u8; // class: display
        put32(b, 0x10, 0); // BAR0: 32-bit memory, non-prefetchable
        put16(b, 0x2c, vgpu_uapi::PCI_VENDOR_ID); // subsystem vendor
        put16(b, 0x2e, vgpu_uapi::PCI_SUBSYSTEM_ID);
        b[0x34] = MSIX_CAP as u8; // capabilities pointer
        b[0x3d] = 0x01; // INTA#
        // MSI-X capability: table and PBA in BAR0.
        b[MSIX_CAP] = 0x11;
        b[MSIX_CAP + 1] = 0x00; // end of list
        put16(b, MSIX_CAP + 2, (bar0::MSIX_VECTORS - 1) as u16);
        put32(b, MSIX_CAP + 4, bar0::MSIX_TABLE);
        put32(b, MSIX_CAP + 8, bar0::MSIX_PBA);
        let w = &mut c.wmask;
        w[0x04] = 0x47; // I/O, memory, bus master, parity
        w[0x05] = 0x05; // SERR, INTx disable
        w[0x10..0x14].copy_from_slice(&(!(bar0::SIZE as u32 - 1)).to_le_bytes());
        w[0x3c] = 0xff; // interrupt line
        w[MSIX_CAP + 3] = 0xc0; // MSI-X enable + function mask
        c
    }
}

impl Config {
    pub fn read(&self, off: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = off.checked_add(i).and_then(|o| self.bytes.get(o)).copied().unwrap_or(0);
        }
    }

    pub fn write(&mut self, off: usize, data: &[u8]) {
        for (i, d) in data.iter().enumerate() {
            let Some(o) = off.checked_add(i) else { return };
            if let (Some(b), Some(m)) = (self.bytes.get(o).copied(), self.wmask.get(o).copied()) {
                self.bytes[o] = (b & !m) | (d & m);
            }
        }
    }
}

/// How many channels the device serves (BAR0 CHANNELS); one bit each in `Registers::open`.
pub const CHANNELS: u32 = 64;
const _: () = assert!(CHANNELS <= 64);

const EINVAL: u32 = libc::EINVAL as u32;

/// What a BAR0 write asks the device process to do besides updating state.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    RaiseIrq(u32),
    /// Open channel `channel` on a well-formed area: the caller checks that guest RAM backs it,
    /// connects to the mediator, and reports the outcome with [`Registers::opened`].
    Open { channel: u32, addr: u64, size: u64 },
    /// Shut channel N down (it is already marked closed).
    Close(u32),
    /// Wake the worker of open channel N.
    Doorbell(u32),
    /// Register a pinned region of open channel `channel`: the caller reads and checks the pin
    /// request at `request` (8-byte aligned) and reports with [`Registers::done`].
    Pin { channel: u32, request: u64 },
    /// Forget pinned region `id` of open channel `channel`; report with [`Registers::done`].
    Unpin { channel: u32, id: u32 },
}

pub struct Registers {
    scratch: u32,
    addr_lo: u32,
    addr_hi: u32,
    size: u32,
    status: u32,
    /// Bit N: channel N is open.
    open: u64,
    /// GPU_NAME then GPU_UUID (see bar0.rs).
    identity: [u8; bar0::GPU_NAME_LEN + bar0::GPU_UUID_LEN],
    pin_id: u32,
}

impl Default for Registers {
    fn default() -> Self {
        Registers {
            scratch: 0,
            addr_lo: 0,
            addr_hi: 0,
            size: 0,
            status: 0,
            open: 0,
            identity: [0; bar0::GPU_NAME_LEN + bar0::GPU_UUID_LEN],
            pin_id: 0,
        }
    }
}


/// Whether a channel area has an acceptable shape: 4 KiB aligned, a whole number of pages
/// within [MIN_AREA_SIZE, MAX_AREA_SIZE], not wrapping the address space.
pub fn check_area(addr: u64, size: u64) -> bool {
    const PAGE: u64 = 0x1000;
    addr & (PAGE - 1) == 0 && size & (PAGE - 1) == 0 && (channel::MIN_AREA_SIZE..=channel::MAX_AREA_SIZE).contains(&size) && addr.checked_add(size).is_some()
}

impl Registers {
    pub fn read(&self, off: u64) -> u32 {
        match off {
            bar0::MAGIC => bar0::MAGIC_VALUE,
            bar0::VERSION => vgpu_uapi::PROTOCOL_VERSION,
            bar0::CAPS => bar0::CAP_CHANNELS | bar0::CAP_PINNED,
            bar0::SCRATCH => self.scratch,
            bar0::CHAN_ADDR_LO => self.addr_lo,
            bar0::CHAN_ADDR_HI => self.addr_hi,
            bar0::CHAN_SIZE => self.size,
            bar0::CHAN_STATUS => self.status,
            bar0::CHANNELS => CHANNELS,
            bar0::PIN_ID => self.pin_id,
            o if (bar0::GPU_NAME..bar0::GPU_UUID + bar0::GPU_UUID_LEN as u64).contains(&o) && o % 4 == 0 => {
                let i = (o - bar0::GPU_NAME) as usize;
                self.identity.get(i..i + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => 0,
        }
    }

    /// The registers after a device reset: all cleared but the GPU's identity.
    pub fn reset(self) -> Registers {
        Registers { identity: self.identity, ..Registers::default() }
    }

    /// The GPU's name and UUID for GPU_NAME/GPU_UUID (the name cut to fit, ASCII only).
    pub fn set_identity(&mut self, name: &str, uuid: [u8; 16]) {
        self.identity = [0; bar0::GPU_NAME_LEN + bar0::GPU_UUID_LEN];
        for (d, c) in self.identity[..bar0::GPU_NAME_LEN - 1].iter_mut().zip(name.bytes().filter(|c| c.is_ascii_graphic() || *c == b' ')) {
            *d = c;
        }
        self.identity[bar0::GPU_NAME_LEN..].copy_from_slice(&uuid);
    }

    pub fn write(&mut self, off: u64, v: u32) -> Effect {
        match off {
            bar0::SCRATCH => self.scratch = v,
            bar0::IRQ_TEST if v < bar0::MSIX_VECTORS => return Effect::RaiseIrq(v),
            bar0::CHAN_ADDR_LO => self.addr_lo = v,
            bar0::CHAN_ADDR_HI => self.addr_hi = v,
            bar0::CHAN_SIZE => self.size = v,
            bar0::CHAN_CMD => return self.command(v >> 16, v & 0xffff),
            bar0::DOORBELL if self.is_open(v) => return Effect::Doorbell(v),
            bar0::PIN_ID => self.pin_id = v,
            _ => {} // read-only or unknown: ignored, as hardware does
        }
        Effect::None
    }

    fn is_open(&self, n: u32) -> bool {
        n < CHANNELS && self.open & (1 << n) != 0
    }

    fn command(&mut self, cmd: u32, n: u32) -> Effect {
        let addr = (self.addr_hi as u64) << 32 | self.addr_lo as u64;
        let size = self.size as u64;
        let (status, effect) = match cmd {
            _ if n >= CHANNELS => (EINVAL, Effect::None),
            bar0::CMD_OPEN if self.is_open(n) => (libc::EBUSY as u32, Effect::None),
            bar0::CMD_OPEN if !check_area(addr, size) => (EINVAL, Effect::None),
            // Until the caller reports through `opened`.
            bar0::CMD_OPEN => (libc::EIO as u32, Effect::Open { channel: n, addr, size }),
            bar0::CMD_CLOSE if !self.is_open(n) => (libc::ENOENT as u32, Effect::None),
            bar0::CMD_CLOSE => {
                self.open &= !(1 << n);
                (0, Effect::Close(n))
            }
            bar0::CMD_PIN | bar0::CMD_UNPIN if !self.is_open(n) => (libc::ENOENT as u32, Effect::None),
            bar0::CMD_PIN if !addr.is_multiple_of(8) => (EINVAL, Effect::None),
            bar0::CMD_PIN => (libc::EIO as u32, Effect::Pin { channel: n, request: addr }),
            bar0::CMD_UNPIN => (libc::EIO as u32, Effect::Unpin { channel: n, id: self.pin_id }),
            _ => (EINVAL, Effect::None),
        };
        self.status = status;
        effect
    }

    /// The outcome of an [`Effect::Open`]: 0 or an errno value, read back from CHAN_STATUS.
    pub fn opened(&mut self, n: u32, status: u32) {
        self.status = status;
        if status == 0 && n < CHANNELS {
            self.open |= 1 << n;
        }
    }

    /// The outcome of an [`Effect::Pin`] or [`Effect::Unpin`], read back from CHAN_STATUS.
    pub fn done(&mut self, status: u32) {
        self.status = status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_identifies_an_nvidia_3d_controller() {
        let c = Config::default();
        let mut id = [0u8; 4];
        c.read(0, &mut id);
        assert_eq!(id, [0xde, 0x10, 0x31, 0x23]);
        let mut class = [0u8; 3];
        c.read(0x09, &mut class);
        assert_eq!(class, [0x00, 0x02, 0x03]);
        let mut cap = [0u8; 2];
        c.read(0x40, &mut cap);
        assert_eq!(cap[0], 0x11, "MSI-X capability");
    }

    #[test]
    fn only_writable_bits_change_and_out_of_range_is_harmless() {
        let mut c = Config::default();
        c.write(0, &[0xff; 4]);
        let mut id = [0u8; 4];
        c.read(0, &mut id);
        assert_eq!(id, [0xde, 0x10, 0x31, 0x23], "IDs are read-only");
        // BAR sizing: all-ones reads back the size mask.
        c.write(0x10, &[0xff; 4]);
        let mut bar = [0u8; 4];
        c.read(0x10, &mut bar);
        assert_eq!(u32::from_le_bytes(bar), !(bar0::SIZE as u32 - 1));
        c.write(250, &[1; 100]);
        c.write(usize::MAX, &[1; 4]);
        let mut far = [7u8; 8];
        c.read(usize::MAX - 2, &mut far);
        assert_eq!(far, [0; 8]);
    }

    #[test]
    fn registers() {
        let mut r = Registers::default();
        assert_eq!(r.read(bar0::MAGIC), bar0::MAGIC_VALUE);
        assert_eq!(r.read(bar0::VERSION), vgpu_uapi::PROTOCOL_VERSION);
        assert_eq!(r.write(bar0::SCRATCH, 0x1234), Effect::None);
        assert_eq!(r.read(bar0::SCRATCH), 0x1234);
        assert_eq!(r.write(bar0::MAGIC, 0), Effect::None);
        assert_eq!(r.read(bar0::MAGIC), bar0::MAGIC_VALUE, "read-only");
        assert_eq!(r.write(bar0::IRQ_TEST, 2), Effect::RaiseIrq(2));
        assert_eq!(r.write(bar0::IRQ_TEST, 99), Effect::None, "no such vector");
        assert_eq!(r.read(bar0::CAPS), bar0::CAP_CHANNELS | bar0::CAP_PINNED);
        assert_eq!(r.read(bar0::CHANNELS), 64);
    }

    fn open_cmd(r: &mut Registers, addr: u64, size: u32, n: u32) -> Effect {
        r.write(bar0::CHAN_ADDR_LO, addr as u32);
        r.write(bar0::CHAN_ADDR_HI, (addr >> 32) as u32);
        r.write(bar0::CHAN_SIZE, size);
        r.write(bar0::CHAN_CMD, bar0::CMD_OPEN << 16 | n)
    }

    #[test]
    fn channel_commands_validate_in_order() {
        let mut r = Registers::default();
        let (addr, size) = (0x1_2345_6000u64, 0x20_0000u32);
        assert_eq!(r.write(bar0::CHAN_ADDR_HI, 7), Effect::None);
        assert_eq!(r.read(bar0::CHAN_ADDR_HI), 7, "latches read back");
        assert_eq!(open_cmd(&mut r, addr, size, 64), Effect::None);
        assert_eq!(r.read(bar0::CHAN_STATUS), libc::EINVAL as u32, "no channel 64");
        for (a, s) in [(addr + 0x800, size), (addr, size + 1), (addr, 0x1000), (addr, 0x400_1000), (!0xfff, 0x2000)] {
            assert_eq!(open_cmd(&mut r, a, s, 3), Effect::None, "{a:#x}+{s:#x}");
            assert_eq!(r.read(bar0::CHAN_STATUS), libc::EINVAL as u32);
        }
        assert_eq!(open_cmd(&mut r, addr, size, 3), Effect::Open { channel: 3, addr, size: size as u64 });
        assert_eq!(r.write(bar0::DOORBELL, 3), Effect::None, "not open until reported");
        r.opened(3, 0);
        assert_eq!(r.read(bar0::CHAN_STATUS), 0);
        assert_eq!(r.write(bar0::DOORBELL, 3), Effect::Doorbell(3));
        assert_eq!(r.write(bar0::DOORBELL, 4), Effect::None);
        assert_eq!(r.write(bar0::DOORBELL, u32::MAX), Effect::None);
        // Busy wins over a bad area.
        assert_eq!(open_cmd(&mut r, addr + 1, size, 3), Effect::None);
        assert_eq!(r.read(bar0::CHAN_STATUS), libc::EBUSY as u32);
        // A failed open leaves the channel closed.
        assert!(matches!(open_cmd(&mut r, addr, size, 5), Effect::Open { channel: 5, .. }));
        r.opened(5, libc::ECONNREFUSED as u32);
        assert_eq!(r.read(bar0::CHAN_STATUS), libc::ECONNREFUSED as u32);
        assert_eq!(r.write(bar0::CHAN_CMD, bar0::CMD_CLOSE << 16 | 5), Effect::None);
        assert_eq!(r.read(bar0::CHAN_STATUS), libc::ENOENT as u32);
        assert_eq!(r.write(bar0::CHAN_CMD, bar0::CMD_CLOSE << 16 | 3), Effect::Close(3));
        assert_eq!(r.read(bar0::CHAN_STATUS), 0);
        assert_eq!(r.write(bar0::DOORBELL, 3), Effect::None);
        assert_eq!(r.write(bar0::CHAN_CMD, 9 << 16 | 3), Effect::None);
        assert_eq!(r.read(bar0::CHAN_STATUS), libc::EINVAL as u32, "unknown command");
    }

    #[test]
    fn pin_commands_need_an_open_channel_and_an_aligned_request() {
        let mut r = Registers::default();
        let pin = |r: &mut Registers, addr: u64, n: u32| {
            r.write(bar0::CHAN_ADDR_LO, addr as u32);
            r.write(bar0::CHAN_ADDR_HI, (addr >> 32) as u32);
            r.write(bar0::CHAN_CMD, bar0::CMD_PIN << 16 | n)
        };
        assert_eq!(pin(&mut r, 0x8000_0000, 2), Effect::None);
        assert_eq!(r.read(bar0::CHAN_STATUS), libc::ENOENT as u32, "channel not open");
        r.opened(2, 0);
        assert_eq!(pin(&mut r, 0x8000_0004, 2), Effect::None);
        assert_eq!(r.read(bar0::CHAN_STATUS), EINVAL, "misaligned request");
        assert_eq!(pin(&mut r, 0x1_8000_0008, 2), Effect::Pin { channel: 2, request: 0x1_8000_0008 });
        r.done(0);
        assert_eq!(r.read(bar0::CHAN_STATUS), 0);
        r.write(bar0::PIN_ID, 7);
        assert_eq!(r.read(bar0::PIN_ID), 7, "latch reads back");
        assert_eq!(r.write(bar0::CHAN_CMD, bar0::CMD_UNPIN << 16 | 2), Effect::Unpin { channel: 2, id: 7 });
        assert_eq!(r.write(bar0::CHAN_CMD, bar0::CMD_UNPIN << 16 | 3), Effect::None);
        assert_eq!(r.read(bar0::CHAN_STATUS), libc::ENOENT as u32);
    }
}
