//! Running a kernel: blocks in order, threads of a block with explicit state so that
//! `bar.sync` can park a thread until the whole block has arrived, and a warp-collective
//! instruction (shfl.sync, vote.sync, redux.sync, bar.warp.sync, activemask) until the lanes it
//! names have arrived at it; then it runs for all of them at once. A thread's device-function
//! calls are explicit frames too (not host recursion), so it can park inside a callee as well.

use super::float::{self, mask, sext, to_f64};
use super::parse::*;
use super::global::Global;
use super::texture::{self, Coords, Objects};
use super::{ExecError, Memory};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::collections::HashMap;

mod jit;
mod regs;
mod unwritten;
mod warp;
pub(crate) use jit::JitSlot;
pub(crate) use unwritten::written_by;
use regs::{Lane, RegFile, Regs, RegsMut, WARP};
pub(crate) use warp::Fast;
pub use warp::{with_engine, with_jit_heat, Engine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchStats {
    pub instructions: u64,
    /// Of them, those the warp engine ran warp-wide (the rest ran lane by lane).
    pub warp_wide: u64,
    /// Of those, the ones that ran as compiled code (exec/jit.rs).
    pub compiled: u64,
    /// What the kernel's printf calls wrote, in the order they ran (at most PRINTF_LIMIT bytes).
    pub output: Vec<u8>,
}

/// Device printf output kept per launch, as CUDA's default printf FIFO (1 MiB): what does not
/// fit is dropped, and a line says so.
pub const PRINTF_LIMIT: usize = 1 << 20;
/// Longest format or %s string read from device memory.
const MAX_STRING: usize = 64 << 10;

/// Generic addresses of the shared and local windows (global device memory lives at
/// 0x2000_0000_0000 and above, so the three never overlap).
pub const SHARED_WINDOW: u64 = 0x1000_0000_0000;
pub const LOCAL_WINDOW: u64 = 0x1100_0000_0000;
const WINDOW_SIZE: u64 = 0x0100_0000_0000;

/// A launch may execute at most this many instructions (an endless loop must end, and the
/// guest must get an error rather than a hung mediator).
pub const INSTRUCTION_BUDGET: u64 = 4_000_000_000;

/// Local memory of all threads of one block, in bytes.
const MAX_BLOCK_LOCAL: u64 = 64 << 20;

const RUN: u8 = 0;
const AT_BARRIER: u8 = 1;
const DONE: u8 = 2;
const AT_WARP: u8 = 3;
/// `ret` reached: the thread ends in a kernel, returns to its caller in a device function.
const RETURNED: u8 = 4;
/// `call` reached (pc still at it): run_thread pushes the callee's frame.
const CALLED: u8 = 5;
/// At a grid-wide barrier (cooperative groups' grid.sync()), pc still at it.
const AT_GRID: u8 = 6;
/// An mbarrier wait found its phase incomplete (pc past it): the thread lets the others run
/// (the one that would arrive may be later in the block) and goes on at the next round.
const YIELDED: u8 = 7;

/// The thread used up its turn (a block of a grid-synchronizing launch, which may spin waiting
/// for the other blocks): the next block runs; it goes on at its next turn.
const PREEMPTED: u8 = 8;
/// Instructions a block of a grid-synchronizing launch runs per turn.
const QUANTUM: u64 = 1 << 14;

/// Where a block's run stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockRun {
    Done,
    /// Its threads wait at a grid-wide barrier.
    AtGrid,
    /// Its turn is over.
    Preempted,
}

/// The mbarrier object (64 bits, in shared memory), as the sim lays it out (PTX leaves it
/// opaque): pending arrivals in bits 0-30, the expected count in bits 31-61, the phase parity
/// in bit 63. An arrive's state is the phase parity (bit 63) and the pending count after it.
const MBAR_COUNT_MASK: u64 = (1 << 31) - 1;
const MBAR_PHASE: u64 = 1 << 63;
/// The largest expected count PTX allows (2^20 - 1).
const MBAR_MAX_COUNT: u64 = (1 << 20) - 1;

/// What the blocks of one grid-synchronizing launch may hold at once (they are all resident).
const MAX_COOPERATIVE_BYTES: u64 = 1 << 30;

/// Local memory per thread for device-function frames (CUDA's default stack is 1 KiB).
const CALL_STACK: u64 = 16 << 10;
const MAX_CALL_DEPTH: u32 = 256;

struct Ctx<'a> {
    module: &'a Module,
    globals: &'a HashMap<String, u64>,
    /// The launched kernel, and the function the current thread runs (the kernel or a callee).
    kernel: &'a Kernel,
    k: &'a Kernel,
    params: &'a [u8],
    /// The running function's symbols' values (local ones relative to the thread's local
    /// memory, its frame's base included). A callee's are swapped in while it runs.
    syms: Vec<u64>,
    /// End of the running function's frame in the thread's local memory.
    stack_top: u64,
    mem: &'a Global<'a>,
    shared: Vec<u8>,
    cfg: &'a LaunchConfig,
    ctaid: [u32; 3],
    /// Instructions this host thread executed; at `next_check` they are added to the launch's
    /// total and the budget, the client and the other blocks are looked at.
    executed: u64,
    next_check: u64,
    run: &'a LaunchRun,
    output: Vec<u8>,
    /// The device heap, for kernels that call malloc/free.
    heap: Option<&'a super::heap::DeviceHeap>,
    /// The cooperative groups grid workspace (%envreg1/%envreg2), 0 if none.
    grid_ws: u64,
    /// Where the current block's turn ends (u64::MAX: it runs until it blocks).
    quantum_end: u64,
    /// mbarrier arrivals and inits so far: a round of a block in which threads waited on
    /// mbarriers and none of these happened cannot progress.
    mbar_events: u64,
    /// How the block's threads are run (warp.rs).
    engine: Engine,
    /// The global memory region this host thread's last scalar access found.
    region_hint: usize,
    /// The regions compiled loads check inline (jit::LoadEnv::slots).
    jit_slots: [usize; jit::SLOTS],
    /// Instructions (per thread) this host thread ran warp-wide, and of them as compiled code.
    warp_wide: u64,
    compiled: u64,
    /// Where the running warp's turn ends (warp.rs).
    warp_turn_end: u64,
    /// Per warp of the block: its spin detection between turns (warp.rs).
    warp_spin: Vec<warp::WarpSpin>,
    /// The client's texture and surface objects.
    objects: &'a Objects,
    /// The kernel's compiled segments, once it is hot (jit.rs), and how hot it must be.
    jit: Option<&'a jit::Compiled>,
    jit_heat: u64,
}

/// How far run_thread takes a thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Until it exits or waits (at a barrier, a warp collective, an mbarrier, the grid).
    Block,
    /// One instruction of the kernel (a call: until it returns), or until it waits.
    One,
    /// A thread inside a device function: until it is back in the kernel, or waits.
    UntilKernel,
}

/// State of a launch shared by the host threads running its blocks.
struct LaunchRun {
    budget: u64,
    total: AtomicU64,
    warp_wide: AtomicU64,
    compiled: AtomicU64,
    /// Set when a block failed: the others stop.
    stop: AtomicBool,
    /// The client's cancel token (crate::cancel), if any.
    cancel: Option<std::sync::Arc<crate::cancel::Cancel>>,
    next_block: AtomicU64,
    /// (block index, error) of failed blocks; printf output of blocks by index.
    errors: Mutex<Vec<(u64, ExecError)>>,
    outputs: Mutex<Vec<(u64, Vec<u8>)>>,
}

/// Instructions between two checkpoints of a host thread.
const CHECK_EVERY: u64 = 1 << 16;

/// What every launch of this process ran (the mediator's metrics).
pub struct SimTotals {
    pub instructions: AtomicU64,
    pub warp_wide: AtomicU64,
    pub compiled: AtomicU64,
    /// Kernels compiled, and the time that took (microseconds).
    pub kernels_compiled: AtomicU64,
    pub compile_micros: AtomicU64,
}

pub static SIM_TOTALS: SimTotals = SimTotals {
    instructions: AtomicU64::new(0),
    warp_wide: AtomicU64::new(0),
    compiled: AtomicU64::new(0),
    kernels_compiled: AtomicU64::new(0),
    compile_micros: AtomicU64::new(0),
};

/// Runs `k` over the whole grid. `params` is the packed parameter buffer (per `k.params`),
/// `globals` the device addresses of the module's variables.
pub fn launch(
    module: &Module,
    k: &Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    globals: &HashMap<String, u64>,
    mem: &mut dyn Memory,
) -> Result<LaunchStats, ExecError> {
    launch_with_budget(module, k, cfg, params, globals, mem, INSTRUCTION_BUDGET)
}

pub fn launch_with_budget(
    module: &Module,
    k: &Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    globals: &HashMap<String, u64>,
    mem: &mut dyn Memory,
    budget: u64,
) -> Result<LaunchStats, ExecError> {
    if params.len() < k.param_bytes as usize {
        return Err(ExecError::OutOfResources(format!("{} needs {} bytes of parameters, got {}", k.name, k.param_bytes, params.len())));
    }
    let shared_bytes = if cfg.dynamic_shared_bytes > 0 {
        k.dynamic_shared_offset as u64 + cfg.dynamic_shared_bytes as u64
    } else {
        k.static_shared_bytes as u64
    };
    if shared_bytes > MAX_SHARED {
        return Err(ExecError::OutOfResources(format!("{shared_bytes} bytes of shared memory requested")));
    }
    let nthreads = cfg.block.iter().map(|&d| d as u64).product::<u64>();
    if nthreads == 0 || nthreads > 1024 {
        return Err(ExecError::OutOfResources(format!("block of {nthreads} threads")));
    }
    // Room for device-function frames only where the module has device functions.
    let per_thread_local = k.local_bytes as u64 + if module.funcs().is_empty() { 0 } else { CALL_STACK };
    if nthreads * per_thread_local > MAX_BLOCK_LOCAL {
        return Err(ExecError::OutOfResources(format!("{} bytes of local memory per thread is too much for the sim backend", k.local_bytes)));
    }
    let nblocks = cfg.grid.iter().map(|&d| d as u64).product::<u64>();
    // Made before the regions are taken: the heap is one of them.
    let heap = if module.uses_heap() { mem.heap()? } else { None };
    let heap = heap.as_deref();
    let grid_ws = if k.grid_sync { mem.grid_workspace()?.unwrap_or(0) } else { 0 };
    let objects = mem.objects();
    let global = mem.global();
    let run = LaunchRun {
        budget,
        total: AtomicU64::new(0),
        warp_wide: AtomicU64::new(0),
        compiled: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        cancel: crate::cancel::token(),
        next_block: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        outputs: Mutex::new(Vec::new()),
    };
    let block_bufs = BlockShape { nthreads: nthreads as usize, nregs: k.nregs.max(1), per_thread_local: per_thread_local as usize, shared_bytes: shared_bytes as usize };
    // Blocks are independent: spread them over host threads (small launches stay on this one).
    let workers = host_threads().min(nblocks.max(1) as usize).max(1);
    let l = Launch {
        module,
        k,
        cfg,
        params,
        globals,
        global: &global,
        run: &run,
        heap,
        grid_ws,
        engine: warp::engine(),
        objects: &objects,
        jit_heat: warp::jit_heat(),
    };
    let work = || run_blocks(l, &block_bufs, nblocks);
    if k.grid_sync {
        // Every block resident at once, as a cooperative launch guarantees.
        let per_block = nthreads * (block_bufs.nregs as u64 * 8 + per_thread_local + 16) + shared_bytes;
        if nblocks.saturating_mul(per_block) > MAX_COOPERATIVE_BYTES {
            return Err(ExecError::OutOfResources(format!(
                "{} synchronizes its whole grid: its {nblocks} blocks must be resident together, {} MiB, more than the sim's {} MiB",
                k.name,
                nblocks.saturating_mul(per_block) >> 20,
                MAX_COOPERATIVE_BYTES >> 20
            )));
        }
        run_cooperative(l, &block_bufs, nblocks);
    } else if workers == 1 || nblocks * nthreads < 2048 {
        work();
    } else {
        // This thread and `workers - 1` of the pool's, which stay from launch to launch (a
        // thread for each launch cost more than many a decode kernel's blocks).
        match pool() {
            Some(pool) => pool.in_place_scope(|s| {
                for _ in 1..workers {
                    s.spawn(|_| work());
                }
                work();
            }),
            None => std::thread::scope(|s| {
                for _ in 1..workers {
                    s.spawn(work);
                }
                work();
            }),
        }
    }
    let mut errors = run.errors.into_inner().unwrap_or_else(|e| e.into_inner());
    errors.sort_by_key(|(b, _)| *b);
    if let Some((_, e)) = errors.into_iter().next() {
        return Err(e);
    }
    let mut outputs = run.outputs.into_inner().unwrap_or_else(|e| e.into_inner());
    outputs.sort_by_key(|(b, _)| *b);
    let mut output = Vec::new();
    let mut dropped = false;
    for (_, o) in outputs {
        if output.len() + o.len() <= PRINTF_LIMIT {
            output.extend_from_slice(&o);
        } else {
            dropped = true;
        }
    }
    if dropped {
        output.extend_from_slice(b"[vgpu: device printf output beyond 1 MiB was dropped]\n");
    }
    let stats = LaunchStats {
        instructions: run.total.load(Ordering::Relaxed),
        warp_wide: run.warp_wide.load(Ordering::Relaxed),
        compiled: run.compiled.load(Ordering::Relaxed),
        output,
    };
    SIM_TOTALS.instructions.fetch_add(stats.instructions, Ordering::Relaxed);
    k.jit.heat(stats.instructions);
    SIM_TOTALS.warp_wide.fetch_add(stats.warp_wide, Ordering::Relaxed);
    SIM_TOTALS.compiled.fetch_add(stats.compiled, Ordering::Relaxed);
    Ok(stats)
}

/// The host threads that run blocks beside a launch's own: one fewer than host_threads().
/// None if they could not be started (each launch then starts its own).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(host_threads().saturating_sub(1).max(1))
            .thread_name(|i| format!("vgpu-sim-{i}"))
            .build();
        built.map_err(|e| tracing::warn!("the sim's block threads could not be started ({e}); each launch starts its own")).ok()
    })
    .as_ref()
}

/// How many host threads a launch may use: VGPU_SIM_THREADS, else the cores available.
fn host_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("VGPU_SIM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .min(64)
    })
}

struct BlockShape {
    nthreads: usize,
    nregs: usize,
    per_thread_local: usize,
    shared_bytes: usize,
}

