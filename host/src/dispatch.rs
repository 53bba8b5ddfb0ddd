//! Decodes one client request (untrusted bytes), runs it on the client's session and encodes
//! the reply. A malformed request gets CUDA_ERROR_INVALID_VALUE; an unknown opcode gets
//! CUDA_ERROR_NOT_SUPPORTED. Nothing here panics on any input.

use crate::backend::{Backend, CmdError, CmdResult, DeviceSession, LaunchDims};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::{Op, COPY_CHUNK, HELLO_OBSERVER, MAX_NAME_LEN, MAX_PARAM_BYTES};
use vgpu_uapi::wire::{Reader, Truncated, Writer};
use vgpu_uapi::PROTOCOL_VERSION;

impl From<Truncated> for CmdError {
    fn from(_: Truncated) -> Self {
        CmdError::new(CUDA_ERROR_INVALID_VALUE, "malformed request payload")
    }
}

/// Per-connection state: the session is opened by Hello.
pub struct Connection<'b> {
    backend: &'b dyn Backend,
    session: Option<Box<dyn DeviceSession>>,
    pub client_pid: u32,
}

fn name_arg(bytes: &[u8]) -> CmdResult<&str> {
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "bad symbol name length"));
    }
    std::str::from_utf8(bytes).map_err(|_| CmdError::new(CUDA_ERROR_INVALID_VALUE, "symbol name is not UTF-8"))
}

impl<'b> Connection<'b> {
    pub fn new(backend: &'b dyn Backend) -> Self {
        Connection { backend, session: None, client_pid: 0 }
    }

    fn session(&mut self) -> CmdResult<&mut dyn DeviceSession> {
        match self.session.as_deref_mut() {
            Some(s) => Ok(s),
            None => Err(CmdError::new(CUDA_ERROR_NOT_INITIALIZED, "request before Hello")),
        }
    }

