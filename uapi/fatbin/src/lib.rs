//! Fatbin containers (what nvcc embeds and cudart registers): a 16-byte header, then entries
//! each holding PTX text or a cubin (ELF) for one architecture, optionally compressed (LZ4 block
//! or zstd frame). The sim backend runs PTX, so it picks the best PTX entry; libcuda reads the
//! kernel names of a SASS-only image and finds PTX of the same kernels (its "PTX twin").
//!
//! Input comes from an untrusted guest: every length is checked, sizes are capped, and nothing
//! here panics on any input.

use vgpu_uapi::image::{FATBIN_HEADER_LEN, FATBIN_MAGIC};

/// Entry header layout (offsets from the entry start), as nvcc 12/13 write it.
const E_KIND: usize = 0; // u16: 1 = PTX, 2 = ELF
const E_HEADER_SIZE: usize = 4; // u32
const E_PADDED_SIZE: usize = 8; // u64: bytes from the end of the header to the next entry
const E_PAYLOAD_SIZE: usize = 16; // u32: compressed size (0 when not compressed)
const E_SM: usize = 28; // u32: e.g. 90
const E_FLAGS: usize = 40; // u64
const E_UNCOMPRESSED_SIZE: usize = 56; // u64
const E_MIN_HEADER: usize = 64;

const FLAG_LZ4: u64 = 0x2000;
const FLAG_ZSTD: u64 = 0x8000;

/// Decompressed entries larger than this are refused (real PTX for one module is far smaller).
const MAX_UNCOMPRESSED: u64 = 256 << 20;

/// What to tell the owner of a SASS-only image.
pub const HOW_TO_GET_PTX: &str = "build with PTX too (nvcc -gencode arch=compute_90,code=compute_90, or any compute_XX); numba-cuda: link with the driver's linker, which keeps PTX (uninstall nvidia-nvjitlink-cu12)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FatbinError {
    NotAFatbin,
    Truncated(&'static str),
    TooLarge(u64),
    Decompress(String),
    NoPtx { cubin_archs: Vec<u32> },
    NotUtf8,
}