/// What every host thread of a launch works from.
#[derive(Clone, Copy)]
struct Launch<'a> {
    module: &'a Module,
    k: &'a Kernel,
    cfg: &'a LaunchConfig,
    params: &'a [u8],
    globals: &'a HashMap<String, u64>,
    global: &'a Global<'a>,
    run: &'a LaunchRun,
    heap: Option<&'a super::heap::DeviceHeap>,
    grid_ws: u64,
    engine: Engine,
    objects: &'a Objects,
    jit_heat: u64,
}

impl<'a> Launch<'a> {
    /// An interpreter for the launch's blocks, with `shared_bytes` of shared memory.
    fn ctx(&self, shared_bytes: usize) -> Ctx<'a> {
        let k = self.k;
        Ctx {
            module: self.module,
            globals: self.globals,
            kernel: k,
            k,
            params: self.params,
            syms: symbol_values(self.module, k, k, None, self.globals, 0),
            stack_top: k.local_bytes as u64,
            mem: self.global,
            shared: vec![0u8; shared_bytes],
            cfg: self.cfg,
            ctaid: [0; 3],
            executed: 0,
            next_check: CHECK_EVERY,
            run: self.run,
            output: Vec::new(),
            heap: self.heap,
            mbar_events: 0,
            grid_ws: self.grid_ws,
            quantum_end: u64::MAX,
            engine: self.engine,
            region_hint: 0,
            jit_slots: [0; jit::SLOTS],
            warp_wide: 0,
            compiled: 0,
            warp_turn_end: u64::MAX,
            warp_spin: Vec::new(),
            objects: self.objects,
            jit: None,
            jit_heat: self.jit_heat,
        }
    }
}

/// One host thread's share of a launch: takes the next block until none is left (in order, so
/// a block waiting on an earlier one's flag, as CUB's decoupled look-back does, can progress).
fn run_blocks(l: Launch<'_>, b: &BlockShape, nblocks: u64) {
    thread_local! {
        static BUFS: std::cell::RefCell<BlockBufs> = std::cell::RefCell::new(BlockBufs::default());
    }
    BUFS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            run_blocks_in(l, b, nblocks, &mut bufs);
            // A launch of huge blocks does not keep its memory tied to this thread.
            if bufs.bytes() > MAX_KEPT_BUFS {
                *bufs = BlockBufs::default();
            }
        }
        Err(_) => run_blocks_in(l, b, nblocks, &mut BlockBufs::default()),
    })
}

/// A host thread's block state, kept from launch to launch: ggml's decode kernels declare some
/// 430 registers, so a fresh register file for each launch was some 440 KB to zero.
#[derive(Default)]
struct BlockBufs {
    regs: RegFile,
    local: Vec<u8>,
    pcs: Vec<u32>,
    state: Vec<u8>,
    /// Each thread's device-function frames, innermost last (empty while it runs the kernel).
    calls: Vec<Vec<Frame>>,
}

/// Block buffers larger than this are freed after their launch.
const MAX_KEPT_BUFS: usize = 32 << 20;

impl BlockBufs {
    /// Sized for blocks of shape `b` (run_block clears what a block may see).
    /// (Vec::resize writes only the elements it adds.)
    fn fit(&mut self, b: &BlockShape) {
        self.regs.reshape(b.nthreads, b.nregs);
        self.local.resize(b.nthreads * b.per_thread_local, 0);
        self.pcs.resize(b.nthreads, 0);
        self.state.resize(b.nthreads, RUN);
        self.calls.resize_with(b.nthreads, Vec::new);
    }

    fn bytes(&self) -> usize {
        self.regs.bytes() + self.local.capacity()
    }
}

fn run_blocks_in(l: Launch<'_>, b: &BlockShape, nblocks: u64, bufs: &mut BlockBufs) {
    let cfg = l.cfg;
    bufs.fit(b);
    let BlockBufs { regs, local, pcs, state, calls } = bufs;
    let mut ctx = l.ctx(b.shared_bytes);
    let run = l.run;
    loop {
        if run.stop.load(Ordering::Relaxed) {
            break;
        }
        let n = run.next_block.fetch_add(1, Ordering::Relaxed);
        if n >= nblocks {
            break;
        }
        let (gx, gy) = (cfg.grid[0] as u64, cfg.grid[1] as u64);
        ctx.ctaid = [(n % gx) as u32, ((n / gx) % gy) as u32, (n / (gx * gy)) as u32];
        let r = ctx.run_block(b, regs, local, pcs, state, calls);
        if !ctx.output.is_empty() {
            run.outputs.lock().unwrap_or_else(|e| e.into_inner()).push((n, std::mem::take(&mut ctx.output)));
        }
        if let Err(e) = r {
            run.stop.store(true, Ordering::Relaxed);
            run.errors.lock().unwrap_or_else(|e| e.into_inner()).push((n, e));
            break;
        }
    }
    // What the checkpoints have not added yet.
    run.total.fetch_add(ctx.executed - (ctx.next_check - CHECK_EVERY), Ordering::Relaxed);
    run.warp_wide.fetch_add(ctx.warp_wide, Ordering::Relaxed);
    run.compiled.fetch_add(ctx.compiled, Ordering::Relaxed);
}

/// The handle cudaCGGetIntrinsicHandle gives for the grid.
const GRID_HANDLE: u64 = 0x6772_6964;

/// One block's threads, kept while the other blocks of a grid-synchronizing launch run.
struct ResidentBlock {
    regs: RegFile,
    local: Vec<u8>,
    pcs: Vec<u32>,
    state: Vec<u8>,
    calls: Vec<Vec<Frame>>,
    shared: Vec<u8>,
    done: bool,
}

/// A launch whose kernel synchronizes the whole grid: every block is resident (its threads'
/// state kept), and they run in turns on this host thread, each for at most QUANTUM
/// instructions (a block may spin on memory until the others arrive, as CUDA's
/// cooperative_groups headers do) or until its threads have exited or wait at the grid
/// barrier (cudaCGSynchronize); once all blocks are there, that barrier opens for all.
fn run_cooperative(l: Launch<'_>, b: &BlockShape, nblocks: u64) {
    let mut ctx = l.ctx(0);
    let (run, cfg) = (l.run, l.cfg);
    let mut blocks: Vec<ResidentBlock> = (0..nblocks)
        .map(|_| ResidentBlock {
            regs: RegFile::new(b.nthreads, b.nregs),
            local: vec![0u8; b.nthreads * b.per_thread_local],
            pcs: vec![0u32; b.nthreads],
            state: vec![RUN; b.nthreads],
            calls: (0..b.nthreads).map(|_| Vec::new()).collect(),
            shared: vec![0u8; b.shared_bytes],
            done: false,
        })
        .collect();
    let (gx, gy) = (cfg.grid[0] as u64, cfg.grid[1] as u64);
    'rounds: loop {
        let mut all_at_grid = true;
        for (n, blk) in blocks.iter_mut().enumerate().filter(|(_, blk)| !blk.done) {
            let n = n as u64;
            ctx.quantum_end = ctx.executed + QUANTUM;
            ctx.ctaid = [(n % gx) as u32, ((n / gx) % gy) as u32, (n / (gx * gy)) as u32];
            std::mem::swap(&mut ctx.shared, &mut blk.shared);
            let r = ctx.resume_block(b, &mut blk.regs, &mut blk.local, &mut blk.pcs, &mut blk.state, &mut blk.calls);
            std::mem::swap(&mut ctx.shared, &mut blk.shared);
            if !ctx.output.is_empty() {
                run.outputs.lock().unwrap_or_else(|e| e.into_inner()).push((n, std::mem::take(&mut ctx.output)));
            }
            match r {
                Ok(BlockRun::Done) => blk.done = true,
                Ok(BlockRun::AtGrid) => {}
                Ok(BlockRun::Preempted) => all_at_grid = false,
                Err(e) => {
                    run.stop.store(true, Ordering::Relaxed);
                    run.errors.lock().unwrap_or_else(|e| e.into_inner()).push((n, e));
                    break 'rounds;
                }
            }
        }
        if blocks.iter().all(|blk| blk.done) {
            break;
        }
        if !all_at_grid {
            continue;
        }
        // Every block still running waits at the grid barrier: it opens.
        for blk in blocks.iter_mut().filter(|blk| !blk.done) {
            for t in 0..b.nthreads {
                if blk.state[t] == AT_GRID {
                    blk.state[t] = RUN;
                    blk.pcs[t] += 1;
                }
            }
        }
    }
    run.total.fetch_add(ctx.executed - (ctx.next_check - CHECK_EVERY), Ordering::Relaxed);
    run.warp_wide.fetch_add(ctx.warp_wide, Ordering::Relaxed);
    run.compiled.fetch_add(ctx.compiled, Ordering::Relaxed);
}

/// Where a (space, address) points: generic addresses in the shared and local windows are
/// those spaces; other generic and const addresses are global memory.
fn resolve(space: Space, addr: u64) -> (Space, u64) {
    match space {
        Space::Generic if (SHARED_WINDOW..SHARED_WINDOW + WINDOW_SIZE).contains(&addr) => (Space::Shared, addr - SHARED_WINDOW),
        Space::Generic if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW_SIZE).contains(&addr) => (Space::Local, addr - LOCAL_WINDOW),
        Space::Generic | Space::Const => (Space::Global, addr),
        s => (s, addr),
    }
}

/// The value an atomic operation stores, from the old value (sign-extended for signed types).
fn atom_new(op: AtomOp, ty: Ty, old: u64, bv: u64, cv: u64) -> u64 {
    match op {
        AtomOp::Add if ty.float() => float::bin(Bin::Add, ty, Mods::default(), old, bv).unwrap_or(old),
        AtomOp::Add => int_bin(Bin::Add, ty, old, bv),
        AtomOp::Min if ty.float() => float::bin(Bin::Min, ty, Mods::default(), old, bv).unwrap_or(old),
        AtomOp::Max if ty.float() => float::bin(Bin::Max, ty, Mods::default(), old, bv).unwrap_or(old),
        AtomOp::Min => int_bin(Bin::Min, ty, old, bv),
        AtomOp::Max => int_bin(Bin::Max, ty, old, bv),
        AtomOp::Exch => bv,
        AtomOp::Cas => {
            if mask(old, ty.bits()) == mask(bv, ty.bits()) {
                cv
            } else {
                old
            }
        }
        AtomOp::And => old & bv,
        AtomOp::Or => old | bv,
        AtomOp::Xor => old ^ bv,
        AtomOp::Inc => {
            if mask(old, 32) >= mask(bv, 32) {
                0
            } else {
                old.wrapping_add(1)
            }
        }
        AtomOp::Dec => {
            if mask(old, 32) == 0 || mask(old, 32) > mask(bv, 32) {
                bv
            } else {
                old.wrapping_sub(1)
            }
        }
    }
}

/// add, sub, mul, div, rem, min, max, and, or, xor, shl, shr of any type (None: a float
/// operation floats do not have, or a predicate one predicates do not).
fn bin_value(op: Bin, ty: Ty, m: Mods, x: u64, y: u64) -> Option<u64> {
    Some(if ty.float() {
        float::bin(op, ty, m, x, y)?
    } else if ty == Ty::Pred {
        match op {
            Bin::And => x & y,
            Bin::Or => x | y,
            Bin::Xor => x ^ y,
            _ => return None,
        }
    } else if m.sat {
        // add.sat.s32 / sub.sat.s32 (the parser admits no other): clamped to s32.
        let (p, q) = (sext(x, 32), sext(y, 32));
        let r = if op == Bin::Add { p + q } else { p - q };
        r.clamp(i32::MIN as i64, i32::MAX as i64) as u64
    } else {
        int_bin(op, ty, x, y)
    })
}

/// `.f16x2`/`.bf16x2` (and 16-bit integer pairs): `op` on each 16-bit half. None for an
/// operation the halves' type does not have.
fn half2_value(op: Half2Op, ty: Ty, m: Mods, x: u64, y: u64, z: u64) -> Option<u64> {
    let half = |k: u32| -> Option<u64> {
        let (x, y, z) = ((x >> k) & 0xffff, (y >> k) & 0xffff, (z >> k) & 0xffff);
        Some(match op {
            // 16-bit integer lanes (min/max.{u16x2,s16x2}): .relu clamps below 0.
            Half2Op::Bin(bin) if !ty.float() => {
                let r = mask(int_bin(bin, ty, x, y), 16);
                if m.relu && ty.signed() && sext(r, 16) < 0 { 0 } else { r }
            }
            Half2Op::Bin(bin) => float::bin(bin, ty, m, x, y)?,
            Half2Op::Fma => float::fma(ty, m, x, y, z),
            Half2Op::Neg => float::unary(Un::Neg, ty, m, x).unwrap_or(x),
            Half2Op::Abs => float::unary(Un::Abs, ty, m, x).unwrap_or(x),
        })
    };
    Some(half(0)? | half(16)? << 16)
}

/// mul.wide / mad.wide: the full product of two `ty` values (plus `c`), 2 * width bits.
fn mul_wide(ty: Ty, a: u64, b: u64, c: u64) -> u64 {
    let bits = ty.bits();
    let p = if ty.signed() { (sext(a, bits).wrapping_mul(sext(b, bits))) as u64 } else { mask(a, bits).wrapping_mul(mask(b, bits)) };
    mask(p.wrapping_add(c), bits * 2)
}

/// mad.lo / mad.hi of integers, fma / mad of floats.
fn mad_value(hi: bool, ty: Ty, m: Mods, a: u64, b: u64, c: u64) -> u64 {
    if ty.float() {
        float::fma(ty, m, a, b, c)
    } else {
        let p = int_bin(if hi { Bin::MulHi } else { Bin::MulLo }, ty, a, b);
        int_bin(Bin::Add, ty, p, c)
    }
}

/// shfl.sync as lane `l` sees it: the PTX ISA's definition: b[4:0] is the lane or offset, c[4:0]
/// the clamp and c[12:8] the segment mask; out of range, a lane reads its own value. `a(j)` is
/// lane j's source value, `members` the lanes exchanging. Returns the value and the predicate.
fn shfl_value(mode: ShflMode, l: usize, a: impl Fn(usize) -> u64, bv: u64, cv: u64, members: u32) -> (u64, u64) {
    let lane = l as u32;
    let (b, clamp, seg) = (bv as u32 & 0x1f, cv as u32 & 0x1f, (cv as u32 >> 8) & 0x1f);
    let max_lane = (lane & seg) | (clamp & !seg);
    let min_lane = lane & seg;
    let (j, ok) = match mode {
        ShflMode::Up => (lane.wrapping_sub(b), lane as i32 - b as i32 >= max_lane as i32),
        ShflMode::Down => (lane + b, lane + b <= max_lane),
        ShflMode::Bfly => (lane ^ b, (lane ^ b) <= max_lane),
        ShflMode::Idx => (min_lane | (b & !seg), (min_lane | (b & !seg)) <= max_lane),
    };
    let j = if ok { j as usize } else { l };
    // A source lane outside the exchange (not in the mask, exited, or past the block's end)
    // gives an undefined value in PTX; here the lane's own.
    let v = if j < 32 && members & (1 << j) != 0 { a(j) } else { a(l) };
    (v, ok as u64)
}

