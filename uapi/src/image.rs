//! Sizes of the module images applications hand to cuModuleLoadData / cuLibraryLoadData, which
//! pass a bare pointer: libcuda must work out how many bytes to send from the headers.

/// `__fatBinC_Wrapper_t` magic (what nvcc-generated code registers): { magic u32, version u32,
/// data *const fatbin, filename_or_fatbins *const }.
pub const FATBIN_WRAPPER_MAGIC: u32 = 0x466243b1;
/// Fatbin header magic: { magic u32, version u16, header_size u16, fat_size u64 }.
pub const FATBIN_MAGIC: u32 = 0xBA55ED50;
pub const FATBIN_HEADER_LEN: usize = 16;
/// Largest module image accepted (the biggest real fatbins, cuBLAS's, are a few hundred MB).
pub const MAX_IMAGE_LEN: u64 = 1 << 30;

/// Total length of a fatbin from its 16-byte header, or None if it is not one / is absurd.
pub fn fatbin_len(h: &[u8; FATBIN_HEADER_LEN]) -> Option<u64> {
    if u32::from_le_bytes([h[0], h[1], h[2], h[3]]) != FATBIN_MAGIC {
        return None;
    }
    let header_size = u16::from_le_bytes([h[6], h[7]]) as u64;
    let fat_size = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let total = header_size.checked_add(fat_size)?;
    (header_size >= FATBIN_HEADER_LEN as u64 && total <= MAX_IMAGE_LEN).then_some(total)
}

pub const ELF_HEADER_LEN: usize = 64;

/// Length of a 64-bit ELF (a cubin) from its header: the end of whichever of the section or
/// program header tables lies last (nvcc places the section headers at the end).
pub fn elf_len(h: &[u8; ELF_HEADER_LEN]) -> Option<u64> {
    if &h[..4] != b"\x7fELF" || h[4] != 2 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]) as u64;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let (phoff, shoff) = (u64_at(0x20), u64_at(0x28));
    let (phentsize, phnum, shentsize, shnum) = (u16_at(0x36), u16_at(0x38), u16_at(0x3a), u16_at(0x3c));
    let ph_end = phoff.checked_add(phentsize * phnum)?;
    let sh_end = shoff.checked_add(shentsize * shnum)?;
    let total = ph_end.max(sh_end).max(ELF_HEADER_LEN as u64);
    (total <= MAX_IMAGE_LEN).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatbin_header_sizes() {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&FATBIN_MAGIC.to_le_bytes());
        h[6..8].copy_from_slice(&16u16.to_le_bytes());
        h[8..16].copy_from_slice(&4528u64.to_le_bytes());
        assert_eq!(fatbin_len(&h), Some(4544));
        h[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(fatbin_len(&h), None, "overflow rejected");
        h[0] = 0;
        assert_eq!(fatbin_len(&h), None);
    }

    #[test]
    fn elf_header_sizes() {
        let mut h = [0u8; 64];
        h[..5].copy_from_slice(b"\x7fELF\x02");
        h[0x28..0x30].copy_from_slice(&1000u64.to_le_bytes());
        h[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        h[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(elf_len(&h), Some(1192));
    }
}
