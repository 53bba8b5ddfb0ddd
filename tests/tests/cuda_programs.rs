//! Real NVIDIA cudart (12.9 and 13.0 from pip) running our test programs on vgpu's libcuda.so.1
//! and the mediator's sim backend. Each program checks its results against the CPU and prints PASS.

use std::process::Command;
use std::time::{Duration, Instant};
use vgpu_tests::*;

fn run_case(name: &str, cudart: Cudart) {
    let exe = build_program(name, cudart);
    let m = Mediator::start();
    let out = run_program(&exe, cudart, &m.socket);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "PASS"),
        "{name} on {cudart:?} failed:\n{}\n--- mediator log\n{}",
        describe(&out),
        m.log()
    );
}

macro_rules! cases {
    ($($test:ident: $prog:literal, $rt:ident;)*) => {
        $(#[test] fn $test() { run_case($prog, Cudart::$rt) })*
    };
}

cases! {
    vector_add_cudart12: "vector_add", V12;
    vector_add_cudart13: "vector_add", V13;
    matrix_2d_cudart12: "matrix_2d", V12;
    matrix_2d_cudart13: "matrix_2d", V13;
    memory_ops_cudart12: "memory_ops", V12;
    memory_ops_cudart13: "memory_ops", V13;
    streams_events_cudart12: "streams_events", V12;
    streams_events_cudart13: "streams_events", V13;
    launch_errors_cudart12: "launch_errors", V12;
    launch_errors_cudart13: "launch_errors", V13;
    warp_scan_cudart12: "warp_scan", V12;
    warp_scan_cudart13: "warp_scan", V13;
    histogram_cudart12: "histogram", V12;
    histogram_cudart13: "histogram", V13;
    pinned_async_cudart12: "pinned_async", V12;
    pinned_async_cudart13: "pinned_async", V13;
    host_register_cudart12: "host_register", V12;
    host_register_cudart13: "host_register", V13;
    cublaslt_needs_cudart12: "cublaslt_needs", V12;
    cublaslt_needs_cudart13: "cublaslt_needs", V13;
    occupancy_cudart12: "occupancy", V12;
    occupancy_cudart13: "occupancy", V13;
    graphs_cudart12: "graphs", V12;
    graphs_cudart13: "graphs", V13;
    mem_pools_cudart12: "mem_pools", V12;
    mem_pools_cudart13: "mem_pools", V13;
    managed_mapped_cudart12: "managed_mapped", V12;
    managed_mapped_cudart13: "managed_mapped", V13;
    host_callbacks_cudart12: "host_callbacks", V12;
    host_callbacks_cudart13: "host_callbacks", V13;
    device_reset_cudart12: "device_reset", V12;
    device_reset_cudart13: "device_reset", V13;
    device_heap_cudart12: "device_heap", V12;
    device_heap_cudart13: "device_heap", V13;
    textures_cudart12: "textures", V12;
    textures_cudart13: "textures", V13;
    launch_order_cudart12: "launch_order", V12;
    launch_order_cudart13: "launch_order", V13;
}

/// llama.cpp's ggml-cuda call sequence: it finds the device as llama-server reports it
/// ("Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes"), its VMM memory pool
/// works (a buffer straddling two physical chunks), and its compute graph, captured and
/// replayed, gives the CPU's results.
#[test]
fn ggml_cuda_sequence() {
    for cudart in [Cudart::V12, Cudart::V13] {
        let exe = build_program("ggml_init", cudart);
        let m = Mediator::start();
        let out = run_program(&exe, cudart, &m.socket);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.lines().any(|l| l == "PASS"), "{cudart:?}: {}\n--- mediator\n{}", describe(&out), m.log());
        let line = stdout.lines().find(|l| l.starts_with("  Device 0: ")).unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.starts_with("  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, ID: GPU-"), "{line}");
    }
}

/// __noinline__ device functions with warp shuffles, barriers, recursion and printf inside.
#[test]
fn device_functions_with_collectives_recursion_and_printf() {
    let sum = |b: i32| (b * 128..(b + 1) * 128).map(|i| (i * 37) % 101 - 50).sum::<i32>();
    for cudart in [Cudart::V12, Cudart::V13] {
        let exe = build_program("device_functions", cudart);
        let m = Mediator::start();
        let out = run_program(&exe, cudart, &m.socket);
        assert!(out.status.success(), "{}\n--- mediator log\n{}", describe(&out), m.log());
        let want = format!("block 0 sums to {}\nblock 1 sums to {}\nPASS\n", sum(0), sum(1));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{cudart:?}");
    }
}

