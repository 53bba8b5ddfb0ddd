//! Broken parts on the host: the mediator dies under a working CUDA process. The process's
//! next CUDA call fails with an error within a bounded time (it does not hang), and once the
//! mediator is back, new processes work.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vgpu_tests::*;

#[test]
fn a_mediator_crash_fails_calls_quickly_and_a_restart_serves_new_processes() {
    let mut m = Mediator::start();
    let exe = build_program("keep_working", Cudart::V12);
    let mut child = Command::new(&exe)
        .env("LD_LIBRARY_PATH", format!("{}:{}", libcuda_dir().display(), Cudart::V12.lib_dir().display()))
        .env("VGPU_SOCKET", &m.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let start = Instant::now();
    for line in lines.by_ref() {
        if line.unwrap() == "ITER 3" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the program made no progress");
    }
    m.kill();
    let killed = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let took = killed.elapsed();
    eprintln!("mediator killed: the working process failed after {took:?}: {:?}", rest.last());
    assert_eq!(status.code(), Some(3), "the process did not fail with a CUDA error: {rest:?}");
    assert!(rest.last().is_some_and(|l| l.starts_with("ERROR cudaError")), "{rest:?}");
    assert!(took < Duration::from_secs(10), "the failure took {took:?}");

    m.restart(&[]);
    let out = run_program(&build_program("vector_add", Cudart::V12), Cudart::V12, &m.socket);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PASS"), "after the restart: {}", describe(&out));
}
