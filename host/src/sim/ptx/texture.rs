//! Texture and surface objects in the sim: what `tex`, `tld4`, `suld`, `sust`, `txq` and `suq`
//! read and write.
//!
//! Texels live in the session's global memory (an array is an allocation of its own, packed
//! row by row), so every texel read and surface write goes through the same bounds-checked
//! accessor as any other global access. The sampling follows the CUDA C++ Programming Guide's
//! "Texture Fetching" appendix: nearest-point sampling takes T[floor(x)]; linear filtering
//! blends T[i] and T[i+1] at i = floor(x - 0.5) with weights whose fraction is kept in 9-bit
//! fixed point, 8 bits of it fractional (so steps of 1/256, rounded to nearest here); address
//! modes (wrap, clamp, mirror, border) act on texel indices, and wrap and mirror only with
//! normalized coordinates (unnormalized ones clamp, as CUDA documents).

use super::MemFault;
use std::collections::HashMap;
use vgpu_uapi::array::*;

/// Where an object's texels are and how they are laid out.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub base: u64,
    pub format: u32,
    pub channels: u32,
    /// Elements per row, rows per slice (1 for 1D), slices or layers (1 for 1D and 2D).
    pub width: u64,
    pub height: u64,
    pub depth: u64,
    /// Bytes from one row to the next, and from one slice or layer to the next.
    pub pitch: u64,
    pub slice: u64,
    pub layered: bool,
    /// Dimensions of its coordinates: 1, 2 or 3 (a layer index is not one).
    pub dims: u8,
    /// Linear memory (a RESOURCE_LINEAR buffer, read with tex1Dfetch): out-of-range reads
    /// give zero.
    pub linear: bool,
}

impl Resource {
    pub fn elem_bytes(&self) -> u64 {
        format_bytes(self.format).unwrap_or(0) * self.channels as u64
    }
}

/// A texture object (with its sampler) or a surface object (without).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub res: Resource,
    pub sampler: Option<SamplerDesc>,
}

/// A session's texture and surface objects, by the handle kernels are given.
pub type Objects = HashMap<u64, Object>;

/// What a sampling or surface access can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TexError {
    /// A texel outside the session's memory (the resource's memory was freed).
    Memory(MemFault),
    /// A surface access out of range with `.trap`.
    OutOfRange { x: i64, y: i64, z: i64 },
}

impl From<MemFault> for TexError {
    fn from(f: MemFault) -> Self {
        TexError::Memory(f)
    }
}

/// Reads global memory (the launch's bounds-checked view).
pub type Read<'r> = dyn FnMut(u64, &mut [u8]) -> Result<(), MemFault> + 'r;

/// Coordinates of a fetch: integer texel indices, or float coordinates (normalized or not,
/// as the sampler says). Unused dimensions are ignored.
#[derive(Clone, Copy, Debug)]
pub enum Coords {
    Int([i64; 3]),
    Float([f32; 3]),
}

/// A texel's channels as the fetch returns them before any filtering.
#[derive(Clone, Copy)]
enum Texel {
    Float([f32; 4]),
    Int([u32; 4]),
}

/// The number of dimensions a resource is addressed in (layers are not one).
fn dims(res: &Resource) -> usize {
    res.dims.clamp(1, 3) as usize
}

fn extent(res: &Resource, d: usize) -> u64 {
    [res.width, res.height, res.depth][d]
}

/// Texel index `i` of a dimension of `n` texels under `mode`; None: outside, with a border.
fn address(i: i64, n: u64, mode: u32) -> Option<u64> {
    let n = n.max(1) as i64;
    Some(match mode {
        ADDRESS_WRAP => i.rem_euclid(n),
        ADDRESS_MIRROR => {
            let m = i.rem_euclid(2 * n);
            if m >= n {
                2 * n - 1 - m
            } else {
                m
            }
        }
        ADDRESS_BORDER if i < 0 || i >= n => return None,
        _ => i.clamp(0, n - 1),
    } as u64)
}

/// Dimension `d`'s address mode: wrap and mirror need normalized coordinates; without them
/// CUDA clamps.
fn address_mode(s: &SamplerDesc, d: usize) -> u32 {
    let m = s.address[d];
    if s.flags & TRSF_NORMALIZED_COORDINATES == 0 && matches!(m, ADDRESS_WRAP | ADDRESS_MIRROR) {
        ADDRESS_CLAMP
    } else {
        m
    }
}

