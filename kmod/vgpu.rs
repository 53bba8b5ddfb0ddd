// SPDX-License-Identifier: GPL-2.0

//! vgpu guest driver: binds the VGPU-STUB PCI device (10de:2331) and makes it usable by
//! vgpu's libcuda.so.1 and libnvidia-ml.so.1.
//!
//! - /dev/nvidiactl and /dev/nvidia0, the names and numbers NVIDIA's driver uses (char major 195:
//!   nvidia0 is 195:0, nvidiactl 195:255; container runtimes allow "c 195:* rwm"), created by
//!   devtmpfs with NVIDIA's default mode 0666 (module parameters NVreg_DeviceFileMode/UID/GID,
//!   NVIDIA's names, change it), so every user and service can use the GPU. Each open
//!   file may open one *channel*: a DMA-coherent area with a submission ring, a completion ring
//!   and a staging buffer (layout in uapi/src/channel.rs), which the process maps with mmap.
//!   The process posts descriptors, rings the doorbell (ioctl) and sleeps until completions
//!   arrive (ioctl, woken by MSI-X). Closing the file closes the channel on the device.
//! - Pinned memory: a process may pin ranges of its memory (ioctl); the driver page-locks them,
//!   maps each page for DMA and gives the device the list, so that copies from and to pinned
//!   host memory need no copy in the guest. The pins end with an unpin ioctl or the file.
//! - /proc/driver/nvidia/version and /proc/driver/nvidia/gpus/<bdf>/information.
//!
//! The driver is a transport: it never looks at what goes through a channel.

use core::{ffi::c_void, ptr, sync::atomic::{fence, Ordering}};
use kernel::{
    bindings,
    device::{self, Core},
    alloc::VVec,
    dma::{Coherent, CoherentBox, Device as _, DmaMask},
    page::PAGE_SIZE,
    io::Io,
    types::ForeignOwnable,
    irq::{self, IrqReturn},
    mm::virt::VmaNew,
    new_condvar, new_mutex, new_spinlock_irq, pci,
    prelude::*,
    seq_file::{seq_print, SeqFile},
    sync::{aref::ARef, Arc, CondVar, Mutex, SpinLockIrq},
    time::msecs_to_jiffies,
    transmute::{AsBytes, FromBytes},
    uaccess::{UserPtr, UserSlice},
};

// The ABIs are uapi's, included by source (uapi is the one place ABIs are defined).
#[path = "../uapi/src/bar0.rs"]
#[allow(dead_code, unreachable_pub)]
mod bar0;
#[path = "../uapi/src/channel.rs"]
#[allow(dead_code, unreachable_pub)]
mod channel;
#[path = "../uapi/src/version.rs"]
#[allow(dead_code, unreachable_pub)]
mod version;

use channel::{ChannelInfo, PinArgs, VersionInfo, WaitArgs};

// SAFETY: plain `#[repr(C)]` structs of integers without padding (sizes asserted in uapi).
unsafe impl AsBytes for ChannelInfo {}
// SAFETY: as above.
unsafe impl AsBytes for VersionInfo {}
// SAFETY: as above; every bit pattern is a valid `WaitArgs`.
unsafe impl FromBytes for WaitArgs {}
// SAFETY: as above (24 bytes, no padding); every bit pattern is a valid `PinArgs`.
unsafe impl FromBytes for PinArgs {}
// SAFETY: as above.
unsafe impl AsBytes for PinArgs {}

/// The register block below the MSI-X table.
const REGS_END: usize = bar0::REGS_END as usize;
type Bar0 = pci::DevresBar<REGS_END>;
/// Channels one device serves at most (the device may offer fewer).
const MAX_CHANNELS: u32 = 64;
/// Largest range one pin may cover: 512 MiB (its request, 8 bytes a page, is one DMA-coherent
/// allocation: at most 2 MiB of contiguous memory).
const MAX_PIN_BYTES: u64 = 512 << 20;

/// What a device shares with its open files and its interrupt handler. Files may outlive the
/// device's binding: everything that needs the device checks `gone` or the revocable BAR.
#[pin_data]
struct Shared {
    /// GPU number (N of /dev/nvidiaN).
    index: u32,
    protocol_version: u32,
    channels: u32,
    /// BAR0 CAPS.
    caps: u32,
    bar: Bar0,
    dev: ARef<device::Device>,
    /// Serialises channel open/close on the device (CHAN_* registers are one latch set).
    #[pin]
    ctrl: Mutex<Ctrl>,
    /// Completion interrupts count up here; waiters sleep on `wake`. The IRQ handler takes the
    /// lock too, so a completion landing between a waiter's check and its sleep is not lost.
    #[pin]
    irq_count: SpinLockIrq<u64>,
    #[pin]
    wake: CondVar,
}

struct Ctrl {
    /// Set when the device is being unbound: no new channels, waiters get ENODEV.
    gone: bool,
    /// Bit N: channel N is open on the device.
    open: u64,
}

impl Shared {
    /// Programs the CHAN_* registers: returns the device's status (0 or an errno value).
    fn channel_cmd(&self, cmd: u32, index: u32, area: Option<&Coherent<[u8]>>) -> Result<u32> {
        let bar = self.bar.try_access().ok_or(ENODEV)?;
        if let Some(area) = area {
            let addr = area.dma_address() as u64;
            bar.write32(addr as u32, bar0::CHAN_ADDR_LO as usize);
            bar.write32((addr >> 32) as u32, bar0::CHAN_ADDR_HI as usize);
            bar.write32(area.size() as u32, bar0::CHAN_SIZE as usize);
        }
        bar.write32((cmd << 16) | index, bar0::CHAN_CMD as usize);
        // The read completes after the device handled the command.
        Ok(bar.read32(bar0::CHAN_STATUS as usize))
    }

