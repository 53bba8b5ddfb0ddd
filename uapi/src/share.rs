//! Sharing device memory and events between processes of one VM: CUDA's IPC handles
//! (`cuIpcGetMemHandle`, `cuIpcGetEventHandle`) and VMM shareable handles
//! (`cuMemExportToShareableHandle` with POSIX file descriptors).
//!
//! The mediator keeps, per VM, what each token names ([`crate::proto::Op::ShareExport`]);
//! a token is 16 random bytes, so a process can only open what another process of its VM
//! exported and handed to it. The same bytes travel in three forms:
//! - a `CUipcMemHandle` / `CUipcEventHandle` (64 bytes) is [`encode`]'s output;
//! - a POSIX fd handle is a sealed memfd in the guest whose contents are the same bytes, so it
//!   can be passed between processes (SCM_RIGHTS, pidfd_getfd) like NVIDIA's.

/// Device memory (cuIpcGetMemHandle): any address inside a `cuMemAlloc` allocation.
pub const KIND_MEMORY: u32 = 1;
/// A VMM physical allocation (cuMemCreate's handle).
pub const KIND_PHYSICAL: u32 = 2;
/// An event made with CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING.
pub const KIND_EVENT: u32 = 3;

pub const TOKEN_LEN: usize = 16;
/// CU_IPC_HANDLE_SIZE.
pub const HANDLE_LEN: usize = 64;
const MAGIC: [u8; 8] = *b"vgpu-ipc";
/// CUipcMemHandle / CUipcEventHandle (cuda.h), passed by value: libcuda receives them from
/// applications, the cuda backend passes a real driver's between its workers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcHandle {
    pub data: [u8; HANDLE_LEN],
}

/// Bytes [`encode`] fills (the rest of a handle is zero).
pub const ENCODED_LEN: usize = 8 + 4 + 4 + TOKEN_LEN;

/// A handle's bytes: magic, kind, version 1, token.
pub fn encode(kind: u32, token: &[u8; TOKEN_LEN]) -> [u8; HANDLE_LEN] {
    let mut h = [0u8; HANDLE_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&kind.to_le_bytes());
    h[12..16].copy_from_slice(&1u32.to_le_bytes());
    h[16..ENCODED_LEN].copy_from_slice(token);
    h
}

/// The token of a handle of `kind`; None for bytes that are not one (another kind, another
/// driver's handle, garbage).
pub fn decode(kind: u32, h: &[u8]) -> Option<[u8; TOKEN_LEN]> {
    if h.len() < ENCODED_LEN || h[..8] != MAGIC || h[8..12] != kind.to_le_bytes() || h[12..16] != 1u32.to_le_bytes() {
        return None;
    }
    h[16..ENCODED_LEN].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_keep_their_kind() {
        let t = [7u8; TOKEN_LEN];
        let h = encode(KIND_MEMORY, &t);
        assert_eq!(decode(KIND_MEMORY, &h), Some(t));
        assert_eq!(decode(KIND_EVENT, &h), None, "a memory handle is not an event handle");
        assert_eq!(decode(KIND_MEMORY, &h[..ENCODED_LEN - 1]), None, "truncated");
        assert_eq!(decode(KIND_MEMORY, &[0u8; HANDLE_LEN]), None, "zeros");
    }
}
