//! The PTX conformance corpus's driver runner (host/tests/conformance/run_driver.py, the script
//! that writes golden files on a GPU machine through NVIDIA's libcuda) run through vgpu's own
//! libcuda.so.1, the socket and the mediator: it must work end to end here before it is trusted
//! on a GPU, and the forms it runs must agree with the ISA reference through the whole stack.

use std::process::Command;
use vgpu_tests::*;

#[test]
fn the_corpus_runner_drives_libcuda_through_the_mediator_and_agrees_with_the_reference() {
    let m = Mediator::start();
    let dir = TempDir::new("conformance-driver");
    let out_file = dir.0.join("golden.json");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/conformance/run_driver.py");
    // The forms of the silent wrong results first found in real software (f16 halves, int8
    // signs), the new instructions, and a directed rounding mode.
    let only = "mov.b32.*,ld.global.s8.*,cvt.s32.s8,prmt.b32*,dp4a.*,cvt.rn.f16x2.f32,setp.lt.f16x2,add.rz.f32,fma.rm.f64";
    let out = Command::new("python3")
        .arg(&script)
        .arg("--driver")
        .arg(libcuda_dir().join("libcuda.so.1"))
        .arg("--only")
        .arg(only)
        .arg("--out")
        .arg(&out_file)
        .env("VGPU_SOCKET", &m.socket)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("0 not run, 0 differ from the ISA reference"),
        "{}\n--- mediator log\n{}",
        describe(&out),
        m.log()
    );
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    let forms = golden["forms"].as_object().unwrap();
    assert!(forms.len() >= 15, "only {} forms ran: {stdout}", forms.len());
    assert_eq!(golden["device"], "NVIDIA H100 80GB HBM3");
    // What the device computed is in the file, case by case (each output an 8-byte slot whose
    // bytes past the register were left as filled): mov.b32's unpack of 0x40003C00 gives the
    // halves 1.0 and 2.0.
    let unpack = forms["mov.b32.unpack"].as_array().unwrap();
    let half = |v: &serde_json::Value| v.as_u64().unwrap() & 0xffff;
    assert!(unpack.iter().any(|c| half(&c[0]) == 0x3C00 && half(&c[1]) == 0x4000), "{unpack:?}");
}