/// Unary operations (None: one the type does not have).
fn un_value(op: Un, ty: Ty, m: Mods, x: u64) -> Option<u64> {
    let bits = ty.bits();
    if ty.float() {
        return float::unary(op, ty, m, x);
    }
    Some(match op {
        Un::Not if ty == Ty::Pred => (x == 0) as u64,
        Un::Not => !x,
        Un::Cnot => (mask(x, bits) == 0) as u64,
        Un::Neg => (x as i64).wrapping_neg() as u64,
        Un::Abs => sext(x, bits).unsigned_abs(),
        Un::Popc => mask(x, bits).count_ones() as u64,
        Un::Clz => (mask(x, bits).leading_zeros() - (64 - bits)) as u64,
        Un::Brev => mask(x, bits).reverse_bits() >> (64 - bits),
        _ => return None,
    })
}

/// The type of a unary operation's result: popc and clz give a u32 count.
fn un_type(op: Un, ty: Ty) -> Ty {
    if matches!(op, Un::Popc | Un::Clz) {
        Ty::U32
    } else {
        ty
    }
}

/// cvta (`to`: generic to the space's address, else the reverse).
fn cvta_value(space: Space, to: bool, v: u64) -> u64 {
    match (space, to) {
        (Space::Shared, false) => v.wrapping_add(SHARED_WINDOW),
        (Space::Shared, true) => v.wrapping_sub(SHARED_WINDOW),
        (Space::Local, false) => v.wrapping_add(LOCAL_WINDOW),
        (Space::Local, true) => v.wrapping_sub(LOCAL_WINDOW),
        _ => v, // global, const, param: generic == space address here
    }
}

/// bfe: the PTX ISA's definition: bit i of the result is bit pos+i of a while i < len and
/// pos+i is within the type, else the sign bit (a[min(pos+len-1, msb)] for signed types with
/// len > 0, 0 otherwise).
fn bfe_value(ty: Ty, a: u64, b: u64, c: u64) -> u64 {
    let msb = ty.bits() as u64 - 1;
    let (x, pos, len) = (mask(a, ty.bits()), b & 0xff, c & 0xff);
    let sbit = if ty.signed() && len > 0 { (x >> (pos + len - 1).min(msb)) & 1 } else { 0 };
    let take = len.min(msb.saturating_sub(pos) + 1).min(if pos > msb { 0 } else { 64 });
    let field = if take == 0 { 0 } else { mask(x >> pos, take as u32) };
    if sbit == 1 {
        field | !mask(u64::MAX, take as u32)
    } else {
        field
    }
}

/// lop3: bit by bit, the lookup table's entry for (a, b, c).
fn lop3_value(x: u64, y: u64, z: u64, l: u64) -> u64 {
    let mut r = 0u64;
    for idx in 0..8u64 {
        if l & (1 << idx) != 0 {
            let ta = if idx & 4 != 0 { x } else { !x };
            let tb = if idx & 2 != 0 { y } else { !y };
            let tc = if idx & 1 != 0 { z } else { !z };
            r |= ta & tb & tc;
        }
    }
    r
}

/// shf.l / shf.r: the 64-bit {b, a} shifted by c (mod 32, or at most 32 with .clamp).
fn shf_value(left: bool, clamp: bool, a: u64, b: u64, c: u64) -> u64 {
    let v = mask(b, 32) << 32 | mask(a, 32);
    let n = if clamp { c.min(32) } else { c & 31 };
    if left {
        (v << n) >> 32
    } else {
        v >> n
    }
}

/// dp4a (`halves` false) and dp2a.lo/.hi: the sum of the byte (or halfword by byte) products of
/// `x` and `y`, parts signed as `sa`/`sb` say, plus `c` (the low 32 bits count).
fn dot_value(halves: bool, hi: bool, sa: bool, sb: bool, x: u64, y: u64, c: u64) -> u64 {
    let part = |v: u64, k: u32, width: u32, signed: bool| -> i64 {
        let p = (v >> (k * width)) & ((1 << width) - 1);
        if signed {
            sext(p, width)
        } else {
            p as i64
        }
    };
    let sum: i64 = if halves {
        let first = if hi { 2 } else { 0 };
        (0..2).map(|k| part(x, k, 16, sa) * part(y, first + k, 8, sb)).sum()
    } else {
        (0..4).map(|k| part(x, k, 8, sa) * part(y, k, 8, sb)).sum()
    };
    (c as i64).wrapping_add(sum) as u64
}

/// prmt: bytes of {b, a} picked by selector `c` (`mode` None: the generic mode).
fn prmt_value(mode: Option<u8>, a: u64, b: u64, sel: u64) -> u64 {
    let bytes = (a & 0xffff_ffff) | (b & 0xffff_ffff) << 32; // {b, a}: bytes 0..7
    let byte = |n: u64| (bytes >> (8 * (n & 7))) & 0xff;
    match mode {
        // Each selector nibble picks a byte; its bit 3 replicates that byte's sign.
        None => (0..4).fold(0, |acc, k| {
            let s = (sel >> (4 * k)) & 0xf;
            let v = byte(s);
            let v = if s & 8 != 0 { if v & 0x80 != 0 { 0xff } else { 0 } } else { v };
            acc | v << (8 * k)
        }),
        // The ISA's table: per mode and selector, the source byte of d.b0..d.b3.
        Some(mode) => {
            const ROWS: [[[u64; 4]; 4]; 6] = [
                [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], // f4e
                [[0, 7, 6, 5], [1, 0, 7, 6], [2, 1, 0, 7], [3, 2, 1, 0]], // b4e
                [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]], // rc8
                [[0, 1, 2, 3], [1, 1, 2, 3], [2, 2, 2, 3], [3, 3, 3, 3]], // ecl
                [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 2, 2], [0, 1, 2, 3]], // ecr
                [[0, 1, 0, 1], [2, 3, 2, 3], [0, 1, 0, 1], [2, 3, 2, 3]], // rc16
            ];
            let row = ROWS[mode as usize % 6][(sel & 3) as usize];
            (0..4).fold(0, |acc, k| acc | byte(row[k]) << (8 * k))
        }
    }
}

#[inline]
fn int_bin(op: Bin, ty: Ty, a: u64, b: u64) -> u64 {
    let bits = ty.bits();
    let signed = ty.signed();
    let (sa, sb) = (sext(a, bits), sext(b, bits));
    let (ua, ub) = (mask(a, bits), mask(b, bits));
    let r = match op {
        Bin::Add => ua.wrapping_add(ub),
        Bin::Sub => ua.wrapping_sub(ub),
        Bin::MulLo => ua.wrapping_mul(ub),
        Bin::MulHi => {
            if signed {
                (((sa as i128) * (sb as i128)) >> bits) as u64
            } else {
                (((ua as u128) * (ub as u128)) >> bits) as u64
            }
        }
        // Division by zero is undefined in PTX; give all ones rather than trap the host.
        Bin::Div => {
            if ub == 0 {
                u64::MAX
            } else if signed {
                sa.wrapping_div(sb) as u64
            } else {
                ua / ub
            }
        }
        Bin::Rem => {
            if ub == 0 {
                ua
            } else if signed {
                sa.wrapping_rem(sb) as u64
            } else {
                ua % ub
            }
        }
        Bin::Min => {
            if signed {
                sa.min(sb) as u64
            } else {
                ua.min(ub)
            }
        }
        Bin::Max => {
            if signed {
                sa.max(sb) as u64
            } else {
                ua.max(ub)
            }
        }
        Bin::And => a & b,
        Bin::Or => a | b,
        Bin::Xor => a ^ b,
        // Shift amounts >= the width give 0 (or the sign for shr.s), as PTX specifies.
        Bin::Shl => {
            let n = mask(b, 32);
            if n >= bits as u64 {
                0
            } else {
                ua << n
            }
        }
        Bin::Shr => {
            let n = mask(b, 32).min(bits as u64 - 1 + (!signed) as u64);
            if signed {
                (sa >> n.min(63)) as u64
            } else if n >= bits as u64 {
                0
            } else {
                ua >> n
            }
        }
    };
    mask(r, bits)
}

/// A value of type `ty` as a 64-bit register slot holds it: a predicate as 0 or 1, signed
/// types sign-extended, the others zero-extended.
fn normalize(ty: Ty, v: u64) -> u64 {
    match ty {
        Ty::Pred => (v != 0) as u64,
        t if t.signed() => sext(v, t.bits()) as u64,
        t => mask(v, t.bits()),
    }
}

/// A comparison's result combined with a predicate register (setp/set `.and/.or/.xor`, the
/// register maybe negated), or as it is.
fn combined(comb: Option<(BoolOp, u32, bool)>, regs: &Lane<impl AsRef<[u64]>>, x: bool) -> bool {
    combine(comb, comb.map_or(0, |(_, c, _)| regs.get(c)), x)
}

/// `combined`, given the value `c` of the predicate register it names.
fn combine(comb: Option<(BoolOp, u32, bool)>, c: u64, x: bool) -> bool {
    let Some((op, _, neg)) = comb else { return x };
    let c = (c != 0) != neg;
    match op {
        BoolOp::And => x && c,
        BoolOp::Or => x || c,
        BoolOp::Xor => x ^ c,
    }
}

/// A comparison as setp/set make it; `.ftz` compares subnormal f32 operands as zeros.
fn compare_ftz(cmp: Cmp, ty: Ty, ftz: bool, a: u64, b: u64) -> bool {
    if ty.float() {
        compare(cmp, ty, float::flush(a, ty, ftz), float::flush(b, ty, ftz))
    } else {
        compare(cmp, ty, a, b)
    }
}

fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    if ty.float() {
        let (x, y) = (to_f64(a, ty), to_f64(b, ty));
        let unordered = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !unordered && x == y,
            Cmp::Ne => !unordered && x != y,
            Cmp::Lt | Cmp::Lo => !unordered && x < y,
            Cmp::Le | Cmp::Ls => !unordered && x <= y,
            Cmp::Gt | Cmp::Hi => !unordered && x > y,
            Cmp::Ge | Cmp::Hs => !unordered && x >= y,
            Cmp::Equ => unordered || x == y,
            Cmp::Neu => unordered || x != y,
            Cmp::Ltu => unordered || x < y,
            Cmp::Leu => unordered || x <= y,
            Cmp::Gtu => unordered || x > y,
            Cmp::Geu => unordered || x >= y,
            Cmp::Num => !unordered,
            Cmp::Nan => unordered,
        };
    }
    let bits = ty.bits();
    let (sa, sb) = (sext(a, bits), sext(b, bits));
    let (ua, ub) = (mask(a, bits), mask(b, bits));
    let signed = ty.signed();
    match cmp {
        Cmp::Eq | Cmp::Equ => ua == ub,
        Cmp::Ne | Cmp::Neu => ua != ub,
        Cmp::Lt | Cmp::Ltu => if signed { sa < sb } else { ua < ub },
        Cmp::Le | Cmp::Leu => if signed { sa <= sb } else { ua <= ub },
        Cmp::Gt | Cmp::Gtu => if signed { sa > sb } else { ua > ub },
        Cmp::Ge | Cmp::Geu => if signed { sa >= sb } else { ua >= ub },
        Cmp::Lo => ua < ub,
        Cmp::Ls => ua <= ub,
        Cmp::Hi => ua > ub,
        Cmp::Hs => ua >= ub,
        Cmp::Num => true,
        Cmp::Nan => false,
    }
}

/// A thread's current function, its registers and symbols, and the end of its local frame.
type Current<'a, 'f> = (&'a Kernel, Regs<'f>, &'f [u64], u64);

/// A device function a thread is running: its registers and symbols, its frame in the thread's
/// local memory, and the caller's `call` instruction, after which the caller resumes.
struct Frame {
    func: u32,
    regs: Vec<u64>,
    syms: Vec<u64>,
    base: u64,
    top: u64,
    caller_pc: u32,
}

/// %tid of the thread with linear index `t` in a block of shape `block`.
fn thread_index(block: [u32; 3], t: u32) -> [u32; 3] {
    [t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1])]
}

/// The error of an access of `len` bytes at `addr` outside its space, by `i` of `k`.
fn illegal_in(k: &Kernel, addr: u64, len: usize, space: &'static str, i: &Inst) -> ExecError {
    ExecError::IllegalAddress { addr, len: len as u64, space, at: at_in(k, i) }
}

/// The `n`-byte little-endian value at `at` of `buf`, if it lies inside.
fn read_le(buf: &[u8], at: u64, n: usize) -> Option<u64> {
    let a = usize::try_from(at).ok()?;
    let s = buf.get(a..a.checked_add(n)?)?;
    Some(match n {
        1 => s[0] as u64,
        2 => u16::from_le_bytes(s.try_into().ok()?) as u64,
        4 => u32::from_le_bytes(s.try_into().ok()?) as u64,
        8 => u64::from_le_bytes(s.try_into().ok()?),
        _ => return None,
    })
}

/// Writes the low `n` bytes of `v` at `at` of `buf`, if they lie inside.
fn write_le(buf: &mut [u8], at: u64, n: usize, v: u64) -> Option<()> {
    let a = usize::try_from(at).ok()?;
    let s = buf.get_mut(a..a.checked_add(n)?)?;
    // Fixed sizes for the usual widths: a copy of variable length is a call to memmove.
    match n {
        1 => s[0] = v as u8,
        2 => s.copy_from_slice(&(v as u16).to_le_bytes()),
        4 => s.copy_from_slice(&(v as u32).to_le_bytes()),
        8 => s.copy_from_slice(&v.to_le_bytes()),
        _ => s.copy_from_slice(&v.to_le_bytes()[..n.min(8)]),
    }
    Some(())
}

fn at_in(k: &Kernel, i: &Inst) -> String {
    format!("`{}` (PTX line {}) in {}", i.text, i.line, k.name)
}

