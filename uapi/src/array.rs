//! CUDA arrays, texture objects and surface objects as the protocol carries them
//! ([`crate::proto::Op::ArrayCreate`] to [`crate::proto::Op::SurfObjectDestroy`]).
//!
//! Constants keep cuda.h's values (CUarray_format, CUDA_ARRAY3D_* flags, CUmemorytype,
//! CUresourcetype, CUaddress_mode, CUfilter_mode, CU_TRSF_*), so libcuda passes an
//! application's values through and the host's cuda backend hands them to a real driver as they
//! came. Encodings are little-endian fields in declaration order, no padding.

use crate::wire::{Reader, Truncated, Writer};

/// CUarray_format values vgpu supports (cuda.h).
pub const FORMAT_UNSIGNED_INT8: u32 = 0x01;
pub const FORMAT_UNSIGNED_INT16: u32 = 0x02;
pub const FORMAT_UNSIGNED_INT32: u32 = 0x03;
pub const FORMAT_SIGNED_INT8: u32 = 0x08;
pub const FORMAT_SIGNED_INT16: u32 = 0x09;
pub const FORMAT_SIGNED_INT32: u32 = 0x0a;
pub const FORMAT_HALF: u32 = 0x10;
pub const FORMAT_FLOAT: u32 = 0x20;

/// Bytes of one channel of `format`; None for a format vgpu does not support (the block
/// compressed and planar video formats).
pub fn format_bytes(format: u32) -> Option<u64> {
    Some(match format {
        FORMAT_UNSIGNED_INT8 | FORMAT_SIGNED_INT8 => 1,
        FORMAT_UNSIGNED_INT16 | FORMAT_SIGNED_INT16 | FORMAT_HALF => 2,
        FORMAT_UNSIGNED_INT32 | FORMAT_SIGNED_INT32 | FORMAT_FLOAT => 4,
        _ => return None,
    })
}

/// Whether `format`'s channels are integers (which texture fetches may return as integers, or
/// normalized to [0, 1] / [-1, 1]).
pub fn format_is_integer(format: u32) -> bool {
    !matches!(format, FORMAT_HALF | FORMAT_FLOAT)
}

pub fn format_is_signed(format: u32) -> bool {
    matches!(format, FORMAT_SIGNED_INT8 | FORMAT_SIGNED_INT16 | FORMAT_SIGNED_INT32)
}

/// CUDA_ARRAY3D_* flags.
pub const ARRAY_LAYERED: u32 = 0x01;
pub const ARRAY_SURFACE_LDST: u32 = 0x02;
pub const ARRAY_CUBEMAP: u32 = 0x04;
pub const ARRAY_TEXTURE_GATHER: u32 = 0x08;
/// The flags vgpu's arrays honour; the others (cubemaps, depth textures, sparse and
/// deferred-mapping arrays, graphics interop) are refused with CUDA_ERROR_NOT_SUPPORTED.
pub const ARRAY_SUPPORTED_FLAGS: u32 = ARRAY_LAYERED | ARRAY_SURFACE_LDST | ARRAY_TEXTURE_GATHER;

/// An H100's limits (CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE*), which arrays are checked against.
pub const MAX_TEXTURE1D_WIDTH: u64 = 131_072;
pub const MAX_TEXTURE2D_WIDTH: u64 = 131_072;
pub const MAX_TEXTURE2D_HEIGHT: u64 = 65_536;
pub const MAX_TEXTURE3D_EXTENT: u64 = 16_384;
pub const MAX_LAYERED_EXTENT: u64 = 32_768;
pub const MAX_LAYERS: u64 = 2_048;
/// CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT: rows of pitched 2D texture memory are a
/// multiple of this many bytes apart.
pub const TEXTURE_PITCH_ALIGNMENT: u64 = 32;

/// CUDA_ARRAY3D_DESCRIPTOR: a height of 0 makes a 1D array, a depth of 0 a 1D or 2D one; with
/// ARRAY_LAYERED the depth is the number of layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArrayDesc {
    pub width: u64,
    pub height: u64,
    pub depth: u64,
    pub format: u32,
    pub channels: u32,
    pub flags: u32,
}

impl ArrayDesc {
    pub const ENCODED_LEN: usize = 36;

