//! The PTX twin of a SASS-only image, for a backend that runs PTX only (the sim).
//!
//! Some NVIDIA libraries ship each kernel as images of their own, one per architecture, and pick
//! the image themselves: cuFFT 12 (CUDA 13) holds SASS for sm_75..sm_120 and PTX for an older
//! compute_XX of many of the same kernels, and on a 9.0 device hands the driver the sm_90 cubin,
//! which the sim cannot run. When the mediator says it runs PTX only (HELLO_PTX_ONLY) and an
//! image has no PTX, libcuda looks in the library the image lies in for PTX that defines the same
//! kernels (same mangled names: the same source instantiated for another architecture) and loads
//! that instead. PTX of an older compute capability runs on any newer device: that is CUDA's own
//! compatibility rule, which the real driver applies when it JIT-compiles such PTX. Logged once per
//! library. Nothing changes on the cuda backend, which runs the SASS.
//!
//! The library's memory is read through its loaded segments (dl_iterate_phdr); the index of its
//! PTX (kernel name -> where) is built once per library, at its first SASS-only image: one pass
//! over its segments and a decompression of each PTX entry (cuFFT 12's 290 MB: about 1 s on the
//! development VM). It keeps offsets, not pointers, and each use checks them against the
//! segments mapped then. Kernels with no PTX anywhere (cuFFT's sm_90-only ones, every kernel of
//! PyTorch's own libraries) still fail with CUDA_ERROR_NO_BINARY_FOR_GPU: those need a GPU.

use crate::vlog;
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::sync::{Arc, Mutex};

/// The compute capability the sim reports, for which the newest PTX not newer is chosen.
const DEVICE_SM: u32 = 90;

/// A loaded object: its load address, path and readable segments (offsets from the address,
/// lengths, and whether each is executable: code, where no fatbin lies).
struct Object {
    base: usize,
    name: String,
    segments: Vec<(usize, usize, bool)>,
}

/// Where one PTX entry of the library lies: its fatbin (offset from the object's base, length),
/// the entry's architecture, the kernels it defines, and a hash of its text (to tell copies of
/// one image from different images that define kernels of the same names).
struct PtxImage {
    fatbin: (usize, usize),
    sm: u32,
    kernels: Vec<String>,
    text_hash: u64,
}

#[derive(Default)]
struct Index {
    images: Vec<PtxImage>,
    /// Kernel name -> the images (indices into `images`) that define it.
    by_kernel: HashMap<String, Vec<usize>>,
    /// Built (once per library: a library with no PTX at all is not scanned again).
    built: bool,
    logged: bool,
    /// An ambiguous image was refused and said so (once per library, as the success is).
    logged_refusal: bool,
}

/// The PTX text to load instead of the SASS-only `image` at `at`, if the library holding it has
/// PTX for every one of the image's kernels.
pub(crate) fn find(at: *const u8, image: &[u8]) -> Option<String> {
    let kernels = vgpu_fatbin::sass_kernels(image, DEVICE_SM);
    if kernels.is_empty() {
        return None;
    }
    let Some(object) = object_containing(at as usize) else {
        vlog!(crate::log::DEBUG, "a SASS-only image at {at:p} lies in no loaded library: no PTX twin to look for");
        return None;
    };
    static INDEXES: Mutex<Vec<((usize, String), Arc<Mutex<Index>>)>> = Mutex::new(Vec::new());
    let index = {
        let mut all = INDEXES.lock().unwrap_or_else(|e| e.into_inner());
        let key = (object.base, object.name.clone());
        match all.iter().find(|(k, _)| *k == key) {
            Some((_, i)) => i.clone(),
            None => {
                let i = Arc::new(Mutex::new(Index::default()));
                all.push((key, i.clone()));
                i
            }
        }
    };
    // One thread builds a library's index; others wanting the same library wait for it.
    let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
    if !index.built {
        let started = std::time::Instant::now();
        *index = build_index(&object);
        index.built = true;
        vlog!(
            crate::log::DEBUG,
            "{}: {} PTX entries of {} kernels indexed in {:?}",
            object.name,
            index.images.len(),
            index.by_kernel.len(),
            started.elapsed()
        );
    }
    // The images that define every kernel; of those, the newest PTX not newer than the device.
    let candidates: Vec<&PtxImage> = index.by_kernel.get(&kernels[0])?.iter().map(|&i| &index.images[i]).filter(|p| kernels.iter().all(|k| p.kernels.contains(k))).collect();
    let rank = |p: &PtxImage| if p.sm <= DEVICE_SM { (1, p.sm) } else { (0, u32::MAX - p.sm) };
    let best = *candidates.iter().max_by_key(|p| rank(p))?;
    // A C++ name with external linkage denotes one definition (the one-definition rule): modules
    // that differ elsewhere still hold the same kernel (cuBLAS 13 has 244 such names). A C name,
    // or one of internal linkage, promises nothing: different PTX texts for the same architecture
    // defining it are different kernels (cuRAND 13 ships 174 images of
    // `pseudo_random_sequence_generator`, one per generator and distribution). Which one this
    // SASS is cannot be told, and a wrong one computes wrong numbers: the image then fails as
    // SASS-only does, honestly.
    let one_definition = |k: &String| k.starts_with("_Z") && !k.starts_with("_ZL") && !k.contains("_GLOBAL__N");
    let rivals = if kernels.iter().all(one_definition) { 0 } else { candidates.iter().filter(|p| rank(p) == rank(best) && p.text_hash != best.text_hash).count() };
    let ((off, len), sm) = (best.fatbin, best.sm);
    if rivals > 0 {
        if !std::mem::replace(&mut index.logged_refusal, true) {
            vlog!(
                crate::log::INFO,
                "{}: {} different PTX images for compute_{sm} define {}: which one this SASS-only image is cannot be told, so it is not replaced (a GPU runs it)",
                object.name,
                rivals + 1,
                kernels[0]
            );
        }
        return None;
    }
    // The object's segments as they are mapped now: the fatbin must still lie in one.
    let mem = segment_slice(&object, off, len)?;
    let text = vgpu_fatbin::ptx_texts(mem).into_iter().find(|(s, t)| *s == sm && kernels.iter().all(|k| vgpu_fatbin::ptx_entries(t).contains(k)))?.1;
    if !index.logged {
        index.logged = true;
        vlog!(
            crate::log::INFO,
            "{}: its SASS-only images run as PTX of the same kernels from the same library (e.g. {} from compute_{sm}): the sim backend runs PTX",
            object.name,
            kernels[0]
        );
    }
    Some(text)
}

