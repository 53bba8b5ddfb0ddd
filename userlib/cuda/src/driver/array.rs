//! CUDA arrays, 2D and 3D copies, texture and surface objects.
//!
//! Arrays live in the mediator (an array handle is the mediator's); every copy that touches
//! one, and every pitched copy, is a [`Copy3D`] request. Host memory is gathered into (or
//! scattered from) packed rows here, so pitched host buffers never cross the connection with
//! their gaps; requests are cut to at most COPY_CHUNK bytes of host data each. Like the other
//! copies, they complete before the call returns (see memory.rs).

use super::*;
use crate::state::{self, is_device_ptr, Driver};
use std::collections::HashMap;
use std::ffi::c_uint;
use std::sync::{Mutex, MutexGuard};
use vgpu_uapi::array::{c, ArrayDesc, Copy3D, CopySide, ResourceDesc, MEM_ARRAY, MEM_DEVICE, MEM_HOST, RESOURCE_ARRAY};
use vgpu_uapi::proto::{Op, COPY_CHUNK};
use vgpu_uapi::wire::Writer as _;

/// CUmemorytype: a pointer whose value says where it is (unified addressing).
const MEM_UNIFIED: u32 = 4;

/// What libcuda remembers of the arrays and texture objects it made, for the descriptor
/// queries (the mediator holds the objects themselves).
#[derive(Default)]
struct Known {
    arrays: HashMap<u64, ArrayDesc>,
    textures: HashMap<u64, (c::ResourceDesc, c::TextureDesc)>,
    surfaces: HashMap<u64, c::ResourceDesc>,
}

fn known() -> MutexGuard<'static, Known> {
    static K: std::sync::LazyLock<Mutex<Known>> = std::sync::LazyLock::new(Default::default);
    K.lock().unwrap_or_else(|e| e.into_inner())
}

/// cuDevicePrimaryCtxReset freed them all.
pub(crate) fn forget_all_arrays() {
    *known() = Known::default();
}

fn ctx_driver() -> Result<&'static Driver, CUresult> {
    Ok(state::current_device()?.0)
}

fn read<T: Copy>(p: *const T) -> Result<T, CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null; the Driver API contract makes the caller pass a valid `T*`.
    Ok(unsafe { p.read_unaligned() })
}

