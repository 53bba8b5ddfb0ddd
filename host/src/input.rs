//! Buffered reading of a client's requests from its Unix socket with `recvmsg`, so that file
//! descriptors a client attaches (SCM_RIGHTS: the memfd of pinned host memory it registers)
//! are received rather than dropped.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

pub struct Input {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Descriptors received and not yet claimed, oldest first.
    pub fds: Vec<OwnedFd>,
}

/// Unclaimed descriptors kept at most (more are closed as they come).
const MAX_FDS: usize = 8;

impl Input {
    pub fn new(stream: UnixStream, capacity: usize) -> Input {
        Input { stream, buf: vec![0; capacity], start: 0, end: 0, fds: Vec::new() }
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// One recvmsg into `into`, keeping at most MAX_FDS received descriptors in `fds`; 0 at end
    /// of stream.
    pub(crate) fn receive(stream: &UnixStream, fds: &mut Vec<OwnedFd>, into: &mut [u8]) -> io::Result<usize> {
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(into)];
        loop {
            match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(msg) => {
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(received) = c {
                                for fd in received {
                                    // SAFETY: the kernel just installed this descriptor for us;
                                    // nothing else owns it.
                                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                                    if fds.len() < MAX_FDS {
                                        fds.push(fd);
                                    }
                                }
                            }
                        }
                    }
                    return Ok(msg.bytes);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    pub fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.start == self.end {
                // Large reads go straight to their destination.
                if out.len() - done >= self.buf.len() {
                    let n = Self::receive(&self.stream, &mut self.fds, &mut out[done..])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    done += n;
                    continue;
                }
                let n = Self::receive(&self.stream, &mut self.fds, &mut self.buf)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                (self.start, self.end) = (0, n);
            }
            let n = (self.end - self.start).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        Ok(())
    }
}