/// The address an operand names, given the registers and symbols of the function it is in.
fn addr_in(o: &Opnd, regs: &Lane<impl AsRef<[u64]>>, syms: &[u64]) -> Option<u64> {
    let reg = |r: &u32| regs.get(*r);
    let sym = |s: &u32| syms.get(*s as usize).copied().unwrap_or(0);
    match o {
        Opnd::Addr(base, off) => {
            let b = match base {
                Base::Reg(r) => reg(r),
                Base::Sym(s) => sym(s),
                Base::Abs => 0,
            };
            Some(b.wrapping_add(*off as u64))
        }
        Opnd::Reg(r) => Some(reg(r)),
        Opnd::Sym(s) => Some(sym(s)),
        _ => None,
    }
}

impl<'a> Ctx<'a> {
    /// Runs the block `self.ctaid` to its end.
    fn run_block(&mut self, b: &BlockShape, regs: &mut RegFile, local: &mut [u8], pcs: &mut [u32], state: &mut [u8], calls: &mut [Vec<Frame>]) -> Result<(), ExecError> {
        self.shared.fill(0);
        self.warp_spin.clear();
        regs.clear_rows(self.kernel.zeroed.get_or_init(|| unwritten::read_before_written(self.kernel)).as_deref());
        local.fill(0);
        pcs.fill(0);
        state.fill(RUN);
        calls.iter_mut().for_each(Vec::clear);
        if self.resume_block(b, regs, local, pcs, state, calls)? == BlockRun::Done {
            Ok(())
        } else {
            Err(ExecError::Undefined(format!("a grid-wide synchronization reached through a function pointer in {}, a launch whose blocks are not all resident", self.kernel.name)))
        }
    }

    /// Runs the block `self.ctaid` from where its threads are until all have exited (true) or
    /// all that have not wait at a grid-wide barrier (false; they resume after it).
    fn resume_block(&mut self, b: &BlockShape, regs: &mut RegFile, local: &mut [u8], pcs: &mut [u32], state: &mut [u8], calls: &mut [Vec<Frame>]) -> Result<BlockRun, ExecError> {
        let (nthreads, ptl) = (b.nthreads, b.per_thread_local);
        loop {
            let events_before = self.mbar_events;
            // Whether a thread got past its wait this round (or ran without one).
            let mut ran_on = false;
            if self.engine != Engine::Thread {
                // The warps take turns until none can run (one warp alone needs no turns).
                let turn = if nthreads > 32 { warp::WARP_TURN } else { u64::MAX };
                loop {
                    let mut turn_over = false;
                    for w0 in (0..nthreads).step_by(32) {
                        let lanes = (nthreads - w0).min(32);
                        let mut at = [(0u32, 0usize, false); 32];
                        for l in 0..lanes {
                            at[l] = (pcs[w0 + l], calls[w0 + l].len(), state[w0 + l] == RUN);
                        }
                        self.warp_turn_end = self.executed.saturating_add(turn);
                        let r = self.run_warp(w0, lanes, b, regs, local, pcs, state, calls)?;
                        ran_on |= (0..lanes).any(|l| at[l].2 && (state[w0 + l] != YIELDED || (pcs[w0 + l], calls[w0 + l].len()) != (at[l].0, at[l].1)));
                        match r {
                            warp::WarpRun::Preempted => return Ok(BlockRun::Preempted),
                            warp::WarpRun::TurnOver => turn_over = true,
                            warp::WarpRun::Waiting => {}
                        }
                    }
                    if !turn_over {
                        break;
                    }
                }
            } else {
                for t in 0..nthreads {
                    if state[t] != RUN {
                        continue;
                    }
                    let l = &mut local[t * ptl..(t + 1) * ptl];
                    let at = (pcs[t], calls[t].len());
                    state[t] = self.run_thread(t as u32, &mut pcs[t], &mut regs.lane_mut(t), l, &mut calls[t], Resume::Block)?;
                    if state[t] == PREEMPTED {
                        state[t] = RUN;
                        return Ok(BlockRun::Preempted);
                    }
                    ran_on |= state[t] != YIELDED || (pcs[t], calls[t].len()) != at;
                }
            }
            if self.warp_collectives(state, pcs, regs, calls)? {
                continue;
            }
            let live = state.iter().filter(|&&s| s != DONE).count();
            if live == 0 {
                return Ok(BlockRun::Done); // every thread has exited
            }
            let at_grid = state.iter().filter(|&&s| s == AT_GRID).count();
            if at_grid == live {
                return Ok(BlockRun::AtGrid);
            }
            if state.contains(&YIELDED) {
                // Threads wait on mbarriers: they run again, unless this round changed nothing
                // (no thread ran on past a wait, none arrived), which the next would repeat.
                if self.mbar_events == events_before && !ran_on {
                    let t = state.iter().position(|&s| s == YIELDED).unwrap_or(0);
                    return Err(ExecError::BarrierDeadlock(format!(
                        "thread {t} of block {:?} waits on an mbarrier phase that no thread of its block will complete",
                        self.ctaid
                    )));
                }
                state.iter_mut().filter(|s| **s == YIELDED).for_each(|s| *s = RUN);
                continue;
            }
            if let Some(t) = state.iter().position(|&s| s == AT_WARP) {
                let (f, i) = self.lane_inst(pcs[t], &calls[t]);
                return Err(ExecError::BarrierDeadlock(format!(
                    "thread {t} waits at {} for lanes of its mask that wait elsewhere (at a block barrier or another warp collective)",
                    at_in(f, i)
                )));
            }
            if at_grid > 0 {
                let t = state.iter().position(|&s| s == AT_BARRIER).unwrap_or(0);
                let (f, i) = self.lane_inst(pcs[t], &calls[t]);
                return Err(ExecError::BarrierDeadlock(format!("thread {t} waits at {} while other threads of its block wait at a grid-wide synchronization", at_in(f, i))));
            }
            // Everyone still alive is at a barrier: release them (exited threads count as
            // arrived, as on the hardware).
            self.barrier_reduction(state, pcs, regs, calls)?;
            for t in 0..nthreads {
                if state[t] == AT_BARRIER {
                    state[t] = RUN;
                    pcs[t] += 1;
                }
            }
        }
    }

