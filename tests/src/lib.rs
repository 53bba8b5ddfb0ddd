//! Helpers for the end-to-end tests: find the CUDA wheels and our built artifacts, compile the
//! programs under tests/cuda with nvcc, run a mediator, run a program against our libcuda.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/setup-cuda-wheels.sh put NVIDIA's pip wheels.
pub fn wheels_dir() -> PathBuf {
    let cache = std::env::var_os("VGPU_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/vgpu"));
    let w = cache.join("cuda-wheels");
    assert!(
        w.join(".complete-v1").exists() && w.join("cu12/.complete-v1").exists(),
        "CUDA wheels missing at {}: run scripts/setup-cuda-wheels.sh (scripts/test.sh does)",
        w.display()
    );
    w
}

/// target/<profile>, where cargo put vgpu-hostd and libcuda.so (the tests run from .../deps).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    for f in ["vgpu-hostd", "vgpu-smi", "libcuda.so", "libnvidia_ml.so"] {
        assert!(dir.join(f).exists(), "{} not built: run `cargo build --workspace` first (scripts/test.sh does)", dir.join(f).display());
    }
    dir
}

/// A directory holding our libraries under the names the loader looks for.
pub fn libcuda_dir() -> PathBuf {
    static LINK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LINK.lock().unwrap_or_else(|e| e.into_inner());
    let t = target_dir();
    let d = t.join("vgpu-lib");
    std::fs::create_dir_all(&d).unwrap();
    ensure_link(&d.join("libcuda.so.1"), &t.join("libcuda.so"));
    ensure_link(&d.join("libnvidia-ml.so.1"), &t.join("libnvidia_ml.so"));
    d
}

/// Points `link` at `to`, leaving a correct link alone (programs may be loading through it).
fn ensure_link(link: &Path, to: &Path) {
    if std::fs::read_link(link).is_ok_and(|cur| cur == to) {
        return;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(to, link).unwrap();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cudart {
    V12,
    V13,
}

impl Cudart {
    pub fn lib_dir(self) -> PathBuf {
        let w = wheels_dir();
        match self {
            Cudart::V12 => w.join("cu12/nvidia/cuda_runtime/lib"),
            Cudart::V13 => w.join("cu13/nvidia/cu13/lib"),
        }
    }

    fn soname(self) -> &'static str {
        match self {
            Cudart::V12 => "libcudart.so.12",
            Cudart::V13 => "libcudart.so.13",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Cudart::V12 => "cudart12",
            Cudart::V13 => "cudart13",
        }
    }
}

fn source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cuda")
}

/// Compiles tests/cuda/<name>.cu with nvcc 13 against the given cudart (PTX for sm_90 only:
/// the sim backend runs PTX). Cached by modification time.
pub fn build_program(name: &str, cudart: Cudart) -> PathBuf {
    build_program_variant(name, cudart, false)
}

/// Like [`build_program`], for a guest payload: the program carries a RUNPATH of `$ORIGIN`, so it
/// finds its libcudart.so.1x in its own directory (libcuda.so.1, which cudart dlopens, is not
/// found that way: the guest's loader finds it through ldconfig's cache only). Built into
/// target/<profile>/cuda-tests/cudart1x-guest/.
pub fn build_guest_program(name: &str, cudart: Cudart) -> PathBuf {
    build_program_variant(name, cudart, true)
}

fn build_program_variant(name: &str, cudart: Cudart, origin_rpath: bool) -> PathBuf {
    // Tests run in parallel threads; one nvcc at a time (2-core machines) and no racing links.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let w = wheels_dir();
    let nvcc = w.join("cu13/nvidia/cu13/bin/nvcc");
    let out_dir = target_dir().join("cuda-tests").join(if origin_rpath { format!("{}-guest", cudart.tag()) } else { cudart.tag().to_string() });
    let link_dir = out_dir.join("link");
    std::fs::create_dir_all(&link_dir).unwrap();
    for (link, to) in [("libcudart.so", cudart.lib_dir().join(cudart.soname())), ("libcudadevrt.a", cudart.lib_dir().join("libcudadevrt.a"))] {
        ensure_link(&link_dir.join(link), &to);
    }
    let src = source_dir().join(format!("{name}.cu"));
    let exe = out_dir.join(name);
    let newest_src = [src.clone(), source_dir().join("check.h")]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).expect("source"))
        .max()
        .unwrap();
    if std::fs::metadata(&exe).and_then(|m| m.modified()).is_ok_and(|t| t > newest_src) {
        return exe;
    }
    let mut cmd = Command::new(&nvcc);
    if cudart == Cudart::V12 {
        // cudart 12's own headers: struct layouts (cudaDeviceProp) changed in 13.
        cmd.arg("-I").arg(w.join("cu12/nvidia/cuda_runtime/include"));
    }
    if origin_rpath {
        // nvcc hands -Xlinker's argument to the host linker: DT_RUNPATH [$ORIGIN].
        cmd.args(["-Xlinker", "-rpath=$ORIGIN"]);
    }
    let out = cmd
        .args(["-gencode", "arch=compute_90,code=compute_90", "-cudart", "shared", "-O2"])
        .arg("-L")
        .arg(&link_dir)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run nvcc");
    assert!(out.status.success(), "nvcc {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}

impl Cudart {
    /// The payload directory for programs built against this cudart: `cu12`, `cu13`.
    pub fn payload_dir(self) -> &'static str {
        match self {
            Cudart::V12 => "cu12",
            Cudart::V13 => "cu13",
        }
    }
}

