//! Shared by vgpu's guest libraries (libcuda.so.1, libnvidia-ml.so.1, the CLI): reaching the
//! mediator and learning its devices.
//!
//! Transport: the guest driver's /dev/nvidia0 when it exists, else the mediator's Unix socket.
//! Environment: `VGPU_SOCKET` (mediator socket, default /run/vgpu/hostd.sock; setting it
//! selects the socket even where /dev/nvidia0 exists),
//! `VGPU_LOG` (`error`, `warn` (default), `info`, `debug`, `off`).

pub mod device;
pub mod log;
pub mod shm_ring;
pub mod transport;

use device::DeviceTransport;
use std::path::{Path, PathBuf};
use std::time::Duration;
use transport::{SocketTransport, Transport};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{DeviceInfo, Op};
use vgpu_uapi::wire::Reader;

pub const DEFAULT_SOCKET: &str = "/run/vgpu/hostd.sock";

pub fn socket_path() -> PathBuf {
    std::env::var_os("VGPU_SOCKET").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// A live connection to the mediator and the devices it serves.
pub struct Client {
    pub transport: Box<dyn Transport>,
    pub devices: Vec<DeviceInfo>,
    /// Device printf output is collected with Op::DeviceOutput after synchronizing calls
    /// (HELLO_OUTPUT_AFTER_SYNC), not found in launch replies.
    pub output_after_sync: bool,
    /// The backend runs PTX only (HELLO_PTX_ONLY): SASS-only images cannot run as they are.
    pub ptx_only: bool,
}

impl Client {
    /// Connects, says hello and fetches the device list. `who` names the caller in log lines.
    /// Failure to reach the mediator is CUDA_ERROR_NO_DEVICE, with the reason logged.
    pub fn connect(who: &str) -> Result<Client, CuResult> {
        Self::connect_as(who, 0)
    }

    /// `flags`: HELLO_* bits (HELLO_OBSERVER for NVML and the CLI).
    pub fn connect_as(who: &str, flags: u32) -> Result<Client, CuResult> {
        let (t, place) = open_transport(who)?;
        let mut reply = Vec::new();
        let hello = vgpu_uapi::proto::hello_request(std::process::id(), flags);
        t.call(Op::Hello, &[&hello], &mut reply).inspect_err(|e| {
            vlog!(log::ERROR, "{who}: the vgpu mediator via {place} refused us or did not answer (CUresult {e})");
        })?;
        let mut r = Reader::new(&reply);
        let (_version, count) = (r.u32().map_err(|_| CUDA_ERROR_UNKNOWN)?, r.u32().map_err(|_| CUDA_ERROR_UNKNOWN)?);
        // Absent from older mediators' replies.
        let flags = r.u32().unwrap_or(0);
        t.connected(flags);
        let mut devices = Vec::new();
        for i in 0..count.min(64) {
            let mut rep = Vec::new();
            t.call(Op::DeviceInfo, &[&i.to_le_bytes()], &mut rep)?;
            devices.push(Reader::new(&rep).device_info().map_err(|_| CUDA_ERROR_UNKNOWN)?);
        }
        if devices.is_empty() {
            vlog!(log::ERROR, "{who}: the vgpu mediator reports no devices");
            return Err(CUDA_ERROR_NO_DEVICE);
        }
        vlog!(log::INFO, "{who}: connected to the mediator via {place}: {} device(s)", devices.len());
        Ok(Client {
            transport: t,
            devices,
            output_after_sync: flags & vgpu_uapi::proto::HELLO_OUTPUT_AFTER_SYNC != 0,
            ptx_only: flags & vgpu_uapi::proto::HELLO_PTX_ONLY != 0,
        })
    }

    pub fn call(&self, op: Op, parts: &[&[u8]]) -> Result<Vec<u8>, CuResult> {
        let mut reply = Vec::new();
        self.transport.call(op, parts, &mut reply)?;
        Ok(reply)
    }

    /// See [`Transport::call_async`].
    pub fn call_async(&self, op: Op, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, CuResult> {
        self.transport.call_async(op, parts)
    }
}

/// Time allowed for the mediator to answer the first request; after that, calls may take as
/// long as the work does (a kernel can run for minutes).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the guest driver's device is the transport: it exists and VGPU_SOCKET is not set.
fn use_device() -> bool {
    std::env::var_os("VGPU_SOCKET").is_none() && Path::new(device::DEVICE_NODE).exists()
}

/// Where the mediator is reached, for messages: the device node or the socket.
pub fn mediator_place() -> String {
    if use_device() { device::DEVICE_NODE.to_string() } else { socket_path().display().to_string() }
}

/// The PCI address of a VGPU-STUB device (10de:2331) in this machine, if there is one.
fn vgpu_stub_in_this_vm() -> Option<String> {
    let read = |p: PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    std::fs::read_dir("/sys/bus/pci/devices").ok()?.flatten().find_map(|d| {
        let dir = d.path();
        (read(dir.join("vendor")) == "0x10de" && read(dir.join("device")) == "0x2331")
            .then(|| d.file_name().to_string_lossy().into_owned())
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// The guest driver's device when present (and VGPU_SOCKET not set), else the socket.
fn open_transport(who: &str) -> Result<(Box<dyn Transport>, String), CuResult> {
    let node = Path::new(device::DEVICE_NODE);
    if use_device() {
        return match DeviceTransport::open(node, HELLO_TIMEOUT) {
            Ok(t) => Ok((Box::new(t), node.display().to_string())),
            Err(e) => {
                vlog!(log::ERROR, "{who}: {}", e.explain(node));
                Err(CUDA_ERROR_NO_DEVICE)
            }
        };
    }
    let path = socket_path();
    match SocketTransport::connect(&path, HELLO_TIMEOUT) {
        Ok(t) => Ok((Box::new(t), path.display().to_string())),
        Err(e) => {
            match vgpu_stub_in_this_vm() {
                // In a VM with the device, the socket was never the way: the node is missing.
                Some(bdf) if std::env::var_os("VGPU_SOCKET").is_none() => vlog!(
                    log::ERROR,
                    "{who}: the VGPU-STUB device is at {bdf} but {} is missing: load the driver (modprobe vgpu; is vgpu-dkms installed for kernel {}?)",
                    node.display(),
                    kernel_release()
                ),
                _ => vlog!(
                    log::ERROR,
                    "{who}: cannot reach the vgpu mediator at {} ({e}); is vgpu-hostd running? (set VGPU_SOCKET to its socket; in a VM, is the vgpu driver loaded? {} is missing)",
                    path.display(),
                    node.display()
                ),
            }
            Err(CUDA_ERROR_NO_DEVICE)
        }
    }
}