    /// Hands the device the pin request `request` for channel `index` (three register accesses:
    /// each is a trap out of the VM): 0 or the device's errno value.
    fn pin_cmd(&self, index: u32, request: &Coherent<[u64]>) -> Result<u32> {
        let bar = self.bar.try_access().ok_or(ENODEV)?;
        let addr = request.dma_address() as u64;
        bar.write32(addr as u32, bar0::CHAN_ADDR_LO as usize);
        bar.write32((addr >> 32) as u32, bar0::CHAN_ADDR_HI as usize);
        bar.write32((bar0::CMD_PIN << 16) | index, bar0::CHAN_CMD as usize);
        Ok(bar.read32(bar0::CHAN_STATUS as usize))
    }

    /// Makes the device forget region `id` of channel `index`; its pages may be released after.
    fn unpin_cmd(&self, index: u32, id: u32) {
        // Without the BAR the device is unbound, and unbinding closed every channel.
        if let Some(bar) = self.bar.try_access() {
            bar.write32(id, bar0::PIN_ID as usize);
            bar.write32((bar0::CMD_UNPIN << 16) | index, bar0::CHAN_CMD as usize);
            let status = bar.read32(bar0::CHAN_STATUS as usize);
            if status != 0 {
                pr_warn!("vgpu: unpinning region {} of channel {} failed on the device ({})\n", id, index, status);
            }
        }
    }

    fn close_on_device(&self, ctrl: &mut Ctrl, index: u32) {
        if ctrl.open & (1 << index) == 0 {
            return;
        }
        match self.channel_cmd(bar0::CMD_CLOSE, index, None) {
            Ok(0) => {}
            Ok(status) => pr_warn!("vgpu: closing channel {} failed on the device ({})\n", index, status),
            Err(_) => {}
        }
        ctrl.open &= !(1 << index);
    }
}

/// The interrupt handler: completions arrived on some channel; wake every waiter, each checks
/// its own completion ring.
struct IrqHandler {
    shared: Arc<Shared>,
}

impl irq::Handler for IrqHandler {
    fn handle(&self) -> IrqReturn {
        let mut n = self.shared.irq_count.lock();
        *n += 1;
        self.shared.wake.notify_all();
        drop(n);
        IrqReturn::Handled
    }
}

/// An open channel: its pinned regions and its area, owned by the file (dropped in this order,
/// after the device let go of them).
struct Channel {
    index: u32,
    pins: KVec<Pinned>,
    next_pin: u32,
    area: Coherent<[u8]>,
}

/// Pages of a process pinned for the device (VGPU_IOCTL_PIN), each mapped for DMA. Dropping it
/// unmaps and unpins them; that happens only once the device forgot the region (CMD_UNPIN or
/// the channel's close).
struct Pinned {
    id: u32,
    dev: ARef<device::Device>,
    /// `pages[i]` is pinned; the first `dma.len()` of them are mapped at `dma[i]`.
    pages: VVec<*mut bindings::page>,
    dma: VVec<u64>,
    writable: bool,
}

// SAFETY: the page pointers are references the pin holds on pages, usable from any thread.
unsafe impl Send for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        for &addr in self.dma.iter() {
            // SAFETY: `addr` is a mapping of one page made by `dma_map_page_attrs` for `dev`
            // in `OpenFile::pin` and not unmapped since.
            unsafe { bindings::dma_unmap_page_attrs(raw_device(&self.dev), addr, PAGE_SIZE, bindings::dma_data_direction::DMA_BIDIRECTIONAL, 0) };
        }
        // SAFETY: the pages were pinned by `pin_user_pages_fast` and are unpinned once, here;
        // the device may have written to writable ones, hence dirty.
        unsafe { bindings::unpin_user_pages_dirty_lock(self.pages.as_mut_ptr(), self.pages.len() as _, self.writable) };
    }
}

impl Channel {
    /// The device's completion-ring tail, as last published.
    fn cq_tail(&self) -> u32 {
        // SAFETY: `CQ_TAIL + 4 <= STAGING <= area.size()` and the area stays allocated while
        // `self` lives; the device writes it concurrently, hence a volatile read.
        let v = unsafe { ptr::read_volatile(self.area.as_ptr().cast::<u8>().add(channel::CQ_TAIL).cast::<u32>()) };
        // Completions are read after the tail (pairs with the device's release).
        fence(Ordering::Acquire);
        u32::from_le(v)
    }
}

/// Per open file of /dev/nvidiactl or /dev/nvidia<N>.
#[pin_data]
struct OpenFile {
    shared: Arc<Shared>,
    #[pin]
    chan: Mutex<Option<Channel>>,
}

/// NVIDIA's character major; /dev/nvidia<N> is minor N, /dev/nvidiactl minor 255.
const NVIDIA_MAJOR: u32 = 195;
const CTL_MINOR: u32 = 255;
const fn mkdev(major: u32, minor: u32) -> bindings::dev_t {
    (major << bindings::MINORBITS) | minor
}

/// The major number's minors 0..=255, held while the module is loaded (as NVIDIA's driver holds
/// them): a second driver of major 195 (NVIDIA's own) cannot load beside vgpu.
struct ChrdevRegion;

impl ChrdevRegion {
    fn register() -> Result<Self> {
        // SAFETY: a NUL-terminated static name; the region is released in `drop`.
        let ret = unsafe { bindings::register_chrdev_region(mkdev(NVIDIA_MAJOR, 0), 256, c"nvidia".as_ptr().cast()) };
        if ret != 0 {
            pr_err!("vgpu: char major {} is taken (is NVIDIA's driver loaded?)\n", NVIDIA_MAJOR);
        }
        kernel::error::to_result(ret).map(|()| ChrdevRegion)
    }
}