fn create(desc: ArrayDesc) -> Result<u64, CUresult> {
    let mut req = Vec::new();
    desc.encode(&mut req);
    let h = new_object(Op::ArrayCreate, &[&req])?;
    known().arrays.insert(h, desc);
    Ok(h)
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(out: *mut Handle, desc: *const c::ArrayDescriptor) -> CUresult {
    guard("cuArrayCreate", || {
        let d = read(desc)?;
        let h = create(ArrayDesc { width: d.width as u64, height: d.height as u64, depth: 0, format: d.format, channels: d.num_channels, flags: 0 })?;
        put(out, to_handle(h))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate_v2(out: *mut Handle, desc: *const c::Array3DDescriptor) -> CUresult {
    guard("cuArray3DCreate", || {
        let d = read(desc)?;
        let h = create(ArrayDesc { width: d.width as u64, height: d.height as u64, depth: d.depth as u64, format: d.format, channels: d.num_channels, flags: d.flags })?;
        put(out, to_handle(h))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayDestroy(array: Handle) -> CUresult {
    guard("cuArrayDestroy", || {
        let h = handle_of(array);
        super::call_u64s(Op::ArrayDestroy, &[h])?;
        known().arrays.remove(&h);
        Ok(())
    })
}

fn array_desc(array: Handle) -> Result<ArrayDesc, CUresult> {
    known().arrays.get(&handle_of(array)).copied().ok_or(CUDA_ERROR_INVALID_HANDLE)
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayGetDescriptor_v2(out: *mut c::ArrayDescriptor, array: Handle) -> CUresult {
    guard("cuArrayGetDescriptor", || {
        let a = array_desc(array)?;
        put(out, c::ArrayDescriptor { width: a.width as usize, height: a.height as usize, format: a.format, num_channels: a.channels })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DGetDescriptor_v2(out: *mut c::Array3DDescriptor, array: Handle) -> CUresult {
    guard("cuArray3DGetDescriptor", || {
        let a = array_desc(array)?;
        put(out, c::Array3DDescriptor { width: a.width as usize, height: a.height as usize, depth: a.depth as usize, format: a.format, num_channels: a.channels, flags: a.flags })
    })
}

/// Rows of pitched allocations start this many bytes apart at least (CUDA's
/// CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT on the device vgpu presents), so that every row is
/// aligned for any access and for texture binding.
const PITCH_ALIGNMENT: usize = 512;

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width_bytes: usize, height: usize, elem_bytes: c_uint) -> CUresult {
    guard("cuMemAllocPitch", || {
        if width_bytes == 0 || height == 0 || !matches!(elem_bytes, 4 | 8 | 16) || pitch.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let p = width_bytes.checked_next_multiple_of(PITCH_ALIGNMENT).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let bytes = p.checked_mul(height).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        // SAFETY: dptr is the caller's out-pointer, passed on as cuMemAlloc takes it.
        let r = unsafe { super::cuMemAlloc_v2(dptr, bytes) };
        if r != CUDA_SUCCESS {
            return Err(r);
        }
        put(pitch, p)
    })
}

/// One side of a copy as the application described it.
#[derive(Clone, Copy)]
struct Side {
    kind: u32,
    /// The host address (host), the device pointer (device) or the array handle.
    at: u64,
    x: u64,
    y: u64,
    z: u64,
    pitch: u64,
    height: u64,
}

impl Side {
    /// Resolves CU_MEMORYTYPE_UNIFIED by the pointer's value.
    fn new(kind: u32, host: u64, device: u64, array: u64, [x, y, z]: [usize; 3], pitch: usize, height: usize) -> Result<Side, CUresult> {
        let (kind, at) = match kind {
            MEM_HOST => (MEM_HOST, host),
            MEM_DEVICE => (MEM_DEVICE, device),
            MEM_ARRAY => (MEM_ARRAY, array),
            MEM_UNIFIED if is_device_ptr(device) => (MEM_DEVICE, device),
            MEM_UNIFIED => (MEM_HOST, device),
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        if at == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(Side { kind, at, x: x as u64, y: y as u64, z: z as u64, pitch: pitch as u64, height: height as u64 })
    }

    /// Byte offset of row (y, z) of the copy in host memory.
    fn host_row(&self, y: u64, z: u64) -> Option<u64> {
        let slice = self.pitch.checked_mul(self.height)?;
        self.z.checked_add(z)?.checked_mul(slice)?.checked_add(self.y.checked_add(y)?.checked_mul(self.pitch)?)?.checked_add(self.x)
    }

    /// The wire side of a piece of the copy starting at (x, y, z) of it.
    fn wire(&self, x: u64, y: u64, z: u64) -> CopySide {
        match self.kind {
            MEM_HOST => CopySide { kind: MEM_HOST, ..Default::default() },
            kind => CopySide { kind, handle: self.at, x_bytes: self.x + x, y: self.y + y, z: self.z + z, pitch: self.pitch, height: self.height },
        }
    }
}

/// A 2D or 3D copy of `w` bytes × `h` rows × `depth` slices.
fn copy_3d(src: Side, dst: Side, w: u64, h: u64, depth: u64) -> Result<(), CUresult> {
    if w == 0 || h == 0 || depth == 0 {
        return Ok(());
    }
    // Extents whose bytes overflow describe no memory.
    w.checked_mul(h).and_then(|b| b.checked_mul(depth)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    for s in [&src, &dst] {
        if s.kind != MEM_ARRAY && (h > 1 || depth > 1) && s.pitch < w || s.kind != MEM_ARRAY && depth > 1 && s.height < h {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    if src.kind == MEM_HOST && dst.kind == MEM_HOST {
        for z in 0..depth {
            for y in 0..h {
                let (so, dof) = (src.host_row(y, z).ok_or(CUDA_ERROR_INVALID_VALUE)?, dst.host_row(y, z).ok_or(CUDA_ERROR_INVALID_VALUE)?);
                // SAFETY: both rows are inside the buffers the caller described (its pitches and
                // extents); CUDA leaves overlapping copies undefined, copy() is safe for them.
                unsafe { std::ptr::copy((src.at + so) as usize as *const u8, (dst.at + dof) as usize as *mut u8, w as usize) };
            }
        }
        return Ok(());
    }
    let d = ctx_driver()?;
    let dst_span = (dst.kind == MEM_DEVICE).then(|| (dst.at, dst.pitch.max(w).saturating_mul(dst.height.max(h)).saturating_mul(dst.z.saturating_add(depth)) as usize));
    super::mirror::copy_work(d, dst_span, true, || {
        if src.kind != MEM_HOST && dst.kind != MEM_HOST {
            return send(d, &src, &dst, [0, 0, 0], [w, h, depth]);
        }
        // Pieces of at most COPY_CHUNK bytes: whole slices, else rows of a slice, else parts of a row.
        let chunk = COPY_CHUNK as u64;
        let slice = w * h;
        let mut z = 0;
        while z < depth {
            if slice <= chunk {
                let n = (chunk / slice).min(depth - z);
                send(d, &src, &dst, [0, 0, z], [w, h, n])?;
                z += n;
                continue;
            }
            let mut y = 0;
            while y < h {
                if w <= chunk {
                    let n = (chunk / w).min(h - y);
                    send(d, &src, &dst, [0, y, z], [w, n, 1])?;
                    y += n;
                    continue;
                }
                let mut x = 0;
                while x < w {
                    let n = chunk.min(w - x);
                    send(d, &src, &dst, [x, y, z], [n, 1, 1])?;
                    x += n;
                }
                y += 1;
            }
            z += 1;
        }
        Ok(())
    })
}

/// One Memcpy3D request for the box at `at` (x bytes, y, z of the copy) of extent `ext`,
/// gathering a host source's rows and scattering a host destination's.
fn send(d: &Driver, src: &Side, dst: &Side, at: [u64; 3], ext: [u64; 3]) -> Result<(), CUresult> {
    let [x, y, z] = at;
    let [w, h, depth] = ext;
    let c = Copy3D { src: src.wire(x, y, z), dst: dst.wire(x, y, z), width_bytes: w, height: h, depth };
    let mut req = Vec::with_capacity(Copy3D::ENCODED_LEN + if src.kind == MEM_HOST { (w * h * depth) as usize } else { 0 });
    c.encode(&mut req);
    let rows = |s: &Side| -> Result<Vec<u64>, CUresult> {
        let mut v = Vec::with_capacity((h * depth) as usize);
        for zz in 0..depth {
            for yy in 0..h {
                let off = s.host_row(y + yy, z + zz).and_then(|o| o.checked_add(x)).and_then(|o| o.checked_add(s.at)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
                v.push(off);
            }
        }
        Ok(v)
    };
    if src.kind == MEM_HOST {
        for p in rows(src)? {
            // SAFETY: a row of `w` bytes inside the source buffer the caller described.
            req.put(unsafe { std::slice::from_raw_parts(p as usize as *const u8, w as usize) });
        }
    }
    let reply = d.call(Op::Memcpy3D, &[&req])?;
    if dst.kind == MEM_HOST {
        if reply.len() as u64 != w * h * depth {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        for (p, row) in rows(dst)?.into_iter().zip(reply.chunks(w as usize)) {
            // SAFETY: a row of `w` bytes inside the destination buffer the caller described.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), p as usize as *mut u8, row.len()) };
        }
    }
    Ok(())
}

fn memcpy_2d(p: *const c::Memcpy2D) -> Result<(), CUresult> {
    let p = read(p)?;
    let src = Side::new(p.src_memory_type, p.src_host as u64, p.src_device, handle_of(p.src_array), [p.src_x_in_bytes, p.src_y, 0], p.src_pitch, p.height)?;
    let dst = Side::new(p.dst_memory_type, p.dst_host as u64, p.dst_device, handle_of(p.dst_array), [p.dst_x_in_bytes, p.dst_y, 0], p.dst_pitch, p.height)?;
    copy_3d(src, dst, p.width_in_bytes as u64, p.height as u64, 1)
}

fn memcpy_3d(p: *const c::Memcpy3D) -> Result<(), CUresult> {
    let p = read(p)?;
    if p.src_lod != 0 || p.dst_lod != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let src = Side::new(p.src_memory_type, p.src_host as u64, p.src_device, handle_of(p.src_array), [p.src_x_in_bytes, p.src_y, p.src_z], p.src_pitch, p.src_height)?;
    let dst = Side::new(p.dst_memory_type, p.dst_host as u64, p.dst_device, handle_of(p.dst_array), [p.dst_x_in_bytes, p.dst_y, p.dst_z], p.dst_pitch, p.dst_height)?;
    copy_3d(src, dst, p.width_in_bytes as u64, p.height as u64, p.depth as u64)
}

/// An async copy on a capturing stream would be a graph node vgpu does not record: the capture
/// is invalidated and the copy refused, rather than run out of the graph.
fn not_captured(stream: Handle) -> Result<(), CUresult> {
    super::graph::forbid_while_capturing(stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy2D_v2(p: *const c::Memcpy2D) -> CUresult {
    guard("cuMemcpy2D", || memcpy_2d(p))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy2DUnaligned_v2(p: *const c::Memcpy2D) -> CUresult {
    guard("cuMemcpy2DUnaligned", || memcpy_2d(p))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy2DAsync_v2(p: *const c::Memcpy2D, stream: Handle) -> CUresult {
    guard("cuMemcpy2DAsync", || {
        not_captured(stream)?;
        memcpy_2d(p)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy3D_v2(p: *const c::Memcpy3D) -> CUresult {
    guard("cuMemcpy3D", || memcpy_3d(p))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy3DAsync_v2(p: *const c::Memcpy3D, stream: Handle) -> CUresult {
    guard("cuMemcpy3DAsync", || {
        not_captured(stream)?;
        memcpy_3d(p)
    })
}

/// The 1D array copies: `n` bytes at byte `offset` of the array's first row.
fn array_side(array: Handle, offset: usize) -> Result<Side, CUresult> {
    Side::new(MEM_ARRAY, 0, 0, handle_of(array), [offset, 0, 0], 0, 0)
}

/// Linear memory holding `n` bytes as one row.
fn linear_side(kind: u32, p: u64, n: usize) -> Result<Side, CUresult> {
    Side::new(kind, p, p, 0, [0; 3], n, 1)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoA_v2(dst: Handle, offset: usize, src: *const c_void, n: usize) -> CUresult {
    guard("cuMemcpyHtoA", || copy_3d(linear_side(MEM_HOST, src as u64, n)?, array_side(dst, offset)?, n as u64, 1, 1))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoAAsync_v2(dst: Handle, offset: usize, src: *const c_void, n: usize, stream: Handle) -> CUresult {
    guard("cuMemcpyHtoAAsync", || {
        not_captured(stream)?;
        copy_3d(linear_side(MEM_HOST, src as u64, n)?, array_side(dst, offset)?, n as u64, 1, 1)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAtoH_v2(dst: *mut c_void, src: Handle, offset: usize, n: usize) -> CUresult {
    guard("cuMemcpyAtoH", || copy_3d(array_side(src, offset)?, linear_side(MEM_HOST, dst as u64, n)?, n as u64, 1, 1))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAtoHAsync_v2(dst: *mut c_void, src: Handle, offset: usize, n: usize, stream: Handle) -> CUresult {
    guard("cuMemcpyAtoHAsync", || {
        not_captured(stream)?;
        copy_3d(array_side(src, offset)?, linear_side(MEM_HOST, dst as u64, n)?, n as u64, 1, 1)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoA_v2(dst: Handle, offset: usize, src: CUdeviceptr, n: usize) -> CUresult {
    guard("cuMemcpyDtoA", || copy_3d(linear_side(MEM_DEVICE, src, n)?, array_side(dst, offset)?, n as u64, 1, 1))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAtoD_v2(dst: CUdeviceptr, src: Handle, offset: usize, n: usize) -> CUresult {
    guard("cuMemcpyAtoD", || copy_3d(array_side(src, offset)?, linear_side(MEM_DEVICE, dst, n)?, n as u64, 1, 1))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAtoA_v2(dst: Handle, dst_offset: usize, src: Handle, src_offset: usize, n: usize) -> CUresult {
    guard("cuMemcpyAtoA", || copy_3d(array_side(src, src_offset)?, array_side(dst, dst_offset)?, n as u64, 1, 1))
}

/// The wire form of an application's resource descriptor.
fn resource(p: *const c::ResourceDesc) -> Result<(c::ResourceDesc, ResourceDesc), CUresult> {
    let r = read(p)?;
    Ok((r, r.to_wire(|a| a)))
}

/// A create request's reply: the new object's handle.
fn new_object(op: Op, parts: &[&[u8]]) -> Result<u64, CUresult> {
    let reply = ctx_driver()?.call(op, parts)?;
    vgpu_uapi::wire::Reader::new(&reply).u64().map_err(|_| CUDA_ERROR_UNKNOWN)
}

#[no_mangle]
pub unsafe extern "C" fn cuTexObjectCreate(out: *mut u64, res: *const c::ResourceDesc, tex: *const c::TextureDesc, view: *const c_void) -> CUresult {
    guard("cuTexObjectCreate", || {
        if !view.is_null() {
            crate::vlog!(crate::log::WARN, "cuTexObjectCreate: resource views are not supported by vgpu (CUDA_ERROR_NOT_SUPPORTED)");
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let (rc, rw) = resource(res)?;
        let tc = read(tex)?;
        let mut req = Vec::new();
        rw.encode(&mut req);
        tc.to_wire().encode(&mut req);
        let h = new_object(Op::TexObjectCreate, &[&req])?;
        known().textures.insert(h, (rc, tc));
        put(out, h)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuTexObjectDestroy(tex: u64) -> CUresult {
    guard("cuTexObjectDestroy", || {
        super::call_u64s(Op::TexObjectDestroy, &[tex])?;
        known().textures.remove(&tex);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuTexObjectGetResourceDesc(out: *mut c::ResourceDesc, tex: u64) -> CUresult {
    guard("cuTexObjectGetResourceDesc", || {
        let r = known().textures.get(&tex).map(|t| t.0).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        put(out, r)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuTexObjectGetTextureDesc(out: *mut c::TextureDesc, tex: u64) -> CUresult {
    guard("cuTexObjectGetTextureDesc", || {
        let t = known().textures.get(&tex).map(|t| t.1).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        put(out, t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuSurfObjectCreate(out: *mut u64, res: *const c::ResourceDesc) -> CUresult {
    guard("cuSurfObjectCreate", || {
        let (rc, rw) = resource(res)?;
        if rw.kind != RESOURCE_ARRAY {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut req = Vec::new();
        rw.encode(&mut req);
        let h = new_object(Op::SurfObjectCreate, &[&req])?;
        known().surfaces.insert(h, rc);
        put(out, h)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuSurfObjectDestroy(surf: u64) -> CUresult {
    guard("cuSurfObjectDestroy", || {
        super::call_u64s(Op::SurfObjectDestroy, &[surf])?;
        known().surfaces.remove(&surf);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuSurfObjectGetResourceDesc(out: *mut c::ResourceDesc, surf: u64) -> CUresult {
    guard("cuSurfObjectGetResourceDesc", || {
        let r = known().surfaces.get(&surf).copied().ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        put(out, r)
    })
}

// Per-thread-default-stream variants (per_thread! in driver/mod.rs).

per_thread! {
    cuMemcpy2D_v2_ptds => cuMemcpy2D_v2(p: *const c::Memcpy2D);
    cuMemcpy2DUnaligned_v2_ptds => cuMemcpy2DUnaligned_v2(p: *const c::Memcpy2D);
    cuMemcpy2DAsync_v2_ptsz => cuMemcpy2DAsync_v2(p: *const c::Memcpy2D, s: Handle);
    cuMemcpy3D_v2_ptds => cuMemcpy3D_v2(p: *const c::Memcpy3D);
    cuMemcpy3DAsync_v2_ptsz => cuMemcpy3DAsync_v2(p: *const c::Memcpy3D, s: Handle);
    cuMemcpyHtoA_v2_ptds => cuMemcpyHtoA_v2(dst: Handle, offset: usize, src: *const c_void, n: usize);
    cuMemcpyHtoAAsync_v2_ptsz => cuMemcpyHtoAAsync_v2(dst: Handle, offset: usize, src: *const c_void, n: usize, s: Handle);
    cuMemcpyAtoH_v2_ptds => cuMemcpyAtoH_v2(dst: *mut c_void, src: Handle, offset: usize, n: usize);
    cuMemcpyAtoHAsync_v2_ptsz => cuMemcpyAtoHAsync_v2(dst: *mut c_void, src: Handle, offset: usize, n: usize, s: Handle);
    cuMemcpyDtoA_v2_ptds => cuMemcpyDtoA_v2(dst: Handle, offset: usize, src: CUdeviceptr, n: usize);
    cuMemcpyAtoD_v2_ptds => cuMemcpyAtoD_v2(dst: CUdeviceptr, src: Handle, offset: usize, n: usize);
    cuMemcpyAtoA_v2_ptds => cuMemcpyAtoA_v2(dst: Handle, dst_offset: usize, src: Handle, src_offset: usize, n: usize);
}