    /// Handles one request; on success the reply payload is appended to `out`.
    pub fn handle(&mut self, op: u32, payload: &[u8], out: &mut Vec<u8>) -> CmdResult<()> {
        let op = Op::from_u32(op).ok_or_else(|| CmdError::new(CUDA_ERROR_NOT_SUPPORTED, format!("unknown opcode {op}")))?;
        let mut r = Reader::new(payload);
        match op {
            Op::Hello => {
                let (version, pid, flags) = (r.u32()?, r.u32()?, r.u32()?);
                r.finish()?;
                if version != PROTOCOL_VERSION {
                    return Err(CmdError::new(
                        CUDA_ERROR_NOT_SUPPORTED,
                        format!("protocol version {version} not supported (mediator speaks {PROTOCOL_VERSION})"),
                    ));
                }
                if self.session.is_none() {
                    self.session = Some(self.backend.open_session(0, pid, flags & HELLO_OBSERVER != 0)?);
                }
                self.client_pid = pid;
                out.put_u32(PROTOCOL_VERSION);
                out.put_u32(self.backend.devices().len() as u32);
            }
            Op::DeviceInfo => {
                let ordinal = r.u32()?;
                r.finish()?;
                let devices = self.backend.devices();
                let d = devices
                    .get(ordinal as usize)
                    .ok_or_else(|| CmdError::new(CUDA_ERROR_INVALID_DEVICE, format!("no device {ordinal}")))?;
                out.put_device_info(d);
            }
            Op::DeviceMemoryInfo => {
                let ordinal = r.u32()?;
                r.finish()?;
                let (total, used) = self.backend.memory_usage(ordinal)?;
                out.put_u64(total);
                out.put_u64(used);
            }
            Op::DeviceProcesses => {
                let ordinal = r.u32()?;
                r.finish()?;
                let procs = self.backend.processes(ordinal)?;
                out.put_u32(procs.len() as u32);
                for p in procs {
                    out.put_u32(p.pid);
                    out.put_u64(p.used_bytes);
                }
            }
            Op::MemGetInfo => {
                r.finish()?;
                let (free, total) = self.session()?.mem_get_info();
                out.put_u64(free);
                out.put_u64(total);
            }
            Op::MemAlloc => {
                let bytes = r.u64()?;
                r.finish()?;
                let p = self.session()?.mem_alloc(bytes)?;
                out.put_u64(p);
            }
            Op::MemFree => {
                let p = r.u64()?;
                r.finish()?;
                self.session()?.mem_free(p)?;
            }
            Op::MemGetAddressRange => {
                let p = r.u64()?;
                r.finish()?;
                let (base, size) = self.session()?.mem_address_range(p)?;
                out.put_u64(base);
                out.put_u64(size);
            }
            Op::MemcpyHtoD => {
                let dst = r.u64()?;
                let data = r.rest();
                self.session()?.write(dst, data)?;
            }
            Op::MemcpyDtoH => {
                let (src, len) = (r.u64()?, r.u64()?);
                r.finish()?;
                if len > COPY_CHUNK as u64 {
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "read larger than one chunk"));
                }
                let start = out.len();
                out.resize(start + len as usize, 0);
                self.session()?.read(src, &mut out[start..])?;
            }
            Op::MemcpyDtoD => {
                let (dst, src, len) = (r.u64()?, r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.copy(dst, src, len)?;
            }
            Op::Memset => {
                let (dst, value, elem, count) = (r.u64()?, r.u32()?, r.u32()?, r.u64()?);
                r.finish()?;
                self.session()?.memset(dst, value, elem, count)?;
            }
            Op::ModuleLoad => {
                let image = r.rest();
                let m = self.session()?.module_load(image)?;
                out.put_u64(m);
            }
            Op::ModuleUnload => {
                let m = r.u64()?;
                r.finish()?;
                self.session()?.module_unload(m)?;
            }
            Op::ModuleGetFunction => {
                let m = r.u64()?;
                let name = name_arg(r.rest())?;
                let (info, params) = self.session()?.module_get_function(m, name)?;
                out.put_function_info(&info);
                for (offset, size) in params {
                    out.put_u32(offset);
                    out.put_u32(size);
                }
            }
            Op::ModuleGetGlobal => {
                let m = r.u64()?;
                let name = name_arg(r.rest())?;
                let (p, size) = self.session()?.module_get_global(m, name)?;
                out.put_u64(p);
                out.put_u64(size);
            }
            Op::ModuleEnumerateFunctions => {
                let m = r.u64()?;
                r.finish()?;
                let names = self.session()?.module_functions(m)?;
                out.put_u32(names.len() as u32);
                for n in names {
                    out.put_u32(n.len() as u32);
                    out.put(n.as_bytes());
                }
            }
            Op::Launch => {
                let f = r.u64()?;
                let grid = [r.u32()?, r.u32()?, r.u32()?];
                let block = [r.u32()?, r.u32()?, r.u32()?];
                let dynamic_shared_bytes = r.u32()?;
                let stream = r.u64()?;
                let params = r.rest();
                if params.len() > MAX_PARAM_BYTES as usize {
                    return Err(CmdError::new(CUDA_ERROR_INVALID_VALUE, "kernel parameters exceed 32764 bytes"));
                }
                let dims = LaunchDims { grid, block, dynamic_shared_bytes, stream };
                let printed = self.session()?.launch(f, dims, params)?;
                out.extend_from_slice(&printed);
            }
            Op::StreamCreate => {
                let (flags, prio) = (r.u32()?, r.i32()?);
                r.finish()?;
                let s = self.session()?.stream_create(flags, prio)?;
                out.put_u64(s);
            }
            Op::StreamDestroy | Op::StreamSynchronize | Op::StreamQuery => {
                let s = r.u64()?;
                r.finish()?;
                let sess = self.session()?;
                match op {
                    Op::StreamDestroy => sess.stream_destroy(s)?,
                    Op::StreamSynchronize => sess.stream_synchronize(s)?,
                    _ => sess.stream_query(s)?,
                }
            }
            Op::StreamWaitEvent => {
                let (s, e) = (r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.stream_wait_event(s, e)?;
            }
            Op::EventCreate => {
                let flags = r.u32()?;
                r.finish()?;
                let e = self.session()?.event_create(flags)?;
                out.put_u64(e);
            }
            Op::EventDestroy | Op::EventSynchronize | Op::EventQuery => {
                let e = r.u64()?;
                r.finish()?;
                let sess = self.session()?;
                match op {
                    Op::EventDestroy => sess.event_destroy(e)?,
                    Op::EventSynchronize => sess.event_synchronize(e)?,
                    _ => sess.event_query(e)?,
                }
            }
            Op::EventRecord => {
                let (e, s) = (r.u64()?, r.u64()?);
                r.finish()?;
                self.session()?.event_record(e, s)?;
            }
            Op::EventElapsedTime => {
                let (a, b) = (r.u64()?, r.u64()?);
                r.finish()?;
                let ms = self.session()?.event_elapsed_ms(a, b)?;
                out.put_u32(ms.to_bits());
            }
            Op::Synchronize => {
                r.finish()?;
                self.session()?.synchronize()?;
            }
        }
        Ok(())
    }
}