impl Drop for ChrdevRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register`; every cdev in it was deleted with its device.
        unsafe { bindings::unregister_chrdev_region(mkdev(NVIDIA_MAJOR, 0), 256) };
    }
}

/// A C struct of function and string pointers that the kernel only reads, as a `static` (one
/// address: the driver core finds a class by its pointer).
#[repr(transparent)]
struct ReadOnly<T>(T);
// SAFETY: the wrapped structs are never written after initialisation, by us or the kernel (it
// takes them as `const` pointers); their pointers are to `'static` data and functions.
unsafe impl<T> Sync for ReadOnly<T> {}

/// /sys/class/vgpu: devices of this class get their node in devtmpfs.
static CLASS: ReadOnly<bindings::class> = ReadOnly(bindings::class { name: c"vgpu".as_ptr().cast(), ..pin_init::zeroed() });
/// The nodes' type: says their mode and owner to devtmpfs.
static NODE_TYPE: ReadOnly<bindings::device_type> =
    ReadOnly(bindings::device_type { name: c"nvidia".as_ptr().cast(), devnode: Some(node_devnode), ..pin_init::zeroed() });

/// devtmpfs asks each node's mode and owner when it creates it: the module parameters.
unsafe extern "C" fn node_devnode(
    _dev: *const bindings::device,
    mode: *mut bindings::umode_t,
    uid: *mut bindings::kuid_t,
    gid: *mut bindings::kgid_t,
) -> *mut kernel::ffi::c_char {
    // SAFETY: each pointer is NULL (device_get_devnode asks only for the name when it deletes
    // the node) or valid for writing.
    unsafe {
        if !mode.is_null() {
            *mode = (module_parameters::NVreg_DeviceFileMode.value() & 0o777) as bindings::umode_t;
        }
        // The initial namespace's ids are the numbers themselves (devtmpfs lives there).
        if !uid.is_null() {
            *uid = bindings::kuid_t { val: module_parameters::NVreg_DeviceFileUID.value() };
        }
        if !gid.is_null() {
            *gid = bindings::kgid_t { val: module_parameters::NVreg_DeviceFileGID.value() };
        }
    }
    // NULL: the node's name is the device's.
    ptr::null_mut()
}

kernel::sync::global_lock! {
    // SAFETY: initialised in `VgpuModule::init` before the driver is registered.
    unsafe(uninit) static BOUND: Mutex<Option<Arc<Shared>>> = None;
}

/// One allocation holding a node's `struct device` and `struct cdev`: cdev_device_add makes the
/// cdev hold the device, so both live until the last open file of the node is closed. Freed
/// by the device's release callback.
#[repr(C)]
struct NodeAlloc {
    dev: bindings::device,
    cdev: bindings::cdev,
}

unsafe extern "C" fn node_release(dev: *mut bindings::device) {
    // SAFETY: `dev` is the `dev` field of a `NodeAlloc` made by `DeviceNode::new` with
    // `KBox::into_raw`; the driver core calls release once, when the last reference is gone.
    drop(unsafe { KBox::from_raw(kernel::container_of!(dev, NodeAlloc, dev)) });
}

/// A device node (/dev/nvidiaN or /dev/nvidiactl), removed on drop; open files keep what they
/// use alive.
struct DeviceNode(*mut NodeAlloc);

// SAFETY: the pointer is only used to delete the node, which the driver core serialises.
unsafe impl Send for DeviceNode {}
// SAFETY: as above; `&DeviceNode` gives no access to the allocation.
unsafe impl Sync for DeviceNode {}

impl DeviceNode {
    fn new(name: &'static CStr, minor: u32, parent: &device::Device) -> Result<Self> {
        let mut node = KBox::<NodeAlloc>::new_uninit(GFP_KERNEL)?;
        // SAFETY: all zeroes is the initial state device_initialize and cdev_init expect.
        let p = unsafe {
            ptr::write_bytes(node.as_mut_ptr(), 0, 1);
            KBox::into_raw(node.assume_init())
        };
        // SAFETY: `p` is a valid, zeroed NodeAlloc owned from here by the device's refcount
        // (release frees it). The class and type are `'static` constants. On failure after
        // device_initialize, put_device drops the last reference and release frees `p`.
        unsafe {
            let dev = ptr::addr_of_mut!((*p).dev);
            bindings::device_initialize(dev);
            (*dev).devt = mkdev(NVIDIA_MAJOR, minor);
            (*dev).class = &CLASS.0;
            (*dev).type_ = &NODE_TYPE.0;
            (*dev).parent = raw_device(parent);
            (*dev).release = Some(node_release);
            let cdev = ptr::addr_of_mut!((*p).cdev);
            bindings::cdev_init(cdev, &FOPS.0);
            (*cdev).owner = <LocalModule as kernel::ModuleMetadata>::THIS_MODULE.as_ptr();
            let mut ret = bindings::dev_set_name(dev, c"%s".as_ptr().cast(), name.as_char_ptr());
            if ret == 0 {
                ret = bindings::cdev_device_add(cdev, dev);
            }
            if ret != 0 {
                bindings::put_device(dev);
                return Err(Error::from_errno(ret));
            }
        }
        Ok(DeviceNode(p))
    }
}

impl Drop for DeviceNode {
    fn drop(&mut self) {
        // SAFETY: `self.0` was added in `new`; after cdev_device_del no new open reaches it, and
        // our reference goes; open files hold their own until they are closed.
        unsafe {
            bindings::cdev_device_del(ptr::addr_of_mut!((*self.0).cdev), ptr::addr_of_mut!((*self.0).dev));
            bindings::put_device(ptr::addr_of_mut!((*self.0).dev));
        }
    }
}

