//! The command protocol between libcuda (guest side) and the mediator (host side).
//!
//! Every message is a [`MsgHeader`] followed by `payload_len` bytes. A request carries an
//! [`Op`]; the reply to it carries the same `seq`, `op`, and a CUresult in `status`. Payload
//! layouts are listed on each opcode (fields little-endian, in order, no padding; `bytes..`
//! means "the rest of the payload").

/// "VGPU" in little-endian.
pub const MSG_MAGIC: u32 = 0x5550_4756;

/// Largest payload either side accepts; bulk copies are split into chunks of [`COPY_CHUNK`].
pub const MAX_PAYLOAD: u32 = 64 << 20;
pub const COPY_CHUNK: usize = 8 << 20;

/// Longest symbol name accepted (kernel or global names; mangled C++ names can be long).
pub const MAX_NAME_LEN: usize = 4096;

/// Fixed-size header of every message (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgHeader {
    pub magic: u32,
    pub op: u32,
    pub seq: u32,
    /// CUresult in replies; 0 in requests.
    pub status: u32,
    pub payload_len: u32,
    pub reserved: u32,
}

pub const HEADER_LEN: usize = core::mem::size_of::<MsgHeader>();
const _: () = assert!(HEADER_LEN == 24);

impl MsgHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        for (i, v) in [self.magic, self.op, self.seq, self.status, self.payload_len, self.reserved]
            .iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let f = |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        MsgHeader { magic: f(0), op: f(1), seq: f(2), status: f(3), payload_len: f(4), reserved: f(5) }
    }

    /// Checks what can be checked before reading the payload.
    pub fn validate(&self) -> Result<(), HeaderError> {
        if self.magic != MSG_MAGIC {
            return Err(HeaderError::BadMagic(self.magic));
        }
        if self.payload_len > MAX_PAYLOAD {
            return Err(HeaderError::TooLong(self.payload_len));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    BadMagic(u32),
    TooLong(u32),
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeaderError::BadMagic(m) => write!(f, "bad message magic {m:#010x}"),
            HeaderError::TooLong(n) => write!(f, "payload of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit"),
        }
    }
}

