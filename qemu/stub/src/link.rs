//! The device process's control connection to the mediator, for the zero-copy data path (see
//! `host/src/guest.rs`): it shares the VM's RAM (the memfds QEMU gave us, SCM_RIGHTS) and every
//! region the guest driver pins, so that the mediator copies pinned guest memory itself. Each
//! channel's connection then starts with `Op::GuestChannel` (this link's token), and its guest
//! process's Hello learns that copies may name pinned regions (HELLO_GUEST_PINNED).
//!
//! Every call waits for the mediator's answer: once an unpin, a channel's release or an unmap
//! returns, the mediator touches none of those pages.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use vgpu_client::transport::{SocketTransport, Transport};
use vgpu_uapi::cuda::CUDA_ERROR_DEINITIALIZED;
use vgpu_uapi::proto::{MsgHeader, Op, GUEST_UNPIN_ALL, HEADER_LEN, MSG_MAGIC};

/// Longest wait for the mediator's answer to one control request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Control {
    t: SocketTransport,
    token: [u8; 16],
    /// The connection broke: every call fails; the next channel open makes a new link.
    pub broken: bool,
}

/// A piece of the VM's RAM: guest-physical address, size, its file and where in it.
pub struct Piece {
    pub gpa: u64,
    pub size: u64,
    pub file: File,
    pub offset: u64,
}

impl Control {
    /// Connects and shares `pieces`; None (logged by the caller) if the mediator refuses or has
    /// no such request (an older one): the channels then carry the bytes as before.
    pub fn connect(mediator: &Path, pieces: &[Piece]) -> Result<Control, String> {
        if pieces.is_empty() {
            return Err("no guest RAM is mapped yet".into());
        }
        // The timeout stays: a mediator that does not answer must not hold the VM's device
        // thread (and so the VM) for ever. Pins and unpins wait only for a copy in flight.
        let t = SocketTransport::connect(mediator, CALL_TIMEOUT).map_err(|e| e.to_string())?;
        let mut c = Control { t, token: [0; 16], broken: false };
        for p in pieces {
            c.map(p)?;
        }
        Ok(c)
    }

    fn call(&mut self, op: Op, parts: &[&[u8]], fd: Option<&File>) -> Result<Vec<u8>, String> {
        let mut reply = Vec::new();
        let r = match fd {
            Some(f) => self.t.call_with_fd(op, parts, f.as_fd(), &mut reply),
            None => self.t.call(op, parts, &mut reply),
        };
        r.map_err(|e| {
            self.broken |= e == CUDA_ERROR_DEINITIALIZED;
            format!("{op:?} refused (CUresult {e}): {}", String::from_utf8_lossy(&reply))
        })?;
        Ok(reply)
    }

    pub fn map(&mut self, p: &Piece) -> Result<(), String> {
        let args = [p.gpa.to_le_bytes(), p.size.to_le_bytes(), p.offset.to_le_bytes()].concat();
        let reply = self.call(Op::GuestMemory, &[&args], Some(&p.file))?;
        self.token = reply.as_slice().try_into().map_err(|_| "GuestMemory reply is not a token".to_string())?;
        Ok(())
    }

    pub fn unmap(&mut self, gpa: u64, size: u64) -> Result<(), String> {
        self.call(Op::GuestMemoryUnmap, &[&gpa.to_le_bytes(), &size.to_le_bytes()], None).map(drop)
    }

    /// Region `id` of `channel`: `offset` into its first page, `len` bytes over `pages`.
    pub fn pin(&mut self, channel: u32, id: u32, flags: u32, offset: u32, len: u64, pages: &[u64]) -> Result<(), String> {
        let mut args = Vec::with_capacity(28 + pages.len() * 8);
        for w in [channel, id, flags, offset] {
            args.extend_from_slice(&w.to_le_bytes());
        }
        args.extend_from_slice(&len.to_le_bytes());
        args.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        pages.iter().for_each(|p| args.extend_from_slice(&p.to_le_bytes()));
        self.call(Op::GuestPin, &[&args], None).map(drop)
    }

    /// Forgets region `id` of `channel`; [`GUEST_UNPIN_ALL`]: all of the channel's.
    pub fn unpin(&mut self, channel: u32, id: u32) -> Result<(), String> {
        self.call(Op::GuestUnpin, &[&channel.to_le_bytes(), &id.to_le_bytes()], None).map(drop)
    }

    pub fn release(&mut self, channel: u32) -> Result<(), String> {
        self.unpin(channel, GUEST_UNPIN_ALL)
    }

    /// Makes `sock` (a channel's fresh connection, nothing sent on it yet) that channel's link:
    /// its first request, answered before any byte of the guest's goes out.
    pub fn attach(&self, sock: &mut UnixStream, channel: u32) -> Result<(), String> {
        let mut payload = self.token.to_vec();
        payload.extend_from_slice(&channel.to_le_bytes());
        let h = MsgHeader { magic: MSG_MAGIC, op: Op::GuestChannel as u32, seq: 0, status: 0, payload_len: payload.len() as u32, reserved: 0 };
        let mut msg = h.to_bytes().to_vec();
        msg.extend_from_slice(&payload);
        sock.set_read_timeout(Some(CALL_TIMEOUT)).map_err(|e| e.to_string())?;
        sock.write_all(&msg).map_err(|e| e.to_string())?;
        let mut hb = [0u8; HEADER_LEN];
        sock.read_exact(&mut hb).map_err(|e| e.to_string())?;
        let r = MsgHeader::from_bytes(&hb);
        let mut body = vec![0u8; (r.payload_len as usize).min(4096)];
        if r.validate().is_err() || r.payload_len as usize > body.len() || r.op != h.op {
            return Err("the mediator's answer to GuestChannel is out of step".into());
        }
        sock.read_exact(&mut body).map_err(|e| e.to_string())?;
        sock.set_read_timeout(None).map_err(|e| e.to_string())?;
        match r.status {
            0 => Ok(()),
            s => Err(format!("GuestChannel refused (CUresult {s}): {}", String::from_utf8_lossy(&body))),
        }
    }
}
