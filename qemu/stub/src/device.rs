//! The VGPU-STUB device model: PCI configuration space and BAR0 registers. Pure state, no I/O,
//! so it can be unit-tested; `main.rs` serves it over vfio-user.

use vgpu_uapi::bar0;

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

/// What a BAR0 write asks the device process to do besides updating state.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    RaiseIrq(u32),
}

#[derive(Default)]
pub struct Registers {
    scratch: u32,
}

impl Registers {
    pub fn read(&self, off: u64) -> u32 {
        match off {
            bar0::MAGIC => bar0::MAGIC_VALUE,
            bar0::VERSION => vgpu_uapi::PROTOCOL_VERSION,
            bar0::CAPS => 0,
            bar0::SCRATCH => self.scratch,
            _ => 0,
        }
    }

    pub fn write(&mut self, off: u64, v: u32) -> Effect {
        match off {
            bar0::SCRATCH => {
                self.scratch = v;
                Effect::None
            }
            bar0::IRQ_TEST if v < bar0::MSIX_VECTORS => Effect::RaiseIrq(v),
            _ => Effect::None, // read-only or unknown: ignored, as hardware does
        }
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
    }
}
