//! `vgpu-stub`: the VGPU-STUB PCI device, served to QEMU's `vfio-user-pci` over a Unix socket
//! (rust-vmm's `vfio_user` server). Today: PCI identity, BAR0 registers, MSI-X, and a record
//! of the guest RAM QEMU shares with us (DMA_MAP). Command rings come with the guest driver.

mod device;

use clap::Parser;
use device::{Config, Effect, Registers};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use vfio_bindings::bindings::vfio::*;
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};
use vgpu_uapi::bar0;

#[derive(Parser, Debug)]
#[command(version, about = "VGPU-STUB device (vfio-user server) for QEMU's vfio-user-pci")]
struct Args {
    /// Socket QEMU connects to (-device vfio-user-pci,socket.path=...).
    #[arg(long)]
    socket: PathBuf,
    /// Log every register access to stderr.
    #[arg(long)]
    trace: bool,
}

/// A guest-RAM region QEMU shared with us.
struct DmaRegion {
    gpa: u64,
    size: u64,
    _fd: Option<File>,
}

struct Vgpu {
    cfg: Config,
    regs: Registers,
    msix: Vec<Option<File>>,
    dma: Vec<DmaRegion>,
    trace: bool,
}

impl Vgpu {
    fn new(trace: bool) -> Self {
        Vgpu { cfg: Config::default(), regs: Registers::default(), msix: (0..bar0::MSIX_VECTORS).map(|_| None).collect(), dma: Vec::new(), trace }
    }

    fn raise(&mut self, vector: u32) {
        match self.msix.get_mut(vector as usize).and_then(Option::as_mut) {
            Some(f) => {
                if let Err(e) = f.write_all(&1u64.to_ne_bytes()) {
                    eprintln!("vgpu-stub: MSI-X vector {vector}: {e}");
                }
            }
            None => eprintln!("vgpu-stub: MSI-X vector {vector} is not enabled by the guest"),
        }
    }
}

impl ServerBackend for Vgpu {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.cfg.read(offset as usize, data),
            VFIO_PCI_BAR0_REGION_INDEX => {
                let v = self.regs.read(offset & !3).to_le_bytes();
                let shift = (offset & 3) as usize;
                for (i, d) in data.iter_mut().enumerate() {
                    *d = v.get(shift + i).copied().unwrap_or(0);
                }
                if self.trace {
                    eprintln!("vgpu-stub: BAR0 read {offset:#x} ({} bytes)", data.len());
                }
            }
            _ => data.fill(0xff),
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.cfg.write(offset as usize, data),
            VFIO_PCI_BAR0_REGION_INDEX => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                let v = u32::from_le_bytes(b);
                if self.trace {
                    eprintln!("vgpu-stub: BAR0 write {offset:#x} <- {v:#x}");
                }
                if let Effect::RaiseIrq(vector) = self.regs.write(offset & !3, v) {
                    self.raise(vector);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dma_map(&mut self, _flags: DmaMapFlags, _offset: u64, address: u64, size: u64, fd: Option<File>) -> std::io::Result<()> {
        // Kept to be mapped when the command rings arrive; nothing reads guest RAM yet.
        self.dma.push(DmaRegion { gpa: address, size, _fd: fd });
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        self.dma.retain(|r| !(r.gpa >= address && r.gpa.saturating_add(r.size) <= address.saturating_add(size)));
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        // A device reset clears registers and interrupts; QEMU's DMA mappings stay.
        let dma = std::mem::take(&mut self.dma);
        *self = Vgpu::new(self.trace);
        self.dma = dma;
        Ok(())
    }

    fn set_irqs(&mut self, index: u32, flags: u32, start: u32, count: u32, fds: Vec<File>) -> std::io::Result<()> {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Ok(());
        }
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            for (i, f) in fds.into_iter().enumerate() {
                if let Some(slot) = (start as usize).checked_add(i).and_then(|s| self.msix.get_mut(s)) {
                    *slot = Some(f);
                }
            }
        } else if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            self.msix.iter_mut().for_each(|s| *s = None);
        }
        Ok(())
    }
}

fn regions() -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let mut info = vfio_region_info { argsz: std::mem::size_of::<vfio_region_info>() as u32, index, ..Default::default() };
            let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            match index {
                VFIO_PCI_CONFIG_REGION_INDEX => (info.size, info.flags) = (256, rw),
                VFIO_PCI_BAR0_REGION_INDEX => (info.size, info.flags) = (bar0::SIZE, rw),
                _ => {}
            }
            ServerRegion { region_info: info, sparse_areas: Vec::new(), mmap_fd: None }
        })
        .collect()
}

fn irqs() -> Vec<IrqInfo> {
    (0..VFIO_PCI_NUM_IRQS)
        .map(|index| match index {
            VFIO_PCI_INTX_IRQ_INDEX => IrqInfo { index, count: 1, flags: VFIO_IRQ_INFO_EVENTFD },
            VFIO_PCI_MSIX_IRQ_INDEX => IrqInfo { index, count: bar0::MSIX_VECTORS, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE },
            _ => IrqInfo { index, count: 0, flags: 0 },
        })
        .collect()
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = std::fs::remove_file(&args.socket);
    let server = match Server::new(&args.socket, true, irqs(), regions()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vgpu-stub: cannot listen on {}: {e:?}", args.socket.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("vgpu-stub: listening on {}", args.socket.display());
    let mut dev = Vgpu::new(args.trace);
    match server.run(&mut dev) {
        Ok(()) => {
            eprintln!("vgpu-stub: QEMU disconnected");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vgpu-stub: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
