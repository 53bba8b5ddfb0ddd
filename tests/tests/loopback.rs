//! The `cuda` backend in loopback: mediator A runs `--backend cuda` with vgpu's own libcuda.so as
//! its "GPU driver", and that libcuda talks to mediator B (sim). Every line of the backend runs
//! without a GPU, and it cannot tell this driver from NVIDIA's. Each test program runs through A
//! and straight through B: the same exit status and the same output are required.

use vgpu_tests::*;

/// Programs whose output through the cuda backend is not compared, and why: keep_working runs
/// until it is killed (the fault tests' program, not a result).
const NOT_YET: [(&str, &str); 1] = [("keep_working", "runs until killed")];

/// Programs that print measurements (data_path's benchmark figures): only their exit status
/// is compared.
const MEASURES: [&str; 1] = ["data_path"];

/// What a run says, minus what legitimately varies between runs (timings).
fn result_of(name: &str, out: &std::process::Output) -> (Option<i32>, Vec<String>) {
    if MEASURES.contains(&name) {
        return (out.status.code(), Vec::new());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout.lines().filter(|l| !l.contains("elapsed") && !l.contains(" ms")).map(String::from).collect();
    (out.status.code(), lines)
}

fn programs() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".cu").map(String::from))
        .filter(|n| !NOT_YET.iter().any(|(p, _)| p == n))
        .collect();
    v.sort();
    v
}

fn same_through_the_cuda_backend(cudart: Cudart) {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let mut differ = Vec::new();
    let names = programs();
    assert!(names.len() >= 12, "{names:?}");
    for name in &names {
        let exe = build_program(name, cudart);
        let direct = run_program(&exe, cudart, &sim.socket);
        let through = run_program(&exe, cudart, &loopback.socket);
        let (a, b) = (result_of(name, &direct), result_of(name, &through));
        if a != b || !direct.status.success() {
            differ.push(format!("{name}: direct\n{}\nthrough the cuda backend\n{}", describe(&direct), describe(&through)));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} programs differ through the cuda backend ({cudart:?}):\n{}\n--- cuda-backend mediator log (tail)\n{}",
        differ.len(),
        names.len(),
        differ.join("\n"),
        loopback.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn test_programs_give_the_same_results_through_the_cuda_backend_cudart12() {
    same_through_the_cuda_backend(Cudart::V12);
}

#[test]
fn test_programs_give_the_same_results_through_the_cuda_backend_cudart13() {
    same_through_the_cuda_backend(Cudart::V13);
}

/// Sharing between processes through the cuda backend: IPC memory and event handles are the
/// driver's own, made in one worker and opened in another (ipc.cu, compared above, does that),
/// and so is VMM memory as a POSIX file descriptor: the driver's descriptor goes from the
/// exporting worker to the mediator and on to the importing worker (SCM_RIGHTS), and the
/// importer's kernel changes what the exporter sees.
#[test]
fn ipc_through_the_cuda_backend_uses_the_drivers_handles() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let exe = build_program("ipc", Cudart::V12);
    let out = run_program(&exe, Cudart::V12, &loopback.socket);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success()
            && stdout.lines().any(|l| l == "PASS")
            && stderr.contains("child: imported the parent's physical allocation from a file descriptor")
            && stderr.contains("parent: sees the child's changes to its physical allocation"),
        "ipc through the cuda backend:\n{}\n--- cuda-backend mediator log (tail)\n{}",
        describe(&out),
        loopback.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

/// A client that ends (here: killed mid-run) leaves nothing behind in either mediator: the cuda
/// backend frees what the session held, so the inner mediator's device memory is back to zero.
#[test]
fn a_killed_client_leaves_nothing_in_either_mediator() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let exe = build_program("keep_working", Cudart::V12);
    let mut child = std::process::Command::new(&exe)
        .env("LD_LIBRARY_PATH", format!("{}:{}", libcuda_dir().display(), Cudart::V12.lib_dir().display()))
        .env("VGPU_SOCKET", &loopback.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it works (its first iteration printed), then kill it.
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut out, &mut buf).unwrap();
    assert!(n > 0, "keep_working printed nothing");
    child.kill().unwrap();
    child.wait().unwrap();
    // The inner mediator logs each client's session end with what it freed; the loopback
    // mediator's connection to it stays (one driver per process), so look at B's accounting
    // through a fresh client: NVML's view of the device's used memory.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let q = std::process::Command::new(target_dir().join("vgpu-smi"))
            .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
            .env("LD_LIBRARY_PATH", libcuda_dir())
            .env("VGPU_SOCKET", &sim.socket)
            .output()
            .unwrap();
        let used = String::from_utf8_lossy(&q.stdout).trim().to_string();
        if used == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the sim mediator still holds {used} MiB after the client died:\n{}\n{}", describe(&q), loopback.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// CuPy (its checks and the exactness checks, with CUB) and NVML (pynvml) through the cuda
/// backend: the same answers as straight on the sim (each script compares with NumPy or the
/// device's profile itself and prints PASS).
#[test]
fn cupy_and_nvml_through_the_cuda_backend() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let venv = wheels_dir().parent().unwrap().join("cupy-venv/bin/python");
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for script in ["cupy_check.py", "cupy_exactness.py"] {
        let cache = TempDir::new("cupy-cache");
        let out = std::process::Command::new(&venv)
            .arg(here.join(script))
            .env("LD_LIBRARY_PATH", libcuda_dir())
            .env("VGPU_SOCKET", &loopback.socket)
            .env("CUPY_COMPILE_WITH_PTX", "1")
            .env("CUPY_ACCELERATORS", "cub")
            .env("CUPY_CACHE_DIR", &cache.0)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.lines().last() == Some("PASS"), "{script} through the cuda backend:\n{}\n--- log\n{}", describe(&out), loopback.log());
    }
    let nvml = std::process::Command::new("python3")
        .arg(here.join("nvml_query.py"))
        .env("PYTHONPATH", wheels_dir().parent().unwrap().join("py"))
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &loopback.socket)
        .output()
        .unwrap();
    assert!(nvml.status.success() && String::from_utf8_lossy(&nvml.stdout).lines().last() == Some("PASS"), "pynvml through the cuda backend:\n{}", describe(&nvml));
}

