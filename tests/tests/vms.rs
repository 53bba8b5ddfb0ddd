//! vgpu-hostd started from a configuration file shares one GPU between two VMs. Inside a VM
//! (through its socket) NVIDIA's cudart and nvidia-smi see the VM's memory quota as the device's
//! memory, allocations stop exactly there, vgpu-admin reports and steers the VMs, and SIGHUP
//! applies an edited file without a restart.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vgpu_tests::*;

fn fields(out: &std::process::Output) -> HashMap<String, String> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.into(), v.into())).collect()
}

struct Hostd(Child);

impl Drop for Hostd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &Path, quota_mib: u64) -> String {
    format!(
        "[[gpu]]\nname = \"gpu0\"\nmemory_gib = 16\n\
         [[vm]]\nname = \"a\"\ngpu = \"gpu0\"\nsocket = \"{d}/a.sock\"\npriority = \"high\"\nmemory_quota_mib = {quota_mib}\n\
         [[vm]]\nname = \"b\"\ngpu = \"gpu0\"\nsocket = \"{d}/b.sock\"\npriority = \"low\"\n",
        d = dir.display()
    )
}

fn admin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(target_dir().join("vgpu-admin")).arg("--socket").arg(dir.join("admin.sock")).args(args).output().unwrap();
    assert!(out.status.success(), "vgpu-admin {args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn two_vms_from_a_config_file_see_their_share() {
    let dir = TempDir::new("vms");
    let cfg = dir.0.join("hostd.toml");
    std::fs::write(&cfg, config(&dir.0, 256)).unwrap();
    let log = std::fs::File::create(dir.0.join("hostd.log")).unwrap();
    let hostd = Hostd(
        Command::new(target_dir().join("vgpu-hostd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--admin-socket")
            .arg(dir.0.join("admin.sock"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let hostd_log = || std::fs::read_to_string(dir.0.join("hostd.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !["a.sock", "b.sock", "admin.sock"].iter().all(|s| dir.0.join(s).exists()) {
        assert!(Instant::now() < deadline, "vgpu-hostd did not create its sockets:\n{}", hostd_log());
        std::thread::sleep(Duration::from_millis(20));
    }

    let exe = build_program("mem_fill", Cudart::V12);
    let fill = |vm: &str| {
        let out = run_program(&exe, Cudart::V12, &dir.0.join(format!("{vm}.sock")));
        assert!(out.status.success(), "{}\n--- mediator\n{}", describe(&out), hostd_log());
        fields(&out)
    };
    let a = fill("a");
    for k in ["device_total", "meminfo_total", "meminfo_free", "allocated", "free_after"] {
        assert_eq!(a[k], (256u64 << 20).to_string(), "{k} in VM a: {a:?}");
    }
    assert_eq!(a["error"], "cudaErrorMemoryAllocation");
    let b = fill("b");
    assert_eq!(b["device_total"], (16u64 << 30).to_string(), "VM b has no quota: the GPU's memory");
    assert!(b["allocated"].parse::<u64>().unwrap() > 256 << 20);

    let smi = Command::new(target_dir().join("vgpu-smi"))
        .args(["--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"])
        .env("VGPU_SOCKET", dir.0.join("a.sock"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&smi.stdout).trim(), "256, 0", "{}", describe(&smi));

    let table = admin(&dir.0, &["vms"]);
    let row = |name: &str| table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{table}")).to_string();
    assert!(row("a").contains(" 4 ") && row("a").contains("0 MiB/256 MiB") && row("a").ends_with("serving"), "{table}");
    assert!(row("b").contains(" 1 ") && row("b").contains("0 MiB/-"), "{table}");
    let gpus = admin(&dir.0, &["gpus"]);
    assert!(gpus.contains("gpu0") && gpus.contains("a,b"), "{gpus}");

    // Edit the file and signal: the new quota applies to the next process, no restart.
    std::fs::write(&cfg, config(&dir.0, 512)).unwrap();
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(hostd.0.id() as i32, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin(&dir.0, &["vms"]).contains("0 MiB/512 MiB") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload:\n{}", hostd_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = fill("a");
    assert_eq!(a["allocated"], (512u64 << 20).to_string());
    assert!(hostd_log().contains("reloaded: VM a: new settings"), "{}", hostd_log());
}
