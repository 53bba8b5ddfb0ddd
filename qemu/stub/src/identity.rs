//! The GPU the device stands for, asked of the mediator once at start (BAR0 GPU_NAME/GPU_UUID):
//! an observer session (it owns nothing and is not listed as a GPU process), Hello then
//! DeviceInfo of device 0.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use vgpu_uapi::proto::{MsgHeader, Op, HEADER_LEN, HELLO_OBSERVER, MSG_MAGIC};
use vgpu_uapi::wire::Reader;

fn call(s: &mut UnixStream, op: Op, payload: &[u8]) -> Result<Vec<u8>, String> {
    let h = MsgHeader { magic: MSG_MAGIC, op: op as u32, seq: 1, status: 0, payload_len: payload.len() as u32, reserved: 0 };
    s.write_all(&h.to_bytes()).and_then(|()| s.write_all(payload)).map_err(|e| e.to_string())?;
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).map_err(|e| e.to_string())?;
    let h = MsgHeader::from_bytes(&hb);
    h.validate().map_err(|e| e.to_string())?;
    let mut p = vec![0u8; h.payload_len as usize];
    s.read_exact(&mut p).map_err(|e| e.to_string())?;
    if h.status != 0 {
        return Err(format!("{op:?} failed ({}): {}", h.status, String::from_utf8_lossy(&p)));
    }
    Ok(p)
}

/// (name, UUID) of the mediator's device 0.
pub fn query(mediator: &Path) -> Result<(String, [u8; 16]), String> {
    let mut s = UnixStream::connect(mediator).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut hello = vgpu_uapi::PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.extend_from_slice(&std::process::id().to_le_bytes());
    hello.extend_from_slice(&HELLO_OBSERVER.to_le_bytes());
    call(&mut s, Op::Hello, &hello)?;
    let info = call(&mut s, Op::DeviceInfo, &0u32.to_le_bytes())?;
    let d = Reader::new(&info).device_info().map_err(|_| "short DeviceInfo reply".to_string())?;
    Ok((d.name_str().to_string(), d.uuid))
}