fn guest_process(exe: &std::path::Path, socket: &std::path::Path) -> (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(exe)
        .env("LD_LIBRARY_PATH", format!("{}:{}", libcuda_dir().display(), Cudart::V12.lib_dir().display()))
        .env("VGPU_SOCKET", socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The worker of guest process `pid`, from the cuda-backend mediator's log.
fn worker_of(log: &str, pid: u32) -> Option<u32> {
    let line = log.lines().find(|l| l.contains("cuda worker started") && l.contains(&format!("client={pid} ")))?;
    line.split("worker=").nth(1)?.split_whitespace().next()?.parse().ok()
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Isolation: each guest process's work runs in a worker process of its own (a child of
/// mediator A and, as the driver's client, the only kind of client B sees), so GPU contexts are
/// never shared between guests. A worker that dies (as on a GPU fault or a driver crash) fails
/// its own guest process with an error that stays (CUDA's sticky context errors), while the
/// other guest process goes on; a guest process that ends takes its worker with it.
#[test]
fn each_guest_process_has_a_worker_of_its_own_and_a_lost_worker_harms_no_other() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let exe = build_program("keep_working", Cudart::V12);
    let (mut a, mut a_out) = guest_process(&exe, &loopback.socket);
    let (mut b, mut b_out) = guest_process(&exe, &loopback.socket);
    for out in [&mut a_out, &mut b_out] {
        let first = out.next().unwrap().unwrap();
        assert!(first.starts_with("ITER "), "{first}\n{}", loopback.log());
    }
    let workers = children_of(loopback.pid());
    let (wa, wb) = (worker_of(&loopback.log(), a.id()), worker_of(&loopback.log(), b.id()));
    let (wa, wb) = (wa.expect("a's worker in the log"), wb.expect("b's worker in the log"));
    assert_ne!(wa, wb);
    assert_eq!(workers, { let mut w = vec![wa, wb]; w.sort(); w }, "mediator A's children are the two workers");
    let smi = std::process::Command::new(target_dir().join("vgpu-smi"))
        .args(["--query-compute-apps=pid", "--format=csv,noheader"])
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &sim.socket)
        .output()
        .unwrap();
    let mut b_clients: Vec<u32> = String::from_utf8_lossy(&smi.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    b_clients.sort();
    assert_eq!(b_clients, workers, "mediator B's GPU processes are A's workers:\n{}", describe(&smi));

    // a's worker dies: a fails with an error that stays, b goes on.
    // SAFETY: a signal to a process id, no memory involved.
    assert_eq!(unsafe { libc::kill(wa as i32, libc::SIGKILL) }, 0);
    let rest: Vec<String> = a_out.by_ref().map_while(Result::ok).collect();
    let status = a.wait().unwrap();
    assert_eq!(status.code(), Some(3), "a after its worker died: {rest:?}");
    assert!(rest.last().is_some_and(|l| l.starts_with("ERROR cudaErrorLaunchFailure")), "{rest:?}");
    for _ in 0..5 {
        let l = b_out.next().unwrap().unwrap();
        assert!(l.starts_with("ITER "), "b after a's worker died: {l}\n{}", loopback.log());
    }
    assert!(loopback.log().contains("cuda worker lost"), "{}", loopback.log());

    // b ends: its worker follows, and B holds nothing.
    b.kill().unwrap();
    b.wait().unwrap();
    wait_until("b's worker exits", 20, || children_of(loopback.pid()).is_empty());
}

/// The execution time limit on the cuda backend: a kernel that runs past it is stopped by
/// destroying its context (the worker ends), the wait for it returns CUDA_ERROR_LAUNCH_TIMEOUT
/// and so does every later call of that process (sticky, as on a GPU); the VM's next process
/// works. Driven through the Driver API with ctypes, a spinning PTX kernel.
#[test]
fn a_kernel_past_the_time_limit_loses_its_context_only() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback_vm(&sim, "exec_time_limit_ms = 1000");
    let dir = TempDir::new("spin");
    let script = dir.0.join("spin.py");
    std::fs::write(&script, spin_py()).unwrap();
    let run = |arg: &str| {
        std::process::Command::new("python3").arg(&script).arg(arg).env("LD_LIBRARY_PATH", libcuda_dir()).env("VGPU_SOCKET", &loopback.socket).output().unwrap()
    };
    let t = std::time::Instant::now();
    let out = run("spin");
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", describe(&out), loopback.log());
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["launch 0", "synchronize 702", "alloc after 702"], "{}", loopback.log());
    assert!(took < std::time::Duration::from_secs(30), "stopped after {took:?}");
    assert!(loopback.log().contains("execution time limit"), "{}", loopback.log());
    let out = run("finish");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(), ["launch 0", "synchronize 0", "alloc after 0"], "{}", describe(&out));
    wait_until("no worker left", 20, || children_of(loopback.pid()).is_empty());
}