fn is_int_read(res: &Resource, s: &SamplerDesc) -> bool {
    reads_integers(res.format, s.flags)
}

/// Whether a texture of `format` returns integers: with CU_TRSF_READ_AS_INTEGER, and always for
/// 32-bit integers ("32-bit integer format would not be promoted, regardless of" the read mode,
/// cudaTextureDesc's documentation).
pub fn reads_integers(format: u32, flags: u32) -> bool {
    format_is_integer(format) && (flags & TRSF_READ_AS_INTEGER != 0 || format_bytes(format) == Some(4))
}

/// The channels of the element at `addr`, converted as the read mode says.
fn load_texel(res: &Resource, s: Option<&SamplerDesc>, addr: u64, read: &mut Read<'_>) -> Result<Texel, TexError> {
    let cb = format_bytes(res.format).unwrap_or(4) as usize;
    let mut buf = [0u8; 16];
    let n = cb * res.channels as usize;
    read(addr, &mut buf[..n])?;
    let raw = |c: usize| -> u64 {
        let b = &buf[c * cb..(c + 1) * cb];
        match cb {
            1 => b[0] as u64,
            2 => u16::from_le_bytes([b[0], b[1]]) as u64,
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        }
    };
    let int_read = s.is_none_or(|s| is_int_read(res, s));
    if int_read {
        let mut v = [0, 0, 0, 1];
        for (c, slot) in v.iter_mut().enumerate().take(res.channels as usize) {
            let r = raw(c);
            *slot = match res.format {
                FORMAT_SIGNED_INT8 => r as u8 as i8 as i32 as u32,
                FORMAT_SIGNED_INT16 => r as u16 as i16 as i32 as u32,
                _ => r as u32,
            };
        }
        return Ok(Texel::Int(v));
    }
    let srgb = s.is_some_and(|s| s.flags & TRSF_SRGB != 0) && res.format == FORMAT_UNSIGNED_INT8;
    let mut v = [0.0, 0.0, 0.0, 1.0];
    for (c, slot) in v.iter_mut().enumerate().take(res.channels as usize) {
        let r = raw(c);
        *slot = match res.format {
            FORMAT_FLOAT => f32::from_bits(r as u32),
            FORMAT_HALF => half::f16::from_bits(r as u16).to_f32(),
            // cudaReadModeNormalizedFloat: unsigned n-bit integers to [0, 1] by / (2^n - 1),
            // signed ones to [-1, 1] by / (2^(n-1) - 1), the most negative clamped to -1.
            FORMAT_UNSIGNED_INT8 => r as f32 / 255.0,
            FORMAT_UNSIGNED_INT16 => r as f32 / 65535.0,
            FORMAT_SIGNED_INT8 => (r as u8 as i8 as f32 / 127.0).max(-1.0),
            FORMAT_SIGNED_INT16 => (r as u16 as i16 as f32 / 32767.0).max(-1.0),
            FORMAT_UNSIGNED_INT32 => r as u32 as f32 / u32::MAX as f32,
            _ => (r as u32 as i32 as f32 / i32::MAX as f32).max(-1.0),
        };
        if srgb && c < 3 {
            *slot = srgb_to_linear(*slot);
        }
    }
    Ok(Texel::Float(v))
}

/// The sRGB transfer function's inverse (IEC 61966-2-1), for CU_TRSF_SRGB.
fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn border(res: &Resource, s: &SamplerDesc) -> Texel {
    let b = s.border.map(f32::from_bits);
    if is_int_read(res, s) {
        Texel::Int(b.map(|v| v as i32 as u32))
    } else {
        Texel::Float(b)
    }
}

/// The texel at indices `idx` (each already addressed; None: the border) of layer `layer`.
fn texel_at(res: &Resource, s: &SamplerDesc, idx: [Option<u64>; 3], layer: u64, read: &mut Read<'_>) -> Result<Texel, TexError> {
    if idx.iter().any(Option::is_none) {
        return Ok(border(res, s));
    }
    let [x, y, z] = idx.map(|v| v.unwrap_or(0));
    let z = if res.layered { layer } else { z };
    let addr = res.base.wrapping_add(z.wrapping_mul(res.slice)).wrapping_add(y.wrapping_mul(res.pitch)).wrapping_add(x.wrapping_mul(res.elem_bytes()));
    load_texel(res, Some(s), addr, read)
}

/// A linear filter weight: the fraction kept in 9-bit fixed point with 8 fractional bits.
pub fn weight(frac: f32) -> f32 {
    (frac * 256.0).round() / 256.0
}