    pub fn encode(&self, w: &mut impl Writer) {
        w.put_u64(self.width);
        w.put_u64(self.height);
        w.put_u64(self.depth);
        w.put_u32(self.format);
        w.put_u32(self.channels);
        w.put_u32(self.flags);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<ArrayDesc, Truncated> {
        Ok(ArrayDesc { width: r.u64()?, height: r.u64()?, depth: r.u64()?, format: r.u32()?, channels: r.u32()?, flags: r.u32()? })
    }

    /// Bytes of one element (all its channels).
    pub fn elem_bytes(&self) -> u64 {
        format_bytes(self.format).unwrap_or(0) * self.channels as u64
    }

    /// Bytes of one row, packed.
    pub fn row_bytes(&self) -> u64 {
        self.width.saturating_mul(self.elem_bytes())
    }

    /// Rows of one slice or layer (1 for a 1D array).
    pub fn rows(&self) -> u64 {
        self.height.max(1)
    }

    /// Slices (3D) or layers (layered), 1 otherwise.
    pub fn slices(&self) -> u64 {
        self.depth.max(1)
    }

    /// Bytes of the whole array, packed.
    pub fn bytes(&self) -> u64 {
        self.row_bytes().saturating_mul(self.rows()).saturating_mul(self.slices())
    }

    /// Checks the descriptor as cuArray3DCreate does: Err(message) for an invalid one,
    /// Ok(Err(message)) for a valid one vgpu does not support.
    pub fn validate(&self) -> Result<Result<(), &'static str>, &'static str> {
        if format_bytes(self.format).is_none() {
            return Ok(Err("this array format (block compressed or planar) is not supported by vgpu"));
        }
        if !matches!(self.channels, 1 | 2 | 4) {
            return Err("an array has 1, 2 or 4 channels");
        }
        if self.width == 0 {
            return Err("an array's width must not be 0");
        }
        if self.flags & !ARRAY_SUPPORTED_FLAGS != 0 {
            return Ok(Err("cubemap, depth, sparse, deferred-mapping and graphics arrays are not supported by vgpu"));
        }
        let layered = self.flags & ARRAY_LAYERED != 0;
        let within = if layered {
            self.depth >= 1 && self.depth <= MAX_LAYERS && self.width <= MAX_LAYERED_EXTENT && self.height <= MAX_LAYERED_EXTENT
        } else if self.depth > 0 {
            self.height > 0 && self.width <= MAX_TEXTURE3D_EXTENT && self.height <= MAX_TEXTURE3D_EXTENT && self.depth <= MAX_TEXTURE3D_EXTENT
        } else if self.height > 0 {
            self.width <= MAX_TEXTURE2D_WIDTH && self.height <= MAX_TEXTURE2D_HEIGHT
        } else {
            self.width <= MAX_TEXTURE1D_WIDTH
        };
        if !within {
            return Err("array extent beyond the device's limits (or a 3D array of height 0)");
        }
        Ok(Ok(()))
    }
}

/// CUmemorytype of one side of a copy. On the wire a host side is the request's payload (a
/// source) or the reply (a destination), packed: rows of `width_bytes`, no gaps.
pub const MEM_HOST: u32 = 1;
pub const MEM_DEVICE: u32 = 2;
pub const MEM_ARRAY: u32 = 3;

/// One side of a 3D copy (CUDA_MEMCPY3D's src* or dst* fields): `handle` is the device
/// pointer or the array; `pitch` and `height` shape linear device memory (ignored for arrays,
/// whose shape is their own, and for the host, which is packed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopySide {
    pub kind: u32,
    pub handle: u64,
    pub x_bytes: u64,
    pub y: u64,
    pub z: u64,
    pub pitch: u64,
    pub height: u64,
}

impl CopySide {
    /// Bytes from the base to (x_bytes, y, z), rows `pitch` bytes apart and `rows` rows to a
    /// slice; None if that overflows.
    pub fn offset(&self, pitch: u64, rows: u64) -> Option<u64> {
        let slice = pitch.checked_mul(rows)?;
        self.z.checked_mul(slice)?.checked_add(self.y.checked_mul(pitch)?)?.checked_add(self.x_bytes)
    }

    fn encode(&self, w: &mut impl Writer) {
        w.put_u32(self.kind);
        for v in [self.handle, self.x_bytes, self.y, self.z, self.pitch, self.height] {
            w.put_u64(v);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<CopySide, Truncated> {
        Ok(CopySide { kind: r.u32()?, handle: r.u64()?, x_bytes: r.u64()?, y: r.u64()?, z: r.u64()?, pitch: r.u64()?, height: r.u64()? })
    }
}

/// A 3D copy (cuMemcpy3D; 2D and array copies are its special cases): `width_bytes` ×
/// `height` rows × `depth` slices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copy3D {
    pub src: CopySide,
    pub dst: CopySide,
    pub width_bytes: u64,
    pub height: u64,
    pub depth: u64,
}

impl Copy3D {
    pub const ENCODED_LEN: usize = 2 * 52 + 24;