/// A kernel spinning on a flag in device memory ("spin": never set; "finish": set first).
fn spin_py() -> String {
    driver_script(SPIN_PTX, "spin", SPIN_BODY)
}

const SPIN_PTX: &str = r#"
.version 7.0
.target sm_50
.address_size 64
.visible .entry spin(.param .u64 flag) {
  .reg .u64 %rd<2>; .reg .u32 %r<2>; .reg .pred %p<2>;
  ld.param.u64 %rd1, [flag];
  cvta.to.global.u64 %rd1, %rd1;
LOOP:
  ld.volatile.global.u32 %r1, [%rd1];
  setp.eq.u32 %p1, %r1, 0;
  @%p1 bra LOOP;
  ret;
}
"#;

const SPIN_BODY: &str = r#"
flag = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(flag), ctypes.c_size_t(4)), "alloc")
ok(cu.cuMemsetD32_v2(flag, 1 if sys.argv[1] == "finish" else 0, ctypes.c_size_t(1)), "memset")
arg = ctypes.c_uint64(flag.value)
params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(arg), ctypes.c_void_p))
print("launch", cu.cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, None, params, None), flush=True)
print("synchronize", cu.cuCtxSynchronize(), flush=True)
p = ctypes.c_uint64()
print("alloc after", cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(4)), flush=True)
"#;

