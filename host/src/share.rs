//! What the processes of one VM share with each other (vgpu_uapi::share): each token a process
//! exported names its memory, physical allocation or event. Every VM has its own table, so a
//! token never opens another VM's memory; an entry goes when its owner frees what it names or
//! disconnects (what others already opened stays theirs until they close it).

use crate::backend::{CmdError, CmdResult, Shared};
use std::collections::HashMap;
use std::sync::Mutex;
use vgpu_uapi::cuda::*;
use vgpu_uapi::share::TOKEN_LEN;

pub type Token = [u8; TOKEN_LEN];

struct Entry {
    kind: u32,
    /// The exporting client (vms::Client::id) and what it exported (its base address, physical
    /// allocation or event).
    owner: u64,
    what: u64,
    shared: Shared,
}

#[derive(Default)]
pub struct Shares {
    entries: Mutex<HashMap<Token, Entry>>,
}

/// 16 bytes from the kernel's random number generator: not guessable by another process.
pub(crate) fn random_token() -> CmdResult<Token> {
    let mut t = [0u8; TOKEN_LEN];
    let mut got = 0;
    while got < t.len() {
        // SAFETY: getrandom writes at most `len - got` bytes at `t[got..]`, which we own.
        let n = unsafe { libc::getrandom(t[got..].as_mut_ptr().cast(), t.len() - got, 0) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CmdError::new(CUDA_ERROR_OPERATING_SYSTEM, "no random bytes for a sharing token"));
        }
        got += n as usize;
    }
    Ok(t)
}

impl Shares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token for `what` of `owner`: the one it has if exported before, else a new one.
    pub fn export(&self, owner: u64, kind: u32, what: u64, shared: Shared) -> CmdResult<Token> {
        let mut map = self.lock();
        if let Some((t, _)) = map.iter().find(|(_, e)| e.owner == owner && e.kind == kind && e.what == what) {
            return Ok(*t);
        }
        let t = random_token()?;
        map.insert(t, Entry { kind, owner, what, shared });
        Ok(t)
    }

    /// What `token` names, if it is a live export of `kind` in this VM.
    pub fn get(&self, kind: u32, token: &Token) -> CmdResult<Shared> {
        match self.lock().get(token) {
            Some(e) if e.kind == kind => Ok(e.shared.clone()),
            _ => Err(CmdError::new(CUDA_ERROR_INVALID_HANDLE, "not a handle a process of this VM exported (or what it named was freed)")),
        }
    }

    /// `owner` freed `what`: its handle opens nothing more.
    pub fn forget(&self, owner: u64, kind: u32, what: u64) {
        self.lock().retain(|_, e| !(e.owner == owner && e.kind == kind && e.what == what));
    }

    /// `owner` reset its context or disconnected.
    pub fn forget_owner(&self, owner: u64) {
        self.lock().retain(|_, e| e.owner != owner);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_uapi::share::{KIND_EVENT, KIND_MEMORY};

    #[test]
    fn tokens_are_per_export_and_go_with_their_owner() {
        let s = Shares::default();
        let a: Shared = std::sync::Arc::new(1u32);
        let t1 = s.export(1, KIND_MEMORY, 0x1000, a.clone()).unwrap();
        assert_eq!(s.export(1, KIND_MEMORY, 0x1000, a.clone()).unwrap(), t1, "the same allocation, the same token");
        let t2 = s.export(2, KIND_MEMORY, 0x1000, a.clone()).unwrap();
        assert_ne!(t1, t2, "another client's allocation at the same address");
        assert!(s.get(KIND_MEMORY, &t1).is_ok());
        assert_eq!(s.get(KIND_EVENT, &t1).unwrap_err().code, CUDA_ERROR_INVALID_HANDLE, "not an event token");
        assert_eq!(s.get(KIND_MEMORY, &[0; TOKEN_LEN]).unwrap_err().code, CUDA_ERROR_INVALID_HANDLE);
        s.forget(1, KIND_MEMORY, 0x1000);
        assert!(s.get(KIND_MEMORY, &t1).is_err() && s.get(KIND_MEMORY, &t2).is_ok());
        s.forget_owner(2);
        assert!(s.is_empty());
    }
}
