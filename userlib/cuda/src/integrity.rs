//! The answer to cudart's integrity check (export table d4082055..., slot 1).
//!
//! cudart calls `check(version, unix_seconds, &mut result)` a few times while it initializes
//! and refuses the driver (cudaErrorIntegrityCheckFailed, 103) unless `result` is what the real
//! driver would compute. As publicly documented (ZLUDA's dark-API notes), the answer is:
//! - for `version % 10` in {0, 1}: a fixed 128-bit constant (byte 7 changed to 24 for ...1);
//! - otherwise HMAC-MD2 under a fixed 16-byte key of the message
//!   `driver_version u32, version u32, pid u32, thread u32, &CUDART_INTERFACE table,
//!   &INTEGRITY table, &check function, unix_seconds u64` (48 bytes, little-endian, pointers
//!   as 64-bit), followed per device by `uuid[16], pci_domain u32, pci_bus u32, pci_device u32`.
//!   "thread" is the low 32 bits of the caller's pthread_self().

use hmac::{Hmac, Mac};
use md2::Md2;

/// The HMAC key cudart and the driver share.
const KEY: [u8; 16] = [0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52, 0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f];

/// The fixed answer for versions ending in 0 or 1 (little-endian bytes of the 128-bit value).
const FIXED: u128 = 0x8ED3_83AA_1F4C_D1E8_3341_181C_03CB_675C;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub uuid: [u8; 16],
    pub pci_domain: u32,
    pub pci_bus: u32,
    pub pci_device: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityInputs {
    pub driver_version: u32,
    pub version: u32,
    pub pid: u32,
    pub thread: u32,
    pub cudart_table_addr: u64,
    pub integrity_table_addr: u64,
    pub check_fn_addr: u64,
    pub unix_seconds: u64,
    pub devices: Vec<DeviceIdentity>,
}

/// The 16 bytes the check writes to `*result`.
pub fn integrity_check(i: &IntegrityInputs) -> [u8; 16] {
    match i.version % 10 {
        0 => FIXED.to_le_bytes(),
        1 => {
            let mut b = FIXED.to_le_bytes();
            b[7] = 24;
            b
        }
        _ => {
            let mut mac = <Hmac<Md2> as Mac>::new_from_slice(&KEY).expect("HMAC takes any key length");
            for v in [i.driver_version, i.version, i.pid, i.thread] {
                mac.update(&v.to_le_bytes());
            }
            for v in [i.cudart_table_addr, i.integrity_table_addr, i.check_fn_addr, i.unix_seconds] {
                mac.update(&v.to_le_bytes());
            }
            for d in &i.devices {
                mac.update(&d.uuid);
                for v in [d.pci_domain, d.pci_bus, d.pci_device] {
                    mac.update(&v.to_le_bytes());
                }
            }
            mac.finalize().into_bytes().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md2::Digest;

    #[test]
    fn md2_is_md2() {
        // RFC 1319 test vectors.
        assert_eq!(format!("{:x}", Md2::digest(b"")), "8350e5a3e24c153df2275c9f80692773");
        assert_eq!(format!("{:x}", Md2::digest(b"abc")), "da853b0d3f88d99b30283a69e6ded6bb");
    }

    /// A published sample (inputs observed from a real driver, and its answer).
    #[test]
    fn hashed_versions_match_the_known_sample() {
        let i = IntegrityInputs {
            driver_version: 12020,
            version: 0x2B4A,
            pid: 0x4D08,
            thread: 0x2B78,
            cudart_table_addr: 0x0000_7FF8_C807_17F0,
            integrity_table_addr: 0x0000_7FF8_C825_E4B0,
            check_fn_addr: 0x0000_7FF8_C7DD_0AD0,
            unix_seconds: 0x64A3_65EE,
            devices: vec![DeviceIdentity {
                uuid: [0x67, 0x22, 0xCB, 0xCF, 0xC6, 0x61, 0xF2, 0x92, 0x74, 0xD6, 0xED, 0x23, 0x2A, 0x32, 0x13, 0x1C],
                pci_domain: 0,
                pci_bus: 4,
                pci_device: 0,
            }],
        };
        assert_eq!(u128::from_le_bytes(integrity_check(&i)), 0xEAF1_3133_42BF_CD84_A7C3_4628_F214_707A);
    }

    #[test]
    fn fixed_versions() {
        let mut i = IntegrityInputs {
            driver_version: 13000,
            version: 12090,
            pid: 1,
            thread: 2,
            cudart_table_addr: 3,
            integrity_table_addr: 4,
            check_fn_addr: 5,
            unix_seconds: 6,
            devices: vec![],
        };
        assert_eq!(u128::from_le_bytes(integrity_check(&i)), FIXED);
        i.version = 12091;
        let b = integrity_check(&i);
        assert_eq!(b[7], 24);
        assert_eq!(&b[8..], &FIXED.to_le_bytes()[8..]);
        i.version = 12092;
        assert_ne!(u128::from_le_bytes(integrity_check(&i)), FIXED);
    }
}