/// `vgpu-admin --json vms` of a mediator: each VM's report.
fn admin_vms(m: &Mediator) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(target_dir().join("vgpu-admin")).arg("--socket").arg(m.admin_socket()).args(["--json", "vms"]).output().unwrap();
    assert!(out.status.success(), "vgpu-admin: {}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GPU time on the cuda backend is what the GPU measured: the worker times each launch with
/// events, and the VM is charged that (vgpu-admin, metrics, its scheduling share), not the
/// moment the asynchronous launch took. Checked against the inner sim mediator, which timed the
/// same kernels itself as it ran them.
#[test]
fn gpu_time_on_the_cuda_backend_is_measured_by_events() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback_vm(&sim, "");
    let dir = TempDir::new("busy");
    let script = dir.0.join("busy.py");
    std::fs::write(&script, busy_py()).unwrap();
    let out = std::process::Command::new("python3").arg(&script).env("LD_LIBRARY_PATH", libcuda_dir()).env("VGPU_SOCKET", &loopback.socket).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok", "{}\n{}", describe(&out), loopback.log());
    let seconds = |m: &Mediator| -> f64 { admin_vms(m).iter().map(|v| v["gpu_seconds"].as_f64().unwrap()).sum() };
    let (a, b) = (seconds(&loopback), seconds(&sim));
    eprintln!("GPU time: {a:.4} s charged through the cuda backend, {b:.4} s measured by the sim");
    // B ran 6 kernels of ~the same length plus tiny copies; A saw them through events.
    assert!(b > 0.05, "the kernels took {b} s on the sim: too short to compare");
    assert!(a > 0.7 * b && a < 1.3 * b + 0.005, "GPU time charged through the cuda backend {a} s, the sim measured {b} s");
}

/// Six launches of a kernel that loops (800,000 turns: about 0.3 s on the sim's compiled code,
/// whose loops run lane after lane at about 2 G instructions/s), then a synchronize and a copy
/// back.
fn busy_py() -> String {
    driver_script(BUSY_PTX, "busy", BUSY_BODY)
}

const BUSY_PTX: &str = r#"
.version 7.0
.target sm_50
.address_size 64
.visible .entry busy(.param .u64 out, .param .u32 n) {
  .reg .u32 %r<4>; .reg .u64 %rd<2>; .reg .pred %p<2>;
  ld.param.u32 %r1, [n];
  mov.u32 %r2, 0;
  mov.u32 %r3, 0;
LOOP:
  add.u32 %r3, %r3, %r2;
  add.u32 %r2, %r2, 1;
  setp.lt.u32 %p1, %r2, %r1;
  @%p1 bra LOOP;
  ld.param.u64 %rd1, [out];
  st.global.u32 [%rd1], %r3;
  ret;
}
"#;

const BUSY_BODY: &str = r#"
out = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(out), ctypes.c_size_t(4)), "alloc")
a, n = ctypes.c_uint64(out.value), ctypes.c_uint32(800000)
params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(a), ctypes.c_void_p), ctypes.cast(ctypes.byref(n), ctypes.c_void_p))
for _ in range(6):
    ok(cu.cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, None, params, None), "launch")
ok(cu.cuCtxSynchronize(), "synchronize")
v = ctypes.c_uint32()
ok(cu.cuMemcpyDtoH_v2(ctypes.byref(v), out, ctypes.c_size_t(4)), "copy back")
# sum of 0..n-1 modulo 2^32
if v.value != (800000 * 799999 // 2) % (1 << 32): raise SystemExit(f"wrong sum {v.value}")
print("ok")
"#;

/// A Python program on the Driver API through ctypes: `ptx` loaded, its `kernel` in `fn`, then
/// `body` (which has `cu`, `ok(result, what)`, `sys` and `ctypes`).
fn driver_script(ptx: &str, kernel: &str, body: &str) -> String {
    format!(
        r#"import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r != 0: raise SystemExit(f"{{what}}: CUresult {{r}}")
ok(cu.cuInit(0), "cuInit")
dev, ctx, mod, fn = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "retain")
ok(cu.cuCtxSetCurrent(ctx), "current")
ok(cu.cuModuleLoadData(ctypes.byref(mod), b"""{ptx}"""), "load")
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"{kernel}"), "function")
{body}"#
    )
}