    /// bar.red: the threads at the barrier that reduce each give a predicate; each of them
    /// gets the population count, AND or OR of all of them.
    fn barrier_reduction(&self, state: &[u8], pcs: &[u32], regs: &mut RegFile, calls: &mut [Vec<Frame>]) -> Result<(), ExecError> {
        let reducing: Vec<(usize, &'a Inst)> = (0..state.len())
            .filter(|&t| state[t] == AT_BARRIER)
            .map(|t| (t, self.lane_inst(pcs[t], &calls[t]).1))
            .filter(|(_, i)| matches!(i.op, Op::Bar { red: Some(_) }))
            .collect();
        let (mut count, mut all, mut any) = (0u64, true, false);
        for &(t, i) in &reducing {
            let Op::Bar { red: Some((_, _, c, neg)) } = &i.op else { continue };
            let r = match calls[t].last() {
                Some(fr) => Regs::flat(&fr.regs),
                None => regs.lane(t),
            };
            let v = (r.get(*c) != 0) != *neg;
            count += v as u64;
            all &= v;
            any |= v;
        }
        for &(t, i) in &reducing {
            let Op::Bar { red: Some((op, d, _, _)) } = &i.op else { continue };
            let (v, ty) = match op {
                BarRed::Popc => (count, Ty::U32),
                BarRed::And => (all as u64, Ty::Pred),
                BarRed::Or => (any as u64, Ty::Pred),
            };
            let r = &mut match calls[t].last_mut() {
                Some(fr) => RegsMut::flat(&mut fr.regs),
                None => regs.lane_mut(t),
            };
            self.set(d, ty, v, r, i)?;
        }
        Ok(())
    }

    /// Every CHECK_EVERY instructions: the launch's budget, a failed block elsewhere, a client
    /// that hung up.
    fn checkpoint(&mut self) -> Result<(), ExecError> {
        self.next_check += CHECK_EVERY;
        let run = self.run;
        let total = run.total.fetch_add(CHECK_EVERY, Ordering::Relaxed) + CHECK_EVERY;
        if total > run.budget {
            return Err(ExecError::Timeout(run.budget));
        }
        match run.cancel.as_ref().and_then(|c| c.check()) {
            None => {}
            Some(crate::cancel::Reason::Hangup) => return Err(ExecError::Cancelled),
            Some(crate::cancel::Reason::TimeLimit(ms)) => return Err(ExecError::TimeLimit(ms)),
        }
        if run.stop.load(Ordering::Relaxed) {
            // Another block failed; its error is the launch's.
            return Err(ExecError::Cancelled);
        }
        Ok(())
    }

    /// The function a thread runs (the kernel, or its innermost callee) and its instruction at
    /// `pc`. Only called for a thread parked at an instruction, so `pc` is in range.
    fn lane_inst(&self, pc: u32, frames: &[Frame]) -> (&'a Kernel, &'a Inst) {
        let module: &'a Module = self.module;
        let f = match frames.last() {
            Some(fr) => &module.funcs()[fr.func as usize],
            None => self.kernel,
        };
        (f, &f.insts[pc as usize])
    }

    /// Where waiting lanes meet: at the same instruction of the same function, except that
    /// bar.warp.sync at different places meet each other (sm_70 and later: `__syncwarp()` in
    /// both arms of a branch synchronizes the warp).
    fn meet_key(&self, pc: u32, frames: &[Frame]) -> (u32, u32) {
        match self.lane_inst(pc, frames).1.op {
            Op::Warp { op: WarpOp::Sync, .. } => (u32::MAX, 0),
            _ => (frames.last().map_or(0, |f| f.func + 1), pc),
        }
    }

    /// Runs every warp collective whose lanes have all arrived: lanes waiting at the same
    /// instruction form a group; of it, the lanes run whose masks name no live lane outside
    /// them (lanes that exited, or beyond the block's end, are left out). Returns whether any ran.
    fn warp_collectives(&mut self, state: &mut [u8], pcs: &mut [u32], regs: &mut RegFile, calls: &mut [Vec<Frame>]) -> Result<bool, ExecError> {
        let mut fired = false;
        for w0 in (0..state.len()).step_by(32) {
            fired |= self.warp_collectives_of(w0, state, pcs, regs, calls)?;
        }
        Ok(fired)
    }

    /// warp_collectives for the warp starting at thread `w0`.
    fn warp_collectives_of(&mut self, w0: usize, state: &mut [u8], pcs: &mut [u32], regs: &mut RegFile, calls: &mut [Vec<Frame>]) -> Result<bool, ExecError> {
        let lanes = (state.len() - w0).min(32);
        let mut fired = false;
        let live: u32 = (0..lanes).filter(|&l| state[w0 + l] != DONE).fold(0, |m, l| m | 1 << l);
        let mut waiting: u32 = (0..lanes).filter(|&l| state[w0 + l] == AT_WARP).fold(0, |m, l| m | 1 << l);
        while waiting != 0 {
            let first = waiting.trailing_zeros() as usize;
            let key = self.meet_key(pcs[w0 + first], &calls[w0 + first]);
            let group: u32 = (0..lanes).filter(|&l| waiting & (1 << l) != 0 && self.meet_key(pcs[w0 + l], &calls[w0 + l]) == key).fold(0, |m, l| m | 1 << l);
            waiting &= !group;
            let ran = self.warp_op(w0, group, live, pcs, regs, calls)?;
            for l in 0..lanes {
                if ran & (1 << l) != 0 {
                    state[w0 + l] = RUN;
                    pcs[w0 + l] += 1;
                }
            }
            fired |= ran != 0;
        }
        Ok(fired)
    }

    /// Runs the collective the lanes in `group` of the warp starting at thread `w0` wait at,
    /// for those of them whose masks' live lanes have all arrived. Returns the lanes it ran for.
    #[allow(clippy::too_many_arguments)]
    fn warp_op(&mut self, w0: usize, group: u32, live: u32, pcs: &[u32], regs: &mut RegFile, calls: &mut [Vec<Frame>]) -> Result<u32, ExecError> {
        let bl = self.cfg.block;
        let first = (0..32).find(|&l| group & (1 << l) != 0).map(|l| self.lane_inst(pcs[w0 + l], &calls[w0 + l]));
        if let Some((f, i @ Inst { op: Op::Warp { op: WarpOp::Ldmatrix { .. } | WarpOp::Mma(_), .. }, .. })) = first {
            // `.aligned`: all 32 lanes of the warp execute it together.
            if group != u32::MAX || live != u32::MAX {
                return Err(ExecError::Undefined(format!("{} is executed by lanes {group:#010x} of a warp, not by all 32 together", at_in(f, i))));
            }
            self.matrix_op(w0, i, regs, calls)?;
            self.executed += 32;
            return Ok(group);
        }
        // Each member's instruction, and its operands read from its own registers.
        let mut insts: [Option<(&'a Kernel, &'a Inst)>; 32] = [None; 32];
        let mut vals = [[0u64; 4]; 32];
        for l in (0..32).filter(|&l| group & (1 << l) != 0) {
            let t = w0 + l;
            let (f, i) = self.lane_inst(pcs[t], &calls[t]);
            let Op::Warp { op, a, b, c, mask: m, .. } = &i.op else {
                return Err(ExecError::Unsupported(format!("instruction {}", at_in(f, i))));
            };
            let (r, syms) = match calls[t].last() {
                Some(fr) => (Regs::flat(&fr.regs), &fr.syms[..]),
                None => (regs.lane(t), &self.syms[..]),
            };
            let tid = thread_index(bl, t as u32);
            let get = |o: &Opnd| match o {
                Opnd::Sym(id) => Ok(syms.get(*id as usize).copied().unwrap_or(0)),
                _ => self.get(o, &r, tid, t as u32, i),
            };
            vals[l] = [get(a)?, get(b)?, get(c)?, get(m)?];
            if *op == WarpOp::ActiveMask {
                vals[l][3] = group as u64;
            }
            // PTX leaves this undefined; compute-sanitizer's synccheck reports it.
            if vals[l][3] & (1 << l) == 0 {
                return Err(ExecError::Undefined(format!(
                    "thread {t} (lane {l}) executes {} with membermask {:#010x}, which does not include its own lane",
                    at_in(f, i),
                    vals[l][3] as u32
                )));
            }
            insts[l] = Some((f, i));
        }
        // The lanes that can run: drop those whose mask names a live lane not (or no longer)
        // among them, until none does.
        let mut ready = group;
        loop {
            let blocked = (0..32).filter(|&l| ready & (1 << l) != 0 && (vals[l][3] as u32) & live & !ready != 0).fold(0u32, |m, l| m | 1 << l);
            if blocked == 0 {
                break;
            }
            ready &= !blocked;
        }
        for l in (0..32).filter(|&l| ready & (1 << l) != 0) {
            let Some((_, i)) = insts[l] else { continue };
            let Op::Warp { op, d, p, neg_a, .. } = &i.op else { continue };
            let [av, bv, cv, mv] = vals[l];
            let members = mv as u32 & ready;
            let pred = |x: usize| (vals[x][0] != 0) != *neg_a;
            let (dv, pv) = match *op {
                WarpOp::Shfl(mode) => {
                    let a_of = |j: usize| vals[j][0];
                    shfl_value(mode, l, a_of, bv, cv, members)
                }
                WarpOp::Ballot => ((0..32).filter(|&x| members & (1 << x) != 0 && pred(x)).fold(0u64, |acc, x| acc | 1 << x), 0),
                WarpOp::VoteAll => ((0..32).filter(|&x| members & (1 << x) != 0).all(pred) as u64, 0),
                WarpOp::VoteAny => ((0..32).filter(|&x| members & (1 << x) != 0).any(pred) as u64, 0),
                WarpOp::VoteUni => {
                    let mut it = (0..32).filter(|&x| members & (1 << x) != 0).map(pred);
                    let first = it.next();
                    (it.all(|v| Some(v) == first) as u64, 0)
                }
                WarpOp::Redux(bin, ty) => {
                    let xs = (0..32).filter(|&x| members & (1 << x) != 0).map(|x| vals[x][0]);
                    let v = xs.reduce(|acc, x| int_bin(bin, ty, acc, x)).unwrap_or(av);
                    (v, 0)
                }
                WarpOp::Sync => (0, 0),
                WarpOp::ActiveMask => (group as u64, 0),
                WarpOp::MatchAny(ty) => {
                    let mine = mask(av, ty.bits());
                    ((0..32).filter(|&x| members & (1 << x) != 0 && mask(vals[x][0], ty.bits()) == mine).fold(0u64, |acc, x| acc | 1 << x), 0)
                }
                // Run by matrix_op before this loop.
                WarpOp::Ldmatrix { .. } | WarpOp::Mma(_) => continue,
                WarpOp::MatchAll(ty) => {
                    let all = (0..32).filter(|&x| members & (1 << x) != 0).all(|x| mask(vals[x][0], ty.bits()) == mask(av, ty.bits()));
                    (if all { members as u64 } else { 0 }, all as u64)
                }
            };
            let t = w0 + l;
            let r = &mut match calls[t].last_mut() {
                Some(fr) => RegsMut::flat(&mut fr.regs),
                None => regs.lane_mut(t),
            };
            let dty = match op {
                WarpOp::VoteAll | WarpOp::VoteAny | WarpOp::VoteUni => Ty::Pred,
                _ => Ty::B32,
            };
            self.set(d, dty, dv, r, i)?;
            self.set(p, Ty::Pred, pv, r, i)?;
        }
        self.executed += ready.count_ones() as u64;
        Ok(ready)
    }

    /// ldmatrix and mma.sync, for a whole warp (all lanes at instruction `i`).
    fn matrix_op(&mut self, w0: usize, i: &'a Inst, regs: &mut RegFile, calls: &mut [Vec<Frame>]) -> Result<(), ExecError> {
        let Op::Warp { op, d, a, b, c, .. } = &i.op else { return Ok(()) };
        let bl = self.cfg.block;
        let lane_regs = |calls: &[Vec<Frame>], regs: &RegFile, t: usize| -> (Vec<u64>, Vec<u64>) {
            match calls[t].last() {
                Some(fr) => (fr.regs.clone(), fr.syms.clone()),
                None => (regs.lane(t).to_vec(), self.syms.clone()),
            }
        };
        let parts = |o: &Opnd| -> Vec<Opnd> {
            match o {
                Opnd::Vec(v) => v.clone(),
                o => vec![o.clone()],
            }
        };
        // Each lane's operand registers (or, for ldmatrix, its row address).
        let mut inputs: Vec<[Vec<u64>; 3]> = Vec::with_capacity(32);
        for l in 0..32 {
            let t = w0 + l;
            let (r, syms) = lane_regs(calls, regs, t);
            let r = Regs::flat(&r);
            let tid = thread_index(bl, t as u32);
            let read = |o: &Opnd| -> Result<Vec<u64>, ExecError> { parts(o).iter().map(|p| self.get(p, &r, tid, t as u32, i)).collect() };
            inputs.push(match op {
                WarpOp::Ldmatrix { .. } => [vec![addr_in(a, &r, &syms).ok_or_else(|| ExecError::Unsupported(format!("address form in {}", self.at(i))))?], vec![], vec![]],
                _ => [read(a)?, read(b)?, read(c)?],
            });
        }
        let outputs: Vec<Vec<u64>> = match *op {
            WarpOp::Ldmatrix { num, trans, generic } => {
                let space = if generic { Space::Generic } else { Space::Shared };
                let row = |m: usize, r: usize| inputs[8 * m + r][0][0];
                let mut out = vec![Vec::new(); 32];
                for (l, o) in out.iter_mut().enumerate() {
                    for m in 0..num as usize {
                        let mut v = [0u8; 4];
                        if trans {
                            // Element (2*(l%4) + h, l/4) of matrix m: a column of its rows.
                            for h in 0..2 {
                                let at = row(m, 2 * (l % 4) + h) + 2 * (l / 4) as u64;
                                self.access(space, at, 2, &mut [], i, None, &mut v[2 * h..2 * h + 2])?;
                            }
                        } else {
                            self.access(space, row(m, l / 4) + 4 * (l % 4) as u64, 4, &mut [], i, None, &mut v)?;
                        }
                        o.push(u32::from_le_bytes(v) as u64);
                    }
                }
                out
            }
            WarpOp::Mma(kind) => mma(kind, &inputs),
            _ => return Ok(()),
        };
        let dparts = parts(d);
        let rty = if matches!(op, WarpOp::Mma(k) if k.ab == MmaType::F64) { Ty::B64 } else { Ty::B32 };
        for (l, vals) in outputs.iter().enumerate() {
            let t = w0 + l;
            let r = &mut match calls[t].last_mut() {
                Some(fr) => RegsMut::flat(&mut fr.regs),
                None => regs.lane_mut(t),
            };
            for (o, v) in dparts.iter().zip(vals) {
                self.set(o, rty, *v, r, i)?;
            }
        }
        Ok(())
    }

    fn at(&self, i: &Inst) -> String {
        at_in(self.k, i)
    }

    fn sreg(&self, s: Sreg, tid: [u32; 3], linear: u32) -> u64 {
        let c = self.cfg;
        (match s {
            Sreg::Tid(d) => tid[d as usize],
            Sreg::Ntid(d) => c.block[d as usize],
            Sreg::Ctaid(d) => self.ctaid[d as usize],
            Sreg::Nctaid(d) => c.grid[d as usize],
            Sreg::LaneId => linear % 32,
            Sreg::WarpId => linear / 32,
            Sreg::NWarpId => 64,
            Sreg::Clock => self.executed as u32,
            Sreg::Clock64 => return self.executed,
            Sreg::GlobalTimer => {
                return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
            }
            Sreg::SmId | Sreg::GridId => 0,
            Sreg::NSmId => 132,
            Sreg::LaneMask(kind) => {
                let lane = linear % 32;
                let bit = 1u64 << lane;
                return match kind {
                    0 => bit,
                    1 => bit - 1,
                    2 => (bit << 1) - 1,
                    3 => mask(!((bit << 1) - 1), 32),
                    _ => mask(!(bit - 1), 32),
                };
            }
            Sreg::EnvReg(1) => (self.grid_ws >> 32) as u32,
            Sreg::EnvReg(2) => self.grid_ws as u32,
            Sreg::EnvReg(_) => 0,
            Sreg::DynSmem => c.dynamic_shared_bytes,
            Sreg::TotalSmem => self.shared.len() as u32,
        }) as u64
    }

    /// Runs one thread until it exits or parks at a barrier or warp collective, through the
    /// device functions it calls (or less, as `mode` says). Returns its new state.
    fn run_thread(&mut self, linear: u32, pc: &mut u32, kregs: &mut RegsMut<'_>, local: &mut [u8], calls: &mut Vec<Frame>, mode: Resume) -> Result<u8, ExecError> {
        loop {
            let s = match calls.last_mut() {
                None => self.run(linear, pc, kregs, local, mode == Resume::One)?,
                Some(fr) => {
                    // The callee's function and symbols are the current ones while it runs.
                    let f = self.frame_func(fr)?;
                    self.k = f;
                    self.stack_top = fr.top;
                    std::mem::swap(&mut self.syms, &mut fr.syms);
                    let r = self.run(linear, pc, &mut RegsMut::flat(&mut fr.regs), local, false);
                    std::mem::swap(&mut self.syms, &mut fr.syms);
                    (self.k, self.stack_top) = (self.kernel, self.kernel.local_bytes as u64);
                    r?
                }
            };
            match s {
                CALLED => self.push_call(pc, kregs.view(), local, calls)?,
                RETURNED if !calls.is_empty() => {
                    self.pop_call(pc, kregs.view(), local, calls)?;
                    if calls.is_empty() && mode != Resume::Block {
                        return Ok(RUN); // back in the kernel, after the call
                    }
                }
                RETURNED | DONE => {
                    calls.clear(); // `exit` in a callee ends the thread too
                    return Ok(DONE);
                }
                s => return Ok(s),
            }
        }
    }

    /// Runs one thread's current function until it exits, returns, calls, or reaches a barrier;
    /// `single`: for one instruction at most (then RUN).
    fn run(&mut self, linear: u32, pc: &mut u32, regs: &mut RegsMut<'_>, local: &mut [u8], single: bool) -> Result<u8, ExecError> {
        let b = self.cfg.block;
        let tid = thread_index(b, linear);
        let insts = &self.k.insts;
        loop {
            if self.executed >= self.quantum_end {
                return Ok(PREEMPTED);
            }
            let Some(inst) = insts.get(*pc as usize) else {
                return Ok(DONE); // fell off the end: an implicit ret
            };
            self.executed += 1;
            if self.executed >= self.next_check {
                self.checkpoint()?;
            }
            if let Some((p, neg)) = inst.guard {
                let v = regs.get(p) != 0;
                if v == neg {
                    *pc += 1;
                    if single {
                        return Ok(RUN);
                    }
                    continue;
                }
            }
            match &inst.op {
                Op::Bra { target } => {
                    *pc = *target;
                    if single {
                        return Ok(RUN);
                    }
                    continue;
                }
                Op::Exit => return Ok(DONE),
                Op::Ret => return Ok(RETURNED),
                Op::Call { .. } => return Ok(CALLED),
                Op::Bar { .. } => return Ok(AT_BARRIER),
                Op::Warp { .. } => return Ok(AT_WARP),
                Op::GridSync { .. } => {
                    self.step(inst, tid, linear, regs, local)?; // its result, cudaSuccess
                    return Ok(AT_GRID);
                }
                Op::Mbar { kind: MbarKind::Wait { .. }, d, .. } => {
                    self.step(inst, tid, linear, regs, local)?;
                    *pc += 1;
                    if self.get(d, regs, tid, linear, inst)? == 0 {
                        return Ok(YIELDED);
                    }
                    if single {
                        return Ok(RUN);
                    }
                    continue;
                }
                _ => self.step(inst, tid, linear, regs, local)?,
            }
            *pc += 1;
            if single {
                return Ok(RUN);
            }
        }
    }

    fn get(&self, o: &Opnd, regs: &Lane<impl AsRef<[u64]>>, tid: [u32; 3], linear: u32, i: &Inst) -> Result<u64, ExecError> {
        match o {
            Opnd::Reg(r) => Ok(regs.get(*r)),
            Opnd::Imm(v) => Ok(*v),
            Opnd::Sreg(s) => Ok(self.sreg(*s, tid, linear)),
            Opnd::Sym(id) => Ok(self.syms.get(*id as usize).copied().unwrap_or(0)),
            Opnd::Sink => Ok(0),
            _ => Err(ExecError::Unsupported(format!("operand form in {}", self.at(i)))),
        }
    }

    fn set(&self, o: &Opnd, ty: Ty, v: u64, regs: &mut RegsMut<'_>, i: &Inst) -> Result<(), ExecError> {
        match o {
            Opnd::Reg(r) => {
                // A register wider than the instruction's type receives the value
                // sign-extended for signed types, zero-extended for the others (PTX ISA,
                // "Operand Size Exceeding Instruction-Type Size"). Slots are 64 bits and
                // every reader truncates to its own type, so extending to 64 bits here is
                // the same as extending to the register's declared width.
                regs.set(*r, normalize(ty, v));
                Ok(())
            }
            Opnd::Sink => Ok(()),
            _ => Err(ExecError::Unsupported(format!("destination form in {}", self.at(i)))),
        }
    }

    fn addr(&self, o: &Opnd, regs: &Lane<impl AsRef<[u64]>>, i: &Inst) -> Result<u64, ExecError> {
        addr_in(o, regs, &self.syms).ok_or_else(|| ExecError::Unsupported(format!("address form in {}", self.at(i))))
    }

    /// Resolves a (space, address) to where the bytes are: a window of a host buffer, or global.
    fn access(&mut self, space: Space, addr: u64, len: usize, local: &mut [u8], i: &Inst, write: Option<&[u8]>, out: &mut [u8]) -> Result<(), ExecError> {
        let (space, addr) = resolve(space, addr);
        let k = self.k;
        let illegal = |name: &'static str| illegal_in(k, addr, len, name, i);
        let buf: &mut [u8] = match space {
            Space::Global => {
                return match write {
                    Some(data) => self.mem.write(addr, data),
                    None => self.mem.read(addr, out),
                }
                .map_err(|_| illegal("global"));
            }
            Space::Param => {
                if write.is_some() {
                    return Err(ExecError::Unsupported(format!("store to kernel parameters in {}", self.at(i))));
                }
                let s = usize::try_from(addr).ok().and_then(|a| self.params.get(a..a.checked_add(len)?)).ok_or_else(|| illegal("param"))?;
                out.copy_from_slice(s);
                return Ok(());
            }
            Space::Shared => &mut self.shared[..],
            Space::Local => local,
            Space::Generic | Space::Const => unreachable_space(),
        };
        let name = if space == Space::Shared { "shared" } else { "local" };
        let s = usize::try_from(addr).ok().and_then(|a| buf.get_mut(a..a.checked_add(len)?)).ok_or_else(|| illegal(name))?;
        match write {
            Some(data) => s.copy_from_slice(data),
            None => out.copy_from_slice(s),
        }
        Ok(())
    }

    /// The device function a frame runs.
    fn frame_func(&self, fr: &Frame) -> Result<&'a Kernel, ExecError> {
        let module: &'a Module = self.module;
        module.funcs().get(fr.func as usize).ok_or_else(|| ExecError::Unsupported("a frame of an unknown function".into()))
    }

