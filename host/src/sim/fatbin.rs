//! Fatbin containers (what nvcc embeds and cudart registers): a 16-byte header, then entries
//! each holding PTX text or a cubin (ELF) for one architecture, optionally compressed (LZ4 block
//! or zstd frame). The sim backend runs PTX, so it picks the best PTX entry.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap()
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
    fn truncated_or_corrupted_input_is_an_error_not_a_panic() {
        for name in ["vadd_plain.fatbin", "vadd_lz4.fatbin", "vadd_zstd.fatbin", "vadd_cubin_only.fatbin"] {
            let full = data(name);
            for n in 0..full.len() {
                let _ = select_ptx(&full[..n]);
            }
            // Flip each byte of the headers and a few of the payload.
            for i in (0..full.len().min(200)).chain((200..full.len()).step_by(37)) {
                let mut b = full.clone();
                b[i] ^= 0xff;
                let _ = select_ptx(&b);
            }
        }
        assert_eq!(select_ptx(b"nonsense").unwrap_err(), FatbinError::NotAFatbin);
    }
}