fn bits(t: Texel) -> [u32; 4] {
    match t {
        Texel::Float(v) => v.map(f32::to_bits),
        Texel::Int(v) => v,
    }
}

fn floats(t: Texel) -> [f32; 4] {
    match t {
        Texel::Float(v) => v,
        Texel::Int(v) => v.map(|x| x as i32 as f32),
    }
}

/// Layer `l` of a layered resource, clamped to its layers.
fn layer_of(res: &Resource, l: i64) -> u64 {
    l.clamp(0, res.depth.max(1) as i64 - 1) as u64
}

/// `tex`: the four 32-bit results (f32 bits for float reads, integers for integer reads).
pub fn fetch(obj: &Object, layer: i64, c: Coords, read: &mut Read<'_>) -> Result<[u32; 4], TexError> {
    let res = &obj.res;
    let Some(s) = &obj.sampler else {
        return Ok([0; 4]);
    };
    let layer = layer_of(res, layer);
    if res.linear {
        // tex1Dfetch: an element index, no filtering; outside the buffer, zero.
        let i = match c {
            Coords::Int(v) => v[0],
            Coords::Float(v) => v[0].floor() as i64,
        };
        if i < 0 || i as u64 >= res.width {
            return Ok(bits(if is_int_read(res, s) { Texel::Int([0; 4]) } else { Texel::Float([0.0; 4]) }));
        }
        return Ok(bits(load_texel(res, Some(s), res.base.wrapping_add(i as u64 * res.elem_bytes()), read)?));
    }
    let nd = dims(res);
    let normalized = s.flags & TRSF_NORMALIZED_COORDINATES != 0;
    let mode = |d: usize| address_mode(s, d);
    match c {
        Coords::Int(v) => {
            let mut idx = [Some(0); 3];
            for (d, slot) in idx.iter_mut().enumerate().take(nd) {
                *slot = address(v[d], extent(res, d), mode(d));
            }
            Ok(bits(texel_at(res, s, idx, layer, read)?))
        }
        Coords::Float(v) => {
            let scaled = |d: usize| if normalized { v[d] * extent(res, d) as f32 } else { v[d] };
            if s.filter == FILTER_POINT || is_int_read(res, s) {
                let mut idx = [Some(0); 3];
                for (d, slot) in idx.iter_mut().enumerate().take(nd) {
                    *slot = address(floor_index(scaled(d)), extent(res, d), mode(d));
                }
                return Ok(bits(texel_at(res, s, idx, layer, read)?));
            }
            // Linear: the 2^nd texels around x - 0.5, weighted.
            let mut base = [0i64; 3];
            let mut w = [0f32; 3];
            for d in 0..nd {
                let xb = scaled(d) - 0.5;
                let fl = if xb.is_nan() { 0.0 } else { xb.floor() };
                base[d] = floor_index(fl);
                w[d] = weight(xb - fl);
            }
            let mut acc = [0f32; 4];
            for corner in 0..(1usize << nd) {
                let mut idx = [Some(0); 3];
                let mut f = 1.0f32;
                for d in 0..nd {
                    let up = corner >> d & 1 == 1;
                    idx[d] = address(base[d].saturating_add(up as i64), extent(res, d), mode(d));
                    f *= if up { w[d] } else { 1.0 - w[d] };
                }
                let t = floats(texel_at(res, s, idx, layer, read)?);
                for k in 0..4 {
                    acc[k] += f * t[k];
                }
            }
            Ok(acc.map(f32::to_bits))
        }
    }
}

/// floor(x) as a texel index (NaN reads texel 0; far-out values saturate).
fn floor_index(x: f32) -> i64 {
    if x.is_nan() {
        0
    } else {
        x.floor() as i64
    }
}

/// `tld4` (tex2Dgather): channel `comp` of the four texels linear filtering would blend,
/// in the order (i, j+1), (i+1, j+1), (i+1, j), (i, j) (the PTX ISA's tld4).
pub fn gather(obj: &Object, c: [f32; 2], comp: usize, read: &mut Read<'_>) -> Result<[u32; 4], TexError> {
    let res = &obj.res;
    let Some(s) = &obj.sampler else {
        return Ok([0; 4]);
    };
    let normalized = s.flags & TRSF_NORMALIZED_COORDINATES != 0;
    let mode = |d: usize| address_mode(s, d);
    let scaled = |d: usize| if normalized { c[d] * extent(res, d) as f32 } else { c[d] };
    let i = floor_index(scaled(0) - 0.5);
    let j = floor_index(scaled(1) - 0.5);
    let mut out = [0u32; 4];
    for (k, (di, dj)) in [(0, 1), (1, 1), (1, 0), (0, 0)].into_iter().enumerate() {
        let idx = [address(i.saturating_add(di), res.width, mode(0)), address(j.saturating_add(dj), res.height, mode(1)), Some(0)];
        out[k] = bits(texel_at(res, s, idx, 0, read)?)[comp.min(3)];
    }
    Ok(out)
}