    /// The thread's current function (the kernel or its innermost callee), its registers and
    /// symbols, and the end of its local frame.
    fn current<'f>(&'f self, kregs: Regs<'f>, calls: &'f [Frame]) -> Result<Current<'a, 'f>, ExecError>
    where
        'a: 'f,
    {
        Ok(match calls.last() {
            None => (self.kernel, kregs, &self.syms[..], self.kernel.local_bytes as u64),
            Some(fr) => (self.frame_func(fr)?, Regs::flat(&fr.regs), &fr.syms[..], fr.top),
        })
    }

    /// The thread is at a `call`: pushes the callee's frame above the caller's in the thread's
    /// local memory, with the arguments copied in from the call's parameters, and starts it.
    fn push_call(&mut self, pc: &mut u32, kregs: Regs<'_>, local: &mut [u8], calls: &mut Vec<Frame>) -> Result<(), ExecError> {
        let module: &'a Module = self.module;
        let (caller, regs, syms, stack_top) = self.current(kregs, calls)?;
        let i = caller.insts.get(*pc as usize).ok_or_else(|| ExecError::Unsupported(format!("a call past the end of {}", caller.name)))?;
        let Op::Call { name, callee, via, args, .. } = &i.op else {
            return Err(ExecError::Unsupported(format!("instruction {}", at_in(caller, i))));
        };
        // Through a pointer: the function at the register's address, if it is one.
        let callee = match via {
            None => *callee,
            Some(Opnd::Reg(r)) => {
                let at = regs.get(*r);
                module.func_at(at).ok_or_else(|| ExecError::Undefined(format!("{} calls {at:#x}, which is not a device function of this module", at_in(caller, i))))?
            }
            Some(_) => return Err(ExecError::Unsupported(format!("call target form in {}", at_in(caller, i)))),
        };
        let callee = &callee;
        let Some(f) = module.funcs().get(*callee as usize) else {
            return Err(ExecError::Unsupported(format!("call to {name}, which has no body the sim can run, in {}", at_in(caller, i))));
        };
        if args.len() != f.params.len() {
            return Err(ExecError::Unsupported(format!("{} passes {} arguments to {name}, which takes {}", at_in(caller, i), args.len(), f.params.len())));
        }
        let base = stack_top.div_ceil(16) * 16;
        let top = base + f.local_bytes as u64;
        if calls.len() >= MAX_CALL_DEPTH as usize || top > local.len() as u64 {
            return Err(ExecError::OutOfResources(format!("call stack overflow calling {name} in {}", at_in(caller, i))));
        }
        let (b, t) = (base as usize, top as usize);
        local[b..t].fill(0);
        let frame_fault = || ExecError::IllegalAddress { addr: base, len: f.local_bytes as u64, space: "local", at: at_in(caller, i) };
        for (a, p) in args.iter().zip(&f.params) {
            let src = addr_in(a, &regs, syms).ok_or_else(|| ExecError::Unsupported(format!("argument form in {}", at_in(caller, i))))?;
            let (dst, n) = (b + p.offset as usize, p.size as usize);
            let src = usize::try_from(src).ok().filter(|s| s.checked_add(n).is_some_and(|e| e <= local.len())).ok_or_else(frame_fault)?;
            if dst + n > t {
                return Err(frame_fault());
            }
            local.copy_within(src..src + n, dst);
        }
        let syms = symbol_values(module, self.kernel, f, Some(*callee), self.globals, base);
        calls.push(Frame { func: *callee, regs: vec![0u64; f.nregs.max(1)], syms, base, top, caller_pc: *pc });
        *pc = 0;
        Ok(())
    }

    /// The thread's innermost callee returned: pops its frame, copies its result to the call's
    /// return parameter, and resumes the caller after the `call`.
    fn pop_call(&mut self, pc: &mut u32, kregs: Regs<'_>, local: &mut [u8], calls: &mut Vec<Frame>) -> Result<(), ExecError> {
        let Some(fr) = calls.pop() else { return Ok(()) };
        let f = self.frame_func(&fr)?;
        let (caller, regs, syms, _) = self.current(kregs, calls)?;
        let i = caller.insts.get(fr.caller_pc as usize).ok_or_else(|| ExecError::Unsupported(format!("a return past the end of {}", caller.name)))?;
        if let (Op::Call { ret: Some(r), .. }, Some((off, size))) = (&i.op, f.ret) {
            let dst = addr_in(r, &regs, syms).ok_or_else(|| ExecError::Unsupported(format!("return value form in {}", at_in(caller, i))))?;
            let (src, n) = (fr.base as usize + off as usize, size as usize);
            let fault = || ExecError::IllegalAddress { addr: dst, len: n as u64, space: "local", at: at_in(caller, i) };
            let dst = usize::try_from(dst).ok().filter(|d| d.checked_add(n).is_some_and(|e| e <= local.len())).ok_or_else(fault)?;
            if src + n > local.len() {
                return Err(fault());
            }
            local.copy_within(src..src + n, dst);
        }
        *pc = fr.caller_pc + 1;
        Ok(())
    }

    /// A NUL-terminated string at a generic address (printf's format and %s arguments).
    fn c_string(&mut self, mut addr: u64, local: &mut [u8], i: &Inst) -> Result<Vec<u8>, ExecError> {
        let mut s = Vec::new();
        loop {
            let mut b = [0u8];
            self.access(Space::Generic, addr, 1, local, i, None, &mut b)?;
            if b[0] == 0 || s.len() >= MAX_STRING {
                return Ok(s);
            }
            s.push(b[0]);
            addr = addr.wrapping_add(1);
        }
    }

    /// A scalar load (the common case, without the byte buffers of `access`).
    #[inline]
    fn load(&mut self, space: Space, addr: u64, ty: Ty, local: &mut [u8], i: &Inst) -> Result<u64, ExecError> {
        let n = ty.bytes();
        let v = match resolve(space, addr) {
            (Space::Global, a) => self.mem.load(a, n, &mut self.region_hint).map_err(|_| self.illegal(a, n, "global", i))?,
            (Space::Shared, a) => read_le(&self.shared, a, n).ok_or_else(|| self.illegal(a, n, "shared", i))?,
            (Space::Local, a) => read_le(local, a, n).ok_or_else(|| self.illegal(a, n, "local", i))?,
            (Space::Param, a) => read_le(self.params, a, n).ok_or_else(|| self.illegal(a, n, "param", i))?,
            _ => {
                let mut b = [0u8; 8];
                self.access(space, addr, n, local, i, None, &mut b[..n])?;
                u64::from_le_bytes(b)
            }
        };
        Ok(if ty.signed() { sext(v, ty.bits()) as u64 } else { v })
    }

    /// A scalar store (see `load`).
    #[inline]
    fn store(&mut self, space: Space, addr: u64, ty: Ty, v: u64, local: &mut [u8], i: &Inst) -> Result<(), ExecError> {
        let n = ty.bytes();
        match resolve(space, addr) {
            (Space::Global, a) => self.mem.store(a, n, v, &mut self.region_hint).map_err(|_| self.illegal(a, n, "global", i)),
            (Space::Shared, a) => {
                let k = self.k;
                write_le(&mut self.shared, a, n, v).ok_or_else(|| illegal_in(k, a, n, "shared", i))
            }
            (Space::Local, a) => write_le(local, a, n, v).ok_or_else(|| self.illegal(a, n, "local", i)),
            _ => {
                let b = v.to_le_bytes();
                self.access(space, addr, n, local, i, Some(&b[..n]), &mut [])
            }
        }
    }

    /// The texture object (`texture`) or surface object `h` of the client.
    fn object(&self, h: u64, texture: bool, i: &Inst) -> Result<&'a texture::Object, ExecError> {
        let objects: &'a Objects = self.objects;
        match objects.get(&h) {
            Some(o) if !texture || o.sampler.is_some() => Ok(o),
            _ => Err(ExecError::Undefined(format!("{h:#x} is not a {} object of this client, in {}", if texture { "texture" } else { "surface" }, self.at(i)))),
        }
    }

    /// A texture or surface instruction's coordinates: (layer, up to three coordinates' bits).
    fn coords(&self, geom: Geom, c: &Opnd, mut get: impl FnMut(&Opnd) -> Result<u64, ExecError>, i: &Inst) -> Result<(i64, [u64; 3]), ExecError> {
        let parts: &[Opnd] = match c {
            Opnd::Vec(p) => p,
            one => std::slice::from_ref(one),
        };
        let skip = geom.layered() as usize;
        if parts.len() < skip + geom.dims() {
            return Err(ExecError::Unsupported(format!("too few coordinates in {}", self.at(i))));
        }
        let layer = if geom.layered() { get(&parts[0])? as u32 as i32 as i64 } else { 0 };
        let mut v = [0u64; 3];
        for (k, p) in parts[skip..skip + geom.dims()].iter().enumerate() {
            v[k] = get(p)?;
        }
        Ok((layer, v))
    }

    fn texture_error(&self, e: texture::TexError, i: &Inst) -> ExecError {
        match e {
            texture::TexError::Memory(f) => ExecError::IllegalAddress { addr: f.addr, len: f.len, space: "texture/surface", at: self.at(i) },
            texture::TexError::OutOfRange { x, y, z } => {
                ExecError::IllegalAddress { addr: x as u64, len: 0, space: "surface", at: format!("{} (out of range at x={x} bytes, y={y}, z={z}, with .trap)", self.at(i)) }
            }
        }
    }

    /// An access of `len` bytes at `addr` of a space that lies outside it.
    fn illegal(&self, addr: u64, len: usize, space: &'static str, i: &Inst) -> ExecError {
        illegal_in(self.k, addr, len, space, i)
    }

    fn step(&mut self, i: &Inst, tid: [u32; 3], linear: u32, regs: &mut RegsMut<'_>, local: &mut [u8]) -> Result<(), ExecError> {
        macro_rules! g {
            ($o:expr) => {
                self.get($o, regs, tid, linear, i)?
            };
        }
        match &i.op {
            Op::Mov { ty, d, a } => {
                let v = match a {
                    Opnd::Vec(parts) => {
                        // mov.b64 %rd, {%r1, %r2} / mov.b32 %r, {%h1, %h2}: pack, the first
                        // element in the lowest bits; each element is the type's width / count.
                        let w = ty.bits() / parts.len().max(1) as u32;
                        let mut acc = 0u64;
                        for (k, p) in parts.iter().enumerate() {
                            acc |= mask(g!(p), w) << (w * k as u32);
                        }
                        acc
                    }
                    _ => g!(a),
                };
                if let Opnd::Vec(parts) = d {
                    // mov.b64 {%r1, %r2}, %rd / mov.b32 {%h1, %h2}, %r: unpack (`_` skips one)
                    let w = ty.bits() / parts.len().max(1) as u32;
                    let ety = match w {
                        8 => Ty::B8,
                        16 => Ty::B16,
                        32 => Ty::B32,
                        _ => return Err(ExecError::Unsupported(format!("vector of {} elements in {}", parts.len(), self.at(i)))),
                    };
                    for (k, p) in parts.iter().enumerate() {
                        self.set(p, ety, v >> (w * k as u32), regs, i)?;
                    }
                } else {
                    self.set(d, *ty, v, regs, i)?;
                }
            }
            Op::Ld { space, ty, d, addr } => {
                let a = self.addr(addr, regs, i)?;
                match d {
                    Opnd::Vec(parts) => {
                        for (k, p) in parts.iter().enumerate() {
                            let v = self.load(*space, a.wrapping_add((k * ty.bytes()) as u64), *ty, local, i)?;
                            self.set(p, *ty, v, regs, i)?;
                        }
                    }
                    _ => {
                        let v = self.load(*space, a, *ty, local, i)?;
                        self.set(d, *ty, v, regs, i)?;
                    }
                }
            }
            Op::St { space, ty, addr, a } => {
                let at = self.addr(addr, regs, i)?;
                match a {
                    Opnd::Vec(parts) => {
                        for (k, p) in parts.iter().enumerate() {
                            let v = g!(p);
                            self.store(*space, at.wrapping_add((k * ty.bytes()) as u64), *ty, v, local, i)?;
                        }
                    }
                    _ => {
                        let v = g!(a);
                        self.store(*space, at, *ty, v, local, i)?;
                    }
                }
            }
            Op::Bin { op, ty, m, d, a, b } => {
                let r = bin_value(*op, *ty, *m, g!(a), g!(b)).ok_or_else(|| ExecError::Unsupported(self.at(i)))?;
                self.set(d, *ty, r, regs, i)?;
            }
            Op::MulWide { ty, d, a, b } => self.set(d, Ty::B64, mul_wide(*ty, g!(a), g!(b), 0), regs, i)?,
            Op::MadWide { ty, d, a, b, c } => self.set(d, Ty::B64, mul_wide(*ty, g!(a), g!(b), g!(c)), regs, i)?,
            Op::Mad { hi, ty, m, d, a, b, c } => self.set(d, *ty, mad_value(*hi, *ty, *m, g!(a), g!(b), g!(c)), regs, i)?,
            Op::Carry { op, ty, cin, cout, cc, d, a, b, c } => {
                let bits = ty.bits();
                let (x, y, z) = (mask(g!(a), bits) as u128, mask(g!(b), bits) as u128, mask(g!(c), bits) as u128);
                let cf = if *cin { (g!(cc) & 1) as u128 } else { 0 };
                let (r, carry) = match op {
                    // The borrow of a - (b + CF): set when the unsigned subtrahend is larger.
                    CarryOp::Sub => ((x.wrapping_sub(y + cf)) as u64, (y + cf > x) as u64),
                    _ => {
                        let p = match op {
                            CarryOp::Add => x,
                            CarryOp::MadLo => mask(int_bin(Bin::MulLo, *ty, g!(a), g!(b)), bits) as u128,
                            _ => mask(int_bin(Bin::MulHi, *ty, g!(a), g!(b)), bits) as u128,
                        };
                        let addend = if *op == CarryOp::Add { y } else { z };
                        let s = p + addend + cf;
                        (s as u64, (s >> bits) as u64 & 1)
                    }
                };
                self.set(d, *ty, mask(r, bits), regs, i)?;
                if *cout {
                    self.set(cc, Ty::U32, carry, regs, i)?;
                }
            }
            Op::Half2 { op, ty, m, d, a, b, c } => {
                let r = half2_value(*op, *ty, *m, g!(a), g!(b), g!(c)).ok_or_else(|| ExecError::Unsupported(self.at(i)))?;
                self.set(d, Ty::B32, r, regs, i)?;
            }
            Op::Un { op, ty, m, d, a } => {
                let r = un_value(*op, *ty, *m, g!(a)).ok_or_else(|| ExecError::Unsupported(self.at(i)))?;
                self.set(d, un_type(*op, *ty), r, regs, i)?;
            }
            Op::Setp { cmp, ty, m, packed, p, q, a, b, comb } => {
                let combine = |x: bool| combined(*comb, regs, x);
                let (x, y) = (g!(a), g!(b));
                let (rp, rq) = if *packed {
                    let half = |k: u32| compare_ftz(*cmp, *ty, m.ftz, (x >> k) & 0xffff, (y >> k) & 0xffff);
                    (combine(half(0)), combine(half(16)))
                } else {
                    let r = compare_ftz(*cmp, *ty, m.ftz, x, y);
                    (combine(r), combine(!r))
                };
                self.set(p, Ty::Pred, rp as u64, regs, i)?;
                self.set(q, Ty::Pred, rq as u64, regs, i)?;
            }
            Op::Set { cmp, dty, sty, m, packed, d, a, b, comb } => {
                let combine = |x: bool| combined(*comb, regs, x);
                // True is 1.0 for a float destination, all ones for an integer one.
                let truth = |ty: Ty, width: u32| if ty.float() { float::from_f64(1.0, ty) } else { mask(u64::MAX, width) };
                let (x, y) = (g!(a), g!(b));
                let r = if *packed {
                    let half = |k: u32| if combine(compare_ftz(*cmp, *sty, m.ftz, (x >> k) & 0xffff, (y >> k) & 0xffff)) { truth(*dty, 16) } else { 0 };
                    half(0) | half(16) << 16
                } else if combine(compare_ftz(*cmp, *sty, m.ftz, x, y)) {
                    truth(*dty, dty.bits())
                } else {
                    0
                };
                self.set(d, if *packed { Ty::B32 } else { *dty }, r, regs, i)?;
            }
            Op::Bfind { ty, shift, d, a } => {
                let bits = ty.bits();
                let x = mask(g!(a), bits);
                // For a negative signed value the first bit that differs from the sign counts.
                let v = if ty.signed() && (x >> (bits - 1)) & 1 == 1 { mask(!x, bits) } else { x };
                let r = match (v.checked_ilog2(), shift) {
                    (None, _) => u32::MAX as u64,
                    (Some(pos), false) => pos as u64,
                    (Some(pos), true) => (bits - 1 - pos) as u64,
                };
                self.set(d, Ty::U32, r, regs, i)?;
            }
            Op::CopySign { ty, d, a, b } => {
                let sign = 1u64 << (ty.bits() - 1);
                self.set(d, *ty, (g!(b) & !sign) | (g!(a) & sign), regs, i)?;
            }
            Op::CvtPack { ty, m, d, a, b } => {
                let hi = float::convert(*ty, Ty::F32, *m, g!(a));
                let lo = float::convert(*ty, Ty::F32, *m, g!(b));
                self.set(d, Ty::B32, lo | hi << 16, regs, i)?;
            }
            Op::CvtF8 { f8, wide, to_f8, m, d, a, b } => {
                let x = g!(a);
                let r = if !*to_f8 {
                    // Two bytes to two halves, the low byte to the low half.
                    float::from_f8(*f8, *wide, x & 0xff) | float::from_f8(*f8, *wide, (x >> 8) & 0xff) << 16
                } else if *wide == Ty::F32 {
                    float::to_f8(*f8, Ty::F32, *m, g!(b)) | float::to_f8(*f8, Ty::F32, *m, x) << 8
                } else {
                    float::to_f8(*f8, *wide, *m, x & 0xffff) | float::to_f8(*f8, *wide, *m, (x >> 16) & 0xffff) << 8
                };
                self.set(d, if *to_f8 { Ty::B16 } else { Ty::B32 }, r, regs, i)?;
            }
            Op::Dot { halves, hi, sa, sb, d, a, b, c } => self.set(d, Ty::B32, dot_value(*halves, *hi, *sa, *sb, g!(a), g!(b), g!(c)), regs, i)?,
            Op::Prmt { mode, d, a, b, c } => self.set(d, Ty::B32, prmt_value(*mode, g!(a), g!(b), g!(c)), regs, i)?,
            Op::IsSpace { space, p, a } => {
                let (resolved, _) = resolve(Space::Generic, g!(a));
                let r = match space {
                    Space::Global | Space::Shared | Space::Local => resolved == *space,
                    _ => false, // no generic address points at kernel parameters or constants here
                };
                self.set(p, Ty::Pred, r as u64, regs, i)?;
            }
            Op::CpAsync { dst, src, size, src_size } => {
                let (d, s, n) = (self.addr(dst, regs, i)?, self.addr(src, regs, i)?, g!(size));
                let from = src_size.as_ref().map(|o| self.get(o, regs, tid, linear, i)).transpose()?.unwrap_or(n).min(n);
                if !matches!(n, 4 | 8 | 16) {
                    return Err(ExecError::Unsupported(format!("cp.async of {n} bytes in {}", self.at(i))));
                }
                let mut buf = [0u8; 16];
                self.access(Space::Global, s, from as usize, local, i, None, &mut buf[..from as usize])?;
                self.access(Space::Shared, d, n as usize, local, i, Some(&buf[..n as usize]), &mut [])?;
            }
            Op::Shf { left, clamp, d, a, b, c } => self.set(d, Ty::B32, shf_value(*left, *clamp, g!(a), g!(b), g!(c)), regs, i)?,
            Op::Mul24 { hi, signed, d, a, b, c } => {
                let part = |v: u64| if *signed { sext(v, 24) } else { mask(v, 24) as i64 };
                let p = part(g!(a)) * part(g!(b));
                let r = if *hi { p >> 16 } else { p } as u64;
                let add = match c {
                    Some(c) => g!(c),
                    None => 0,
                };
                self.set(d, if *signed { Ty::S32 } else { Ty::U32 }, mask(r.wrapping_add(add), 32), regs, i)?;
            }
            Op::Testp { class, ty, p, a } => {
                let v = g!(a);
                let x = to_f64(v, *ty);
                let subnormal = float::is_subnormal(v, *ty);
                let r = match class {
                    0 => x.is_finite(),
                    1 => x.is_infinite(),
                    2 => !x.is_nan(),
                    3 => x.is_nan(),
                    4 => x.is_finite() && x != 0.0 && !subnormal,
                    _ => subnormal,
                };
                self.set(p, Ty::Pred, r as u64, regs, i)?;
            }
            Op::Sad { ty, d, a, b, c } => {
                let bits = ty.bits();
                let (x, y) = (g!(a), g!(b));
                let diff = if ty.signed() { (sext(x, bits) as i128 - sext(y, bits) as i128).unsigned_abs() as u64 } else { mask(x, bits).abs_diff(mask(y, bits)) };
                self.set(d, *ty, diff.wrapping_add(g!(c)), regs, i)?;
            }
            Op::Selp { ty, d, a, b, c } => {
                let v = if g!(c) != 0 { g!(a) } else { g!(b) };
                self.set(d, *ty, v, regs, i)?;
            }
            Op::Cvt { dty, sty, m, d, a } => {
                let v = float::convert(*dty, *sty, *m, g!(a));
                self.set(d, *dty, v, regs, i)?;
            }
            Op::Cvta { to, space, d, a } => self.set(d, Ty::U64, cvta_value(*space, *to, g!(a)), regs, i)?,
            Op::Bfe { ty, d, a, b, c } => self.set(d, *ty, bfe_value(*ty, g!(a), g!(b), g!(c)), regs, i)?,
            Op::Bfi { ty, d, f, b, c, e } => {
                let bits = ty.bits() as u64;
                let (fv, bv, pos, len) = (g!(f), g!(b), g!(c) & 0xff, g!(e) & 0xff);
                let r = if len == 0 || pos >= bits {
                    bv
                } else {
                    let m = mask(u64::MAX, len.min(64) as u32) << pos;
                    (bv & !m) | ((fv << pos) & m)
                };
                self.set(d, *ty, r, regs, i)?;
            }
            Op::Lop3 { d, a, b, c, lut } => self.set(d, Ty::B32, lop3_value(g!(a), g!(b), g!(c), g!(lut)), regs, i)?,
            Op::Atom { space, op, ty, d, addr, b, c } => {
                let at = self.addr(addr, regs, i)?;
                let bv = g!(b);
                let cv = match (op, c) {
                    (AtomOp::Cas, Some(c)) => g!(c),
                    (AtomOp::Cas, None) => return Err(ExecError::Unsupported(self.at(i))),
                    _ => 0,
                };
                let (op, ty) = (*op, *ty);
                let old = match resolve(*space, at) {
                    // Global memory is shared with the blocks on other host threads.
                    (Space::Global, a) => {
                        let bits = ty.bits();
                        let mut f = |raw: u64| mask(atom_new(op, ty, if ty.signed() { sext(raw, bits) as u64 } else { raw }, bv, cv), bits);
                        let raw = self.mem.rmw(a, ty.bytes(), &mut f).map_err(|_| ExecError::IllegalAddress {
                            addr: a,
                            len: ty.bytes() as u64,
                            space: "global",
                            at: self.at(i),
                        })?;
                        let raw = raw.ok_or_else(|| ExecError::Misaligned { addr: a, at: self.at(i) })?;
                        if ty.signed() { sext(raw, bits) as u64 } else { raw }
                    }
                    // Shared and local memory belong to this block: no other thread runs it.
                    (sp, a) => {
                        let old = self.load(sp, a, ty, local, i)?;
                        self.store(sp, a, ty, atom_new(op, ty, old, bv, cv), local, i)?;
                        old
                    }
                };
                if let Some(d) = d {
                    self.set(d, ty, old, regs, i)?;
                }
            }
            Op::Vprintf { ret, fmt, args } => {
                // The call's parameters hold the format's and the argument buffer's addresses.
                let fmt_ptr = self.load(Space::Local, self.addr(fmt, regs, i)?, Ty::B64, local, i)?;
                let args_ptr = self.load(Space::Local, self.addr(args, regs, i)?, Ty::B64, local, i)?;
                let format = self.c_string(fmt_ptr, local, i)?;
                let (text, n) = super::printf::format(&format, &mut PrintfArgs { ctx: self, local, base: args_ptr, i })?;
                // Past the limit the launch drops the rest (and says so when it merges blocks).
                if self.output.len() <= PRINTF_LIMIT {
                    self.output.extend_from_slice(&text);
                }
                if let Some(r) = ret {
                    let a = self.addr(r, regs, i)?;
                    self.store(Space::Local, a, Ty::B32, n as u64, local, i)?;
                }
            }
            Op::AssertFail { args } => {
                let [message, file, line, function] = &args[..] else {
                    return Err(ExecError::Unsupported(format!("instruction {}", self.at(i))));
                };
                let text = |o: &Opnd, ctx: &mut Self, local: &mut [u8]| -> Result<String, ExecError> {
                    let p = ctx.load(Space::Local, ctx.addr(o, regs, i)?, Ty::B64, local, i)?;
                    Ok(String::from_utf8_lossy(&ctx.c_string(p, local, i)?).into_owned())
                };
                let (message, file, function) = (text(message, self, local)?, text(file, self, local)?, text(function, self, local)?);
                let line = self.load(Space::Local, self.addr(line, regs, i)?, Ty::B32, local, i)?;
                let (c, t) = (self.ctaid, tid);
                // CUDA's own wording, as the GPU's assert prints it; it reaches the application
                // with the launch's error (a failed launch's output is not delivered).
                return Err(ExecError::Assert(format!(
                    "{file}:{line}: {function}: block: [{},{},{}], thread: [{},{},{}] Assertion `{message}` failed.",
                    c[0], c[1], c[2], t[0], t[1], t[2]
                )));
            }
            Op::Mbar { kind: MbarKind::PendingCount, d, a: Some(state), .. } => {
                let s = self.get(state, regs, tid, linear, i)?;
                self.set(d, Ty::U32, s & MBAR_COUNT_MASK, regs, i)?;
            }
            Op::Mbar { kind, space, d, addr, a } => {
                let (sp, at) = resolve(*space, self.addr(addr, regs, i)?);
                if sp != Space::Shared {
                    return Err(ExecError::Unsupported(format!("an mbarrier outside shared memory in {}", self.at(i))));
                }
                let count = |ctx: &Self| -> Result<u64, ExecError> { a.as_ref().map_or(Ok(1), |a| ctx.get(a, regs, tid, linear, i)) };
                match kind {
                    MbarKind::Init => {
                        let n = count(self)?;
                        if n == 0 || n > MBAR_MAX_COUNT {
                            return Err(ExecError::Undefined(format!("mbarrier.init with count {n} in {}", self.at(i))));
                        }
                        self.store(Space::Shared, at, Ty::B64, n | n << 31, local, i)?;
                        self.mbar_events += 1;
                    }
                    MbarKind::Inval => {
                        self.store(Space::Shared, at, Ty::B64, 0, local, i)?;
                        self.mbar_events += 1;
                    }
                    MbarKind::Arrive { drop } => {
                        let n = count(self)?;
                        let v = self.load(Space::Shared, at, Ty::B64, local, i)?;
                        let (pending, mut expected, phase) = (v & MBAR_COUNT_MASK, (v >> 31) & MBAR_COUNT_MASK, v & MBAR_PHASE);
                        if n == 0 || n > pending || (*drop && n > expected) {
                            return Err(ExecError::Undefined(format!("{n} arrivals on an mbarrier with {pending} pending in {}", self.at(i))));
                        }
                        if *drop {
                            expected -= n;
                        }
                        let left = pending - n;
                        let now = if left == 0 { (phase ^ MBAR_PHASE) | expected | expected << 31 } else { phase | left | expected << 31 };
                        self.store(Space::Shared, at, Ty::B64, now, local, i)?;
                        self.set(d, Ty::B64, phase | left, regs, i)?;
                        self.mbar_events += 1;
                    }
                    MbarKind::CpAsyncArrive => {
                        let v = self.load(Space::Shared, at, Ty::B64, local, i)?;
                        let (pending, expected, phase) = (v & MBAR_COUNT_MASK, (v >> 31) & MBAR_COUNT_MASK, v & MBAR_PHASE);
                        if pending == 0 {
                            return Err(ExecError::Undefined(format!("an arrival on an mbarrier with none pending in {}", self.at(i))));
                        }
                        let now = if pending == 1 { (phase ^ MBAR_PHASE) | expected | expected << 31 } else { phase | (pending - 1) | expected << 31 };
                        self.store(Space::Shared, at, Ty::B64, now, local, i)?;
                        self.mbar_events += 1;
                    }
                    MbarKind::Wait { parity } => {
                        let v = self.load(Space::Shared, at, Ty::B64, local, i)?;
                        let w = count(self)?;
                        // Complete once the barrier has left the phase waited on.
                        let waited = if *parity { (w & 1) << 63 } else { w & MBAR_PHASE };
                        self.set(d, Ty::Pred, ((v & MBAR_PHASE) != waited) as u64, regs, i)?;
                    }
                    MbarKind::PendingCount => return Err(ExecError::Unsupported(format!("operands of {}", self.at(i)))),
                }
            }
            Op::CgHandle { ret, scope } => {
                let scope = self.load(Space::Local, self.addr(scope, regs, i)?, Ty::B32, local, i)?;
                // Only the grid's (scope 1); a multi-device grid is not something the sim has.
                if scope != 1 {
                    return Err(ExecError::Unsupported(format!("cooperative groups scope {scope} in {}", self.at(i))));
                }
                self.store(Space::Local, self.addr(ret, regs, i)?, Ty::B64, GRID_HANDLE, local, i)?;
            }
            Op::GridSync { ret, handle } => {
                let h = self.load(Space::Local, self.addr(handle, regs, i)?, Ty::B64, local, i)?;
                if h != GRID_HANDLE {
                    return Err(ExecError::Undefined(format!("grid synchronization with handle {h:#x}, which cudaCGGetIntrinsicHandle did not give, in {}", self.at(i))));
                }
                if let Some(r) = ret {
                    self.store(Space::Local, self.addr(r, regs, i)?, Ty::B32, 0, local, i)?;
                }
            }
            Op::Malloc { ret, size } => {
                let heap = self.heap.ok_or_else(|| ExecError::Unsupported(format!("device-side malloc without a device heap in {}", self.at(i))))?;
                let n = self.load(Space::Local, self.addr(size, regs, i)?, Ty::B64, local, i)?;
                let p = heap.malloc(n);
                self.store(Space::Local, self.addr(ret, regs, i)?, Ty::B64, p, local, i)?;
            }
            Op::Free { ptr } => {
                let heap = self.heap.ok_or_else(|| ExecError::Unsupported(format!("device-side free without a device heap in {}", self.at(i))))?;
                let p = self.load(Space::Local, self.addr(ptr, regs, i)?, Ty::B64, local, i)?;
                heap.free(p).map_err(|m| ExecError::Undefined(format!("{m} in {}", self.at(i))))?;
            }
            Op::Tex { geom, cty, gather, d, h, c } => {
                let obj = self.object(g!(h), true, i)?;
                let (layer, v) = self.coords(*geom, c, |o| self.get(o, regs, tid, linear, i), i)?;
                let coords = if cty.float() { Coords::Float(v.map(|x| f32::from_bits(x as u32))) } else { Coords::Int(v.map(|x| x as u32 as i32 as i64)) };
                let mem = self.mem;
                let mut read = |a: u64, out: &mut [u8]| mem.read(a, out);
                let r = match (gather, coords) {
                    (Some(comp), Coords::Float([x, y, _])) => texture::gather(obj, [x, y], *comp as usize, &mut read),
                    (Some(comp), Coords::Int([x, y, _])) => texture::gather(obj, [x as f32, y as f32], *comp as usize, &mut read),
                    (None, coords) => texture::fetch(obj, layer, coords, &mut read),
                };
                let r = r.map_err(|e| self.texture_error(e, i))?;
                if let Opnd::Vec(parts) = d {
                    for (p, v) in parts.iter().zip(r) {
                        self.set(p, Ty::B32, v as u64, regs, i)?;
                    }
                }
            }
            Op::Suld { geom, ty, oob, d, h, c } | Op::Sust { geom, ty, oob, a: d, h, c } => {
                let obj = self.object(g!(h), false, i)?;
                let (layer, v) = self.coords(*geom, c, |o| self.get(o, regs, tid, linear, i), i)?;
                let parts: &[Opnd] = match d {
                    Opnd::Vec(p) => p,
                    one => std::slice::from_ref(one),
                };
                let n = ty.bytes() as u64;
                let at = texture::surface_addr(obj, v.map(|x| x as u32 as i32 as i64), layer, n * parts.len() as u64, *oob).map_err(|e| self.texture_error(e, i))?;
                let store = matches!(i.op, Op::Sust { .. });
                for (k, p) in parts.iter().enumerate() {
                    let Some(at) = at else {
                        if !store {
                            self.set(p, *ty, 0, regs, i)?;
                        }
                        continue;
                    };
                    let addr = at.wrapping_add(k as u64 * n);
                    if store {
                        let x = g!(p);
                        self.mem.write(addr, &x.to_le_bytes()[..n as usize]).map_err(|f| self.texture_error(texture::TexError::Memory(f), i))?;
                    } else {
                        let mut b = [0u8; 8];
                        self.mem.read(addr, &mut b[..n as usize]).map_err(|f| self.texture_error(texture::TexError::Memory(f), i))?;
                        self.set(p, *ty, u64::from_le_bytes(b), regs, i)?;
                    }
                }
            }
            Op::TexQuery { q, d, h } => {
                let obj = self.object(g!(h), false, i)?;
                self.set(d, Ty::B32, texture::query(obj, *q) as u64, regs, i)?;
            }
            Op::Trap => return Err(ExecError::Trap(self.at(i))),
            Op::Nop => {}
            Op::Fence => std::sync::atomic::fence(Ordering::SeqCst),
            Op::Unsupported => return Err(ExecError::Unsupported(format!("instruction {}", self.at(i)))),
            Op::Bra { .. } | Op::Exit | Op::Ret | Op::Call { .. } | Op::Bar { .. } | Op::Warp { .. } => {} // handled by run() and run_thread()
        }
        Ok(())
    }
}