/// Puts tests/cuda programs, built for the guest ([`build_guest_program`]), into
/// `<payload>/cu12|cu13/` next to a copy of NVIDIA's libcudart.so.12|13 (which they find
/// through their `$ORIGIN` runpath). In the guest they are `/opt/vgpu/cu12/<name>` (boot-guest.sh
/// copies the payload to /opt/vgpu).
pub fn add_guest_programs(payload: &Path, names: &[&str], cudart: Cudart) {
    let dir = payload.join(cudart.payload_dir());
    std::fs::create_dir_all(&dir).unwrap();
    let lib = cudart.lib_dir().join(cudart.soname());
    std::fs::copy(&lib, dir.join(cudart.soname())).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    for name in names {
        let exe = build_guest_program(name, cudart);
        std::fs::copy(&exe, dir.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", exe.display()));
    }
}

/// Compiles tests/c/<name>.c with the host's cc (plain C, linked with -ldl) into
/// target/<profile>/cuda-tests/; the result runs on the host and, as the guest userland is the
/// host's, in the guest.
pub fn build_c_program(name: &str) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let exe = target_dir().join("cuda-tests").join(name);
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(format!("{name}.c"));
    let tmp = exe.with_extension("tmp");
    // The assembler finds the test images (host/tests/data) that programs include with .incbin.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/data");
    let cc = Command::new("cc").arg("-O1").arg("-Wall").arg(format!("-Wa,-I,{}", data.display())).arg("-o").arg(&tmp).arg(&src).arg("-ldl").output().expect("run cc");
    assert!(cc.status.success(), "cc {}:\n{}", src.display(), describe(&cc));
    std::fs::rename(&tmp, &exe).unwrap();
    exe
}

/// Puts a minimal Python into a guest payload: Debian's /usr/bin/python3 (the guest userland is
/// the host's) and exactly the standard-library files that importing `modules` loads on the
/// host, under `<payload>/py` (run it as `PYTHONHOME=/opt/vgpu/py /opt/vgpu/py/bin/python3 -S`).
/// `path` is searched for `modules` too; files found there go to `<payload>/py/site`.
pub fn add_guest_python(payload: &Path, modules: &[&str], path: &Path) {
    let list = "import sys, sysconfig\n\
        for m in sys.argv[1:]: __import__(m)\n\
        print(sys.executable); print(sysconfig.get_paths()['stdlib'])\n\
        for m in list(sys.modules.values()):\n    f = getattr(m, '__file__', None)\n    if f: print(f)\n";
    // Debian's own interpreter: its libraries are system ones (a pyenv build carries its own).
    let out = Command::new("/usr/bin/python3").arg("-S").arg("-c").arg(list).args(modules).env("PYTHONPATH", path).output().expect("/usr/bin/python3");
    assert!(out.status.success(), "python3 on the host:\n{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let (exe, stdlib) = (lines.next().unwrap(), Path::new(lines.next().unwrap()));
    let py = payload.join("py");
    let lib = py.join("lib").join(stdlib.file_name().unwrap());
    std::fs::create_dir_all(py.join("bin")).unwrap();
    std::fs::create_dir_all(py.join("site")).unwrap();
    std::fs::copy(std::fs::canonicalize(exe).unwrap(), py.join("bin/python3")).unwrap();
    // os.py is the landmark Python finds its standard library by; encodings is loaded at startup.
    let mut files: Vec<PathBuf> = lines.map(PathBuf::from).collect();
    files.push(stdlib.join("os.py"));
    for f in files {
        let dest = if let Ok(rel) = f.strip_prefix(stdlib) {
            lib.join(rel)
        } else if let Ok(rel) = f.strip_prefix(path) {
            py.join("site").join(rel)
        } else {
            continue; // frozen or built-in modules have no file in the standard library
        };
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
    }
}

/// Boots the guest with qemu/harness/boot-guest.sh (see there), optionally with a payload
/// directory (the guest's /opt/vgpu) and a script in it to run; returns its output. Its stdout
/// holds the guest's report, the run script's output between `RUN-BEGIN` and `RUN-END rc=N`,
/// and `boot-guest: PASS` when the device checks passed.
pub fn boot_guest(payload: Option<(&Path, &str)>) -> Output {
    boot_guest_with(payload, &[])
}

/// [`boot_guest`] with more boot-guest.sh options (`--memory-quota-mib N`).
pub fn boot_guest_with(payload: Option<(&Path, &str)>, options: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("qemu/harness/boot-guest.sh"));
    if let Some((dir, run)) = payload {
        cmd.arg("--payload").arg(dir).arg("--run").arg(run);
    }
    cmd.args(options).stdin(Stdio::null()).output().expect("run boot-guest.sh")
}