/// What cuFFT asks of a driver besides launches, through the cuda backend: a module's kernels
/// listed (read from the image the worker loaded) and buffer ids (the driver's own).
#[test]
fn module_listing_and_buffer_ids_through_the_cuda_backend() {
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let dir = TempDir::new("listing");
    let script = dir.0.join("listing.py");
    std::fs::write(&script, driver_script(BUSY_PTX, "busy", LISTING_BODY)).unwrap();
    let out = std::process::Command::new("python3").arg(&script).env("LD_LIBRARY_PATH", libcuda_dir()).env("VGPU_SOCKET", &loopback.socket).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok", "{}\n{}", describe(&out), loopback.log());
}

const LISTING_BODY: &str = r#"
count = ctypes.c_uint()
ok(cu.cuModuleGetFunctionCount(ctypes.byref(count), mod), "count")
listed = (ctypes.c_void_p * 2)()
ok(cu.cuModuleEnumerateFunctions(listed, 2, mod), "enumerate")
assert count.value == 1 and listed[0] == fn.value and not listed[1], (count.value, listed[0], listed[1], fn.value)
a, b = ctypes.c_uint64(), ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(a), ctypes.c_size_t(64)), "alloc")
ok(cu.cuMemAlloc_v2(ctypes.byref(b), ctypes.c_size_t(64)), "alloc")
ids = []
for p in (a.value, a.value + 8, b.value):
    i = ctypes.c_uint64()
    ok(cu.cuPointerGetAttribute(ctypes.byref(i), 7, ctypes.c_uint64(p)), "buffer id")
    ids.append(i.value)
assert ids[0] and ids[0] == ids[1] and ids[0] != ids[2], ids
print("ok")
"#;