/// Device printf reaches the program's stdout, in order with the host's own output.
#[test]
fn device_printf_reaches_stdout_in_order() {
    for cudart in [Cudart::V12, Cudart::V13] {
        let exe = build_program("printf_kernel", cudart);
        let m = Mediator::start();
        let out = run_program(&exe, cudart, &m.socket);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "host: before\n\
             block 0 thread 0: hello vgpu, 0.000 8589934592 0x00ab\n\
             block 0 thread 1: hello vgpu, 0.250 8589934592 0x00ac\n\
             block 1 thread 0: hello vgpu, 0.500 17179869184 0x00ab\n\
             block 1 thread 1: hello vgpu, 0.750 17179869184 0x00ac\n\
             host: after\nPASS\n",
            "{cudart:?}"
        );
    }
}

#[test]
fn vector_add_reports_the_profile_device() {
    let exe = build_program("vector_add", Cudart::V12);
    let m = Mediator::start_with(&["--gpu-name", "vgpu test device", "--sm-count", "7"]);
    let out = run_program(&exe, Cudart::V12, &m.socket);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("device 'vgpu test device' cc 9.0 SMs 7 mem 81920 MiB"), "{}", describe(&out));
}

/// A module image of 300 MiB (CuPy's thrust fatbin alone is 72 MB; a request may carry 64 MiB)
/// goes to the mediator in parts and loads; the connection goes on.
#[test]
fn a_300_mib_module_image_loads_and_the_connection_goes_on() {
    let exe = build_c_program("large_module");
    let m = Mediator::start();
    let out = Command::new(&exe).arg("300").env("LD_LIBRARY_PATH", libcuda_dir()).env("VGPU_SOCKET", &m.socket).output().expect("run large_module");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.lines().last() == Some("PASS"), "{}\n--- mediator log\n{}", describe(&out), m.log());
}

/// An image with SASS for sm_90 and no PTX, lying in a program that also holds the PTX of the
/// same kernel (as cuFFT ships its kernels), runs on the sim as that PTX; from the heap it fails
/// with CUDA_ERROR_NO_BINARY_FOR_GPU. With the module listings and buffer ids cuFFT asks for.
#[test]
fn a_sass_only_image_runs_as_the_ptx_of_the_same_kernel_from_the_same_library() {
    let exe = build_c_program("sass_twin");
    let m = Mediator::start();
    let out = Command::new(&exe).env("LD_LIBRARY_PATH", libcuda_dir()).env("VGPU_SOCKET", &m.socket).output().expect("run sass_twin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.lines().last() == Some("PASS"), "{}\n--- mediator log\n{}", describe(&out), m.log());
    // One warning, for the heap copy: the twin's load is not refused first.
    assert_eq!(String::from_utf8_lossy(&out.stderr).matches("NO_BINARY_FOR_GPU): fatbin").count(), 1, "{}", describe(&out));
}

#[test]
fn cuinit_without_mediator_fails_fast_with_a_clear_message() {
    let exe = build_program("vector_add", Cudart::V12);
    let dir = TempDir::new("nomediator");
    let start = Instant::now();
    let out = run_program(&exe, Cudart::V12, &dir.0.join("nobody-listens.sock"));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the vgpu mediator"), "{}", describe(&out));
    // cudart reports the driver's CUDA_ERROR_NO_DEVICE as cudaErrorNoDevice (100).
    assert!(stderr.contains("failed: 100"), "{}", describe(&out));
}

/// Not a test: builds tests/cuda/data_path.cu for scripts/bench-data-path.sh and prints its path.
#[test]
#[ignore]
fn build_data_path_program() {
    // Where libcuda.so.1 is (the links to the build's libraries are made here on first use,
    // also on a fresh clone).
    println!("LIBCUDA_DIR {}", libcuda_dir().display());
    println!("DATA_PATH_EXE {}", build_program("data_path", Cudart::V12).display());
    println!("DATA_PATH_GUEST_EXE {}", build_guest_program("data_path", Cudart::V12).display());
}

/// Sharing between processes (tests/cuda/ipc.cu): on the sim, with VMM memory as file
/// descriptors too (the program does that part where the device says it can, and reports it on
/// standard error).
fn ipc_case(cudart: Cudart) {
    let exe = build_program("ipc", cudart);
    let m = Mediator::start();
    let out = run_program(&exe, cudart, &m.socket);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "PASS") && stderr.contains("imported the parent's physical allocation from a file descriptor") && stderr.contains("sees the child's changes to its physical allocation"),
        "ipc on {cudart:?} failed:\n{}\n--- mediator log\n{}",
        describe(&out),
        m.log()
    );
}

#[test]
fn ipc_cudart12() {
    ipc_case(Cudart::V12)
}

#[test]
fn ipc_cudart13() {
    ipc_case(Cudart::V13)
}