macro_rules! opcodes {
    ($($(#[$doc:meta])* $name:ident = $val:expr,)*) => {
        /// Request opcodes.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op { $($(#[$doc])* $name = $val,)* }
        impl Op {
            pub fn from_u32(v: u32) -> Option<Op> {
                match v { $($val => Some(Op::$name),)* _ => None }
            }
        }
    };
}

opcodes! {
    /// req: version u32, pid u32, flags u32 ([`HELLO_OBSERVER`]) -> reply: version u32,
    /// device_count u32, flags u32 ([`HELLO_OUTPUT_AFTER_SYNC`], [`HELLO_GUEST_PINNED`], [`HELLO_PTX_ONLY`]; older mediators send no flags)
    Hello = 1,
    /// req: ordinal u32 -> reply: [`DeviceInfo`] (see its encoding)
    DeviceInfo = 2,
    /// req: ordinal u32 -> reply: total u64, used u64 (by all clients of this VM)
    DeviceMemoryInfo = 3,
    /// req: ordinal u32 -> reply: count u32, then per process: pid u32, used_bytes u64
    DeviceProcesses = 4,
    /// req: -> reply: free u64, total u64
    MemGetInfo = 10,
    /// req: bytes u64 -> reply: dptr u64
    MemAlloc = 11,
    /// req: dptr u64 -> reply:
    MemFree = 12,
    /// req: dst u64, data bytes.. -> reply:
    MemcpyHtoD = 13,
    /// req: src u64, len u64 -> reply: data bytes..
    MemcpyDtoH = 14,
    /// req: dst u64, src u64, len u64 -> reply:
    MemcpyDtoD = 15,
    /// req: dst u64, value u32, elem_size u32 (1, 2, 4), count u64 -> reply:
    Memset = 16,
    /// req: dptr u64 -> reply: base u64, size u64, then the allocation's buffer id u64 where
    /// the backend has one (CU_POINTER_ATTRIBUTE_BUFFER_ID)
    MemGetAddressRange = 17,
    /// req: image bytes.. (fatbin, PTX text or cubin) -> reply: module u64. An empty payload
    /// loads the image staged with [`Op::ModuleImagePart`] (see [`module_load`]).
    ModuleLoad = 20,
    /// req: module u64 -> reply:
    ModuleUnload = 21,
    /// req: module u64, name bytes.. -> reply: [`FunctionInfo`] encoding
    ModuleGetFunction = 22,
    /// req: module u64, name bytes.. -> reply: dptr u64, size u64
    ModuleGetGlobal = 23,
    /// req: module u64 -> reply: count u32, then per function: name_len u32, name bytes
    ModuleEnumerateFunctions = 24,
    /// req: offset u64, bytes.. -> reply:  (a part of a module image larger than a request may
    /// be, staged on the connection in order from offset 0, up to image::MAX_IMAGE_LEN; the next
    /// ModuleLoad with an empty payload loads it)
    ModuleImagePart = 25,
    /// req: function u64, grid x,y,z u32, block x,y,z u32, shared u32, stream u64, params bytes..
    /// -> reply: the kernel's device printf output bytes.. (at most 1 MiB; libcuda writes them
    /// to the process's stdout)
    Launch = 30,
    /// req and reply as Launch: a cooperative launch (cuLaunchCooperativeKernel), whose blocks
    /// are all resident at once so that they may synchronize the whole grid
    LaunchCooperative = 31,
    /// req: flags u32, priority i32 -> reply: stream u64
    StreamCreate = 40,
    /// req: stream u64 -> reply:
    StreamDestroy = 41,
    /// req: stream u64 -> reply:  (waits for all work on the stream)
    StreamSynchronize = 42,
    /// req: stream u64 -> reply:  (CUDA_ERROR_NOT_READY while work is pending)
    StreamQuery = 43,
    /// req: stream u64, event u64 -> reply:
    StreamWaitEvent = 44,
    /// req: flags u32 -> reply: event u64
    EventCreate = 50,
    /// req: event u64 -> reply:
    EventDestroy = 51,
    /// req: event u64, stream u64 -> reply:
    EventRecord = 52,
    /// req: event u64 -> reply:
    EventSynchronize = 53,
    /// req: event u64 -> reply:
    EventQuery = 54,
    /// req: start u64, end u64 -> reply: milliseconds f32 (as u32 bits)
    EventElapsedTime = 55,
    /// req: -> reply:  (waits for all work of this client)
    Synchronize = 60,
    /// Virtual memory management (cuMemCreate & co.). req: size u64 -> reply: handle u64
    MemCreate = 70,
    /// req: handle u64 -> reply:  (freed once no longer mapped)
    MemRelease = 71,
    /// req: size u64, alignment u64, hint u64 -> reply: va u64
    MemAddressReserve = 72,
    /// req: va u64, size u64 -> reply:
    MemAddressFree = 73,
    /// req: va u64, size u64, offset u64, handle u64 -> reply:
    MemMap = 74,
    /// req: va u64, size u64 -> reply:
    MemUnmap = 75,
    /// req: va u64, size u64 -> reply:  (the range must be mapped)
    MemSetAccess = 76,
    /// Pinned host memory shared with the mediator (socket transport only): req: size u64
    /// [, file offset u64, page-aligned; 0 if absent], with a memfd attached (SCM_RIGHTS),
    /// sealed against shrinking, holding those bytes -> reply: handle u64. (The mediator shares
    /// a piece of a VM's RAM with a cuda worker the same way, from its offset in the file.)
    HostRegister = 80,
    /// req: handle u64 -> reply:
    HostUnregister = 81,
    /// req: dst u64, handle u64, offset u64, len u64 -> reply:  (copy from registered memory)
    MemcpyHtoDHost = 82,
    /// req: src u64, handle u64, offset u64, len u64 -> reply:  (copy into registered memory)
    /// On a guest channel ([`HELLO_GUEST_PINNED`]) `handle` is a region the guest driver pinned
    /// on that channel (its id), and the mediator copies straight between the VM's pages and
    /// the device: the bytes never pass through the device process or the socket.
    MemcpyDtoHHost = 83,
    /// Zero-copy guest data path (see the zero-copy notes in `host/src/guest.rs`); sent by the device process (vgpu-stub)
    /// on its own control connection, never by a guest. req: gpa u64, size u64, file offset u64,
    /// with the memfd holding that piece of the VM's RAM attached (SCM_RIGHTS), sealed against
    /// shrinking -> reply: token [u8; 16] (the same for every piece sent on this connection),
    /// which the device process presents on its channels' connections ([`Op::GuestChannel`])
    GuestMemory = 84,
    /// req: gpa u64, size u64 -> reply:  (the pieces lying inside are forgotten; once answered
    /// the mediator touches none of their pages)
    GuestMemoryUnmap = 85,
    /// The first request of a channel's connection, sent by the device process before any byte
    /// of the guest's: req: token [u8; 16], channel u32 -> reply:  (the connection's Hello then
    /// answers [`HELLO_GUEST_PINNED`])
    GuestChannel = 86,
    /// Control connection: req: channel u32, id u32, flags u32 ([`crate::bar0::PIN_READ_ONLY`]),
    /// offset u32 (in the first page), len u64, pages u32, then that many page addresses u64 ->
    /// reply:  (what the device process checked of a CMD_PIN, checked again)
    GuestPin = 87,
    /// Control connection: req: channel u32, id u32 ([`GUEST_UNPIN_ALL`]: every region of the
    /// channel) -> reply:  (once answered the mediator touches none of the region's pages)
    GuestUnpin = 88,
    /// Sent by a device process on one of its channels' connections (after GuestChannel, if
    /// any; nothing else pending): req: ring size u32 (each way, see [`crate::shm_ring`]), with
    /// three descriptors attached (SCM_RIGHTS): the rings' memfd (sealed against shrinking,
    /// [`crate::shm_ring::file_size`] bytes), the mediator's doorbell eventfd, the device
    /// process's -> reply (on the socket):  . Every later request and reply goes through the
    /// rings; the socket only stays open (its closing ends the session).
    ShmRing = 89,
    /// req: -> reply: bytes u64 of device memory this client holds (allocations, module
    /// variables, VMM physical memory), gpu_ns u64 (GPU time of its completed kernels where the
    /// backend measures it, else 0): how the mediator accounts a cuda worker's session
    SessionUsage = 90,
    /// req: -> reply: what the client's kernels printed (device printf) and it has not yet been
    /// given, at most 1 MiB (see [`HELLO_OUTPUT_AFTER_SYNC`])
    DeviceOutput = 91,
    /// req: -> reply:  (cuDevicePrimaryCtxReset: everything the session holds on the device is
    /// freed, as when the client disconnects (memory, modules, streams, events, VMM), and a
    /// sticky error is cleared; the connection and its registered host memory stay)
    SessionReset = 92,
    /// CUDA arrays (see [`crate::array`]). req: [`crate::array::ArrayDesc`] -> reply: array u64
    ArrayCreate = 100,
    /// req: array u64 -> reply:
    ArrayDestroy = 101,
    /// req: [`crate::array::Copy3D`], then a host source's bytes.. (packed) -> reply: a host
    /// destination's bytes.. (packed; at most [`COPY_CHUNK`] either way)
    Memcpy3D = 102,
    /// req: [`crate::array::ResourceDesc`], [`crate::array::SamplerDesc`] -> reply: texture
    /// object u64 (the value kernels are given)
    TexObjectCreate = 103,
    /// req: texture object u64 -> reply:
    TexObjectDestroy = 104,
    /// req: [`crate::array::ResourceDesc`] (an array made with ARRAY_SURFACE_LDST) -> reply:
    /// surface object u64
    SurfObjectCreate = 105,
    /// req: surface object u64 -> reply:
    SurfObjectDestroy = 106,
    /// Sharing with other processes of the VM (see [`crate::share`]). req: kind u32, what u64
    /// (an address inside an allocation, a physical allocation, an event) -> reply: token
    /// [u8; 16] (the same one each time for the same thing)
    ShareExport = 110,
    /// req: kind u32, token [u8; 16] -> reply: what u64 (the base address of the memory, mapped
    /// into this session; a physical allocation; an event), size u64 (0 for an event). Memory
    /// opened again by the same session is the same mapping, counted once more.
    ShareImport = 111,
    /// cuIpcCloseMemHandle. req: base address u64 (a ShareImport's) -> reply:  (unmapped when
    /// closed as many times as it was opened)
    ShareClose = 112,
}

/// Granularity of physical allocations, mappings and reservations (CUDA's on NVIDIA GPUs).
pub const VMM_GRANULARITY: u64 = 2 << 20;

/// Module images larger than this go in parts ([`Op::ModuleImagePart`]).
pub const MODULE_PART: usize = 32 << 20;

#[cfg(any(feature = "alloc", test))]
/// Loads a module image through `call` (a request and its reply): in one ModuleLoad, or, for an
/// image larger than [`MODULE_PART`], staged part by part and then loaded. Returns the reply.
pub fn module_load<E>(image: &[u8], mut call: impl FnMut(Op, &[&[u8]]) -> Result<alloc::vec::Vec<u8>, E>) -> Result<alloc::vec::Vec<u8>, E> {
    if image.len() <= MODULE_PART {
        return call(Op::ModuleLoad, &[image]);
    }
    for (i, part) in image.chunks(MODULE_PART).enumerate() {
        call(Op::ModuleImagePart, &[&((i * MODULE_PART) as u64).to_le_bytes(), part])?;
    }
    call(Op::ModuleLoad, &[])
}

/// Hello flag: the client only observes (NVML, the CLI); it is not listed as a GPU process.
pub const HELLO_OBSERVER: u32 = 1;
/// A Hello request: this protocol's version, the client's pid, its HELLO_* flags.
pub fn hello_request(pid: u32, flags: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&crate::PROTOCOL_VERSION.to_le_bytes());
    b[4..8].copy_from_slice(&pid.to_le_bytes());
    b[8..12].copy_from_slice(&flags.to_le_bytes());
    b
}

/// Hello reply flag: what kernels print (device printf) is not in Launch replies but collected
/// with [`Op::DeviceOutput`] after each synchronizing call (the cuda backend: the GPU's driver
/// prints at synchronization, as CUDA documents).
pub const HELLO_OUTPUT_AFTER_SYNC: u32 = 1;
/// Hello reply flag: this connection is a guest channel whose pinned regions the mediator
/// reaches itself: copies name them in MemcpyHtoDHost/MemcpyDtoHHost (handle = region id)
/// instead of carrying their bytes.
pub const HELLO_GUEST_PINNED: u32 = 2;
/// Hello reply flag: the backend runs PTX only (the sim): an image with SASS and no PTX cannot
/// run, so libcuda looks for the PTX of its kernels first (userlib/cuda's ptx_twin).
pub const HELLO_PTX_ONLY: u32 = 4;
/// [`Op::GuestUnpin`]'s id for all of a channel's regions (its channel closed).
pub const GUEST_UNPIN_ALL: u32 = u32::MAX;

/// Stream handle 0 is the NULL (legacy default) stream; these two are CU_STREAM_LEGACY and
/// CU_STREAM_PER_THREAD as applications may pass them.
pub const STREAM_LEGACY: u64 = 0x1;
pub const STREAM_PER_THREAD: u64 = 0x2;

/// Fixed-size device description, as the mediator reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// NUL-padded UTF-8.
    pub name: [u8; 96],
    pub uuid: [u8; 16],
    pub total_mem: u64,
    pub pci_domain: u32,
    pub pci_bus: u32,
    pub pci_device: u32,
    /// CUdevice_attribute values, indexed by attribute id; 0 where not set.
    pub attrs: [i32; crate::cuda::DEVICE_ATTRIBUTE_SLOTS],
}

impl DeviceInfo {
    pub const ENCODED_LEN: usize = 96 + 16 + 8 + 12 + 4 * crate::cuda::DEVICE_ATTRIBUTE_SLOTS;

    pub fn name_str(&self) -> &str {
        let end = self.name.iter().position(|&c| c == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).unwrap_or("vgpu")
    }
}

/// Launch-relevant facts of a kernel, sent when libcuda resolves a function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionInfo {
    pub handle: u64,
    pub param_count: u32,
    pub param_bytes: u32,
    pub static_shared_bytes: u32,
    pub local_bytes: u32,
    pub max_threads_per_block: u32,
    pub num_regs: u32,
    pub ptx_version: u32,
    pub binary_version: u32,
    /// Bytes of constant memory (`.const` variables) the kernel's module declares.
    pub const_bytes: u32,
    /// `.reqntid`: the only block shape it may be launched with ([0; 3]: any).
    pub req_block: [u32; 3],
}

/// Per-parameter layout following a [`FunctionInfo`] on the wire: offset u32, size u32.
pub const MAX_KERNEL_PARAMS: u32 = 1024;
/// CUDA's limit on the kernel parameter buffer (32764 bytes since 12.1).
pub const MAX_PARAM_BYTES: u32 = 32764;