/// The lines the guest's run script printed (between `RUN-BEGIN` and `RUN-END`, exclusive),
/// and the `RUN-END` line; None if the script never started.
pub fn guest_run_output(stdout: &str) -> Option<(Vec<&str>, Option<&str>)> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("RUN-BEGIN "));
    lines.next()?;
    let mut body = Vec::new();
    for l in lines {
        if l.starts_with("RUN-END ") {
            return Some((body, Some(l)));
        }
        body.push(l);
    }
    Some((body, None))
}

/// A mediator on a private socket, killed when dropped.
pub struct Mediator {
    child: Child,
    pub socket: PathBuf,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory, unique within this process and across processes.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vgpu-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Mediator {
    pub fn start() -> Mediator {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Mediator {
        Self::start_with_env(args, &[])
    }

    /// A mediator with `args` and environment variables `env` (name, value).
    pub fn start_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Mediator {
        let dir = TempDir::new("mediator");
        let socket = dir.0.join("hostd.sock");
        let log = std::fs::File::create(dir.0.join("hostd.log")).unwrap();
        let admin = dir.0.join("admin.sock");
        let mut args = args.to_vec();
        if !args.contains(&"--config") {
            args.extend(["--admin-socket", admin.to_str().unwrap()]);
        }
        let child = spawn_hostd(&socket, &args, env, log);
        Mediator { child, socket, _dir: dir }
    }

    /// Where `vgpu-admin` reaches this mediator.
    pub fn admin_socket(&self) -> PathBuf {
        self._dir.0.join("admin.sock")
    }

    /// The `cuda` backend in loopback: a mediator whose "GPU driver" is vgpu's own libcuda,
    /// talking to `inner` (a sim mediator). The backend cannot tell it from NVIDIA's.
    pub fn start_loopback(inner: &Mediator) -> Mediator {
        let driver = target_dir().join("libcuda.so");
        Self::start_with_env(&["--backend", "cuda", "--cuda-driver", driver.to_str().unwrap()], &[("VGPU_SOCKET", inner.socket.as_os_str())])
    }

    /// The loopback mediator started from a configuration: one cuda GPU (vgpu's own libcuda,
    /// talking to `inner`) and one VM on this mediator's socket, with `vm_settings` (TOML lines).
    /// Its admin socket is `admin_socket()`.
    pub fn start_loopback_vm(inner: &Mediator, vm_settings: &str) -> Mediator {
        let dir = TempDir::new("mediator");
        let socket = dir.0.join("hostd.sock");
        let cfg = dir.0.join("hostd.toml");
        let driver = target_dir().join("libcuda.so");
        let body = format!(
            "admin_socket = \"{}\"\n[[gpu]]\nname = \"gpu0\"\nbackend = \"cuda\"\ncuda_driver = \"{}\"\n[[vm]]\nname = \"vm0\"\ngpu = \"gpu0\"\nsocket = \"{}\"\n{vm_settings}\n",
            dir.0.join("admin.sock").display(),
            driver.display(),
            socket.display()
        );
        std::fs::write(&cfg, body).unwrap();
        let log = std::fs::File::create(dir.0.join("hostd.log")).unwrap();
        let child = spawn_hostd(&socket, &["--config", cfg.to_str().unwrap()], &[("VGPU_SOCKET", inner.socket.as_os_str())], log);
        Mediator { child, socket, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("hostd.log")).unwrap_or_default()
    }

    /// Kills the mediator (-9) as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the mediator again on the same socket (after `kill`).
    pub fn restart(&mut self, args: &[&str]) {
        let log = std::fs::OpenOptions::new().append(true).open(self._dir.0.join("hostd.log")).unwrap();
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn_hostd(&self.socket, args, &[], log);
    }
}

/// vgpu-hostd on `socket`, logging to `log`; returns once the socket exists.
fn spawn_hostd(socket: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)], log: std::fs::File) -> Child {
    // The sim backend unless the test asks for another (the default, auto, would take a CUDA
    // driver the machine happens to have).
    let default_backend: &[&str] = if args.iter().any(|a| *a == "--backend" || *a == "--config") { &[] } else { &["--backend", "sim"] };
    let child = Command::new(target_dir().join("vgpu-hostd"))
        .arg("--socket")
        .arg(socket)
        .args(default_backend)
        .args(args)
        .envs(env.iter().copied())
        .env("VGPU_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start vgpu-hostd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "vgpu-hostd did not create {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for Mediator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `exe` the way an application runs: our libcuda.so.1 and NVIDIA's cudart found by the
/// loader, the mediator named by VGPU_SOCKET.
pub fn run_program(exe: &Path, cudart: Cudart, socket: &Path) -> Output {
    Command::new(exe)
        .env("LD_LIBRARY_PATH", format!("{}:{}", libcuda_dir().display(), cudart.lib_dir().display()))
        .env("VGPU_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .expect("run test program")
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The live processes whose parent is `parent` (from /proc).
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses, so parse after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            v.push(pid);
        }
    }
    v.sort();
    v
}

/// Runs a peer's own pytest suite (numba-cuda's, CuPy's) on vgpu: `cmd` is its pytest command
/// line; this adds tests/pytest/vgpu_pytest_plugin.py with `slice` ("K/N"), the known failures of
/// `lists` (its known_failures.txt) and, for the whole suite, what each of `record` slices
/// passes. Fails unless every failure is a known one and the pass count reaches the one
/// `lists`/expected_passes.txt records for `slice`.
pub fn check_peer_suite(name: &str, mut cmd: Command, lists: &Path, slice: &str, record: u32, mediator: &Mediator) {
    let work = TempDir::new("peer-suite");
    let summary = work.0.join("summary.txt");
    let out = cmd
        .args(["-p", "vgpu_pytest_plugin", "--vgpu-record-slices", &record.to_string()])
        .arg(format!("--vgpu-slice={slice}"))
        .arg(format!("--vgpu-known={}", lists.join("known_failures.txt").display()))
        .arg(format!("--vgpu-summary={}", summary.display()))
        .env("PYTHONPATH", Path::new(env!("CARGO_MANIFEST_DIR")).join("pytest"))
        .env("LD_LIBRARY_PATH", libcuda_dir())
        .env("VGPU_SOCKET", &mediator.socket)
        .output()
        .unwrap_or_else(|e| panic!("run {name}'s test suite: {e}"));
    let report = std::fs::read_to_string(&summary).unwrap_or_default();
    let passed: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("COUNTS "))
        .and_then(|c| c.split(' ').find_map(|kv| kv.strip_prefix("passed=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let want = std::fs::read_to_string(lists.join("expected_passes.txt")).ok().and_then(|t| {
        t.lines().filter(|l| !l.starts_with('#')).find_map(|l| l.split_once(char::is_whitespace).filter(|(s, _)| *s == slice).and_then(|(_, n)| n.trim().parse::<usize>().ok()))
    });
    println!("{name} suite, slice {slice}:\n{report}");
    let tail = |s: &[u8], n: usize| String::from_utf8_lossy(s).lines().rev().take(n).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        report.lines().last() == Some("VERDICT ok") && want.is_none_or(|w| passed >= w),
        "{name}'s suite (slice {slice}) on vgpu: {passed} passed (recorded: {want:?})\n{report}\n--- pytest (tail)\n{}\n--- stderr (tail)\n{}\n--- mediator log (tail)\n{}",
        tail(&out.stdout, 60),
        tail(&out.stderr, 20),
        mediator.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}
