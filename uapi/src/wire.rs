//! Bounds-checked little-endian payload decoding (`Reader`) and encoding (`Writer`).
//! The reader never panics: a short or malformed payload yields `Err(Truncated)`.

use crate::cuda::DEVICE_ATTRIBUTE_SLOTS;
use crate::proto::{DeviceInfo, FunctionInfo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if n > self.buf.len() {
            return Err(Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, Truncated> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// All that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless the payload was consumed exactly: trailing bytes mean a malformed request.
    pub fn finish(&self) -> Result<(), Truncated> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Truncated)
        }
    }

    pub fn device_info(&mut self) -> Result<DeviceInfo, Truncated> {
        let name = self.array::<96>()?;
        let uuid = self.array::<16>()?;
        let total_mem = self.u64()?;
        let (pci_domain, pci_bus, pci_device) = (self.u32()?, self.u32()?, self.u32()?);
        let mut attrs = [0i32; DEVICE_ATTRIBUTE_SLOTS];
        for a in attrs.iter_mut() {
            *a = self.i32()?;
        }
        Ok(DeviceInfo { name, uuid, total_mem, pci_domain, pci_bus, pci_device, attrs })
    }

    pub fn function_info(&mut self) -> Result<FunctionInfo, Truncated> {
        Ok(FunctionInfo {
            handle: self.u64()?,
            param_count: self.u32()?,
            param_bytes: self.u32()?,
            static_shared_bytes: self.u32()?,
            local_bytes: self.u32()?,
            max_threads_per_block: self.u32()?,
            num_regs: self.u32()?,
            ptx_version: self.u32()?,
            binary_version: self.u32()?,
            const_bytes: self.u32()?,
            req_block: [self.u32()?, self.u32()?, self.u32()?],
        })
    }
}

/// Anything bytes can be appended to (a `Vec<u8>` on hosted targets).
pub trait Writer {
    fn put(&mut self, b: &[u8]);

    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes())
    }
    fn put_i32(&mut self, v: i32) {
        self.put(&v.to_le_bytes())
    }
    fn put_u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes())
    }

    fn put_device_info(&mut self, d: &DeviceInfo) {
        self.put(&d.name);
        self.put(&d.uuid);
        self.put_u64(d.total_mem);
        self.put_u32(d.pci_domain);
        self.put_u32(d.pci_bus);
        self.put_u32(d.pci_device);
        for a in d.attrs {
            self.put_i32(a);
        }
    }

    fn put_function_info(&mut self, f: &FunctionInfo) {
        self.put_u64(f.handle);
        for v in [
            f.param_count,
            f.param_bytes,
            f.static_shared_bytes,
            f.local_bytes,
            f.max_threads_per_block,
            f.num_regs,
            f.ptx_version,
            f.binary_version,
            f.const_bytes,
            f.req_block[0],
            f.req_block[1],
            f.req_block[2],
        ] {
            self.put_u32(v);
        }
    }
}

#[cfg(any(feature = "alloc", test))]
impl Writer for alloc::vec::Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_rejects_short_input_without_panicking() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), Err(Truncated));
        assert_eq!(r.bytes(4), Err(Truncated));
        assert_eq!(r.bytes(3), Ok(&[1u8, 2, 3][..]));
        assert_eq!(r.u64(), Err(Truncated));
        assert!(r.finish().is_ok());
    }

    #[test]
    fn device_info_round_trips() {
        let mut d = DeviceInfo {
            name: [0; 96],
            uuid: [7; 16],
            total_mem: 80 << 30,
            pci_domain: 0,
            pci_bus: 5,
            pci_device: 0,
            attrs: [0; DEVICE_ATTRIBUTE_SLOTS],
        };
        d.name[..4].copy_from_slice(b"H100");
        d.attrs[75] = 9;
        let mut v = alloc::vec::Vec::new();
        v.put_device_info(&d);
        assert_eq!(v.len(), DeviceInfo::ENCODED_LEN);
        let back = Reader::new(&v).device_info().unwrap();
        assert_eq!(back, d);
        assert_eq!(back.name_str(), "H100");
        // Every prefix is rejected cleanly.
        for n in 0..v.len() {
            assert!(Reader::new(&v[..n]).device_info().is_err());
        }
    }
}