/// Out-of-range surface accesses: `.trap`, `.clamp` or `.zero`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oob {
    Trap,
    Clamp,
    Zero,
}

/// Where a surface access of `size` bytes at (x in bytes, y, z or layer) goes; None: nowhere
/// (`.zero`).
pub fn surface_addr(obj: &Object, c: [i64; 3], layer: i64, size: u64, oob: Oob) -> Result<Option<u64>, TexError> {
    let res = &obj.res;
    let row = res.width * res.elem_bytes();
    let nd = dims(res);
    let limits = [row.saturating_sub(size) as i64, res.height as i64 - 1, res.depth as i64 - 1];
    let mut p = [0i64; 3];
    for d in 0..nd {
        p[d] = c[d];
        if c[d] < 0 || c[d] > limits[d] {
            match oob {
                Oob::Trap => return Err(TexError::OutOfRange { x: c[0], y: c[1], z: c[2] }),
                Oob::Zero => return Ok(None),
                Oob::Clamp => p[d] = c[d].clamp(0, limits[d].max(0)),
            }
        }
    }
    let z = if res.layered { layer_of(res, layer) } else { p[2] as u64 };
    Ok(Some(res.base.wrapping_add(z.wrapping_mul(res.slice)).wrapping_add((p[1] as u64).wrapping_mul(res.pitch)).wrapping_add(p[0] as u64)))
}

/// `txq` / `suq` queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    Width,
    Height,
    Depth,
    ArraySize,
    NormalizedCoords,
    FilterMode,
    AddrMode(u8),
}

pub fn query(obj: &Object, q: Query) -> u32 {
    let r = &obj.res;
    let s = obj.sampler.unwrap_or_default();
    match q {
        Query::Width => r.width as u32,
        Query::Height => r.height as u32,
        Query::Depth => if r.layered { 1 } else { r.depth as u32 },
        Query::ArraySize => if r.layered { r.depth as u32 } else { 0 },
        Query::NormalizedCoords => (s.flags & TRSF_NORMALIZED_COORDINATES != 0) as u32,
        Query::FilterMode => s.filter,
        Query::AddrMode(d) => s.address[d.min(2) as usize],
    }
}

#[cfg(test)]
mod tests {
    //! Expectations worked out by hand from CUDA's documented formulas (the Programming
    //! Guide's "Texture Fetching" appendix and the read modes of cudaTextureDesc), not from
    //! this code.
    use super::*;

    fn f32_res(w: u64, h: u64, d: u64) -> Resource {
        let dims = if d > 1 { 3 } else if h > 1 { 2 } else { 1 };
        Resource { base: 0x1000, format: FORMAT_FLOAT, channels: 1, width: w, height: h, depth: d, pitch: w * 4, slice: w * 4 * h, layered: false, dims, linear: false }
    }

    fn sampler(mode: u32, filter: u32, flags: u32) -> SamplerDesc {
        SamplerDesc { address: [mode; 3], filter, flags, border: [(-1.0f32).to_bits(), 0, 0, 0] }
    }

    /// Memory at 0x1000: texel k holds the float 10 * k.
    fn reader(data: Vec<u8>) -> impl FnMut(u64, &mut [u8]) -> Result<(), MemFault> {
        move |a: u64, out: &mut [u8]| {
            let off = a.checked_sub(0x1000).ok_or(MemFault { addr: a, len: out.len() as u64 })? as usize;
            let src = data.get(off..off + out.len()).ok_or(MemFault { addr: a, len: out.len() as u64 })?;
            out.copy_from_slice(src);
            Ok(())
        }
    }

    fn tens(n: usize) -> Vec<u8> {
        (0..n).flat_map(|k| (10.0 * k as f32).to_le_bytes()).collect()
    }

    fn x(obj: &Object, c: Coords, data: &[u8]) -> f32 {
        f32::from_bits(fetch(obj, 0, c, &mut reader(data.to_vec())).unwrap()[0])
    }