/// The bytes at `off..off + len` of `object`, if they lie within one of its readable segments.
fn segment_slice(object: &Object, off: usize, len: usize) -> Option<&'static [u8]> {
    let end = off.checked_add(len)?;
    object.segments.iter().find(|&&(s, l, _)| off >= s && s.checked_add(l).is_some_and(|e| end <= e))?;
    // SAFETY: the range lies inside a PT_LOAD segment with read permission of an object the
    // dynamic loader reports loaded now; it stays mapped while that object is loaded, and the
    // image being loaded lies in the same object, whose code is calling us.
    Some(unsafe { std::slice::from_raw_parts((object.base + off) as *const u8, len) })
}

fn build_index(object: &Object) -> Index {
    let mut index = Index::default();
    // Data segments only: a library's code holds no fatbin (libtorch_cuda.so: 60 of 520 MB).
    for &(start, len, _) in object.segments.iter().filter(|s| !s.2) {
        let Some(mem) = segment_slice(object, start, len) else { continue };
        for (at, flen) in vgpu_fatbin::find_fatbins(mem) {
            for (sm, text) in vgpu_fatbin::ptx_texts(&mem[at..at + flen]) {
                let kernels = vgpu_fatbin::ptx_entries(&text);
                if kernels.is_empty() {
                    continue;
                }
                let i = index.images.len();
                for k in &kernels {
                    index.by_kernel.entry(k.clone()).or_default().push(i);
                }
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&text, &mut h);
                index.images.push(PtxImage { fatbin: (start + at, flen), sm, kernels, text_hash: std::hash::Hasher::finish(&h) });
            }
        }
    }
    index
}

/// The loaded object (library or executable) whose segments contain `addr`.
fn object_containing(addr: usize) -> Option<Object> {
    struct Search {
        addr: usize,
        found: Option<Object>,
    }
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: dl_iterate_phdr passes our `Search` back as `data`, and a valid `info` whose
        // `dlpi_phdr` holds `dlpi_phnum` program headers, for the duration of this call.
        let (search, info) = unsafe { (&mut *data.cast::<Search>(), &*info) };
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader's array of `dlpi_phnum` program headers, valid during the call.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let base = info.dlpi_addr as usize;
        let segments: Vec<(usize, usize, bool)> = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_R != 0)
            .map(|p| (p.p_vaddr as usize, p.p_memsz as usize, p.p_flags & libc::PF_X != 0))
            .collect();
        // Wrapping arithmetic: nothing may panic in this callback (an extern "C" frame).
        if !segments.iter().any(|&(s, l, _)| search.addr.wrapping_sub(base.wrapping_add(s)) < l) {
            return 0;
        }
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated path owned by the loader, valid during the call.
            unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy().into_owned()
        };
        let name = if name.is_empty() { std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default() } else { name };
        search.found = Some(Object { base, name, segments });
        1
    }
    let mut search = Search { addr, found: None };
    // SAFETY: `visit` matches dl_iterate_phdr's callback type and only touches `search`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
    search.found
}