impl std::fmt::Display for FatbinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FatbinError::NotAFatbin => write!(f, "not a fatbin (bad magic)"),
            FatbinError::Truncated(what) => write!(f, "truncated fatbin ({what})"),
            FatbinError::TooLarge(n) => write!(f, "fatbin entry of {n} bytes exceeds the {MAX_UNCOMPRESSED}-byte limit"),
            FatbinError::Decompress(e) => write!(f, "cannot decompress fatbin entry: {e}"),
            FatbinError::NoPtx { cubin_archs } => {
                let archs: Vec<String> = cubin_archs.iter().map(|a| format!("sm_{a}")).collect();
                write!(f, "no PTX in this module (cubin only: {}); the sim backend runs PTX: {HOW_TO_GET_PTX}", archs.join(", "))
            }
            FatbinError::NotUtf8 => write!(f, "PTX entry is not UTF-8"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Ptx,
    Cubin,
    Other(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub kind: EntryKind,
    pub sm: u32,
    pub compression: Compression,
    raw: &'a [u8],
    uncompressed_size: u64,
}

impl Entry<'_> {
    /// The entry's content, decompressed.
    pub fn payload(&self) -> Result<Vec<u8>, FatbinError> {
        if self.uncompressed_size > MAX_UNCOMPRESSED {
            return Err(FatbinError::TooLarge(self.uncompressed_size));
        }
        match self.compression {
            Compression::None => Ok(self.raw.to_vec()),
            Compression::Lz4 => lz4_flex::block::decompress(self.raw, self.uncompressed_size as usize)
                .map_err(|e| FatbinError::Decompress(e.to_string())),
            Compression::Zstd => {
                use std::io::Read;
                let mut dec = ruzstd::decoding::StreamingDecoder::new(self.raw)
                    .map_err(|e| FatbinError::Decompress(e.to_string()))?;
                let mut out = Vec::new();
                // Bounded read: a hostile frame cannot make us allocate past the cap.
                (&mut dec)
                    .take(MAX_UNCOMPRESSED + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| FatbinError::Decompress(e.to_string()))?;
                if out.len() as u64 > MAX_UNCOMPRESSED {
                    return Err(FatbinError::TooLarge(out.len() as u64));
                }
                Ok(out)
            }
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Fatbin,
    Elf,
    PtxText,
    Unknown,
}

/// What a module image is, from its first bytes.
pub fn image_kind(b: &[u8]) -> ImageKind {
    if u32_at(b, 0) == Some(FATBIN_MAGIC) {
        ImageKind::Fatbin
    } else if b.starts_with(b"\x7fELF") {
        ImageKind::Elf
    } else if looks_like_ptx(b) {
        ImageKind::PtxText
    } else {
        ImageKind::Unknown
    }
}

fn looks_like_ptx(b: &[u8]) -> bool {
    let head = &b[..b.len().min(4096)];
    let text = String::from_utf8_lossy(head);
    text.contains(".version") || text.contains(".target") || text.contains(".entry")
}

/// All entries of all fatbins concatenated in `b`.
pub fn entries(b: &[u8]) -> Result<Vec<Entry<'_>>, FatbinError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < b.len() {
        let rest = &b[pos..];
        if u32_at(rest, 0) != Some(FATBIN_MAGIC) {
            if out.is_empty() {
                return Err(FatbinError::NotAFatbin);
            }
            break; // trailing padding after the last fatbin
        }
        let header_size = u16_at(rest, 6).ok_or(FatbinError::Truncated("header"))? as usize;
        let fat_size = u64_at(rest, 8).ok_or(FatbinError::Truncated("header"))?;
        if header_size < FATBIN_HEADER_LEN {
            return Err(FatbinError::Truncated("header size"));
        }
        let body_end = (header_size as u64)
            .checked_add(fat_size)
            .filter(|&e| e <= rest.len() as u64)
            .ok_or(FatbinError::Truncated("body"))? as usize;
        let body = &rest[header_size..body_end];
        let mut e = 0usize;
        while e < body.len() {
            let hdr = &body[e..];
            if hdr.len() < E_MIN_HEADER {
                return Err(FatbinError::Truncated("entry header"));
            }
            let kind = match u16_at(hdr, E_KIND).unwrap_or(0) {
                1 => EntryKind::Ptx,
                2 => EntryKind::Cubin,
                k => EntryKind::Other(k),
            };
            let ehs = u32_at(hdr, E_HEADER_SIZE).unwrap_or(0) as usize;
            let padded = u64_at(hdr, E_PADDED_SIZE).unwrap_or(0);
            if ehs < E_MIN_HEADER || ehs > hdr.len() {
                return Err(FatbinError::Truncated("entry header size"));
            }
            let end = (ehs as u64).checked_add(padded).filter(|&x| x <= hdr.len() as u64).ok_or(FatbinError::Truncated("entry payload"))?
                as usize;
            let flags = u64_at(hdr, E_FLAGS).unwrap_or(0);
            let compression = if flags & FLAG_ZSTD != 0 {
                Compression::Zstd
            } else if flags & FLAG_LZ4 != 0 {
                Compression::Lz4
            } else {
                Compression::None
            };
            let payload_size = u32_at(hdr, E_PAYLOAD_SIZE).unwrap_or(0) as usize;
            let raw = match compression {
                Compression::None => &hdr[ehs..end],
                _ => hdr.get(ehs..ehs + payload_size).filter(|_| ehs + payload_size <= end).ok_or(FatbinError::Truncated("compressed payload"))?,
            };
            out.push(Entry {
                kind,
                sm: u32_at(hdr, E_SM).unwrap_or(0),
                compression,
                raw,
                uncompressed_size: u64_at(hdr, E_UNCOMPRESSED_SIZE).unwrap_or(0),
            });
            if end == 0 {
                break;
            }
            e += end;
        }
        // Fatbins are laid out 8-byte aligned one after the other.
        pos += body_end.div_ceil(8) * 8;
    }
    Ok(out)
}

/// The PTX to run for a device of compute capability `target_sm` (e.g. 90): the newest PTX not
/// newer than the device, else the oldest one (the interpreter may still cope).
pub fn select_ptx_for(b: &[u8], target_sm: u32) -> Result<String, FatbinError> {
    let all = entries(b)?;
    let ptx: Vec<&Entry> = all.iter().filter(|e| e.kind == EntryKind::Ptx).collect();
    let best = ptx
        .iter()
        .filter(|e| e.sm <= target_sm)
        .max_by_key(|e| e.sm)
        .or_else(|| ptx.iter().min_by_key(|e| e.sm));
    let Some(best) = best else {
        let cubin_archs = all.iter().filter(|e| e.kind == EntryKind::Cubin).map(|e| e.sm).collect();
        return Err(FatbinError::NoPtx { cubin_archs });
    };
    let mut bytes = best.payload()?;
    if let Some(nul) = bytes.iter().position(|&c| c == 0) {
        bytes.truncate(nul);
    }
    String::from_utf8(bytes).map_err(|_| FatbinError::NotUtf8)
}