    #[test]
    fn point_sampling_takes_the_texel_under_floor_x() {
        let data = tens(4);
        let o = Object { res: f32_res(4, 1, 1), sampler: Some(sampler(ADDRESS_CLAMP, FILTER_POINT, 0)) };
        assert_eq!(x(&o, Coords::Float([2.0, 0.0, 0.0]), &data), 20.0);
        assert_eq!(x(&o, Coords::Float([2.99, 0.0, 0.0]), &data), 20.0);
        assert_eq!(x(&o, Coords::Float([-3.0, 0.0, 0.0]), &data), 0.0, "clamped to texel 0");
        assert_eq!(x(&o, Coords::Float([9.0, 0.0, 0.0]), &data), 30.0, "clamped to texel 3");
        let b = Object { sampler: Some(sampler(ADDRESS_BORDER, FILTER_POINT, 0)), ..o.clone() };
        assert_eq!(x(&b, Coords::Float([4.0, 0.0, 0.0]), &data), -1.0, "the border color");
        // Normalized: x * N; wrap takes frac(x), mirror reflects at every integer.
        let w = Object { sampler: Some(sampler(ADDRESS_WRAP, FILTER_POINT, TRSF_NORMALIZED_COORDINATES)), ..o.clone() };
        assert_eq!(x(&w, Coords::Float([1.3, 0.0, 0.0]), &data), 10.0, "frac 0.3 * 4 = 1.2");
        assert_eq!(x(&w, Coords::Float([-0.1, 0.0, 0.0]), &data), 30.0, "frac 0.9 * 4 = 3.6");
        let m = Object { sampler: Some(sampler(ADDRESS_MIRROR, FILTER_POINT, TRSF_NORMALIZED_COORDINATES)), ..o.clone() };
        assert_eq!(x(&m, Coords::Float([1.3, 0.0, 0.0]), &data), 20.0, "1 - 0.3 = 0.7, * 4 = 2.8");
        // Wrap with unnormalized coordinates is not supported by CUDA: it clamps.
        let wu = Object { sampler: Some(sampler(ADDRESS_WRAP, FILTER_POINT, 0)), ..o };
        assert_eq!(x(&wu, Coords::Float([5.0, 0.0, 0.0]), &data), 30.0);
    }

    #[test]
    fn linear_filtering_blends_at_x_minus_half_with_8_bit_weights() {
        let data = tens(4);
        let o = Object { res: f32_res(4, 1, 1), sampler: Some(sampler(ADDRESS_CLAMP, FILTER_LINEAR, 0)) };
        // x = 1.25: xB = 0.75, i = 0, alpha = 0.75: 0.25 * 0 + 0.75 * 10.
        assert_eq!(x(&o, Coords::Float([1.25, 0.0, 0.0]), &data), 7.5);
        // At a texel's center the texel itself.
        assert_eq!(x(&o, Coords::Float([2.5, 0.0, 0.0]), &data), 20.0);
        // alpha = 1/3 is kept as 85/256 (9-bit fixed point, 8 fractional bits).
        assert_eq!(x(&o, Coords::Float([0.5 + 1.0 / 3.0, 0.0, 0.0]), &data), 10.0 * 85.0 / 256.0);
        // Clamp below the first texel: both taps are texel 0.
        assert_eq!(x(&o, Coords::Float([0.2, 0.0, 0.0]), &data), 0.0);
        // Border: the tap outside is the border color -1: 0.5 * 30 + 0.5 * -1.
        let b = Object { sampler: Some(sampler(ADDRESS_BORDER, FILTER_LINEAR, 0)), ..o };
        assert_eq!(x(&b, Coords::Float([4.0, 0.0, 0.0]), &data), 14.5);
    }

    #[test]
    fn bilinear_and_trilinear_weights_multiply() {
        // 2 x 2 texels 0, 10 / 20, 30; at (1.0, 1.0) every weight is 1/2: the mean 15.
        let data = tens(8);
        let o = Object { res: f32_res(2, 2, 1), sampler: Some(sampler(ADDRESS_CLAMP, FILTER_LINEAR, 0)) };
        assert_eq!(x(&o, Coords::Float([1.0, 1.0, 0.0]), &data), 15.0);
        // (0.75, 1.5): alpha 0.25 between columns, beta 1 (row 1 only): 0.75 * 20 + 0.25 * 30.
        assert_eq!(x(&o, Coords::Float([0.75, 1.5, 0.0]), &data), 22.5);
        let o3 = Object { res: f32_res(2, 2, 2), sampler: Some(sampler(ADDRESS_CLAMP, FILTER_LINEAR, 0)) };
        // The mean of all eight texels 0..70.
        assert_eq!(x(&o3, Coords::Float([1.0, 1.0, 1.0]), &data), 35.0);
        assert_eq!(x(&o3, Coords::Int([1, 0, 1]), &data), 50.0, "integer coordinates: texel (1, 0, 1)");
    }