/// Where each lane's fragment elements sit in an mma's matrices: for A (row, col), for B
/// (k, n), for C and D (row, col), in register order (the PTX ISA's fragment figures; g is the
/// lane's group, lane / 4, and t its index in the group, lane % 4).
fn mma_layout(kind: MmaKind, lane: usize) -> [Vec<(usize, usize)>; 3] {
    let (g, t) = (lane / 4, lane % 4);
    let (m, k) = (kind.m, kind.k);
    let a: Vec<(usize, usize)> = match (m, k, kind.ab) {
        (16, 16, MmaType::F16 | MmaType::Bf16) => (0..8).map(|i| (g + 8 * ((i / 2) % 2), 2 * t + i % 2 + 8 * (i / 4))).collect(),
        (16, 8, MmaType::F16 | MmaType::Bf16) => (0..4).map(|i| (g + 8 * (i / 2), 2 * t + i % 2)).collect(),
        (16, 8, MmaType::Tf32) => (0..4).map(|i| (g + 8 * (i % 2), t + 4 * (i / 2))).collect(),
        (16, 32, _) => (0..16).map(|i| (g + 8 * ((i / 4) % 2), 4 * t + i % 4 + 16 * (i / 8))).collect(),
        (16, 16, _) => (0..8).map(|i| (g + 8 * (i / 4), 4 * t + i % 4)).collect(),
        (8, 16, _) => (0..4).map(|i| (g, 4 * t + i)).collect(),
        _ => vec![(g, t)], // m8n8k4 f64
    };
    let b: Vec<(usize, usize)> = match (m, k, kind.ab) {
        (16, 16, MmaType::F16 | MmaType::Bf16) => (0..4).map(|i| (2 * t + i % 2 + 8 * (i / 2), g)).collect(),
        (16, 8, MmaType::F16 | MmaType::Bf16) => (0..2).map(|i| (2 * t + i, g)).collect(),
        (16, 8, MmaType::Tf32) => (0..2).map(|i| (t + 4 * i, g)).collect(),
        (16, 32, _) => (0..8).map(|i| (4 * t + i % 4 + 16 * (i / 4), g)).collect(),
        (_, 16, _) => (0..4).map(|i| (4 * t + i, g)).collect(),
        _ => vec![(t, g)],
    };
    let c: Vec<(usize, usize)> = if m == 8 { (0..2).map(|i| (g, 2 * t + i)).collect() } else { (0..4).map(|i| (g + 8 * (i / 2), 2 * t + i % 2)).collect() };
    [a, b, c]
}