/// The nodes' file operations. `private_data` of an open file is its `Pin<KBox<OpenFile>>`.
static FOPS: ReadOnly<bindings::file_operations> = ReadOnly(bindings::file_operations {
    owner: <LocalModule as kernel::ModuleMetadata>::THIS_MODULE.as_ptr(),
    open: Some(fop_open),
    release: Some(fop_release),
    unlocked_ioctl: Some(fop_ioctl),
    #[cfg(CONFIG_COMPAT)]
    compat_ioctl: bindings::compat_ptr_ioctl,
    mmap: Some(fop_mmap),
    ..pin_init::zeroed()
});

unsafe extern "C" fn fop_open(inode: *mut bindings::inode, file: *mut bindings::file) -> kernel::ffi::c_int {
    // SAFETY: chrdev_open calls us with a valid inode being opened.
    let minor = unsafe { (*inode).i_rdev } & ((1 << bindings::MINORBITS) - 1);
    // Minor 0 and the control node (255) reach the bound device; a node whose device was
    // unbound while this open was under way finds none.
    let Some(shared) = BOUND.lock().as_ref().filter(|_| minor == 0 || minor == CTL_MINOR).cloned() else {
        return ENODEV.to_errno();
    };
    match KBox::try_pin_init(try_pin_init!(OpenFile { shared, chan <- new_mutex!(None) }), GFP_KERNEL) {
        Ok(me) => {
            // SAFETY: open may set the file's private data; `fop_release` takes it back.
            unsafe { (*file).private_data = me.into_foreign() };
            0
        }
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn fop_release(_inode: *mut bindings::inode, file: *mut bindings::file) -> kernel::ffi::c_int {
    // SAFETY: set by `fop_open` with `into_foreign`; release is the last operation on the file.
    let me = unsafe { <Pin<KBox<OpenFile>> as ForeignOwnable>::from_foreign((*file).private_data) };
    me.close_channel();
    0
}

unsafe extern "C" fn fop_ioctl(file: *mut bindings::file, cmd: kernel::ffi::c_uint, arg: kernel::ffi::c_ulong) -> kernel::ffi::c_long {
    // SAFETY: set by `fop_open`; ioctls run between open and release.
    let me = unsafe { <Pin<KBox<OpenFile>> as ForeignOwnable>::borrow((*file).private_data) };
    match me.ioctl(cmd, arg as usize) {
        Ok(()) => 0,
        Err(e) => e.to_errno() as kernel::ffi::c_long,
    }
}

unsafe extern "C" fn fop_mmap(file: *mut bindings::file, vma: *mut bindings::vm_area_struct) -> kernel::ffi::c_int {
    // SAFETY: set by `fop_open`; mmap runs between open and release.
    let me = unsafe { <Pin<KBox<OpenFile>> as ForeignOwnable>::borrow((*file).private_data) };
    // SAFETY: the caller gives the VMA being set up by this mmap call.
    let vma = unsafe { VmaNew::from_raw(vma) };
    match me.mmap(vma) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

impl OpenFile {
    fn ioctl(&self, cmd: u32, arg: usize) -> Result {
        let me = self;
        let user = UserSlice::new(UserPtr::from_addr(arg), kernel::ioctl::_IOC_SIZE(cmd));
        match cmd {
            channel::VGPU_IOCTL_VERSION => {
                let info = VersionInfo {
                    abi_version: channel::DRIVER_ABI_VERSION,
                    protocol_version: me.shared.protocol_version,
                    gpu_index: me.shared.index,
                    reserved: 0,
                };
                user.writer().write(&info)?;
            }
            channel::VGPU_IOCTL_CHANNEL_OPEN => {
                let info = me.open_channel()?;
                if let Err(e) = user.writer().write(&info) {
                    // The caller never learned of the channel: it is not open.
                    me.close_channel();
                    return Err(e);
                }
            }
            channel::VGPU_IOCTL_DOORBELL => {
                let chan = me.chan.lock();
                let ch = chan.as_ref().ok_or(EINVAL)?;
                let bar = me.shared.bar.try_access().ok_or(ENODEV)?;
                // Descriptors and the tail are in the area before the device is told.
                fence(Ordering::Release);
                bar.write32(ch.index, bar0::DOORBELL as usize);
            }
            channel::VGPU_IOCTL_WAIT => {
                let args: WaitArgs = user.reader().read()?;
                me.wait(args)?;
            }
            channel::VGPU_IOCTL_PIN => {
                let (mut reader, mut writer) = user.reader_writer();
                let mut args: PinArgs = reader.read()?;
                args.id = me.pin(&args)?;
                writer.write(&args)?;
            }
            channel::VGPU_IOCTL_UNPIN => {
                let id: u32 = user.reader().read()?;
                me.unpin(id)?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(())
    }

    fn mmap(&self, vma: &VmaNew) -> Result {
        let me = self;
        let chan = me.chan.lock();
        let ch = chan.as_ref().ok_or(EINVAL)?;
        let len = vma.end() - vma.start();
        // SAFETY: `vma.as_ptr()` is the VMA being set up for this mmap call.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        if pgoff != 0 || len > ch.area.size() {
            return Err(EINVAL);
        }
        // A forked child must not share its parent's channel (CUDA state does not survive fork).
        vma.set_dontcopy();
        vma.set_dontexpand();
        // SAFETY: `vma` is being set up by this mmap call; the area is a live coherent
        // allocation of `me.shared.dev` of at least `len` bytes (checked above) and stays
        // allocated until the file is released, which cannot happen while the VMA maps it.
        let ret = unsafe {
            bindings::dma_mmap_attrs(
                raw_device(&me.shared.dev),
                vma.as_ptr(),
                ch.area.as_mut_ptr().cast::<c_void>(),
                ch.area.dma_address(),
                len,
                0,
            )
        };
        kernel::error::to_result(ret)
    }
}

impl OpenFile {
    fn open_channel(&self) -> Result<ChannelInfo> {
        let mut chan = self.chan.lock();
        if chan.is_some() {
            return Err(EBUSY);
        }
        let shared = &self.shared;
        let mut ctrl = shared.ctrl.lock();
        if ctrl.gone {
            return Err(ENODEV);
        }
        let index = (0..shared.channels).find(|i| ctrl.open & (1 << i) == 0).ok_or(ENOSPC)?;
        // SAFETY: `ctrl.gone` is false and we hold `ctrl`: unbinding sets `gone` under this
        // lock before the device is unbound, so the device is bound while this reference lives.
        let bound = unsafe { shared.dev.as_bound() };
        let area = Coherent::<u8>::zeroed_slice(bound, channel::AREA_SIZE, GFP_KERNEL)?;
        match shared.channel_cmd(bar0::CMD_OPEN, index, Some(&area))? {
            0 => {}
            errno => {
                pr_warn!("vgpu: the device refused channel {} (errno {})\n", index, errno);
                return Err(if (1..4096).contains(&errno) { Error::from_errno(-(errno as i32)) } else { EIO });
            }
        }
        ctrl.open |= 1 << index;
        let info = ChannelInfo {
            area_size: area.size() as u64,
            staging_offset: channel::STAGING as u64,
            staging_size: (area.size() - channel::STAGING) as u64,
            sq_entries: channel::SQ_ENTRIES,
            cq_entries: channel::CQ_ENTRIES,
            channel: index,
            reserved: 0,
        };
        *chan = Some(Channel { index, pins: KVec::new(), next_pin: 1, area });
        Ok(info)
    }

    /// Closes this file's channel, if open: on the device first, then its pins and area go.
    fn close_channel(&self) {
        if let Some(ch) = self.chan.lock().take() {
            let mut ctrl = self.shared.ctrl.lock();
            // The device must stop touching the area and pinned pages before they are
            // released (when `ch` drops).
            self.shared.close_on_device(&mut ctrl, ch.index);
        }
    }

    /// Pins `args.addr..+args.len` of the calling process and registers it with the device:
    /// the region's id.
    fn pin(&self, args: &PinArgs) -> Result<u32> {
        let shared = &self.shared;
        if shared.caps & bar0::CAP_PINNED == 0 {
            return Err(EOPNOTSUPP);
        }
        if args.flags & !(channel::PIN_READ_ONLY | channel::PIN_TRANSIENT) != 0 || args.len == 0 {
            return Err(EINVAL);
        }
        if args.len > MAX_PIN_BYTES {
            return Err(E2BIG);
        }
        if self.chan.lock().is_none() {
            return Err(EINVAL);
        }
        let page = PAGE_SIZE as u64;
        let end = args.addr.checked_add(args.len).ok_or(EINVAL)?;
        let first = args.addr & !(page - 1);
        let count = usize::try_from((end - first).div_ceil(page)).map_err(|_| EINVAL)?;
        let writable = args.flags & channel::PIN_READ_ONLY == 0;
        // The pages are pinned and mapped before the channel's lock is taken: pinning takes the
        // process's mmap_lock, which mmap of this file holds when it takes the channel's lock.
        let mut p = Pinned {
            id: 0,
            dev: shared.dev.clone(),
            pages: VVec::with_capacity(count, GFP_KERNEL)?,
            dma: VVec::with_capacity(count, GFP_KERNEL)?,
            writable,
        };
        // Long-term pins may not hold pages that would block migration or writeback (the
        // kernel refuses file-backed ones); a pin for one copy may.
        let longterm = if args.flags & channel::PIN_TRANSIENT == 0 { bindings::FOLL_LONGTERM } else { 0 };
        let gup = longterm | if writable { bindings::FOLL_WRITE } else { 0 };
        while p.pages.len() < count {
            let done = p.pages.len();
            let want = (count - done).min(i32::MAX as usize) as i32;
            let spare = p.pages.spare_capacity_mut();
            // SAFETY: `spare` has room for the `count - done >= want` pointers still to come; the
            // kernel writes at most `want` of them from its start and returns how many (it
            // checks the range is the caller's).
            let got = unsafe { bindings::pin_user_pages_fast((first + (done as u64) * page) as usize, want, gup, spare.as_mut_ptr().cast()) };
            if got <= 0 {
                // `p` unpins what was pinned so far.
                return Err(if got < 0 { Error::from_errno(got) } else { EFAULT });
            }
            // SAFETY: the kernel initialised the next `got` entries (got <= want <= spare).
            unsafe { p.pages.inc_len(got as usize) };
        }
        for &pg in p.pages.iter() {
            // SAFETY: `pg` is a page pinned above; the mapping is undone in `Pinned::drop`.
            let addr = unsafe { bindings::dma_map_page_attrs(raw_device(&shared.dev), pg, 0, PAGE_SIZE, bindings::dma_data_direction::DMA_BIDIRECTIONAL, 0) };
            // DMA_MAPPING_ERROR (what dma_mapping_error() tests for; that helper is inline C).
            if addr == u64::MAX {
                return Err(ENOMEM);
            }
            p.dma.push(addr, GFP_KERNEL)?;
        }
        let mut chan = self.chan.lock();
        let ch = Option::as_mut(&mut *chan).ok_or(EINVAL)?;
        if ch.pins.len() >= bar0::MAX_PINS as usize {
            return Err(ENOSPC);
        }
        let mut id = ch.next_pin;
        while ch.pins.iter().any(|p| p.id == id) {
            id = id.wrapping_add(1);
        }
        ch.next_pin = id.wrapping_add(1);
        p.id = id;
        let ctrl = shared.ctrl.lock();
        if ctrl.gone {
            return Err(ENODEV);
        }
        // SAFETY: `ctrl.gone` is false and we hold `ctrl`, as in `open_channel`.
        let bound = unsafe { shared.dev.as_bound() };
        // The request: its head, then the pages' bus addresses (bar0 CMD_PIN).
        let flags = if writable { 0 } else { bar0::PIN_READ_ONLY };
        let head = bar0::pin_request(id, flags, (args.addr - first) as u32, count as u32, args.len);
        let mut request = CoherentBox::<[u64]>::zeroed_slice(bound, head.len() + count, GFP_KERNEL)?;
        for (word, v) in request.iter_mut().zip(Iterator::chain(head.iter(), p.dma.iter())) {
            *word = v.to_le();
        }
        let request: Coherent<[u64]> = request.into();
        match shared.pin_cmd(ch.index, &request)? {
            0 => {}
            errno => {
                pr_warn!("vgpu: the device refused to pin {} pages (errno {})\n", count, errno);
                return Err(if (1..4096).contains(&errno) { Error::from_errno(-(errno as i32)) } else { EIO });
            }
        }
        drop(ctrl);
        ch.pins.push(p, GFP_KERNEL)?;
        Ok(id)
    }

    fn unpin(&self, id: u32) -> Result {
        let mut chan = self.chan.lock();
        let ch = Option::as_mut(&mut *chan).ok_or(EINVAL)?;
        let i = ch.pins.iter().position(|p| p.id == id).ok_or(ENOENT)?;
        {
            let _ctrl = self.shared.ctrl.lock();
            self.shared.unpin_cmd(ch.index, id);
        }
        // The device let go: unmap and unpin.
        drop(ch.pins.remove(i));
        Ok(())
    }

    /// Sleeps until the completion tail moves past `args.seen`.
    fn wait(&self, args: WaitArgs) -> Result {
        let chan = self.chan.lock();
        let ch = chan.as_ref().ok_or(EINVAL)?;
        let shared = &self.shared;
        let mut left = msecs_to_jiffies(args.timeout_ms);
        let mut guard = shared.irq_count.lock();
        loop {
            if ch.cq_tail() != args.seen {
                return Ok(());
            }
            if shared.bar.try_access().is_none() {
                return Err(ENODEV);
            }
            if left == 0 {
                return Err(ETIMEDOUT);
            }
            // At most 100 ms per sleep: a device that is unbound wakes nobody.
            let slice = left.min(msecs_to_jiffies(100));
            match shared.wake.wait_interruptible_timeout(&mut guard, slice) {
                kernel::sync::CondVarTimeoutResult::Signal { .. } => return Err(ERESTARTSYS),
                kernel::sync::CondVarTimeoutResult::Timeout => left -= slice,
                kernel::sync::CondVarTimeoutResult::Woken { jiffies } => left -= slice - jiffies,
            }
        }
    }
}

/// `struct device *` of a device, for C DMA calls the Rust API does not wrap (dma_mmap_attrs).
fn raw_device(dev: &device::Device) -> *mut bindings::device {
    // `device::Device` is a `#[repr(transparent)]` wrapper of `struct device`.
    ptr::from_ref(dev).cast_mut().cast()
}

// procfs is not wrapped by the Rust API; these are the exported C functions.
#[repr(C)]
struct ProcDirEntry {
    _opaque: [u8; 0],
}
type ShowFn = unsafe extern "C" fn(*mut bindings::seq_file, *mut c_void) -> i32;
extern "C" {
    fn proc_mkdir(name: *const u8, parent: *mut ProcDirEntry) -> *mut ProcDirEntry;
    fn proc_create_single_data(
        name: *const u8,
        mode: bindings::umode_t,
        parent: *mut ProcDirEntry,
        show: Option<ShowFn>,
        data: *mut c_void,
    ) -> *mut ProcDirEntry;
    fn remove_proc_subtree(name: *const u8, parent: *mut ProcDirEntry) -> i32;
}

/// /proc/driver/nvidia/{version, gpus/<bdf>/information}, removed on drop.
struct ProcEntries {
    created: bool,
}

/// Data behind .../information: the device's bus id and minor, and the GPU it stands for
/// (BAR0 GPU_NAME/GPU_UUID, as the mediator reported it; zeros if it did not).
struct GpuInfo {
    bdf: [u8; 16],
    minor: u32,
    irq: u32,
    name: [u8; bar0::GPU_NAME_LEN],
    uuid: [u8; bar0::GPU_UUID_LEN],
}

/// N bytes of BAR0 from `off`, read 32 bits at a time (offsets checked at run time).
fn read_bar_bytes<const N: usize>(bar: &pci::Bar<'_, REGS_END>, off: u64) -> [u8; N] {
    let mut out = [0u8; N];
    for (k, chunk) in out.chunks_mut(4).enumerate() {
        let v = bar.try_read32(off as usize + 4 * k).unwrap_or(0).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

unsafe extern "C" fn show_version(m: *mut bindings::seq_file, _v: *mut c_void) -> i32 {
    // SAFETY: procfs calls `show` with a valid seq_file for the duration of the call.
    let m = unsafe { SeqFile::from_raw(m) };
    seq_print!(
        m,
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  (vgpu guest driver, Rust)\nGCC version:  not built with GCC (rustc + clang)\n",
        version::NVIDIA_DRIVER_VERSION
    );
    0
}

unsafe extern "C" fn show_information(m: *mut bindings::seq_file, _v: *mut c_void) -> i32 {
    // SAFETY: procfs calls `show` with a valid seq_file; its `private` is the `GpuInfo` given
    // at creation, which lives in the device data until the entry is removed.
    let (m, info) = unsafe { (SeqFile::from_raw(m), &*((*m).private as *const GpuInfo)) };
    let bdf = core::str::from_utf8(&info.bdf).unwrap_or("?").trim_end_matches('\0');
    let end = info.name.iter().position(|&c| c == 0).unwrap_or(info.name.len());
    let name = match core::str::from_utf8(&info.name[..end]) {
        Ok(n) if !n.is_empty() => n,
        _ => "NVIDIA H100 (vgpu; the mediator did not say which GPU)",
    };
    seq_print!(m, "Model: \t\t {}\nIRQ:   \t\t {}\nGPU UUID: \t ", name, info.irq);
    if info.uuid.iter().all(|&b| b == 0) {
        seq_print!(m, "N/A\n");
    } else {
        let u = &info.uuid;
        seq_print!(
            m,
            "GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}\n",
            u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]
        );
    }
    seq_print!(
        m,
        "Video BIOS: \t ??.??.??.??.??\nBus Type: \t PCIe\nDMA Size: \t 64 bits\nDMA Mask: \t 0xffffffffffffffff\nBus Location: \t {}\nDevice Minor: \t {}\nGPU Excluded:\t No\n",
        bdf,
        info.minor
    );
    0
}

impl ProcEntries {
    fn create(info: &GpuInfo) -> ProcEntries {
        let bdf = core::str::from_utf8(&info.bdf).unwrap_or("").trim_end_matches('\0');
        let mut path = [0u8; 64];
        let prefix = b"driver/nvidia/gpus/";
        if prefix.len() + bdf.len() >= path.len() {
            return ProcEntries { created: false };
        }
        path[..prefix.len()].copy_from_slice(prefix);
        path[prefix.len()..prefix.len() + bdf.len()].copy_from_slice(bdf.as_bytes());
        // SAFETY: NUL-terminated names; NULL parent means /proc; `info` outlives the entries
        // (both live in the device data, entries removed first in `Drop`).
        let ok = unsafe {
            let nv = proc_mkdir(c"driver/nvidia".as_ptr().cast(), ptr::null_mut());
            !nv.is_null()
                && !proc_create_single_data(c"version".as_ptr().cast(), 0o444, nv, Some(show_version), ptr::null_mut())
                    .is_null()
                && !proc_mkdir(c"driver/nvidia/gpus".as_ptr().cast(), ptr::null_mut()).is_null()
                && {
                    let gpu = proc_mkdir(path.as_ptr(), ptr::null_mut());
                    !gpu.is_null()
                        && !proc_create_single_data(
                            c"information".as_ptr().cast(),
                            0o444,
                            gpu,
                            Some(show_information),
                            ptr::from_ref(info).cast_mut().cast(),
                        )
                        .is_null()
                }
        };
        if !ok {
            pr_warn!("vgpu: could not create /proc/driver/nvidia entries\n");
        }
        ProcEntries { created: true }
    }
}

impl Drop for ProcEntries {
    fn drop(&mut self) {
        if self.created {
            // SAFETY: removes what `create` made (missing parts are ignored by procfs).
            unsafe { remove_proc_subtree(c"driver/nvidia".as_ptr().cast(), ptr::null_mut()) };
        }
    }
}

#[pin_data(PinnedDrop)]
struct VgpuDevice<'bound> {
    pdev: &'bound pci::Device,
    shared: Arc<Shared>,
    // Field order is drop order: the nodes' way to the device, the nodes (no new opens), proc
    // entries, IRQ, vectors.
    bound: BoundDevice,
    ctl: DeviceNode,
    gpu: DeviceNode,
    proc: ProcEntries,
    info: KBox<GpuInfo>,
    #[pin]
    irq: irq::Registration<'bound, IrqHandler>,
    vectors: pci::IrqVectorRegistration<'bound>,
}

struct VgpuDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    <VgpuDriver as pci::Driver>::IdInfo,
    [(pci::DeviceId::from_id(pci::Vendor::NVIDIA, 0x2331), ())]
);

/// "0000:00:05.0" of a PCI device, NUL-padded.
fn bus_id(pdev: &pci::Device) -> [u8; 16] {
    let mut out = [0u8; 16];
    // SAFETY: a bound device's kobject name is a valid NUL-terminated string.
    let name = unsafe { CStr::from_char_ptr((*raw_device(pdev.as_ref())).kobj.name) };
    let b = name.to_bytes();
    let n = b.len().min(15);
    out[..n].copy_from_slice(&b[..n]);
    out
}

impl pci::Driver for VgpuDriver {
    type IdInfo = ();
    type Data<'bound> = VgpuDevice<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pin_init::pin_init_scope(move || {
            pdev.enable_device_mem()?;
            pdev.set_master();
            // SAFETY: no DMA allocations or mappings exist for this device yet.
            unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>())? };
            let bar = pdev.iomap_region_sized::<REGS_END>(0, c"vgpu")?;
            let magic = bar.read32(bar0::MAGIC as usize);
            if magic != bar0::MAGIC_VALUE {
                dev_err!(pdev, "not a VGPU-STUB device (magic {:#x})\n", magic);
                return Err(ENODEV);
            }
            let protocol_version = bar.read32(bar0::VERSION as usize);
            // Self-test: the scratch register must read back what was written.
            bar.write32(0x5a5a_1234, bar0::SCRATCH as usize);
            if bar.read32(bar0::SCRATCH as usize) != 0x5a5a_1234 {
                dev_err!(pdev, "BAR0 scratch register does not read back\n");
                return Err(EIO);
            }
            if bar.read32(bar0::CAPS as usize) & bar0::CAP_CHANNELS == 0 {
                dev_err!(pdev, "the device serves no channels (old vgpu-stub?)\n");
                return Err(ENODEV);
            }
            let channels = bar.read32(bar0::CHANNELS as usize).min(MAX_CHANNELS);
            let caps = bar.read32(bar0::CAPS as usize);
            let gpu_name = read_bar_bytes::<{ bar0::GPU_NAME_LEN }>(&bar, bar0::GPU_NAME);
            let gpu_uuid = read_bar_bytes::<{ bar0::GPU_UUID_LEN }>(&bar, bar0::GPU_UUID);
            let dev: ARef<device::Device> = pdev.as_ref().into();
            let shared = Arc::pin_init(
                try_pin_init!(Shared {
                    index: 0,
                    protocol_version,
                    channels,
                    caps,
                    bar: bar.into_devres()?,
                    dev,
                    ctrl <- new_mutex!(Ctrl { gone: false, open: 0 }),
                    irq_count <- new_spinlock_irq!(0),
                    wake <- new_condvar!(),
                }),
                GFP_KERNEL,
            )?;
            let msix = pci::IrqTypes::default().with(pci::IrqType::MsiX).with(pci::IrqType::Msi);
            dev_info!(pdev, "VGPU-STUB bound: device protocol version {}, {} channels, /dev/nvidia0\n", protocol_version, channels);
            let handler = IrqHandler { shared: shared.clone() };
            let vectors = pdev.alloc_irq_vectors(1, 1, msix)?;
            Ok(try_pin_init!(VgpuDevice {
                pdev,
                vectors,
                // SAFETY (both `from_ref`s): `vectors` is initialized before these expressions
                // (fields are initialized in the order written here), lives at a pinned stable
                // address, and is dropped after `irq` and `info` (struct field drop order).
                irq <- unsafe {
                    irq::Registration::new(
                        (&*ptr::from_ref(vectors)).index(0)?.into(),
                        irq::Flags::SHARED,
                        c"vgpu",
                        Ok::<_, Error>(handler),
                    )
                },
                info: KBox::new(
                    GpuInfo {
                        bdf: bus_id(pdev),
                        minor: 0,
                        irq: irq::IrqRequest::from(unsafe { &*ptr::from_ref(vectors) }.index(0)?).irq(),
                        name: gpu_name,
                        uuid: gpu_uuid,
                    },
                    GFP_KERNEL,
                )?,
                proc: ProcEntries::create(info),
                bound: BoundDevice::set(shared.clone())?,
                ctl: DeviceNode::new(c"nvidiactl", CTL_MINOR, pdev.as_ref())?,
                gpu: DeviceNode::new(c"nvidia0", 0, pdev.as_ref())?,
                shared,
            }? Error))
        })
    }
}