    #[test]
    fn read_modes_normalize_integers_as_cuda_documents() {
        let res = Resource { base: 0x1000, format: FORMAT_SIGNED_INT8, channels: 2, width: 2, height: 1, depth: 1, pitch: 4, slice: 4, layered: false, dims: 1, linear: false };
        let data = vec![0x7f, 0x80, 0xc0, 0x00];
        let norm = Object { res: res.clone(), sampler: Some(sampler(ADDRESS_CLAMP, FILTER_POINT, 0)) };
        let v = fetch(&norm, 0, Coords::Int([0, 0, 0]), &mut reader(data.clone())).unwrap().map(f32::from_bits);
        assert_eq!(v, [1.0, -1.0, 0.0, 1.0], "127 -> 1, -128 clamps to -1; absent channels (0, 0, 1)");
        let v = fetch(&norm, 0, Coords::Int([1, 0, 0]), &mut reader(data.clone())).unwrap().map(f32::from_bits);
        assert_eq!(v[0], -64.0 / 127.0);
        let int = Object { res, sampler: Some(sampler(ADDRESS_CLAMP, FILTER_POINT, TRSF_READ_AS_INTEGER)) };
        let v = fetch(&int, 0, Coords::Int([0, 0, 0]), &mut reader(data)).unwrap();
        assert_eq!(v, [127, (-128i32) as u32, 0, 1], "element type: sign-extended");
        let u16res = Resource { base: 0x1000, format: FORMAT_UNSIGNED_INT16, channels: 1, width: 1, height: 1, depth: 1, pitch: 2, slice: 2, layered: false, dims: 1, linear: false };
        let o = Object { res: u16res, sampler: Some(sampler(ADDRESS_CLAMP, FILTER_POINT, 0)) };
        let v = fetch(&o, 0, Coords::Int([0, 0, 0]), &mut reader(vec![0xff, 0x7f])).unwrap();
        assert_eq!(f32::from_bits(v[0]), 32767.0 / 65535.0);
    }

    #[test]
    fn linear_buffers_read_zero_outside() {
        let data = tens(3);
        let mut res = f32_res(3, 1, 1);
        res.linear = true;
        let o = Object { res, sampler: Some(sampler(ADDRESS_CLAMP, FILTER_POINT, 0)) };
        assert_eq!(x(&o, Coords::Int([2, 0, 0]), &data), 20.0);
        assert_eq!(x(&o, Coords::Int([3, 0, 0]), &data), 0.0);
        assert_eq!(x(&o, Coords::Int([-1, 0, 0]), &data), 0.0);
    }

    #[test]
    fn gather_returns_the_bilinear_footprint_in_ptx_order() {
        let data = tens(9);
        let o = Object { res: f32_res(3, 3, 1), sampler: Some(sampler(ADDRESS_CLAMP, FILTER_POINT, 0)) };
        // At (1.0, 1.0) the footprint is columns 0-1, rows 0-1: texels 0 10 / 30 40.
        let v = gather(&o, [1.0, 1.0], 0, &mut reader(data)).unwrap().map(f32::from_bits);
        assert_eq!(v, [30.0, 40.0, 10.0, 0.0]);
    }

    #[test]
    fn surface_accesses_are_in_bytes_and_honour_the_out_of_range_mode() {
        let o = Object { res: f32_res(4, 2, 1), sampler: None };
        assert_eq!(surface_addr(&o, [8, 1, 0], 0, 4, Oob::Trap), Ok(Some(0x1000 + 16 + 8)));
        assert!(surface_addr(&o, [16, 0, 0], 0, 4, Oob::Trap).is_err());
        assert!(surface_addr(&o, [14, 0, 0], 0, 4, Oob::Trap).is_err(), "a 4-byte access from byte 14 ends past the row");
        assert_eq!(surface_addr(&o, [16, 0, 0], 0, 4, Oob::Zero), Ok(None));
        assert_eq!(surface_addr(&o, [100, 5, 0], 0, 4, Oob::Clamp), Ok(Some(0x1000 + 16 + 12)));
    }
}
