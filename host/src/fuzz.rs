//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the tests that replay what
//! the fuzzers found (`host/tests/fuzz_regressions.rs`): each takes arbitrary bytes, as a guest
//! could send them, and must neither panic nor hang.

use crate::backend::Backend;
use crate::dispatch::Connection;
use crate::profile::DeviceProfile;
use crate::sim::SimBackend;
use vgpu_uapi::proto::Op;

/// A small sim device: allocations the fuzzer asks for stay cheap.
fn backend() -> SimBackend {
    SimBackend::new(DeviceProfile::default(), 64 << 20)
}

/// A connection past its Hello.
fn connected(b: &SimBackend) -> Connection<'_> {
    let mut c = Connection::new(b);
    let mut hello = vgpu_uapi::PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    let _ = c.handle(Op::Hello as u32, &hello, &mut Vec::new());
    c
}

/// Requests as a client sends them, after a valid Hello: the input is a sequence of
/// (opcode u8, payload length u16 LE, payload). Kernel launches are left out (a launch of a
/// valid endless kernel runs to the sim's budget: a hang for a fuzzer, not a bug); module images
/// come from the input too.
pub fn mediator_requests(data: &[u8]) {
    let b = backend();
    let mut c = connected(&b);
    let mut rest = data;
    let mut out = Vec::new();
    while rest.len() >= 3 {
        let op = rest[0] as u32;
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let payload = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        if op == Op::Launch as u32 {
            continue;
        }
        out.clear();
        let _ = c.handle(op, payload, &mut out);
    }
    drop(c);
    // Whatever was done, the client's session is gone with it.
    assert_eq!(b.memory_usage(0).map(|u| u.1), Ok(0), "memory left after the session ended");
}

/// A module image (fatbin, ELF, PTX text) as cuModuleLoadData passes it, then every kernel's
/// lookup.
pub fn module_image(data: &[u8]) {
    let b = backend();
    let mut c = connected(&b);
    let mut out = Vec::new();
    if c.handle(Op::ModuleLoad as u32, data, &mut out).is_err() {
        return;
    }
    let module = out.clone();
    let mut names = Vec::new();
    if c.handle(Op::ModuleEnumerateFunctions as u32, &module, &mut names).is_ok() {
        let mut r = vgpu_uapi::wire::Reader::new(&names);
        let n = r.u32().unwrap_or(0);
        for _ in 0..n.min(64) {
            let Ok(len) = r.u32() else { break };
            let Ok(name) = r.bytes(len as usize) else { break };
            let mut req = module.clone();
            req.extend_from_slice(name);
            let _ = c.handle(Op::ModuleGetFunction as u32, &req, &mut Vec::new());
        }
    }
}

/// PTX text through the parser (the part of module loading that sees the most structure).
pub fn ptx_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::sim::ptx::Module::parse(text);
    }
}
