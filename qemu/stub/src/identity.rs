//! The GPU the device stands for, asked of the mediator once at start (BAR0 GPU_NAME/GPU_UUID):
//! an observer session (it owns nothing and is not listed as a GPU process), Hello then
//! DeviceInfo of device 0, over vgpu-client's socket transport.

use std::path::Path;
use std::time::Duration;
use vgpu_client::transport::{SocketTransport, Transport};
use vgpu_uapi::proto::{Op, HELLO_OBSERVER};
use vgpu_uapi::wire::Reader;

/// (name, UUID) of the mediator's device 0.
pub fn query(mediator: &Path) -> Result<(String, [u8; 16]), String> {
    let t = SocketTransport::connect(mediator, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let hello = vgpu_uapi::proto::hello_request(std::process::id(), HELLO_OBSERVER);
    let mut reply = Vec::new();
    t.call(Op::Hello, &[&hello], &mut reply).map_err(|e| format!("Hello failed (CUresult {e})"))?;
    reply.clear();
    t.call(Op::DeviceInfo, &[&0u32.to_le_bytes()], &mut reply).map_err(|e| format!("DeviceInfo failed (CUresult {e})"))?;
    let d = Reader::new(&reply).device_info().map_err(|_| "short DeviceInfo reply".to_string())?;
    Ok((d.name_str().to_string(), d.uuid))
}
