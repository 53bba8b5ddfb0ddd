//! The guest side: boot the Rust-enabled guest kernel under QEMU 11 (TCG) with the VGPU-STUB
//! device served by vgpu-stub, and check the guest enumerates it and our driver binds it. The first run builds and
//! caches the guest kernel (under 10 min on 2 cores) and the QEMU sysroot.

use std::process::Command;
use vgpu_tests::describe;

#[test]
fn guest_sees_the_vgpu_stub_device_and_the_driver_binds_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash").arg(root.join("qemu/harness/boot-guest.sh")).output().expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("boot-guest: PASS"), "{}", describe(&out));
    // The device is the only NVIDIA function, at the bus id the mediator's profile reports,
    // and vgpu.ko bound it.
    assert_eq!(stdout.lines().filter(|l| l.contains(" 0x10de ")).count(), 1, "{stdout}");
    assert!(stdout.contains("VGPU-STUB bound: device protocol version 1"), "{stdout}");
}
