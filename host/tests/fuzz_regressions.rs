//! Replays, through the fuzz targets' own entry points (vgpu_host::fuzz), the seed inputs
//! (fuzz/seeds/, and the modules the tests load) and every input a fuzzer once failed on
//! (fuzz/regressions/<target>/): none may panic.

use std::path::{Path, PathBuf};

fn inputs(target: &str, extra: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in [root.join("fuzz/seeds").join(target), root.join("fuzz/regressions").join(target)] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n != "README")));
        }
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for ext in extra {
        files.extend(std::fs::read_dir(&data).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == *ext)));
    }
    files.sort();
    files
}

fn replay(target: &str, extra: &[&str], f: fn(&[u8])) {
    let files = inputs(target, extra);
    assert!(!files.is_empty(), "no inputs for {target}");
    for p in files {
        let data = std::fs::read(&p).unwrap();
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            panic!("{target}: {} fails", p.display());
        }
    }
}

#[test]
fn mediator_requests() {
    replay("mediator_requests", &[], vgpu_host::fuzz::mediator_requests);
}

#[test]
fn module_image() {
    replay("module_image", &["ptx", "fatbin"], vgpu_host::fuzz::module_image);
}

#[test]
fn ptx_text() {
    replay("ptx_text", &["ptx"], vgpu_host::fuzz::ptx_text);
}

#[test]
fn guest_pages() {
    replay("guest_pages", &[], vgpu_host::fuzz::guest_pages);
}

#[test]
fn shm_ring_requests() {
    replay("shm_ring_requests", &[], vgpu_host::fuzz::shm_ring_requests);
}