#[pinned_drop]
impl PinnedDrop for VgpuDevice<'_> {
    fn drop(self: Pin<&mut Self>) {
        let shared = &self.shared;
        let mut ctrl = shared.ctrl.lock();
        ctrl.gone = true;
        // Stop the device using every channel area before the files free them.
        for i in 0..shared.channels {
            shared.close_on_device(&mut ctrl, i);
        }
        drop(ctrl);
        let n = shared.irq_count.lock();
        shared.wake.notify_all();
        drop(n);
        dev_info!(self.pdev, "VGPU-STUB unbound\n");
    }
}

/// The module: major 195 and the class for as long as it is loaded, and the PCI driver.
#[pin_data]
struct VgpuModule {
    // Field order is drop order: the driver (and with it every device node) goes first.
    #[pin]
    driver: kernel::driver::Registration<pci::Adapter<VgpuDriver>>,
    class: ClassRegistration,
    region: ChrdevRegion,
}

impl kernel::InPlaceModule for VgpuModule {
    fn init(module: &'static kernel::ThisModule) -> impl PinInit<Self, Error> {
        // SAFETY: called once, before anything can use `BOUND` (the driver is registered below).
        unsafe { BOUND.init() };
        // Fields are initialised in the order written: the numbers and the class exist before
        // the driver can probe a device.
        try_pin_init!(Self {
            region: ChrdevRegion::register()?,
            class: ClassRegistration::register()?,
            driver <- kernel::driver::Registration::new(<Self as kernel::ModuleMetadata>::NAME, module),
        })
    }
}