/// A sealed memfd of `len` bytes whose byte at each page is that page's number (guest RAM).
fn guest_ram(len: u64) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor returned is ours alone.
    let fd = unsafe { libc::memfd_create(c"vgpu-test-ram".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` was just created and nothing else owns it.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    for page in 0..len / 4096 {
        std::os::unix::fs::FileExt::write_all_at(&f, &[page as u8; 4096], page * 4096).unwrap();
    }
    // SAFETY: F_ADD_SEALS on a descriptor we own; no memory is passed.
    assert_eq!(unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) }, 0);
    f
}

/// The zero-copy guest data path on the cuda backend. A device process shares the VM's RAM (a
/// memfd) and a channel's pinned pages with the mediator, as vgpu-stub does; copies between
/// those pages and device memory are made by the guest process's worker from its own mapping of
/// the RAM, page-locked with the driver (the worker logs it; the bytes never cross the mediator's
/// socket to the worker), and land on the right pages in pin order. RAM the VM shares again
/// replaces the old mapping there, which is unregistered.
#[test]
fn guest_pages_reach_the_cuda_worker_straight_from_the_vms_ram() {
    use std::os::fd::AsFd;
    use vgpu_client::transport::{SocketTransport, Transport};
    use vgpu_uapi::proto::{Op, HELLO_GUEST_PINNED};
    const PAGE: u64 = 4096;
    const GPA: u64 = 1 << 20;
    let u64s = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let call = |t: &SocketTransport, op: Op, parts: &[&[u8]]| {
        let mut r = Vec::new();
        t.call(op, parts, &mut r).map(|()| r)
    };
    let sim = Mediator::start();
    let loopback = Mediator::start_loopback(&sim);
    let ram = guest_ram(16 * PAGE);
    let connect = || SocketTransport::connect(&loopback.socket, std::time::Duration::from_secs(10)).unwrap();
    // The device process's control connection: the RAM, then a channel's pins.
    let control = connect();
    control.connected(0);
    let share = |c: &SocketTransport| {
        let mut token = Vec::new();
        c.call_with_fd(Op::GuestMemory, &[&u64s(&[GPA, 16 * PAGE, 0])], ram.as_fd(), &mut token).map(|()| token)
    };
    let token = share(&control).expect("GuestMemory");
    let chan = connect();
    call(&chan, Op::GuestChannel, &[&token, &2u32.to_le_bytes()]).expect("GuestChannel");
    let hello = call(&chan, Op::Hello, &[&vgpu_uapi::proto::hello_request(4242, 0)]).expect("Hello");
    let flags = u32::from_le_bytes(hello[8..12].try_into().unwrap());
    assert_ne!(flags & HELLO_GUEST_PINNED, 0, "the channel's connection is told it reaches pinned pages");
    chan.connected(flags);
    // Region 5: pages 3, 1, 2 of the RAM, from 10 bytes into the first.
    let len = 3 * PAGE - 10;
    let mut pin: Vec<u8> = [2u32, 5, 0, 10].iter().flat_map(|w| w.to_le_bytes()).collect();
    pin.extend(len.to_le_bytes());
    pin.extend(3u32.to_le_bytes());
    pin.extend(u64s(&[GPA + 3 * PAGE, GPA + PAGE, GPA + 2 * PAGE]));
    call(&control, Op::GuestPin, &[&pin]).expect("GuestPin");

    let d = u64::from_le_bytes(call(&chan, Op::MemAlloc, &[&u64s(&[4 * PAGE])]).expect("MemAlloc")[..8].try_into().unwrap());
    call(&chan, Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, len])]).expect("guest pages to the device");
    let want: Vec<u8> = [3u8, 1, 2].iter().flat_map(|&b| vec![b; PAGE as usize]).skip(10).collect();
    assert!(call(&chan, Op::MemcpyDtoH, &[&u64s(&[d, len])]).expect("MemcpyDtoH") == want, "the device holds the pinned pages in pin order");
    // Device to guest: region bytes PAGE - 10 .. 2 PAGE - 10, which are RAM page 1 exactly.
    call(&chan, Op::MemcpyHtoD, &[&u64s(&[d]), &vec![0xab; PAGE as usize]]).expect("MemcpyHtoD");
    call(&chan, Op::MemcpyDtoHHost, &[&u64s(&[d, 5, PAGE - 10, PAGE])]).expect("device to guest pages");
    let page = |i: u64| {
        let mut b = vec![0u8; PAGE as usize];
        std::os::unix::fs::FileExt::read_exact_at(&ram, &mut b, i * PAGE).unwrap();
        b
    };
    assert!(page(1).iter().all(|&b| b == 0xab) && page(2).iter().all(|&b| b == 2) && page(0).iter().all(|&b| b == 0), "only RAM page 1 is written");
    let locked = |log: &str| log.matches("host memory mapped for copies is page-locked with the driver").count();
    assert_eq!(locked(&loopback.log()), 1, "the worker maps the VM's RAM once and page-locks it:\n{}", loopback.log());

    // The VM's RAM unmapped and shared again: the worker lets the old mapping go at the next
    // copy and maps the new one.
    call(&control, Op::GuestMemoryUnmap, &[&u64s(&[GPA, 16 * PAGE])]).expect("GuestMemoryUnmap");
    assert!(call(&chan, Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, 16])]).is_err(), "a copy from RAM the VM took back is refused");
    share(&control).expect("GuestMemory again");
    call(&chan, Op::MemcpyHtoDHost, &[&u64s(&[d, 5, 0, 16])]).expect("a copy from the RAM shared again");
    assert_eq!(call(&chan, Op::MemcpyDtoH, &[&u64s(&[d, 16])]).unwrap(), vec![3u8; 16]);
    let log = loopback.log();
    assert!(locked(&log) == 2 && log.contains("host memory mapped for copies is unregistered from the driver"), "the old mapping is released in the worker:\n{log}");
}
