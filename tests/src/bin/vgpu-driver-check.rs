//! Runs inside the guest: checks the guest driver's file interface (uapi/src/channel.rs) from
//! user space, the way libcuda uses it, including its error answers.
//!
//!   vgpu-driver-check abi     every check below; one `DRIVER-CHECK ok|FAIL <name>` line each
//!   vgpu-driver-check hold    opens a CUDA session, allocates 64 MiB, prints its pid, sleeps
//!                             (the harness kills it with -9 and checks everything was freed)
//!   vgpu-driver-check spin    launches a kernel that never ends and waits for it (the harness
//!                             kills it with -9: the mediator must stop the kernel and free all)
//!   vgpu-driver-check unbind  unbinds the driver from the device under an open channel with a
//!                             waiter asleep in it, checks the file answers ENODEV without a
//!                             hang, then binds the driver again and opens a channel
//!   vgpu-driver-check as-user UID GID PROGRAM [ARG...]
//!                             runs PROGRAM as that user and group, with no supplementary
//!                             groups (the guest has no su or setpriv)

use std::ffi::CString;
use std::io::Error;
use std::time::{Duration, Instant};
use vgpu_uapi::channel::*;

fn open(path: &str) -> i32 {
    let c = CString::new(path).unwrap();
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }
}

fn ioctl<T>(fd: i32, req: u32, arg: *mut T) -> Result<(), i32> {
    // SAFETY: `arg` is null or points to a value of the size `req` encodes.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) };
    if r < 0 {
        Err(Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn mmap(fd: i32, len: usize, offset: i64) -> Result<*mut u8, i32> {
    // SAFETY: a fresh shared mapping of the device file; checked below.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, offset) };
    if p == libc::MAP_FAILED {
        Err(Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(p.cast())
    }
}

struct Checks {
    failed: u32,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        if ok {
            println!("DRIVER-CHECK ok {name}");
        } else {
            println!("DRIVER-CHECK FAIL {name}: {detail}");
            self.failed += 1;
        }
    }

    fn errno(&mut self, name: &str, got: Result<(), i32>, want: i32) {
        self.check(name, got == Err(want), format!("got {got:?}, want errno {want}"));
    }
}

fn abi() -> i32 {
    let mut c = Checks { failed: 0 };
    for node in ["/dev/nvidiactl", "/dev/nvidia0"] {
        let fd = open(node);
        c.check(&format!("open {node}"), fd >= 0, Error::last_os_error().to_string());
        if fd < 0 {
            return 1;
        }
        let mut v = VersionInfo::default();
        let r = ioctl(fd, VGPU_IOCTL_VERSION, &mut v);
        c.check(
            &format!("version {node}"),
            r.is_ok() && v.abi_version == DRIVER_ABI_VERSION && v.protocol_version == vgpu_uapi::PROTOCOL_VERSION,
            format!("{r:?} {v:?}"),
        );
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    }
    let fd = open("/dev/nvidia0");
    c.errno("unknown ioctl is ENOTTY", ioctl::<u8>(fd, 0x5600, std::ptr::null_mut()), libc::ENOTTY);
    c.errno("doorbell without a channel is EINVAL", ioctl::<u8>(fd, VGPU_IOCTL_DOORBELL, std::ptr::null_mut()), libc::EINVAL);
    let mut w = WaitArgs { seen: 0, timeout_ms: 10 };
    c.errno("wait without a channel is EINVAL", ioctl(fd, VGPU_IOCTL_WAIT, &mut w), libc::EINVAL);
    c.errno("mmap without a channel is EINVAL", mmap(fd, 4096, 0).map(|_| ()), libc::EINVAL);
    // Address 8: never mapped in user space, so the driver's copy to it must fail.
    #[allow(clippy::manual_dangling_ptr)]
    let unmapped = 8usize as *mut ChannelInfo;
    let mut buf = vec![0u8; 3 * 4096];
    let mut pin = PinArgs { addr: buf.as_mut_ptr() as u64, len: buf.len() as u64, flags: 0, id: 0 };
    c.errno("pin without a channel is EINVAL", ioctl(fd, VGPU_IOCTL_PIN, &mut pin), libc::EINVAL);
    c.errno("bad user pointer is EFAULT", ioctl(fd, VGPU_IOCTL_CHANNEL_OPEN, unmapped), libc::EFAULT);
    let r = ioctl(fd, VGPU_IOCTL_CHANNEL_OPEN, &mut ChannelInfo::default());
    c.check("a channel the caller could not be told of is not left open", r.is_ok(), format!("{r:?}"));
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };

    let fd = open("/dev/nvidia0");
    let mut info = ChannelInfo::default();
    let r = ioctl(fd, VGPU_IOCTL_CHANNEL_OPEN, &mut info);
    c.check(
        "channel open",
        r.is_ok() && info.area_size == AREA_SIZE as u64 && info.staging_offset == STAGING as u64 && info.sq_entries == SQ_ENTRIES,
        format!("{r:?} {info:?}"),
    );
    c.errno("second channel on one file is EBUSY", ioctl(fd, VGPU_IOCTL_CHANNEL_OPEN, &mut ChannelInfo::default()), libc::EBUSY);
    c.errno("mmap beyond the area is EINVAL", mmap(fd, AREA_SIZE + 4096, 0).map(|_| ()), libc::EINVAL);
    c.errno("mmap at an offset is EINVAL", mmap(fd, 4096, 4096).map(|_| ()), libc::EINVAL);
    let t = Instant::now();
    let mut w = WaitArgs { seen: 0, timeout_ms: 200 };
    let r = ioctl(fd, VGPU_IOCTL_WAIT, &mut w);
    c.check(
        "wait with nothing pending times out",
        r == Err(libc::ETIMEDOUT) && t.elapsed() >= Duration::from_millis(150) && t.elapsed() < Duration::from_secs(5),
        format!("{r:?} after {:?}", t.elapsed()),
    );
    match mmap(fd, info.area_size as usize, 0) {
        Err(e) => c.check("mmap the area", false, format!("errno {e}")),
        Ok(area) => {
            c.check("mmap the area", true, String::new());
            // A descriptor pointing into the header page: the device must refuse it and say so
            // (the waiter sleeps in WAIT until the completion interrupt).
            let d = Desc { op: OP_SEND, flags: 0, tag: 77, offset: 0, len: 16 };
            let r = exchange(fd, area, 0, &[d]);
            c.check(
                "descriptor into the header page completes with EINVAL (interrupt wakes the waiter)",
                r.as_ref().is_ok_and(|v| v[0].tag == 77 && v[0].status == libc::EINVAL as u32),
                format!("{r:?}"),
            );
            pinned(&mut c, fd, area, &mut buf);
        }
    }
    // SAFETY: closing our own descriptor (the mapping keeps the file until exit).
    unsafe { libc::close(fd) };
    if c.failed == 0 {
        println!("DRIVER-CHECK all passed");
    }
    c.failed as i32
}

/// Posts `descs` (ring slots from `first`), rings, and waits for their completions.
fn exchange(fd: i32, area: *mut u8, first: u32, descs: &[Desc]) -> Result<Vec<Completion>, String> {
    for (i, d) in descs.iter().enumerate() {
        // SAFETY: ring slots are inside the mapped header page.
        unsafe { std::ptr::copy_nonoverlapping(d.to_bytes().as_ptr(), area.add(sq_slot(first + i as u32)), DESC_SIZE) };
    }
    let end = first + descs.len() as u32;
    // SAFETY: the tail word is inside the mapped header page.
    unsafe {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        std::ptr::write_volatile(area.add(SQ_TAIL).cast::<u32>(), end);
    }
    ioctl::<u8>(fd, VGPU_IOCTL_DOORBELL, std::ptr::null_mut()).map_err(|e| format!("doorbell: errno {e}"))?;
    let t = Instant::now();
    loop {
        // SAFETY: as above; the device writes the completion tail.
        let tail = unsafe { std::ptr::read_volatile(area.add(CQ_TAIL).cast::<u32>()) };
        if tail == end {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!("completion tail {tail}, want {end}"));
        }
        let mut w = WaitArgs { seen: tail, timeout_ms: 1000 };
        let _ = ioctl(fd, VGPU_IOCTL_WAIT, &mut w);
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    Ok((first..end)
        .map(|i| {
            let mut b = [0u8; COMPLETION_SIZE];
            // SAFETY: completion slots are inside the mapped header page.
            unsafe { std::ptr::copy_nonoverlapping(area.add(cq_slot(i)), b.as_mut_ptr(), COMPLETION_SIZE) };
            Completion::from_bytes(&b)
        })
        .collect())
}

/// Pinned memory on an open channel (one descriptor was used): the driver's answers, and a
/// request sent from and its reply received into pinned pages by the device itself.
fn pinned(c: &mut Checks, fd: i32, area: *mut u8, buf: &mut [u8]) {
    use vgpu_uapi::proto::{MsgHeader, Op, HELLO_OBSERVER, MSG_MAGIC};
    let mut bad = |name: &str, addr: u64, len: u64, flags: u32, want: i32| {
        let mut a = PinArgs { addr, len, flags, id: 0 };
        c.errno(name, ioctl(fd, VGPU_IOCTL_PIN, &mut a), want);
    };
    let p = buf.as_mut_ptr() as u64;
    bad("pin of zero bytes is EINVAL", p, 0, 0, libc::EINVAL);
    bad("pin with an unknown flag is EINVAL", p, 16, 4, libc::EINVAL);
    bad("pin of more than 512 MiB is E2BIG", p, (512 << 20) + 1, 0, libc::E2BIG);
    bad("pin of unmapped memory is EFAULT", 8, 16, 0, libc::EFAULT);
    bad("pin wrapping the address space is EINVAL", u64::MAX - 8, 16, 0, libc::EINVAL);
    // SAFETY: a fresh private read-only mapping, unmapped below.
    let ro = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    bad("writable pin of read-only memory is EFAULT", ro as u64, 4096, 0, libc::EFAULT);
    let mut a = PinArgs { addr: ro as u64, len: 4096, flags: PIN_READ_ONLY, id: 0 };
    let r = ioctl(fd, VGPU_IOCTL_PIN, &mut a);
    c.check("read-only pin of read-only memory", r.is_ok() && a.id != 0, format!("{r:?} {a:?}"));
    c.check("unpin it", ioctl(fd, VGPU_IOCTL_UNPIN, &mut a.id).is_ok(), String::new());
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(ro, 4096) };
    c.errno("unpin of an unknown region is ENOENT", ioctl(fd, VGPU_IOCTL_UNPIN, &mut 12345u32), libc::ENOENT);

    // An unaligned range over three pages; a Hello to the mediator is sent from it and the
    // reply written into it by the device, through the page list.
    let mut a = PinArgs { addr: p + 5, len: buf.len() as u64 - 9, flags: 0, id: 0 };
    let r = ioctl(fd, VGPU_IOCTL_PIN, &mut a);
    c.check("pin an unaligned range over three pages", r.is_ok() && a.id != 0, format!("{r:?} {a:?}"));
    let mut hello = MsgHeader { magic: MSG_MAGIC, op: Op::Hello as u32, seq: 1, status: 0, payload_len: 12, reserved: 0 }.to_bytes().to_vec();
    for v in [vgpu_uapi::PROTOCOL_VERSION, std::process::id(), HELLO_OBSERVER] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    // Region offset 4090: the request straddles the first and second pages.
    buf[5 + 4090..5 + 4090 + hello.len()].copy_from_slice(&hello);
    let descs = [
        Desc { op: OP_SEND_PINNED, flags: a.id, tag: 1, offset: 4090, len: hello.len() as u64 },
        Desc { op: OP_RECV_PINNED, flags: a.id, tag: 2, offset: 8190, len: 32 },
        Desc { op: OP_SEND_PINNED, flags: a.id, tag: 3, offset: buf.len() as u64 - 9, len: 1 },
        Desc { op: OP_SEND_PINNED, flags: a.id + 1, tag: 4, offset: 0, len: 1 },
    ];
    let r = exchange(fd, area, 1, &descs);
    let reply = MsgHeader::from_bytes(buf[5 + 8190..5 + 8190 + 24].try_into().unwrap());
    let ok = |c: &Completion, tag, len| c.tag == tag && c.status == 0 && c.len == len;
    let efault = |c: &Completion, tag| c.tag == tag && c.status == libc::EFAULT as u32;
    c.check(
        "the device sends from and receives into pinned pages (a Hello and its reply)",
        r.as_ref().is_ok_and(|v| ok(&v[0], 1, hello.len() as u32) && ok(&v[1], 2, 32))
            && reply.validate().is_ok()
            && reply.op == Op::Hello as u32
            && reply.seq == 1
            && reply.status == 0,
        format!("{r:?}, reply {reply:?}"),
    );
    c.check(
        "past the region's end or another region: EFAULT",
        r.as_ref().is_ok_and(|v| efault(&v[2], 3) && efault(&v[3], 4)),
        format!("{r:?}"),
    );
    c.check("unpin the region", ioctl(fd, VGPU_IOCTL_UNPIN, &mut a.id).is_ok(), String::new());
    let r = exchange(fd, area, 5, &[Desc { op: OP_SEND_PINNED, flags: a.id, tag: 5, offset: 0, len: 1 }]);
    c.check("an unpinned region is out of the device's reach", r.as_ref().is_ok_and(|v| efault(&v[0], 5)), format!("{r:?}"));
    c.errno("unpin twice is ENOENT", ioctl(fd, VGPU_IOCTL_UNPIN, &mut a.id), libc::ENOENT);
    // Left pinned: closing the file releases it.
    let mut a = PinArgs { addr: p, len: 4096, flags: 0, id: 0 };
    c.check("pin left for close to release", ioctl(fd, VGPU_IOCTL_PIN, &mut a).is_ok(), String::new());
}

/// A CUDA session with the mediator; None (after a `<tag> cannot connect` line) if there is none.
fn connect(tag: &str) -> Option<vgpu_client::Client> {
    vgpu_client::Client::connect("vgpu-driver-check").inspect_err(|e| println!("{tag} cannot connect: CUresult {e}")).ok()
}

fn hold() -> i32 {
    let Some(client) = connect("HOLD") else { return 1 };
    match client.call(vgpu_uapi::proto::Op::MemAlloc, &[&(64u64 << 20).to_le_bytes()]) {
        Ok(_) => println!("HOLD pid {} holds 64 MiB", std::process::id()),
        Err(e) => {
            println!("HOLD allocation failed: CUresult {e}");
            return 1;
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A kernel that spins until a flag in device memory (left 0) changes.
const SPIN_PTX: &str = ".version 8.0\n.target sm_90\n.address_size 64\n\
.visible .entry spin(.param .u64 flag)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<2>;\n.reg .b64 %rd<2>;\n\
ld.param.u64 %rd1, [flag];\n$L_loop:\nld.volatile.global.u32 %r1, [%rd1];\nsetp.eq.u32 %p1, %r1, 0;\n\
@%p1 bra $L_loop;\nret;\n}\n";

fn spin() -> i32 {
    use vgpu_uapi::proto::Op;
    let Some(client) = connect("SPIN") else { return 1 };
    let u64_of = |r: &[u8]| r.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let step = || -> Result<(u64, u64), String> {
        let module = client.call(Op::ModuleLoad, &[SPIN_PTX.as_bytes()]).map_err(|e| format!("module load: {e}"))?;
        let module = u64_of(&module).ok_or("short reply")?;
        let f = client.call(Op::ModuleGetFunction, &[&module.to_le_bytes(), b"spin"]).map_err(|e| format!("get function: {e}"))?;
        let flag = client.call(Op::MemAlloc, &[&(16u64 << 20).to_le_bytes()]).map_err(|e| format!("alloc: {e}"))?;
        Ok((u64_of(&f).ok_or("short reply")?, u64_of(&flag).ok_or("short reply")?))
    };
    let (f, flag) = match step() {
        Ok(v) => v,
        Err(e) => {
            println!("SPIN setup failed: {e}");
            return 1;
        }
    };
    let mut launch = f.to_le_bytes().to_vec();
    for v in [1u32, 1, 1, 32, 1, 1, 0] {
        launch.extend_from_slice(&v.to_le_bytes());
    }
    launch.extend_from_slice(&0u64.to_le_bytes());
    launch.extend_from_slice(&flag.to_le_bytes());
    println!("SPIN pid {} launching", std::process::id());
    let r = client.call(Op::Launch, &[&launch]);
    println!("SPIN launch returned {:?}", r.err());
    1
}

const BDF: &str = "0000:00:05.0";

fn sysfs_write(path: &str, value: &str) -> Result<(), i32> {
    std::fs::write(path, value).map_err(|e| e.raw_os_error().unwrap_or(0))
}

fn unbind() -> i32 {
    let mut c = Checks { failed: 0 };
    let fd = open("/dev/nvidia0");
    let mut info = ChannelInfo::default();
    let r = ioctl(fd, VGPU_IOCTL_CHANNEL_OPEN, &mut info);
    c.check("channel open before unbind", fd >= 0 && r.is_ok(), format!("fd {fd}, {r:?}"));
    let area = mmap(fd, info.area_size as usize, 0);
    c.check("mmap before unbind", area.is_ok(), format!("{area:?}"));
    // A waiter asleep in the channel while the device goes away.
    let waiter = std::thread::spawn(move || {
        let mut w = WaitArgs { seen: 0, timeout_ms: 60_000 };
        let r = ioctl(fd, VGPU_IOCTL_WAIT, &mut w);
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = sysfs_write("/sys/bus/pci/drivers/vgpu/unbind", BDF);
    c.check("unbind with a channel open and a waiter asleep", r.is_ok() && t.elapsed() < Duration::from_secs(5), format!("{r:?} after {:?}", t.elapsed()));
    let (waited, woke) = waiter.join().unwrap();
    let late = woke.saturating_duration_since(t);
    c.check("the waiter gets ENODEV at once", waited == Err(libc::ENODEV) && late < Duration::from_secs(2), format!("{waited:?}, {late:?} after the unbind began"));
    c.errno("doorbell after unbind is ENODEV", ioctl::<u8>(fd, VGPU_IOCTL_DOORBELL, std::ptr::null_mut()), libc::ENODEV);
    let mut w = WaitArgs { seen: 0, timeout_ms: 10_000 };
    c.errno("wait after unbind is ENODEV", ioctl(fd, VGPU_IOCTL_WAIT, &mut w), libc::ENODEV);
    let gone = open("/dev/nvidia0");
    c.check("no /dev/nvidia0 while unbound", gone < 0, format!("open gave fd {gone}"));
    if let Ok(p) = area {
        // SAFETY: unmapping the mapping made above, which nothing else uses.
        unsafe { libc::munmap(p.cast(), info.area_size as usize) };
    }
    // SAFETY: closing our own descriptor; releases the channel of an unbound device.
    unsafe { libc::close(fd) };

    let r = sysfs_write("/sys/bus/pci/drivers/vgpu/bind", BDF);
    c.check("bind again", r.is_ok(), format!("{r:?}"));
    // devtmpfs creates the node as the driver registers it.
    let t = Instant::now();
    let mut fd = open("/dev/nvidia0");
    while fd < 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        fd = open("/dev/nvidia0");
    }
    let mut info = ChannelInfo::default();
    let r = ioctl(fd, VGPU_IOCTL_CHANNEL_OPEN, &mut info);
    c.check("channel open after binding again", fd >= 0 && r.is_ok(), format!("fd {fd}, {r:?}"));
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    if c.failed == 0 {
        println!("DRIVER-CHECK all passed");
    }
    c.failed as i32
}

fn as_user(args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let (Some(uid), Some(gid), Some(prog)) = (args.first().and_then(|a| a.parse().ok()), args.get(1).and_then(|a| a.parse().ok()), args.get(2)) else {
        eprintln!("usage: vgpu-driver-check as-user UID GID PROGRAM [ARG...]");
        return 2;
    };
    // SAFETY: plain system calls on this single-threaded process before exec; order matters:
    // groups and gid while still root, uid last.
    let dropped = unsafe { libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0 };
    if !dropped {
        eprintln!("as-user: cannot become uid {uid} gid {gid}: {}", Error::last_os_error());
        return 2;
    }
    let err = std::process::Command::new(prog).args(&args[3..]).exec();
    eprintln!("as-user: {prog}: {err}");
    127
}

fn main() {
    let code = match std::env::args().nth(1).as_deref() {
        Some("abi") => abi(),
        Some("hold") => hold(),
        Some("unbind") => unbind(),
        Some("spin") => spin(),
        Some("as-user") => as_user(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!("usage: vgpu-driver-check abi|hold|spin|unbind|as-user UID GID PROGRAM [ARG...]");
            2
        }
    };
    std::process::exit(code);
}