pub fn select_ptx(b: &[u8]) -> Result<String, FatbinError> {
    select_ptx_for(b, 90)
}

/// Whether an image can only run as SASS: a cubin, or a fatbin with cubins and no PTX.
pub fn is_sass_only(b: &[u8]) -> bool {
    match image_kind(b) {
        ImageKind::Elf => true,
        ImageKind::Fatbin => entries(b).is_ok_and(|all| all.iter().any(|e| e.kind == EntryKind::Cubin) && !all.iter().any(|e| e.kind == EntryKind::Ptx)),
        _ => false,
    }
}

/// The kernels (entry functions) a SASS-only image defines: those of its cubin for `target_sm`,
/// else of its newest cubin. Empty when the image has none or cannot be read.
pub fn sass_kernels(b: &[u8], target_sm: u32) -> Vec<String> {
    match image_kind(b) {
        ImageKind::Elf => cubin_kernels(b),
        ImageKind::Fatbin => {
            let Ok(all) = entries(b) else { return Vec::new() };
            let cubins = all.iter().filter(|e| e.kind == EntryKind::Cubin);
            let best = cubins.clone().find(|e| e.sm == target_sm).or_else(|| cubins.max_by_key(|e| e.sm));
            best.and_then(|e| e.payload().ok()).map(|elf| cubin_kernels(&elf)).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// The kernels any image defines (fatbin, cubin or PTX text), as a driver loading it for
/// `target_sm` would find them: from the cubin for it when there is one, else from PTX.
pub fn image_kernels(b: &[u8], target_sm: u32) -> Vec<String> {
    match image_kind(b) {
        ImageKind::Elf => cubin_kernels(b),
        ImageKind::PtxText => {
            let text = String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).into_owned();
            ptx_entries(&text)
        }
        ImageKind::Fatbin => {
            let has_cubin = entries(b).is_ok_and(|all| all.iter().any(|e| e.kind == EntryKind::Cubin && e.sm == target_sm));
            if has_cubin {
                return sass_kernels(b, target_sm);
            }
            select_ptx_for(b, target_sm).map(|t| ptx_entries(&t)).unwrap_or_else(|_| sass_kernels(b, target_sm))
        }
        ImageKind::Unknown => Vec::new(),
    }
}

/// Names of a cubin's kernels: its global FUNC symbols marked as entries (STO_CUDA_ENTRY).
pub fn cubin_kernels(elf: &[u8]) -> Vec<String> {
    cubin_kernels_checked(elf).unwrap_or_default()
}

const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;
const SHT_SYMTAB: u32 = 2;
const STO_CUDA_ENTRY: u8 = 0x10;

fn cubin_kernels_checked(elf: &[u8]) -> Option<Vec<String>> {
    // ELF64, little-endian (ELFCLASS64 = 2, ELFDATA2LSB = 1): what every cubin is.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return None;
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    if shentsize < 64 {
        return None;
    }
    let section = |i: usize| -> Option<&[u8]> { elf.get(shoff.checked_add(i.checked_mul(shentsize)?)?..)?.get(..64) };
    let contents = |sh: &[u8]| -> Option<&[u8]> {
        let (off, size) = (u64_at(sh, 0x18)? as usize, u64_at(sh, 0x20)? as usize);
        elf.get(off..off.checked_add(size)?)
    };
    let mut names = Vec::new();
    for i in 0..shnum {
        let sh = section(i)?;
        if u32_at(sh, 4)? != SHT_SYMTAB {
            continue;
        }
        let symbols = contents(sh)?;
        let strings = contents(section(u32_at(sh, 0x28)? as usize)?)?;
        for sym in symbols.chunks_exact(24) {
            let (info, other) = (sym[4], sym[5]);
            if info & 0xf != STT_FUNC || info >> 4 != STB_GLOBAL || other & STO_CUDA_ENTRY == 0 {
                continue;
            }
            let name = strings.get(u32_at(sym, 0)? as usize..)?;
            let name = &name[..name.iter().position(|&c| c == 0)?];
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Some(names)
}

/// The names of the kernels (`.entry`) a PTX text defines.
pub fn ptx_entries(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(".entry") {
        let after = &rest[at + ".entry".len()..];
        // ".entry" as a directive: whitespace on both sides (not ".entry_point" or a comment's word).
        let before_ok = at == 0 || rest.as_bytes()[at - 1].is_ascii_whitespace();
        let name = after.trim_start();
        if before_ok && name.len() < after.len() {
            let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.')).unwrap_or(name.len());
            if end > 0 {
                names.push(name[..end].to_string());
            }
        }
        rest = after;
    }
    names
}

/// Where fatbins lie in `mem` (a loaded library's memory): each (offset, length), found at
/// 8-byte-aligned addresses by their magic and a header whose size fits in `mem`.
pub fn find_fatbins(mem: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // Aligned in memory, not from the slice's start: a segment may begin anywhere.
    let mut pos = mem.as_ptr().align_offset(8);
    while pos + FATBIN_HEADER_LEN <= mem.len() {
        if u32_at(mem, pos) == Some(FATBIN_MAGIC) && u16_at(mem, pos + 6) == Some(FATBIN_HEADER_LEN as u16) {
            let len = u64_at(mem, pos + 8).and_then(|n| usize::try_from(n).ok()).and_then(|n| n.checked_add(FATBIN_HEADER_LEN));
            if let Some(len) = len.filter(|&l| l <= mem.len() - pos) {
                found.push((pos, len));
                pos += len.div_ceil(8) * 8;
                continue;
            }
        }
        pos += 8;
    }
    found
}

/// The PTX texts of a fatbin, each with its architecture (decompressed; unreadable ones left out).
pub fn ptx_texts(b: &[u8]) -> Vec<(u32, String)> {
    let Ok(all) = entries(b) else { return Vec::new() };
    all.iter()
        .filter(|e| e.kind == EntryKind::Ptx)
        .filter_map(|e| {
            let mut bytes = e.payload().ok()?;
            if let Some(nul) = bytes.iter().position(|&c| c == 0) {
                bytes.truncate(nul);
            }
            Some((e.sm, String::from_utf8(bytes).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../host/tests/data").join(name)).unwrap()
    }

    #[test]
    fn plain_lz4_and_zstd_entries_give_the_same_ptx() {
        let plain = select_ptx(&data("vadd_plain.fatbin")).unwrap();
        assert!(plain.contains(".entry _Z9vectorAddPKfS0_Pfi"), "{plain}");
        assert_eq!(select_ptx(&data("vadd_lz4.fatbin")).unwrap(), plain);
        assert_eq!(select_ptx(&data("vadd_zstd.fatbin")).unwrap(), plain);
        let zstd = data("vadd_zstd.fatbin");
        let e = entries(&zstd).unwrap();
        assert_eq!((e.len(), e[0].kind, e[0].sm, e[0].compression), (1, EntryKind::Ptx, 90, Compression::Zstd));
        assert_eq!(entries(&data("vadd_lz4.fatbin")).unwrap()[0].compression, Compression::Lz4);
    }

    #[test]
    fn cubin_only_modules_say_so() {
        let err = select_ptx(&data("vadd_cubin_only.fatbin")).unwrap_err();
        assert_eq!(err, FatbinError::NoPtx { cubin_archs: vec![90] });
        assert!(err.to_string().contains("no PTX in this module (cubin only: sm_90)"));
        assert_eq!(image_kind(&data("vadd_cubin_only.fatbin")), ImageKind::Fatbin);
    }

    #[test]
    fn a_sass_only_image_names_its_kernels_and_the_ptx_of_the_same_source_defines_them() {
        let sass = data("vadd_cubin_only.fatbin");
        assert!(is_sass_only(&sass));
        assert_eq!(sass_kernels(&sass, 90), vec!["_Z9vectorAddPKfS0_Pfi".to_string()]);
        for name in ["vadd_plain.fatbin", "vadd_lz4.fatbin", "vadd_zstd.fatbin"] {
            let ptx = data(name);
            assert!(!is_sass_only(&ptx), "{name}");
            assert!(sass_kernels(&ptx, 90).is_empty(), "{name}");
            let texts = ptx_texts(&ptx);
            assert_eq!(texts.len(), 1, "{name}");
            assert_eq!((texts[0].0, ptx_entries(&texts[0].1)), (90, vec!["_Z9vectorAddPKfS0_Pfi".to_string()]), "{name}");
        }
        assert_eq!(image_kernels(&sass, 90), vec!["_Z9vectorAddPKfS0_Pfi".to_string()]);
        assert_eq!(image_kernels(&data("vadd_zstd.fatbin"), 90), vec!["_Z9vectorAddPKfS0_Pfi".to_string()]);
        // nvcc's kernels.cu: every `.entry`, and nothing that merely mentions the word.
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../host/tests/data/kernels.ptx")).unwrap();
        let entries = ptx_entries(&text);
        assert_eq!(entries.len(), text.matches(".entry ").count());
        assert_eq!(image_kernels(text.as_bytes(), 90), entries);
        assert!(entries.iter().all(|e| e.starts_with("_Z") || e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')), "{entries:?}");
        assert_eq!(ptx_entries("// no .entry_point here\n.visible .entry k(\n.param .u32 a)\n{\n}\n"), vec!["k".to_string()]);
    }

    #[test]
    fn fatbins_are_found_in_memory_at_any_alignment_of_its_start() {
        let (a, b) = (data("vadd_plain.fatbin"), data("vadd_cubin_only.fatbin"));
        // A "segment": junk, a fatbin, junk, another fatbin, all at 8-byte-aligned addresses.
        let mut mem = vec![0x55u8; 40];
        let first = mem.len();
        mem.extend_from_slice(&a);
        mem.resize(mem.len().div_ceil(8) * 8 + 24, 0xaa);
        let second = mem.len();
        mem.extend_from_slice(&b);
        mem.extend_from_slice(&[0u8; 13]);
        // Back it with u64s so that offset 0 is 8-byte aligned, then look from odd starts.
        let mut words = vec![0u64; mem.len().div_ceil(8)];
        // SAFETY: `words` spans at least `mem.len()` bytes.
        let backing = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), mem.len()) };
        backing.copy_from_slice(&mem);
        for skip in [0usize, 1, 3, 7, 8] {
            let found: Vec<(usize, usize)> = find_fatbins(&backing[skip..]).into_iter().map(|(o, l)| (o + skip, l)).collect();
            let want: Vec<(usize, usize)> = [(first, a.len()), (second, b.len())].into_iter().filter(|&(o, _)| o >= skip).collect();
            assert_eq!(found, want, "slice starting at {skip}");
        }
        // A header claiming more than the memory holds is not a fatbin.
        assert!(find_fatbins(&backing[..second + 20]).iter().all(|&(o, _)| o != second));
    }

    #[test]
    fn truncated_or_corrupted_input_is_an_error_not_a_panic() {
        for name in ["vadd_plain.fatbin", "vadd_lz4.fatbin", "vadd_zstd.fatbin", "vadd_cubin_only.fatbin"] {
            let full = data(name);
            for n in 0..full.len() {
                let _ = select_ptx(&full[..n]);
                let _ = (sass_kernels(&full[..n], 90), is_sass_only(&full[..n]), ptx_texts(&full[..n]), find_fatbins(&full[..n]));
            }
            // Flip each byte of the headers and a few of the payload.
            for i in (0..full.len().min(200)).chain((200..full.len()).step_by(37)) {
                let mut b = full.clone();
                b[i] ^= 0xff;
                let _ = select_ptx(&b);
                let _ = (sass_kernels(&b, 90), is_sass_only(&b), ptx_texts(&b), find_fatbins(&b));
            }
        }
        assert_eq!(select_ptx(b"nonsense").unwrap_err(), FatbinError::NotAFatbin);
        // The cubin inside, cut and corrupted (symbol and string tables pointing anywhere).
        let cubin = entries(&data("vadd_cubin_only.fatbin")).unwrap()[0].payload().unwrap();
        assert_eq!(cubin_kernels(&cubin), vec!["_Z9vectorAddPKfS0_Pfi".to_string()]);
        for n in 0..cubin.len() {
            let _ = cubin_kernels(&cubin[..n]);
        }
        for i in 0..cubin.len() {
            let mut b = cubin.clone();
            b[i] ^= 0xff;
            let _ = cubin_kernels(&b);
        }
    }
}