    pub fn encode(&self, w: &mut impl Writer) {
        self.src.encode(w);
        self.dst.encode(w);
        w.put_u64(self.width_bytes);
        w.put_u64(self.height);
        w.put_u64(self.depth);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Copy3D, Truncated> {
        Ok(Copy3D { src: CopySide::decode(r)?, dst: CopySide::decode(r)?, width_bytes: r.u64()?, height: r.u64()?, depth: r.u64()? })
    }

    /// Bytes the copy moves (None if that overflows).
    pub fn bytes(&self) -> Option<u64> {
        self.width_bytes.checked_mul(self.height)?.checked_mul(self.depth)
    }
}

/// CUresourcetype.
pub const RESOURCE_ARRAY: u32 = 0;
pub const RESOURCE_MIPMAPPED_ARRAY: u32 = 1;
pub const RESOURCE_LINEAR: u32 = 2;
pub const RESOURCE_PITCH2D: u32 = 3;

/// CUDA_RESOURCE_DESC: an array (`handle`; the other fields unused), linear memory (`handle`
/// the device pointer, `width` its size in bytes) or pitched 2D memory (`width` × `height`
/// elements, rows `pitch` bytes apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceDesc {
    pub kind: u32,
    pub handle: u64,
    pub format: u32,
    pub channels: u32,
    pub width: u64,
    pub height: u64,
    pub pitch: u64,
}

impl ResourceDesc {
    pub const ENCODED_LEN: usize = 44;

    pub fn encode(&self, w: &mut impl Writer) {
        w.put_u32(self.kind);
        w.put_u64(self.handle);
        w.put_u32(self.format);
        w.put_u32(self.channels);
        w.put_u64(self.width);
        w.put_u64(self.height);
        w.put_u64(self.pitch);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<ResourceDesc, Truncated> {
        Ok(ResourceDesc { kind: r.u32()?, handle: r.u64()?, format: r.u32()?, channels: r.u32()?, width: r.u64()?, height: r.u64()?, pitch: r.u64()? })
    }
}

/// CUaddress_mode.
pub const ADDRESS_WRAP: u32 = 0;
pub const ADDRESS_CLAMP: u32 = 1;
pub const ADDRESS_MIRROR: u32 = 2;
pub const ADDRESS_BORDER: u32 = 3;
/// CUfilter_mode.
pub const FILTER_POINT: u32 = 0;
pub const FILTER_LINEAR: u32 = 1;
/// CU_TRSF_* texture flags.
pub const TRSF_READ_AS_INTEGER: u32 = 0x01;
pub const TRSF_NORMALIZED_COORDINATES: u32 = 0x02;
pub const TRSF_SRGB: u32 = 0x10;
pub const TRSF_DISABLE_TRILINEAR_OPTIMIZATION: u32 = 0x20;
pub const TRSF_SEAMLESS_CUBEMAP: u32 = 0x40;

/// CUDA_TEXTURE_DESC, less what only mipmapped arrays use. `border` holds f32 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerDesc {
    pub address: [u32; 3],
    pub filter: u32,
    pub flags: u32,
    pub border: [u32; 4],
}

impl SamplerDesc {
    pub const ENCODED_LEN: usize = 36;

    pub fn encode(&self, w: &mut impl Writer) {
        for v in self.address.iter().chain([self.filter, self.flags].iter()).chain(self.border.iter()) {
            w.put_u32(*v);
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<SamplerDesc, Truncated> {
        Ok(SamplerDesc {
            address: [r.u32()?, r.u32()?, r.u32()?],
            filter: r.u32()?,
            flags: r.u32()?,
            border: [r.u32()?, r.u32()?, r.u32()?, r.u32()?],
        })
    }

    pub fn validate(&self) -> Result<(), &'static str> {
        if self.address.iter().any(|&a| a > ADDRESS_BORDER) {
            return Err("unknown address mode");
        }
        if self.filter > FILTER_LINEAR {
            return Err("unknown filter mode");
        }
        Ok(())
    }
}

/// cuda.h's structures for arrays, copies and texture objects, as libcuda receives them from
/// applications and the host's cuda backend passes them to a real driver.
pub mod c {
    use core::ffi::c_void;

