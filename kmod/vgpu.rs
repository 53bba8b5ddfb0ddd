// SPDX-License-Identifier: GPL-2.0

//! vgpu guest driver: binds the VGPU-STUB PCI device (10de:2331) and checks that it speaks
//! vgpu's device ABI. Character devices, channels and rings come next.

use kernel::{device::Core, io::Io, pci, prelude::*};

// The register map is uapi's, included by source (uapi is the one place ABIs are defined).
#[path = "../uapi/src/bar0.rs"]
#[allow(dead_code, unreachable_pub)]
mod bar0;

/// The part of BAR0 the driver uses (registers below the MSI-X table).
const REGS_END: usize = 0x20;
type Bar0<'bound> = pci::Bar<'bound, REGS_END>;

struct VgpuDevice<'bound> {
    pdev: &'bound pci::Device,
    _bar: Bar0<'bound>,
}

struct VgpuDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    <VgpuDriver as pci::Driver>::IdInfo,
    [(pci::DeviceId::from_id(pci::Vendor::NVIDIA, 0x2331), ())]
);

impl pci::Driver for VgpuDriver {
    type IdInfo = ();
    type Data<'bound> = VgpuDevice<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pdev.enable_device_mem()?;
        pdev.set_master();
        let bar = pdev.iomap_region_sized::<REGS_END>(0, c"vgpu")?;
        let magic = bar.read32(bar0::MAGIC as usize);
        if magic != bar0::MAGIC_VALUE {
            dev_err!(pdev, "not a VGPU-STUB device (magic {:#x})\n", magic);
            return Err(ENODEV);
        }
        let version = bar.read32(bar0::VERSION as usize);
        // Self-test: the scratch register must read back what was written.
        bar.write32(0x5a5a_1234, bar0::SCRATCH as usize);
        if bar.read32(bar0::SCRATCH as usize) != 0x5a5a_1234 {
            dev_err!(pdev, "BAR0 scratch register does not read back\n");
            return Err(EIO);
        }
        dev_info!(pdev, "VGPU-STUB bound: device protocol version {}\n", version);
        Ok(VgpuDevice { pdev, _bar: bar })
    }
}

impl Drop for VgpuDevice<'_> {
    fn drop(&mut self) {
        dev_info!(self.pdev, "VGPU-STUB unbound\n");
    }
}

kernel::module_pci_driver! {
    type: VgpuDriver,
    name: "vgpu",
    authors: ["vgpu developers"],
    description: "vgpu guest driver for the VGPU-STUB PCI device",
    license: "GPL v2",
}