/// mma.sync over a warp: `inputs[lane]` are its A, B and C fragment registers; returns each
/// lane's D registers. Float products are exact in f64 and summed there, then rounded once to
/// the accumulator type (the GPU's tensor cores keep at least that much: the ISA leaves the order
/// and internal precision open); integer results wrap (or clamp with .satfinite) to s32.
fn mma(kind: MmaKind, inputs: &[[Vec<u64>; 3]]) -> Vec<Vec<u64>> {
    let (m, n, kk) = (kind.m as usize, kind.n as usize, kind.k as usize);
    let elem = |regs: &[u64], i: usize, width: u32| -> u64 {
        let per = (if width == 64 { 64 } else { 32 }) / width;
        mask(regs.get(i / per as usize).copied().unwrap_or(0) >> (width * (i as u32 % per)), width)
    };
    let value = |v: u64, ty: MmaType, signed: bool| -> f64 {
        match ty {
            MmaType::F16 => to_f64(v, Ty::F16),
            MmaType::Bf16 => to_f64(v, Ty::Bf16),
            MmaType::Tf32 => to_f64(v & !0x1fff, Ty::F32), // tf32: an f32's top 19 bits
            MmaType::F32 => to_f64(v, Ty::F32),
            MmaType::F64 => f64::from_bits(v),
            MmaType::I8 => (if signed { sext(v, 8) } else { v as i64 }) as f64,
            MmaType::S32 => sext(v, 32) as f64,
        }
    };
    let (aw, cw) = (kind.ab.width(), kind.acc.width());
    let mut a = vec![vec![0.0f64; kk]; m];
    let mut b = vec![vec![0.0f64; n]; kk];
    let mut c = vec![vec![0u64; n]; m];
    for (lane, [ra, rb, rc]) in inputs.iter().enumerate() {
        let [la, lb, lc] = mma_layout(kind, lane);
        for (i, &(r, col)) in la.iter().enumerate() {
            a[r][col] = value(elem(ra, i, aw), kind.ab, kind.a_signed);
        }
        for (i, &(r, col)) in lb.iter().enumerate() {
            b[r][col] = value(elem(rb, i, aw), kind.ab, kind.b_signed);
        }
        for (i, &(r, col)) in lc.iter().enumerate() {
            c[r][col] = elem(rc, i, cw);
        }
    }
    let d = |r: usize, col: usize| -> u64 {
        match kind.acc {
            MmaType::S32 => {
                // |a*b| <= 2^16, so the f64 products and their sum over k <= 32 are exact.
                let s = (0..kk).map(|x| a[r][x] * b[x][col]).sum::<f64>() as i64 + sext(c[r][col], 32);
                if kind.satfinite {
                    s.clamp(i32::MIN as i64, i32::MAX as i64) as u64
                } else {
                    mask(s as u64, 32)
                }
            }
            MmaType::F64 => (0..kk).fold(f64::from_bits(c[r][col]), |acc, x| a[r][x].mul_add(b[x][col], acc)).to_bits(),
            acc => {
                let cty = if acc == MmaType::F16 { Ty::F16 } else { Ty::F32 };
                let s = (0..kk).map(|x| a[r][x] * b[x][col]).sum::<f64>() + to_f64(c[r][col], cty);
                float::from_f64(s, cty)
            }
        }
    };
    (0..inputs.len())
        .map(|lane| {
            let lc = &mma_layout(kind, lane)[2];
            let vals: Vec<u64> = lc.iter().map(|&(r, col)| d(r, col)).collect();
            let per = if kind.acc.width() == 16 { 2 } else { 1 };
            vals.chunks(per).map(|ch| ch.iter().enumerate().fold(0u64, |acc, (j, v)| acc | v << (16 * j))).collect()
        })
        .collect()
}

/// The values of `k`'s symbols (device function `func`'s, or the kernel's) in a launch of
/// `kernel`: parameter, shared and local offsets (local ones above `frame`, the base of its
/// frame in the thread's local memory) and module variables' addresses. A function's own shared
/// variable the kernel has no room for gets an address that faults.
fn symbol_values(module: &Module, kernel: &Kernel, k: &Kernel, func: Option<u32>, globals: &HashMap<String, u64>, frame: u64) -> Vec<u64> {
    k.syms
        .iter()
        .map(|s| match s {
            SymKind::Param(off) | SymKind::Shared(off) => *off as u64,
            SymKind::FuncShared(off) => func.and_then(|f| kernel.func_shared_at.get(f as usize)).map_or(u64::MAX, |&at| at as u64 + *off as u64),
            SymKind::DynShared => kernel.dynamic_shared_offset as u64,
            SymKind::Local(off) => frame + *off as u64,
            // A variable the caller gave no memory resolves to 0, which faults if used.
            SymKind::Global(i) => module.globals().get(*i).and_then(|g| globals.get(&g.name)).copied().unwrap_or(0),
        })
        .collect()
}

/// printf's arguments: the packed buffer at `base` (a generic address, usually the calling
/// thread's local memory), and strings anywhere in device memory.
struct PrintfArgs<'c, 'a, 'l> {
    ctx: &'c mut Ctx<'a>,
    local: &'l mut [u8],
    base: u64,
    i: &'c Inst,
}

impl super::printf::Args for PrintfArgs<'_, '_, '_> {
    type Error = ExecError;
    fn arg(&mut self, offset: u64, size: usize) -> Result<u64, ExecError> {
        let ty = if size == 8 { Ty::B64 } else { Ty::B32 };
        self.ctx.load(Space::Generic, self.base.wrapping_add(offset), ty, self.local, self.i)
    }
    fn string(&mut self, ptr: u64) -> Result<Vec<u8>, ExecError> {
        self.ctx.c_string(ptr, self.local, self.i)
    }
}

/// Generic and const accesses are rewritten to a concrete space before buffers are chosen.
fn unreachable_space() -> &'static mut [u8] {
    &mut []
}
