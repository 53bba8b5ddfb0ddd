//! A client process of the mediator for tests and benchmarks, speaking the protocol as
//! libcuda does, and a kernel of fixed cost to launch again and again.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use vgpu_client::transport::{SocketTransport, Transport};
use vgpu_uapi::cuda::*;
use vgpu_uapi::proto::Op;
use vgpu_uapi::PROTOCOL_VERSION;

/// One client process of a VM, speaking the mediator's protocol as libcuda does.
pub struct Proc {
    t: SocketTransport,
}

pub const KERNELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx");

impl Proc {
    pub fn connect(sock: &Path, pid: u32) -> Result<Proc, CuResult> {
        Self::connect_as(sock, pid, 0)
    }

    pub fn connect_as(sock: &Path, pid: u32, flags: u32) -> Result<Proc, CuResult> {
        let t = SocketTransport::connect(sock, Duration::from_secs(10)).map_err(|_| CUDA_ERROR_NO_DEVICE)?;
        let p = Proc { t };
        p.call(Op::Hello, &[&PROTOCOL_VERSION.to_le_bytes(), &pid.to_le_bytes(), &flags.to_le_bytes()])?;
        p.t.connected(0);
        Ok(p)
    }

    /// A connection that says no Hello (a device process's control connection).
    pub fn bare(sock: &Path) -> Proc {
        let t = SocketTransport::connect(sock, Duration::from_secs(10)).unwrap();
        t.connected(0);
        Proc { t }
    }

    /// A guest channel's connection as the device process opens it: GuestChannel first (its
    /// result), then the guest process's Hello (its reply flags).
    pub fn guest_channel(sock: &Path, token: &[u8], channel: u32, pid: u32) -> (Proc, Result<(), CuResult>, u32) {
        let p = Self::bare(sock);
        let attached = p.call(Op::GuestChannel, &[token, &channel.to_le_bytes()]).map(drop);
        let hello = p.call(Op::Hello, &[&PROTOCOL_VERSION.to_le_bytes(), &pid.to_le_bytes(), &0u32.to_le_bytes()]).unwrap();
        let flags = u32::from_le_bytes(hello[8..12].try_into().unwrap());
        (p, attached, flags)
    }

    pub fn call(&self, op: Op, parts: &[&[u8]]) -> Result<Vec<u8>, CuResult> {
        let mut r = Vec::new();
        self.t.call(op, parts, &mut r)?;
        Ok(r)
    }

    /// A request with a file descriptor attached (SCM_RIGHTS).
    pub fn call_with_fd(&self, op: Op, parts: &[&[u8]], fd: std::os::fd::BorrowedFd<'_>) -> Result<Vec<u8>, CuResult> {
        let mut r = Vec::new();
        self.t.call_with_fd(op, parts, fd, &mut r)?;
        Ok(r)
    }

    pub fn u64s(reply: &[u8]) -> Vec<u64> {
        reply.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
    }

    pub fn alloc(&self, bytes: u64) -> Result<u64, CuResult> {
        Ok(Self::u64s(&self.call(Op::MemAlloc, &[&bytes.to_le_bytes()])?)[0])
    }

    pub fn free(&self, p: u64) -> Result<(), CuResult> {
        self.call(Op::MemFree, &[&p.to_le_bytes()]).map(drop)
    }

    pub fn write(&self, p: u64, data: &[u8]) -> Result<(), CuResult> {
        self.call(Op::MemcpyHtoD, &[&p.to_le_bytes(), data]).map(drop)
    }

    pub fn read(&self, p: u64, len: u64) -> Result<Vec<u8>, CuResult> {
        self.call(Op::MemcpyDtoH, &[&p.to_le_bytes(), &len.to_le_bytes()])
    }

    pub fn memset32(&self, p: u64, v: u32, count: u64) -> Result<(), CuResult> {
        self.call(Op::Memset, &[&p.to_le_bytes(), &v.to_le_bytes(), &4u32.to_le_bytes(), &count.to_le_bytes()]).map(drop)
    }

    /// (free, total) as cuMemGetInfo reports it.
    pub fn mem_get_info(&self) -> (u64, u64) {
        let v = Self::u64s(&self.call(Op::MemGetInfo, &[]).unwrap());
        (v[0], v[1])
    }

    /// (total, used) as NVML reports the device's memory.
    pub fn device_memory(&self) -> (u64, u64) {
        let v = Self::u64s(&self.call(Op::DeviceMemoryInfo, &[&0u32.to_le_bytes()]).unwrap());
        (v[0], v[1])
    }

    /// The pids NVML lists as GPU processes.
    pub fn device_pids(&self) -> Vec<u32> {
        let r = self.call(Op::DeviceProcesses, &[&0u32.to_le_bytes()]).unwrap();
        let n = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
        (0..n).map(|i| u32::from_le_bytes(r[4 + i * 12..8 + i * 12].try_into().unwrap())).collect()
    }

    pub fn function(&self, name: &str) -> u64 {
        let ptx = std::fs::read(KERNELS).unwrap();
        let m = self.call(Op::ModuleLoad, &[&ptx]).unwrap();
        Self::u64s(&self.call(Op::ModuleGetFunction, &[&m[..8], name.as_bytes()]).unwrap()[..8])[0]
    }

    pub fn launch(&self, f: u64, grid: u32, block: u32, params: &[u8]) -> Result<(), CuResult> {
        let mut dims = Vec::new();
        for v in [grid, 1, 1, block, 1, 1, 0] {
            dims.extend_from_slice(&v.to_le_bytes());
        }
        dims.extend_from_slice(&0u64.to_le_bytes());
        self.call(Op::Launch, &[&f.to_le_bytes(), &dims, params]).map(drop)
    }
}

/// vadd over `n` floats in fresh buffers: a kernel of fixed cost, launched again and again.
pub struct Vadd<'p> {
    p: &'p Proc,
    f: u64,
    pub params: Vec<u8>,
    n: u32,
}

impl<'p> Vadd<'p> {
    pub fn new(p: &'p Proc, n: u32) -> Vadd<'p> {
        let f = p.function("vadd");
        let bytes = n as u64 * 4;
        let (a, b, c) = (p.alloc(bytes).unwrap(), p.alloc(bytes).unwrap(), p.alloc(bytes).unwrap());
        let ones: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        p.write(a, &ones).unwrap();
        p.write(b, &ones).unwrap();
        let mut params = Vec::new();
        for x in [a, b, c] {
            params.extend_from_slice(&x.to_le_bytes());
        }
        params.extend_from_slice(&n.to_le_bytes());
        Vadd { p, f, params, n }
    }

    pub fn run(&self) -> Result<(), CuResult> {
        self.p.launch(self.f, self.n.div_ceil(256), 256, &self.params)
    }
}