    /// CUDA_ARRAY_DESCRIPTOR.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct ArrayDescriptor {
        pub width: usize,
        pub height: usize,
        pub format: u32,
        pub num_channels: u32,
    }

    /// CUDA_ARRAY3D_DESCRIPTOR.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Array3DDescriptor {
        pub width: usize,
        pub height: usize,
        pub depth: usize,
        pub format: u32,
        pub num_channels: u32,
        pub flags: u32,
    }

    /// CUDA_MEMCPY2D.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Memcpy2D {
        pub src_x_in_bytes: usize,
        pub src_y: usize,
        pub src_memory_type: u32,
        pub src_host: *const c_void,
        pub src_device: u64,
        pub src_array: *mut c_void,
        pub src_pitch: usize,
        pub dst_x_in_bytes: usize,
        pub dst_y: usize,
        pub dst_memory_type: u32,
        pub dst_host: *mut c_void,
        pub dst_device: u64,
        pub dst_array: *mut c_void,
        pub dst_pitch: usize,
        pub width_in_bytes: usize,
        pub height: usize,
    }

    /// CUDA_MEMCPY3D.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Memcpy3D {
        pub src_x_in_bytes: usize,
        pub src_y: usize,
        pub src_z: usize,
        pub src_lod: usize,
        pub src_memory_type: u32,
        pub src_host: *const c_void,
        pub src_device: u64,
        pub src_array: *mut c_void,
        pub reserved0: *mut c_void,
        pub src_pitch: usize,
        pub src_height: usize,
        pub dst_x_in_bytes: usize,
        pub dst_y: usize,
        pub dst_z: usize,
        pub dst_lod: usize,
        pub dst_memory_type: u32,
        pub dst_host: *mut c_void,
        pub dst_device: u64,
        pub dst_array: *mut c_void,
        pub reserved1: *mut c_void,
        pub dst_pitch: usize,
        pub dst_height: usize,
        pub width_in_bytes: usize,
        pub height: usize,
        pub depth: usize,
    }

    /// CUDA_RESOURCE_DESC: `res` is the union (array: the CUarray in word 0; linear: devPtr,
    /// format | numChannels << 32, sizeInBytes; pitch2D: devPtr, format | numChannels << 32,
    /// width, height, pitchInBytes).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct ResourceDesc {
        pub res_type: u32,
        pub res: [u64; 16],
        pub flags: u32,
    }

    /// CUDA_TEXTURE_DESC.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct TextureDesc {
        pub address_mode: [u32; 3],
        pub filter_mode: u32,
        pub flags: u32,
        pub max_anisotropy: u32,
        pub mipmap_filter_mode: u32,
        pub mipmap_level_bias: f32,
        pub min_mipmap_level_clamp: f32,
        pub max_mipmap_level_clamp: f32,
        pub border_color: [f32; 4],
        pub reserved: [i32; 12],
    }

    const _: () = assert!(core::mem::size_of::<Memcpy2D>() == 128 || core::mem::size_of::<usize>() != 8);
    const _: () = assert!(core::mem::size_of::<Memcpy3D>() == 200 || core::mem::size_of::<usize>() != 8);
    const _: () = assert!(core::mem::size_of::<ResourceDesc>() == 144);
    const _: () = assert!(core::mem::size_of::<TextureDesc>() == 104);

    impl ResourceDesc {
        /// The wire form; `array` maps the union's CUarray to the handle the wire carries.
        pub fn to_wire(&self, array: impl Fn(u64) -> u64) -> super::ResourceDesc {
            let r = &self.res;
            let (format, channels) = (r[1] as u32, (r[1] >> 32) as u32);
            match self.res_type {
                super::RESOURCE_ARRAY | super::RESOURCE_MIPMAPPED_ARRAY => super::ResourceDesc { kind: self.res_type, handle: array(r[0]), ..Default::default() },
                super::RESOURCE_LINEAR => super::ResourceDesc { kind: self.res_type, handle: r[0], format, channels, width: r[2], height: 0, pitch: 0 },
                _ => super::ResourceDesc { kind: self.res_type, handle: r[0], format, channels, width: r[2], height: r[3], pitch: r[4] },
            }
        }

        /// From the wire form; `array` maps the wire's array handle to the union's CUarray.
        pub fn from_wire(w: &super::ResourceDesc, array: impl Fn(u64) -> u64) -> ResourceDesc {
            let mut res = [0u64; 16];
            let fc = w.format as u64 | (w.channels as u64) << 32;
            match w.kind {
                super::RESOURCE_ARRAY | super::RESOURCE_MIPMAPPED_ARRAY => res[0] = array(w.handle),
                super::RESOURCE_LINEAR => res[..3].copy_from_slice(&[w.handle, fc, w.width]),
                _ => res[..5].copy_from_slice(&[w.handle, fc, w.width, w.height, w.pitch]),
            }
            ResourceDesc { res_type: w.kind, res, flags: 0 }
        }
    }

    impl TextureDesc {
        pub fn to_wire(&self) -> super::SamplerDesc {
            super::SamplerDesc { address: self.address_mode, filter: self.filter_mode, flags: self.flags, border: self.border_color.map(f32::to_bits) }
        }

        pub fn from_wire(s: &super::SamplerDesc) -> TextureDesc {
            TextureDesc { address_mode: s.address, filter_mode: s.filter, flags: s.flags, border_color: s.border.map(f32::from_bits), ..Default::default() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn descriptors_round_trip_and_reject_every_prefix() {
        let a = ArrayDesc { width: 68, height: 19, depth: 31, format: FORMAT_HALF, channels: 2, flags: ARRAY_SURFACE_LDST };
        let c = Copy3D {
            src: CopySide { kind: MEM_HOST, ..Default::default() },
            dst: CopySide { kind: MEM_ARRAY, handle: 7, x_bytes: 4, y: 1, z: 2, pitch: 0, height: 0 },
            width_bytes: 64,
            height: 3,
            depth: 2,
        };
        let res = ResourceDesc { kind: RESOURCE_PITCH2D, handle: 0x2000_0000_0000, format: FORMAT_FLOAT, channels: 1, width: 64, height: 32, pitch: 256 };
        let s = SamplerDesc { address: [ADDRESS_WRAP, ADDRESS_MIRROR, ADDRESS_BORDER], filter: FILTER_LINEAR, flags: TRSF_NORMALIZED_COORDINATES, border: [1.0f32.to_bits(), 0, 0, 0] };
        let mut v = Vec::new();
        a.encode(&mut v);
        c.encode(&mut v);
        res.encode(&mut v);
        s.encode(&mut v);
        assert_eq!(v.len(), ArrayDesc::ENCODED_LEN + Copy3D::ENCODED_LEN + ResourceDesc::ENCODED_LEN + SamplerDesc::ENCODED_LEN);
        let mut r = Reader::new(&v);
        assert_eq!(ArrayDesc::decode(&mut r), Ok(a));
        assert_eq!(Copy3D::decode(&mut r), Ok(c));
        assert_eq!(ResourceDesc::decode(&mut r), Ok(res));
        assert_eq!(SamplerDesc::decode(&mut r), Ok(s));
        assert!(r.finish().is_ok());
        for n in 0..Copy3D::ENCODED_LEN {
            assert!(Copy3D::decode(&mut Reader::new(&v[ArrayDesc::ENCODED_LEN..ArrayDesc::ENCODED_LEN + n])).is_err());
        }
    }

    #[test]
    fn array_sizes_and_limits_follow_cuda() {
        let a = ArrayDesc { width: 68, height: 19, depth: 31, format: FORMAT_HALF, channels: 2, flags: 0 };
        assert_eq!(a.elem_bytes(), 4);
        assert_eq!(a.bytes(), 68 * 4 * 19 * 31);
        assert_eq!(a.validate(), Ok(Ok(())));
        let one_d = ArrayDesc { width: 68, height: 0, depth: 0, format: FORMAT_UNSIGNED_INT8, channels: 1, flags: 0 };
        assert_eq!(one_d.bytes(), 68);
        assert!(ArrayDesc { channels: 3, ..one_d }.validate().is_err());
        assert!(ArrayDesc { width: 0, ..one_d }.validate().is_err());
        assert!(ArrayDesc { width: MAX_TEXTURE1D_WIDTH + 1, ..one_d }.validate().is_err());
        assert!(ArrayDesc { height: 0, depth: 4, ..a }.validate().is_err(), "3D needs a height");
        assert_eq!(ArrayDesc { height: 0, depth: 4, flags: ARRAY_LAYERED, ..a }.validate(), Ok(Ok(())), "1D layered");
        assert!(matches!(ArrayDesc { flags: ARRAY_CUBEMAP, ..a }.validate(), Ok(Err(_))));
        assert!(matches!(ArrayDesc { format: 0x91, ..a }.validate(), Ok(Err(_))));
    }
}
