//! `vgpu-stub`: the VGPU-STUB PCI device, served to QEMU's `vfio-user-pci` over a Unix socket
//! (rust-vmm's `vfio_user` server): PCI identity, BAR0 registers, MSI-X, the guest RAM QEMU
//! shares with us (DMA_MAP), and channels to the mediator (`channels.rs`).

#[cfg(test)]
mod tests;

use vgpu_stub::{channels, device, identity};
use channels::Channels;
use clap::Parser;
use device::{Config, Registers};
use std::fs::File;
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
    /// The mediator's (vgpu-hostd's) Unix socket; each open channel is one connection to it.
    #[arg(long, env = "VGPU_SOCKET", default_value = "/run/vgpu/hostd.sock")]
    mediator: PathBuf,
    /// Carry every byte of pinned guest memory through the channels instead of letting the
    /// mediator copy it from the VM's RAM itself (the zero-copy path; for comparison).
    #[arg(long)]
    no_zero_copy: bool,
    /// Move each channel's bytes over its socket instead of shared-memory rings with the
    /// mediator (for comparison).
    #[arg(long)]
    no_shared_rings: bool,
}

struct Vgpu {
    cfg: Config,
    regs: Registers,
    /// Guest RAM, MSI-X eventfds and the open channels.
    chans: Channels,
    trace: bool,
}

impl Vgpu {
    fn new(mediator: PathBuf, trace: bool) -> Self {
        Vgpu { cfg: Config::default(), regs: Registers::default(), chans: Channels::new(mediator), trace }
    }

    fn raise(&self, vector: u32) {
        if !channels::raise(&self.chans.irqs, vector) {
            eprintln!("vgpu-stub: MSI-X vector {vector} is not enabled by the guest");
        }
    }

    fn bar0_write(&mut self, off: u64, v: u32) {
        let effect = self.regs.write(off, v);
        if let Some(vector) = self.chans.carry_out(&mut self.regs, effect, self.trace) {
            self.raise(vector);
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
                self.bar0_write(offset & !3, v);
            }
            _ => {}
        }
        Ok(())
    }

    fn dma_map(&mut self, flags: DmaMapFlags, offset: u64, address: u64, size: u64, fd: Option<File>) -> std::io::Result<()> {
        // Channels live in RAM the device may write; read-only (ROM) or fd-less regions are not
        // mapped (channel areas there fail with EFAULT). Failures are logged, not returned:
        // QEMU treats a failed DMA map as fatal for the VM.
        let what = format!("DMA map {address:#x}+{size:#x} (file offset {offset:#x}, {flags:?})");
        match fd {
            Some(f) if flags.contains(DmaMapFlags::READ_WRITE) => match self.chans.map_ram(address, size, f, offset) {
                Ok(()) if self.trace => eprintln!("vgpu-stub: {what}"),
                Ok(()) => {}
                Err(e) => eprintln!("vgpu-stub: {what} not mapped: {e}"),
            },
            _ if self.trace => eprintln!("vgpu-stub: {what} ignored (read-only or no fd)"),
            _ => {}
        }
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        // Waits for workers to finish their current copy (they hold the RAM read lock per
        // access); a channel whose area goes away stops with a fault.
        let n = self.chans.unmap_ram(address, size, flags.contains(DmaUnmapFlags::UNMAP_ALL));
        if self.trace {
            eprintln!("vgpu-stub: DMA unmap {address:#x}+{size:#x}: {n} region(s)");
        }
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        // A device reset closes the channels and clears registers and interrupts; QEMU's DMA
        // mappings stay.
        self.chans.close_all();
        self.chans.irqs.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().for_each(|s| *s = None);
        self.cfg = Config::default();
        // The GPU behind the device does not change with a reset: keep its identity.
        self.regs = std::mem::take(&mut self.regs).reset();
        Ok(())
    }

    fn set_irqs(&mut self, index: u32, flags: u32, start: u32, count: u32, fds: Vec<File>) -> std::io::Result<()> {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Ok(());
        }
        let mut msix = self.chans.irqs.lock().unwrap_or_else(|e| e.into_inner());
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            for (i, f) in fds.into_iter().enumerate() {
                if let Some(slot) = (start as usize).checked_add(i).and_then(|s| msix.get_mut(s)) {
                    *slot = Some(f);
                }
            }
        } else if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            msix.iter_mut().for_each(|s| *s = None);
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
    eprintln!("vgpu-stub: channels connect to {}", args.mediator.display());
    let mut dev = Vgpu::new(args.mediator.clone(), args.trace);
    dev.chans.zero_copy = !args.no_zero_copy;
    dev.chans.shared_rings = !args.no_shared_rings;
    match identity::query(&args.mediator) {
        Ok((name, uuid)) => {
            eprintln!("vgpu-stub: the mediator's GPU: {name}");
            dev.regs.set_identity(&name, uuid);
        }
        Err(e) => eprintln!("vgpu-stub: could not ask the mediator which GPU it serves ({e}); BAR0 GPU_NAME stays empty"),
    }
    let r = server.run(&mut dev);
    // The guest is gone with QEMU: no channel outlives it.
    dev.chans.close_all();
    match r {
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