/// The device the nodes reach, in `BOUND` while this lives. vgpu drives one device per VM (its
/// nodes are /dev/nvidia0 and /dev/nvidiactl).
struct BoundDevice;

impl BoundDevice {
    fn set(shared: Arc<Shared>) -> Result<Self> {
        let mut bound = BOUND.lock();
        if bound.is_some() {
            pr_err!("vgpu: a second VGPU-STUB device is not supported (one per VM)\n");
            return Err(EBUSY);
        }
        *bound = Some(shared);
        Ok(BoundDevice)
    }
}

impl Drop for BoundDevice {
    fn drop(&mut self) {
        *BOUND.lock() = None;
    }
}

/// /sys/class/vgpu, registered while the module is loaded.
struct ClassRegistration;

impl ClassRegistration {
    fn register() -> Result<Self> {
        // SAFETY: `CLASS` is a `static` the kernel only reads; unregistered in `drop`.
        kernel::error::to_result(unsafe { bindings::class_register(&CLASS.0) }).map(|()| ClassRegistration)
    }
}

impl Drop for ClassRegistration {
    fn drop(&mut self) {
        // SAFETY: registered in `register`; the driver, and with it every device of the class,
        // is gone (field order of `VgpuModule`).
        unsafe { bindings::class_unregister(&CLASS.0) };
    }
}

module! {
    type: VgpuModule,
    name: "vgpu",
    authors: ["vgpu developers"],
    description: "vgpu guest driver for the VGPU-STUB PCI device",
    license: "GPL v2",
    params: {
        // NVIDIA's parameter names and defaults: the device nodes' mode, owner and group.
        NVreg_DeviceFileMode: u32 {
            default: 0o666,
            description: "Mode of /dev/nvidia* (default 0666: every user may use the GPU)",
        },
        NVreg_DeviceFileUID: u32 {
            default: 0,
            description: "Owner of /dev/nvidia* (default 0)",
        },
        NVreg_DeviceFileGID: u32 {
            default: 0,
            description: "Group of /dev/nvidia* (default 0)",
        },
    },
}
