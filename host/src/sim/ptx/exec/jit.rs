//! Compiled segments: the warp engine's register work, branches, loops and shuffles as native
//! code (Cranelift).
//!
//! A segment is a stretch of the kernel's instructions that compute registers, load and store
//! memory (pure ones, setp, pack and unpack, special registers, symbols' addresses, loads and
//! stores of global, shared, generic and parameter memory), branch, and shuffle (shfl.sync);
//! no barriers, other collectives, atomics or calls. Its native function runs the segment for
//! one active lane after another: each basic block loads the registers it touches from the
//! warp's rows, runs on machine registers and stores the ones it writes back, and a branch is
//! the lane's own jump, so a lane follows its own path through the segment's branches and
//! loops, and leaves it where a branch or its end takes it out. Lanes exchange nothing there,
//! so lane after lane gives what the lockstep warp gives, provided no lane can see another's
//! memory effects: its stores are only recorded (address and value per lane) and made, once
//! every lane has run, in the order the interpreter makes them (instruction by instruction,
//! each for its lanes in turn); no load may follow a store (in pc order, which forward branches
//! keep), and a segment that loops stores nothing. A shuffle splits a segment into phases: every
//! lane runs a phase, then the shuffle is made on the rows at once (where every lane arrived at
//! it and the warp engine would make it at once), then the next phase. A lane enters a segment
//! at any of its blocks (after a branch from elsewhere, a loop cut short, a shuffle the warp
//! engine made), and leaves a loop after LANE_CAP instructions, so that its warp runs no
//! further ahead of the block's other warps than in straight code.
//!
//! Every access is checked against the allocation it falls in (loads: those of the last few
//! loads, inline; any other through Global's lookup) or the block's shared memory. An access
//! the code cannot make (outside them, or a generic address in the local window) ends the run,
//! void, before any store is made: the registers whose old values the instructions may read are
//! put back and the warp engine runs those instructions itself, which reports the fault exactly
//! as it would have. A segment whose runs keep failing is left to the warp engine. Everything
//! else (and any lane group that waiting lanes would join inside a segment that stores) runs
//! through the warp engine as before, so barriers, collectives, the budget and the kernel-stop
//! path are the interpreter's own.
//!
//! What each instruction computes is the interpreter's: the commonest integer operations and
//! the IEEE float ones without modifiers are emitted inline (the same host arithmetic exec's
//! functions do), all others call back into the very functions the interpreter uses. A float
//! result that is a NaN is recomputed by the interpreter's function, so that NaN payloads are
//! the interpreter's too.
//!
//! Why Cranelift: it is the well-kept Rust code generator (wasmtime's), it compiles a segment
//! in microseconds, and it needs no C toolchain at run time. Kernels are compiled once they are
//! hot (JIT_HEAT lane-instructions run, over all their launches), so the many kernels that run
//! once or briefly (most of CuPy's) pay no compile time; `VGPU_SIM_ENGINE=warp` turns it off.

use super::warp::{pure_value, AddrBase, Eval, Fast, Src};
use super::*;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F64, I16, I32, I64, I8};
use cranelift_codegen::ir::{AbiParam, BlockArg, InstBuilder, MemFlagsData, SigRef, Type, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module as _};
use std::cell::Cell;
use std::sync::{Arc, OnceLock};

/// Lane-instructions a kernel runs (over all its launches) before it is compiled.
pub(super) const JIT_HEAT: u64 = 1 << 20;
/// Shortest and longest segments compiled.
const MIN_LEN: usize = 1;
const MAX_LEN: usize = 256;
const NONE: u32 = u32::MAX;
/// Instructions a lane runs in a phase of a segment before it leaves at a loop's head: the most
/// a segment without loops may hold, so that a warp runs no further ahead of the block's other
/// warps in a loop than in straight code (the warp engine then counts them, checks the budget
/// and gives other warps their turn).
const LANE_CAP: i64 = MAX_LEN as i64;

/// A segment's code: (the warp's register rows, the lanes that run it, its loads' memory) ->
/// the lane-instructions it ran (each lane's pc where it left in `LoadEnv::exits`).
type SegFn = unsafe extern "C" fn(rows: *mut u64, on: u32, env: *mut LoadEnv) -> u64;

/// What a segment's run did: the lane-instructions it ran and the pc at which each lane left it.
pub(super) struct Ran {
    pub(super) count: u64,
    pub(super) exits: [u32; WARP],
}

pub(super) struct Segment {
    pub(super) len: u32,
    /// Its first and last instruction's pc, and whether it holds branches (lanes may leave it
    /// at different pcs, or loop in it).
    pub(super) start: u32,
    pub(super) last: u32,
    pub(super) branches: bool,
    /// Its runs that were void (an access it could not make): one that keeps failing (say, a
    /// generic access to local memory in a loop) is left to the warp engine after VOID_LIMIT.
    voids: std::sync::atomic::AtomicU32,
    f: SegFn,
    /// Where it accesses memory, the registers to put back if an access fails (see compile).
    /// (in entry order) for each entry.
    undo: Vec<(u32, Vec<u32>)>,
    /// Its stores in order: space, bytes per element, elements (records of lane l's element k
    /// at the store's first record + l * elements + k).
    stores: Vec<(Space, u8, u8)>,
}

/// A store a segment recorded: where and what (the low bytes). Which lanes made it is in the
/// store's lane mask (LoadEnv::made).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct StoreRec {
    addr: u64,
    value: u64,
}

/// What a segment's loads reach: the global allocation of the last load (checked inline), the
/// block's shared memory, and the launch's allocations for the others. `fault` is set where a
/// load cannot be made here.
#[repr(C)]
pub(super) struct LoadEnv<'m> {
    /// The allocations its global and generic loads checked inline: load k of a segment uses
    /// slot k % SLOTS (a kernel that reads two arrays in turn keeps each in its own).
    slots: [Slot; SLOTS],
    shared: *const u8,
    shared_len: u64,
    /// The warp's lanes' local memory: `local_len` bytes each, lane after lane.
    local: *mut u8,
    local_len: u64,
    fault: u64,
    mem: &'m Global<'m>,
    /// Where the segment records its stores, and for each store instruction of the segment the
    /// lanes that made it (their guard let them), cleared before the run.
    stores: *mut StoreRec,
    made: *mut u32,
    /// The kernel's parameters and symbols (their addresses), the warp's lanes' %tid, and the
    /// launch's and block's other special registers.
    params: *const u8,
    params_len: u64,
    syms: *const u64,
    tids: *const [u32; 3],
    ntid: [u32; 3],
    ctaid: [u32; 3],
    nctaid: [u32; 3],
    warp: u32,
    /// Where each lane left the segment.
    exits: [u32; WARP],
    /// The warp's lanes that have not exited, and the length of its rows (shfl_callback).
    live: u32,
    rows_len: usize,
    /// The pc at which the lanes enter the segment (one of its entries).
    entry: u64,
}

/// Slots of allocations the compiled loads check inline (LoadEnv::slots).
pub(super) const SLOTS: usize = 4;

/// An allocation (its index in Global's regions, base, length, host pointer) compiled loads
/// check inline; length 0 where none.
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    base: u64,
    len: u64,
    ptr: *const u8,
    region: usize,
}

/// What a segment runs on besides the warp's registers (Compiled::run).
pub(super) struct Place<'x, 'm> {
    pub(super) mem: &'m Global<'m>,
    /// The region of the last global access.
    pub(super) hint: &'x mut usize,
    /// The regions of the load slots (LoadEnv::slots), kept from run to run.
    pub(super) slots: &'x mut [usize; SLOTS],
    pub(super) shared: &'x mut [u8],
    /// The warp's lanes' local memory, `per_lane` bytes each from its first lane on.
    pub(super) local: &'x mut [u8],
    pub(super) per_lane: usize,
    pub(super) params: &'x [u8],
    pub(super) syms: &'x [u64],
    pub(super) tids: &'x [[u32; 3]; WARP],
    pub(super) ntid: [u32; 3],
    pub(super) ctaid: [u32; 3],
    pub(super) nctaid: [u32; 3],
    /// The warp's number in its block.
    pub(super) warp: u32,
    /// Its lanes that have not exited.
    pub(super) live: u32,
}

impl<'m> LoadEnv<'m> {
    fn new(at: &mut Place<'_, 'm>, stores: *mut StoreRec, made: *mut u32) -> Self {
        let mut env = LoadEnv {
            slots: [Slot { base: 0, len: 0, ptr: std::ptr::null(), region: 0 }; SLOTS],
            shared: at.shared.as_ptr(),
            shared_len: at.shared.len() as u64,
            local: at.local.as_mut_ptr(),
            local_len: at.per_lane as u64,
            fault: 0,
            mem: at.mem,
            stores,
            made,
            params: at.params.as_ptr(),
            params_len: at.params.len() as u64,
            syms: at.syms.as_ptr(),
            tids: at.tids.as_ptr(),
            ntid: at.ntid,
            ctaid: at.ctaid,
            nctaid: at.nctaid,
            warp: at.warp,
            exits: [0; WARP],
            live: at.live,
            rows_len: 0,
            entry: 0,
        };
        for (k, &i) in at.slots.iter().enumerate() {
            env.use_region(k, i);
        }
        env
    }

    fn use_region(&mut self, slot: usize, i: usize) {
        if let (Some((base, ptr, len)), Some(s)) = (self.mem.region(i), self.slots.get_mut(slot)) {
            *s = Slot { base, ptr, len: len as u64, region: i };
        }
    }

}

/// A load the inline checks did not take: `n` bytes at `addr` of `space` (1: shared, 2:
/// generic, else global), from another allocation, the shared window, or nowhere (fault).
extern "C" fn load_callback(env: *mut LoadEnv, space: u64, addr: u64, n: u64) -> u64 {
    // SAFETY: `env` is the LoadEnv the segment was called with, alive and not otherwise
    // borrowed during the call.
    let env = unsafe { &mut *env };
    let slot = (space >> 8) as usize;
    let space = match space & 0xff {
        1 => Space::Shared,
        2 => Space::Generic,
        // A parameter outside the parameters, or local memory outside the lane's: the
        // interpreter reports it.
        3 => Space::Param,
        4 => Space::Local,
        _ => Space::Global,
    };
    let n = n as usize;
    let v = callback(|| match resolve(space, addr) {
        (Space::Global, a) => {
            let mut hint = env.slots.get(slot).map_or(0, |s| s.region);
            let v = env.mem.load(a, n, &mut hint).ok();
            env.use_region(slot, hint);
            v.unwrap_or_else(|| {
                env.fault = 1;
                0
            })
        }
        (Space::Shared, a) => {
            // SAFETY: `shared` and `shared_len` describe the block's shared memory, which the
            // caller does not touch while the segment runs.
            let shared = unsafe { std::slice::from_raw_parts(env.shared, env.shared_len as usize) };
            read_le(shared, a, n).unwrap_or_else(|| {
                env.fault = 1;
                0
            })
        }
        _ => {
            env.fault = 1;
            0
        }
    });
    v
}

/// A kernel's compiled segments.
pub(crate) struct Compiled {
    /// The segment starting at each pc (NONE: none does), and the one without branches there
    /// (where other lanes of the warp wait inside the first).
    at: Vec<u32>,
    straight: Vec<u32>,
    segs: Vec<Segment>,
    /// Registers a warp's rows must hold: every one a segment touches is below. Symbols the
    /// same.
    regs: usize,
    syms: usize,
    /// The instructions the code calls back with (pointers into this slice are in the code).
    _ops: Box<[Fast]>,
    code: Option<Code>,
}

/// The JIT module owning the code's memory.
struct Code(JITModule);

// SAFETY: after finalize_definitions the module is never used again except to free its
// memory in Compiled's Drop (with exclusive access); the code it holds is immutable and
// executable only, and the functions are reentrant (they touch only their arguments).
unsafe impl Send for Code {}
// SAFETY: as for Send: shared references never reach the module.
unsafe impl Sync for Code {}

impl Drop for Compiled {
    fn drop(&mut self) {
        if let Some(Code(module)) = self.code.take() {
            // SAFETY: a Compiled is reached only through its Kernel (launches borrow the
            // kernel for their whole run), so being dropped, none of its functions runs or
            // will run.
            unsafe { module.free_memory() };
        }
    }
}

/// The most registers a looping phase keeps in machine registers for a lane's whole run of it
/// (segment).
const PHASE_REGS: usize = 24;

/// Void runs after which a segment is no longer run (Segment::voids).
const VOID_LIMIT: u32 = 16;

impl Segment {
    /// Whether it holds no store.
    pub(super) fn stores_nothing(&self) -> bool {
        self.stores.is_empty()
    }

    /// Whether it is still worth running (it has not failed VOID_LIMIT times).
    pub(super) fn usable(&self) -> bool {
        self.voids.load(Ordering::Relaxed) < VOID_LIMIT
    }
}

impl Compiled {
    /// The segment starting at `pc`, if any.
    #[inline]
    pub(super) fn at(&self, pc: u32) -> Option<&Segment> {
        match self.at.get(pc as usize) {
            Some(&i) if i != NONE => self.segs.get(i as usize),
            _ => None,
        }
    }

    /// The segment without branches starting at `pc` (it ends at the next branch target), if
    /// any.
    #[inline]
    pub(super) fn straight_at(&self, pc: u32) -> Option<&Segment> {
        match self.straight.get(pc as usize) {
            Some(&i) if i != NONE => self.segs.get(i as usize),
            _ => None,
        }
    }

    /// Runs `seg` for the lanes of `on` on a warp's rows (register r of lane l at r * 32 + l),
    /// its memory the launch's allocations (`hint`: the region of the last access) and the
    /// block's shared memory. None if one of its accesses could not be made (nothing stored,
    /// the rows as they were: the caller runs the instructions itself); Err if a callback into
    /// the interpreter's functions panicked (a bug, reported as such).
    pub(super) fn run(&self, seg: &Segment, pc: u32, rows: &mut [u64], on: u32, mut at: Place) -> Result<Option<Ran>, ExecError> {
        if rows.len() < self.regs * WARP {
            return Err(ExecError::Unsupported(format!("compiled segment: {} register rows, {} needed", rows.len() / WARP, self.regs)));
        }
        // Each lane of `on` has its local memory in `at.local`.
        if at.syms.len() < self.syms || at.local.len() < (WARP - on.leading_zeros() as usize) * at.per_lane {
            return Ok(None);
        }
        let records: usize = seg.stores.iter().map(|s| s.2 as usize * WARP).sum();
        SCRATCH.with_borrow_mut(|(undo, recs, made)| {
            undo.clear();
            // A pc that is no entry of the segment: the caller runs the instructions itself.
            let Ok(i) = seg.undo.binary_search_by_key(&pc, |u| u.0) else { return Ok(None) };
            let keep = &seg.undo[i].1[..];
            for &r in keep {
                undo.extend_from_slice(&rows[r as usize * WARP..][..WARP]);
            }
            if recs.len() < records {
                recs.resize(records, StoreRec::default());
            }
            made.clear();
            made.resize(seg.stores.len(), 0);
            let mut env = LoadEnv::new(&mut at, recs.as_mut_ptr(), made.as_mut_ptr());
            env.rows_len = rows.len();
            env.entry = pc as u64;
            let Place { mem, hint, shared, local, per_lane, slots: at_slots, .. } = at;
            // SAFETY: the code reads and writes rows[r * 32 + l] for l < 32 and registers r
            // below self.regs (translate_one checked each against the kernel's count, and
            // compile recorded the largest), which the check above keeps within `rows`; its
            // loads read memory only where `env` says an allocation, the shared memory or the
            // lane's local memory is (lanes of `on`, whose local memory the check above keeps
            // within `local`), after checking the access lies inside (or through
            // load_callback, which checks);
            // it writes store records only below `records` (each store's elements for 32 lanes)
            // and lane masks only below the segment's count of stores; it writes local memory
            // (local_direct segments) only inside the `per_lane` bytes of a lane of `on`, after
            // checking the access lies inside, which the check above keeps within `local`;
            // it reads symbols below self.syms (checked above), %tid of lanes below 32.
            // A lane's exit pc is written where it leaves; a lane's loop is cut at LANE_CAP.
            let count = unsafe { (seg.f)(rows.as_mut_ptr(), on, &mut env) };
            for (h, s) in at_slots.iter_mut().zip(&env.slots) {
                *h = s.region;
            }
            if CALLBACK_PANICKED.with(|p| p.replace(false)) {
                return Err(ExecError::Unsupported("an instruction of a compiled segment panicked in the interpreter's function".into()));
            }
            // Global and generic stores lie inside memory the warp may write (the code checked
            // shared and local ones itself).
            let mut fits = || {
                let mut first = 0;
                seg.stores.iter().zip(made.iter()).all(|(&(space, n, elems), &m)| {
                    let (n, elems) = (n as usize, elems as usize);
                    let lanes = if matches!(space, Space::Shared | Space::Local) { 0 } else { m & on };
                    let ok = super::warp::lanes_of(lanes).all(|l| {
                        recs[first + l * elems..][..elems].iter().all(|r| match resolve(space, r.addr) {
                            (Space::Global, a) => mem.contains(a, n, hint),
                            (Space::Shared, a) => a.checked_add(n as u64).is_some_and(|e| e <= shared.len() as u64),
                            _ => false,
                        })
                    });
                    first += elems * WARP;
                    ok
                })
            };
            if env.fault != 0 || !fits() {
                for (k, &r) in keep.iter().enumerate() {
                    rows[r as usize * WARP..][..WARP].copy_from_slice(&undo[k * WARP..][..WARP]);
                }
                if seg.voids.fetch_add(1, Ordering::Relaxed) + 1 == VOID_LIMIT {
                    tracing::debug!("a compiled segment of {} instructions failed {VOID_LIMIT} times; the warp engine runs it from now on", seg.len);
                }
                return Ok(None);
            }
            // Every store fits: made in the interpreter's order (local and shared ones checked
            // by the code, global and generic ones above).
            let mut first = 0;
            for (&(space, n, elems), &m) in seg.stores.iter().zip(made.iter()) {
                let (n, elems) = (n as usize, elems as usize);
                for l in super::warp::lanes_of(m & on) {
                    let mine = &recs[first + l * elems..][..elems];
                    match space {
                        Space::Local => {
                            let lane = &mut local[l * per_lane..][..per_lane];
                            mine.iter().for_each(|r| _ = write_le(lane, r.addr, n, r.value));
                        }
                        Space::Shared => mine.iter().for_each(|r| _ = write_le(shared, r.addr, n, r.value)),
                        _ => mine.iter().for_each(|r| match resolve(space, r.addr) {
                            (Space::Global, a) => _ = mem.store(a, n, r.value, hint),
                            (_, a) => _ = write_le(shared, a, n, r.value),
                        }),
                    }
                }
                first += elems * WARP;
            }
            Ok(Some(Ran { count, exits: env.exits }))
        })
    }
}

/// A kernel's slot for its compiled form, and its heat (lane-instructions run so far).
#[derive(Default)]
pub struct JitSlot {
    heat: std::sync::atomic::AtomicU64,
    compiled: OnceLock<Option<Arc<Compiled>>>,
}

impl Clone for JitSlot {
    fn clone(&self) -> Self {
        JitSlot::default()
    }
}

impl std::fmt::Debug for JitSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JitSlot(heat {}, compiled {})", self.heat.load(Ordering::Relaxed), self.compiled.get().is_some())
    }
}

impl JitSlot {
    /// Counts `n` more lane-instructions run.
    pub(super) fn heat(&self, n: u64) {
        self.heat.fetch_add(n, Ordering::Relaxed);
    }

    /// The kernel's compiled segments once it has run `threshold` lane-instructions (`now` of
    /// them by this caller, not yet counted), compiled here by the first caller to get there.
    pub(super) fn ready(&self, k: &Kernel, fast: &[Fast], now: u64, threshold: u64) -> Option<&Compiled> {
        if let Some(c) = self.compiled.get() {
            return c.as_deref();
        }
        if self.heat.load(Ordering::Relaxed).saturating_add(now) < threshold {
            return None;
        }
        self.compiled
            .get_or_init(|| {
                let started = std::time::Instant::now();
                match compile(k, fast) {
                    Ok(c) => {
                        let covered: u32 = c.segs.iter().map(|s| s.len).sum();
                        let undo: usize = c.segs.iter().flat_map(|s| s.undo.iter().map(|u| u.1.len())).max().unwrap_or(0);
                        SIM_TOTALS.kernels_compiled.fetch_add(1, Ordering::Relaxed);
                        SIM_TOTALS.compile_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        tracing::debug!(
                            micros = started.elapsed().as_micros() as u64,
                            "{}: compiled {} segments, {covered} of its {} instructions; at most {undo} registers to keep for a void run",
                            k.name,
                            c.segs.len(),
                            k.insts.len()
                        );
                        tracing::trace!("{}: segments {:?}", k.name, c.segs.iter().map(|s| (s.start, s.last + 1, if c.at(s.start).is_some_and(|t| std::ptr::eq(t, s)) { "region" } else { "straight" })).collect::<Vec<_>>());
                        (!c.segs.is_empty()).then(|| Arc::new(c))
                    }
                    Err(e) => {
                        tracing::warn!("{}: not compiled ({e}); it runs on the warp engine", k.name);
                        None
                    }
                }
            })
            .as_deref()
    }
}

thread_local! {
    static CALLBACK_PANICKED: Cell<bool> = const { Cell::new(false) };
    /// The rows a running segment may write, as they were, and its store records
    /// (Compiled::run).
    static SCRATCH: std::cell::RefCell<(Vec<u64>, Vec<StoreRec>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Runs an interpreter function for compiled code: a panic must not unwind through it.
fn callback(f: impl FnOnce() -> u64) -> u64 {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        CALLBACK_PANICKED.with(|p| p.set(true));
        0
    })
}

/// A pure instruction's value as the interpreter computes it (normalized to its destination).
extern "C" fn pure_callback(op: *const Fast, a: u64, b: u64, c: u64) -> u64 {
    // SAFETY: `op` points into the Compiled's `_ops`, which outlives its code.
    let op = unsafe { &*op };
    callback(|| match *op {
        Fast::Pure { eval, ty, dty, .. } => normalize(dty, pure_value(eval, ty, a, b, c)),
        _ => 0,
    })
}

/// The shuffle `op` at `pc` between two phases of a segment, for the lanes of `on` on the
/// warp's rows: made (1) where every one of them left the phase at it and the warp engine would
/// make it at once (warp::shfl_warp); else 0, nothing done.
extern "C" fn shfl_callback(env: *mut LoadEnv, rows: *mut u64, op: *const Fast, pc: u64, on: u64) -> u64 {
    // SAFETY: `env` is the LoadEnv the segment was called with, alive and not otherwise
    // borrowed during the call; `op` points into the Compiled's `_ops`, which outlives its code.
    let (env, op) = unsafe { (&mut *env, &*op) };
    let on = on as u32;
    if (0..WARP).any(|l| on >> l & 1 != 0 && env.exits[l] as u64 != pc) {
        return 0;
    }
    // SAFETY: `rows` is the warp's rows the segment was called with (`rows_len` words), which
    // the caller does not touch while the segment runs.
    let rows = unsafe { std::slice::from_raw_parts_mut(rows, env.rows_len) };
    callback(|| super::warp::shfl_warp(rows, on, env.live, op) as u64)
}

/// setp's comparison as the interpreter makes it (1 or 0).
extern "C" fn compare_callback(op: *const Fast, a: u64, b: u64) -> u64 {
    // SAFETY: as in pure_callback.
    let op = unsafe { &*op };
    callback(|| match *op {
        Fast::Setp { cmp, ty, ftz, .. } => compare_ftz(cmp, ty, ftz, a, b) as u64,
        _ => 0,
    })
}

fn compilable(f: &Fast) -> bool {
    let sized = |ty: Ty| matches!(ty.bytes(), 1 | 2 | 4 | 8);
    match *f {
        Fast::Pure { .. } | Fast::Setp { .. } | Fast::Pack { .. } | Fast::Unpack { .. } => true,
        Fast::Ld { space, ty, .. } | Fast::LdV { space, ty, .. } => matches!(space, Space::Global | Space::Shared | Space::Local | Space::Generic | Space::Param) && sized(ty),
        Fast::St { space, ty, .. } | Fast::StV { space, ty, .. } => matches!(space, Space::Global | Space::Shared | Space::Local | Space::Generic) && sized(ty),
        Fast::Sym { .. } => true,
        Fast::Sreg { s, .. } => matches!(s, Sreg::Tid(0..=2) | Sreg::Ntid(0..=2) | Sreg::Ctaid(0..=2) | Sreg::Nctaid(0..=2) | Sreg::LaneId | Sreg::WarpId),
        _ => false,
    }
}

fn is_load(f: &Fast) -> bool {
    matches!(f, Fast::Ld { .. } | Fast::LdV { .. })
}

fn is_store(f: &Fast) -> bool {
    matches!(f, Fast::St { .. } | Fast::StV { .. })
}

/// Whether the segment [start, end) makes its local stores at once rather than recording
/// them: where nothing in it reads local memory (no local or generic load) and no generic
/// store could reach a lane's local memory out of order. A lane's local memory is its own, so
/// no other lane sees the store; and if the run is void, the warp engine runs the segment
/// again from its start, on the registers it had, storing the same values: no load of the
/// segment saw the first ones. (ggml's mul_mat_vec keeps its partial sums in a local array.)
fn local_direct(ops: &[Fast], start: usize, end: usize) -> bool {
    !ops[start..end].iter().any(|f| match f {
        Fast::Ld { space, .. } | Fast::LdV { space, .. } => matches!(space, Space::Local | Space::Generic),
        Fast::St { space, .. } | Fast::StV { space, .. } => *space == Space::Generic,
        _ => false,
    })
}

/// The memories an access may reach, as bits (global 1, shared 2, local 4; generic any of
/// them, parameters none: nothing stores there). A load may follow a store in a segment only
/// where the two cannot meet: the segment makes its stores after its lanes have run.
fn reach(f: &Fast) -> u8 {
    match f {
        Fast::Ld { space, .. } | Fast::LdV { space, .. } | Fast::St { space, .. } | Fast::StV { space, .. } => match space {
            Space::Global => 1,
            Space::Shared => 2,
            Space::Local => 4,
            Space::Param => 0,
            _ => 7,
        },
        _ => 0,
    }
}

/// Whether `f` loads from a memory that the stores (their `reach` bits) may have written.
fn loads_stored(f: &Fast, stored: u8) -> bool {
    is_load(f) && reach(f) & stored != 0
}

/// The registers an instruction reads and writes.
fn regs_of(f: &Fast, guard: Option<(u32, bool)>, read: &mut Vec<u32>, written: &mut Vec<u32>) {
    let mut src = |s: &Src| {
        if let Src::Reg(r) = s {
            read.push(*r);
        }
    };
    match f {
        Fast::Pure { d, a, b, c, .. } => {
            [a, b, c].into_iter().for_each(&mut src);
            written.push(*d);
        }
        Fast::Setp { p, q, a, b, comb, .. } => {
            [a, b].into_iter().for_each(&mut src);
            if let Some((_, c, _)) = comb {
                read.push(*c);
            }
            written.extend(p.iter().chain(q.iter()));
        }
        Fast::Pack { n, d, a, .. } => {
            a.iter().take(*n as usize).for_each(&mut src);
            written.push(*d);
        }
        Fast::Unpack { n, d, a, .. } => {
            src(a);
            written.extend(d.iter().take(*n as usize).flatten());
        }
        Fast::Sreg { d, .. } | Fast::Sym { d, .. } => written.push(*d),
        Fast::Shfl { d, p, a, b, c, mask, .. } => {
            [a, b, c, mask].into_iter().for_each(&mut src);
            written.extend(d.iter().chain(p.iter()));
        }
        Fast::Ld { d, base, .. } => {
            if let AddrBase::Reg(r) = base {
                read.push(*r);
            }
            written.push(*d);
        }
        Fast::LdV { n, d, base, .. } => {
            if let AddrBase::Reg(r) = base {
                read.push(*r);
            }
            written.extend(d.iter().take(*n as usize).flatten());
        }
        Fast::St { base, a, .. } => {
            if let AddrBase::Reg(r) = base {
                src(&Src::Reg(*r));
            }
            src(a);
        }
        Fast::StV { n, base, a, .. } => {
            if let AddrBase::Reg(r) = base {
                src(&Src::Reg(*r));
            }
            a.iter().take(*n as usize).for_each(&mut src);
        }
        _ => {}
    }
    if let Some((p, _)) = guard {
        read.push(p);
    }
}

/// Where each segment of `ops` starts and ends ([start, end)).
///
/// A segment holds compilable instructions and branches. Its lanes run it one after another,
/// so nothing in it may let one lane see what another did there: no load after a store to the
/// same memory (in pc order, which forward branches keep; `reach`), and no store at all in a
/// segment that loops (a lane's later turn of the loop would see the stores of lanes before
/// it, which the warp's lockstep would not have made yet). Segments start where the compilable code does; a lane may enter
/// one at any of its blocks (see entries).
fn regions(ops: &[Fast]) -> Vec<(usize, usize)> {
    // A segment may hold shuffles (made between its phases), but starts with none.
    let begins = |f: &Fast| compilable(f) || matches!(f, Fast::Bra(_));
    let ok = |f: &Fast| begins(f) || matches!(f, Fast::Shfl { .. });
    let target = branch_targets(ops);
    let extend = |start: usize| {
        // The first store, and the memories stored to.
        let (mut pc, mut stored, mut reached, mut looped) = (start, None, 0, false);
        while pc < ops.len() && pc - start < MAX_LEN && ok(&ops[pc]) {
            let f = &ops[pc];
            let back = matches!(*f, Fast::Bra(t) if (start..=pc).contains(&(t as usize)));
            if let Some(first) = stored.filter(|_| loads_stored(f, reached) || back).or_else(|| (looped && is_store(f)).then_some(pc)) {
                // Cut at the last block start after the first store, if any: the loop or the
                // loads there then begin a segment of their own (a loop's head that came after
                // a store would otherwise only be reached through the warp engine).
                if let Some(t) = (first + 1..pc).rev().find(|&t| target[t]) {
                    pc = t;
                }
                break;
            }
            looped |= back;
            if is_store(f) && stored.is_none() {
                stored = Some(pc);
            }
            reached |= reach(f) * is_store(f) as u8;
            pc += 1;
        }
        // A branch alone is run faster by the warp engine.
        let work = ops[start..pc].iter().any(|f| !matches!(f, Fast::Bra(_)));
        (work && pc - start >= MIN_LEN).then_some(pc)
    };
    let mut runs = Vec::new();
    let mut pc = 0;
    while pc < ops.len() {
        if !begins(&ops[pc]) {
            pc += 1;
            continue;
        }
        match extend(pc) {
            Some(end) => {
                runs.push((pc, end));
                pc = end;
            }
            None => pc += 1,
        }
    }
    runs
}

/// Whether each pc of `ops` (and the one after its end) is a branch's target.
fn branch_targets(ops: &[Fast]) -> Vec<bool> {
    let mut target = vec![false; ops.len() + 1];
    for f in ops {
        if let Fast::Bra(t) = f {
            if let Some(x) = target.get_mut(*t as usize) {
                *x = true;
            }
        }
    }
    target
}

/// The segments without branches: each starts at a branch target or where compilable code
/// does, and ends before the next branch target, branch or other instruction (and before a load
/// after a store to the same memory).
fn straight_runs(ops: &[Fast]) -> Vec<(usize, usize)> {
    let target = branch_targets(ops);
    let mut runs = Vec::new();
    let mut pc = 0;
    while pc < ops.len() {
        if !compilable(&ops[pc]) {
            pc += 1;
            continue;
        }
        let start = pc;
        let stores = |f: &Fast| reach(f) * is_store(f) as u8;
        let mut stored = stores(&ops[pc]);
        pc += 1;
        while pc < ops.len() && pc - start < MAX_LEN && !target[pc] && compilable(&ops[pc]) && !loads_stored(&ops[pc], stored) {
            stored |= stores(&ops[pc]);
            pc += 1;
        }
        if pc - start >= MIN_LEN {
            runs.push((start, pc));
        }
    }
    runs
}

/// The basic blocks of the segment [start, end): each [first, stop), in pc order, split at
/// every branch target inside it (of any branch of the kernel), after every branch, and around
/// every shuffle.
fn blocks_of(ops: &[Fast], start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut leaders = std::collections::BTreeSet::from([start, end]);
    // Every branch target inside, wherever the branch is (lanes arriving from elsewhere enter
    // there).
    for f in ops {
        if let Fast::Bra(t) = *f {
            if (start..end).contains(&(t as usize)) {
                leaders.insert(t as usize);
            }
        }
    }
    for (pc, f) in ops.iter().enumerate().take(end).skip(start) {
        match *f {
            Fast::Bra(_) => {
                leaders.insert(pc + 1);
            }
            Fast::Shfl { .. } => {
                leaders.insert(pc);
                leaders.insert(pc + 1);
            }
            _ => {}
        }
    }
    let bounds: Vec<usize> = leaders.into_iter().collect();
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Where lanes may enter the segment [start, end): the start of each of its blocks but its
/// shuffles (the warp engine makes a shuffle the segment could not, and the lanes enter after
/// it). A lane arriving at any pc the segment holds thus finds code there, wherever it comes
/// from (a branch from elsewhere, a loop cut at LANE_CAP, a shuffle).
fn entries(ops: &[Fast], start: usize, end: usize) -> impl Iterator<Item = usize> + '_ {
    blocks_of(ops, start, end).into_iter().map(|(f, _)| f).filter(move |&f| !matches!(ops[f], Fast::Shfl { .. }))
}

/// Where a block's last instruction may send a lane: a branch's target, and the next pc unless
/// the branch has no guard.
fn successors(k: &Kernel, ops: &[Fast], stop: usize) -> impl Iterator<Item = usize> {
    let (taken, on) = match ops[stop - 1] {
        Fast::Bra(t) => (Some(t as usize), k.insts[stop - 1].guard.is_some()),
        _ => (None, true),
    };
    taken.into_iter().chain(on.then_some(stop))
}

/// For each entry of the segment [start, end), the registers it writes whose value from before
/// a lane entering there may read: liveness at the entry (a guarded write reads the old value),
/// over its blocks.
fn exposed_writes(k: &Kernel, ops: &[Fast], start: usize, end: usize) -> Vec<(u32, Vec<u32>)> {
    use std::collections::HashSet;
    let blocks = blocks_of(ops, start, end);
    let mut written = HashSet::new();
    // Each block's reads before its own writes, and its writes.
    let (mut uses, mut defs) = (Vec::new(), Vec::new());
    for &(first, stop) in &blocks {
        let (mut used, mut defined) = (HashSet::new(), HashSet::new());
        for pc in first..stop {
            let (mut r, mut w) = (Vec::new(), Vec::new());
            let guard = k.insts[pc].guard;
            regs_of(&ops[pc], guard, &mut r, &mut w);
            let old_read = if guard.is_some() { r.iter().chain(&w) } else { r.iter().chain(&[]) };
            used.extend(old_read.filter(|x| !defined.contains(*x)).copied().collect::<Vec<_>>());
            if guard.is_none() {
                defined.extend(w.iter().copied());
            }
            written.extend(w);
        }
        uses.push(used);
        defs.push(defined);
    }
    let index = |pc: usize| blocks.iter().position(|&(f, _)| f == pc);
    let mut live: Vec<HashSet<u32>> = vec![HashSet::new(); blocks.len()];
    loop {
        let mut changed = false;
        for i in (0..blocks.len()).rev() {
            let mut out = HashSet::new();
            for t in successors(k, ops, blocks[i].1) {
                if let Some(j) = index(t) {
                    out.extend(live[j].iter().copied());
                }
            }
            let mut inn: HashSet<u32> = out.difference(&defs[i]).copied().collect();
            inn.extend(uses[i].iter().copied());
            if inn.len() != live[i].len() {
                live[i] = inn;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    entries(ops, start, end)
        .filter_map(|e| {
            let b = index(e)?;
            let mut out: Vec<u32> = written.iter().copied().filter(|r| live[b].contains(r)).collect();
            out.sort_unstable();
            Some((e as u32, out))
        })
        .collect()
}

/// VGPU_SIM_PERF_MAP=1: each compiled segment is written to perf's map of JIT code.
static PERF_MAP: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| std::env::var_os("VGPU_SIM_PERF_MAP").is_some_and(|v| v == "1"));

fn compile(k: &Kernel, fast: &[Fast]) -> Result<Compiled, String> {
    let ops: Box<[Fast]> = fast.into();
    let regions = regions(&ops);
    // A segment without branches where the one holding that pc may be refused or given up:
    // one that stores (lanes inside it may not join the group), or makes generic accesses (one
    // to local memory voids every run, VOID_LIMIT of which end its use).
    let generic = |f: &Fast| matches!(f, Fast::Ld { space: Space::Generic, .. } | Fast::LdV { space: Space::Generic, .. } | Fast::St { space: Space::Generic, .. } | Fast::StV { space: Space::Generic, .. });
    let refusable = |at: usize| match regions.iter().find(|r| (r.0..r.1).contains(&at)) {
        Some(&(s, e)) => ops[s..e].iter().any(|f| is_store(f) || generic(f)),
        None => true,
    };
    let straight: Vec<(usize, usize)> = straight_runs(&ops).into_iter().filter(|r| refusable(r.0)).collect();
    let mut runs: Vec<(usize, usize)> = regions.iter().chain(&straight).copied().collect();
    runs.sort_unstable();
    runs.dedup();
    let syms = ops
        .iter()
        .filter_map(|f| match f {
            Fast::Ld { base: AddrBase::Sym(s), .. }
            | Fast::LdV { base: AddrBase::Sym(s), .. }
            | Fast::St { base: AddrBase::Sym(s), .. }
            | Fast::StV { base: AddrBase::Sym(s), .. }
            | Fast::Sym { s, .. } => Some(*s as usize + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let n = ops.len();
    let mut compiled = Compiled { at: vec![NONE; n], straight: vec![NONE; n], segs: Vec::new(), regs: 0, syms, _ops: ops, code: None };
    if runs.is_empty() {
        return Ok(compiled);
    }

    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
    flags.set("is_pic", "false").map_err(|e| e.to_string())?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| e.to_string())?;
    // The IR is built by the code above, not by users: checking it costs compile time only.
    flags.set("enable_verifier", "false").map_err(|e| e.to_string())?;
    let isa = cranelift_native::builder()?.finish(settings::Flags::new(flags)).map_err(|e| e.to_string())?;
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let ptr = module.target_config().pointer_type();
    let mut ids = Vec::new();
    let facts = Facts::of(k, &compiled._ops);
    for (n, &(start, end)) in runs.iter().enumerate() {
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(I32));
        sig.params.push(AbiParam::new(ptr));
        sig.returns.push(AbiParam::new(I64));
        let id = module.declare_function(&format!("seg{n}"), Linkage::Local, &sig).map_err(|e| e.to_string())?;
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut pure_sig = module.make_signature();
        pure_sig.params.extend([AbiParam::new(ptr), AbiParam::new(I64), AbiParam::new(I64), AbiParam::new(I64)]);
        pure_sig.returns.push(AbiParam::new(I64));
        let mut cmp_sig = module.make_signature();
        cmp_sig.params.extend([AbiParam::new(ptr), AbiParam::new(I64), AbiParam::new(I64)]);
        cmp_sig.returns.push(AbiParam::new(I64));
        let mut load_sig = module.make_signature();
        load_sig.params.extend([AbiParam::new(ptr), AbiParam::new(I64), AbiParam::new(I64), AbiParam::new(I64)]);
        load_sig.returns.push(AbiParam::new(I64));
        let mut shfl_sig = module.make_signature();
        shfl_sig.params.extend([AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(I64), AbiParam::new(I64), AbiParam::new(I64)]);
        shfl_sig.returns.push(AbiParam::new(I64));
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let sigs = Sigs {
                pure: b.import_signature(pure_sig),
                cmp: b.import_signature(cmp_sig),
                load: b.import_signature(load_sig),
                shfl: b.import_signature(shfl_sig),
            };
            let regs = segment(&mut b, k, &compiled._ops, start, end, sigs, &facts);
            compiled.regs = compiled.regs.max(regs);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        module.define_function(id, &mut ctx).map_err(|e| format!("{e:?}"))?;
        let size = ctx.compiled_code().map_or(0, |c| c.code_info().total_size);
        module.clear_context(&mut ctx);
        ids.push((id, size));
    }
    module.finalize_definitions().map_err(|e| e.to_string())?;
    let mut perf_map = String::new();
    for (&(start, end), (id, size)) in runs.iter().zip(ids) {
        let code = module.get_finalized_function(id);
        if *PERF_MAP {
            perf_map += &format!("{:x} {size:x} vgpu {} [{start}, {end})\n", code as usize, k.name);
        }
        // SAFETY: the function was declared with exactly this signature (pointer, i32,
        // pointer) -> i64 in the host's calling convention.
        let f = unsafe { std::mem::transmute::<*const u8, SegFn>(code) };
        // The registers to put back if an access fails: those it writes whose value before the
        // segment it may read (on some path, a read before any write, or a guarded write,
        // which may keep the old value). A lane stops at its failed access, so up to there it
        // wrote only what the warp engine writes again, before reading it, when it runs the
        // segment's instructions itself.
        let branches = compiled._ops[start..end].iter().any(|f| matches!(f, Fast::Bra(_)));
        let written = exposed_writes(k, &compiled._ops, start, end);
        let memory = compiled._ops[start..end].iter().any(|f| is_load(f) || is_store(f));
        let direct = local_direct(&compiled._ops, start, end);
        let stores = compiled._ops[start..end]
            .iter()
            .filter_map(|f| match *f {
                Fast::St { space, .. } | Fast::StV { space, .. } if direct && space == Space::Local => None,
                Fast::St { space, ty, .. } => Some((space, ty.bytes() as u8, 1)),
                Fast::StV { space, ty, n, .. } => Some((space, ty.bytes() as u8, n)),
                _ => None,
            })
            .collect();
        let i = compiled.segs.len() as u32;
        if regions.contains(&(start, end)) {
            for e in entries(&compiled._ops, start, end) {
                compiled.at[e] = i;
            }
        }
        if straight.contains(&(start, end)) {
            compiled.straight[start] = i;
        }
        compiled.segs.push(Segment { len: (end - start) as u32, start: start as u32, last: end as u32 - 1, branches, voids: Default::default(), f, undo: if memory { written } else { written.into_iter().map(|(e, _)| (e, Vec::new())).collect() }, stores });
    }
    if !perf_map.is_empty() {
        // perf's map of JIT code (/tmp/perf-PID.map): profiles name each segment.
        use std::io::Write;
        let path = format!("/tmp/perf-{}.map", std::process::id());
        let _ = std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| f.write_all(perf_map.as_bytes()));
    }
    compiled.code = Some(Code(module));
    Ok(compiled)
}

/// What the whole kernel tells the code of each segment.
struct Facts {
    /// Registers that hold one constant (the lane, clamp and mask of ggml's shuffles).
    consts: HashMap<u32, u64>,
    /// Whether some instruction reads each register.
    read: Vec<bool>,
    /// The load slot (LoadEnv::slots) of global and generic loads by their address register:
    /// one per kernel parameter the address derives from, so that loads from different
    /// arrays keep to their own slots in every segment (ggml's quantized mul_mat_vec reads
    /// weights and vector in turn; slots taken load by load made them evict each other).
    slot_of: HashMap<u32, usize>,
    /// Symbols whose address is the same in every launch (parameters, shared variables): that
    /// address (exec::symbol_values' for the kernel).
    syms: Vec<Option<u64>>,
    /// The parameters' size: every launch gives at least that many bytes (launch checks).
    param_bytes: u64,
}

impl Facts {
    fn of(k: &Kernel, ops: &[Fast]) -> Facts {
        let consts = match k.zeroed.get_or_init(|| super::unwritten::read_before_written(k)) {
            Some(zeroed) => super::unwritten::constants(k, zeroed, |i| match ops.get(i) {
                Some(&Fast::Pure { eval: Eval::Mov, a: Src::Imm(v), dty, .. }) => Some(super::normalize(dty, v)),
                _ => None,
            }),
            None => HashMap::new(),
        };
        // Each register's root, where it is a parameter's value moved, converted (cvta) or
        // offset (64-bit add or sub): the parameter (its symbol and offset). Twice over, for
        // loops.
        let mut root: HashMap<u32, (Option<u32>, u64)> = HashMap::new();
        for _ in 0..2 {
            for op in ops {
                let from = match *op {
                    Fast::Ld { space: Space::Param, d, base, off, .. } => Some((d, (if let AddrBase::Sym(x) = base { Some(x) } else { None }, off))),
                    Fast::Pure { eval: Eval::Mov | Eval::Cvta(..), d, a: Src::Reg(x), .. } => root.get(&x).map(|&r| (d, r)),
                    Fast::Pure { eval: Eval::Bin(Bin::Add | Bin::Sub, _), ty, d, a, b, .. } if ty.bits() == 64 => {
                        let of = |s: Src| if let Src::Reg(x) = s { root.get(&x).copied() } else { None };
                        of(a).or_else(|| of(b)).map(|r| (d, r))
                    }
                    _ => None,
                };
                if let Some((d, r)) = from {
                    root.entry(d).or_insert(r);
                }
            }
        }
        let (mut slot_of, mut roots) = (HashMap::new(), HashMap::new());
        for op in ops {
            if let Fast::Ld { space, base: AddrBase::Reg(r), .. } | Fast::LdV { space, base: AddrBase::Reg(r), .. } = *op {
                if let (false, Some(&x)) = (matches!(space, Space::Param | Space::Shared | Space::Local), root.get(&r)) {
                    let n = roots.len();
                    let slot = *roots.entry(x).or_insert(n % SLOTS);
                    slot_of.insert(r, slot);
                }
            }
        }
        let syms = k
            .syms
            .iter()
            .map(|s| match *s {
                SymKind::Param(off) | SymKind::Shared(off) => Some(off as u64),
                SymKind::DynShared => Some(k.dynamic_shared_offset as u64),
                _ => None,
            })
            .collect();
        Facts { consts, read: super::unwritten::read_somewhere(k), slot_of, syms, param_bytes: k.param_bytes as u64 }
    }
}

/// Builds the function of the segment [start, end): for each of its phases (the stretches
/// between its shuffles), a loop over the 32 lanes that runs the phase's instructions on each
/// active one, its branches as the lane's own jumps; between phases, the shuffle on the warp's
/// rows (shfl_callback), once every lane has arrived at it. Each basic block loads the registers
/// it touches from the rows, runs on machine registers, and stores the ones it writes back, so a
/// lane pays only for the blocks it runs. A lane leaves a phase where a branch or the phase's
/// end takes it out, or at a loop's head once it has run LANE_CAP instructions; its pc there
/// goes to `exits`, and the run ends after a phase its lanes did not all leave at its shuffle
/// (or whose shuffle cannot be made here). An access that fails ends the whole run at once (it
/// is void then: Compiled::run puts back what the caller must see).
/// Returns how many registers it needs (its largest + 1).
fn segment(b: &mut FunctionBuilder<'_>, k: &Kernel, ops: &[Fast], start: usize, end: usize, sigs: Sigs, facts: &Facts) -> usize {
    let entry = b.create_block();
    let done = b.create_block();
    let abort = b.create_block();
    b.append_block_params_for_function_params(entry);
    let total = b.declare_var(I64);
    let count = b.declare_var(I64);
    // Lanes that left the current phase at its shuffle.
    let arrived = b.declare_var(I64);
    let local_direct = local_direct(ops, start, end);
    let flags = MemFlagsData::trusted();

    b.switch_to_block(entry);
    let (rows, on32, env) = (b.block_params(entry)[0], b.block_params(entry)[1], b.block_params(entry)[2]);
    let on = b.ins().uextend(I64, on32);
    let zero = b.ins().iconst(I64, 0);
    b.def_var(total, zero);

    // The phases: [first, stop) and the shuffle at stop (none after the last).
    let mut phases = Vec::new();
    let mut first = start;
    for pc in start..end {
        if matches!(ops[pc], Fast::Shfl { .. }) {
            phases.push((first, pc, true));
            first = pc + 1;
        }
    }
    phases.push((first, end, false));

    let mut largest = 0;
    let (mut stores, mut store_ops, mut loads) = (0, 0, 0);
    // Into the phase holding the entry; there, each lane into the entry's block (after a
    // shuffle, `resume` matches none: the next phase from its start).
    let resume = b.declare_var(I64);
    let entry_pc = b.ins().load(I64, flags, env, std::mem::offset_of!(LoadEnv, entry) as i32);
    b.def_var(resume, entry_pc);
    let phase_entries: Vec<_> = phases.iter().map(|_| b.create_block()).collect();
    let all_blocks = blocks_of(ops, start, end);
    let region_entries: Vec<usize> = entries(ops, start, end).collect();
    let mut into_phase = cranelift_frontend::Switch::new();
    for (i, &(first, stop, _)) in phases.iter().enumerate() {
        for &e in region_entries.iter().filter(|e| (first..stop).contains(*e)) {
            into_phase.set_entry(e as u128, phase_entries[i]);
        }
    }
    into_phase.emit(b, entry_pc, phase_entries[0]);
    for (i, &(first, stop, shuffle)) in phases.iter().enumerate() {
        let phase_entry = phase_entries[i];
        let head = b.create_block();
        let test = b.create_block();
        let body = b.create_block();
        let leave = b.create_block();
        let next = b.create_block();
        let after = b.create_block();
        let lane = b.append_block_param(head, I64);
        let exit_pc = b.append_block_param(leave, I64);

        b.switch_to_block(phase_entry);
        b.def_var(arrived, zero);
        b.ins().jump(head, &[BlockArg::Value(zero)]);

        b.switch_to_block(head);
        let end_of_warp = b.ins().icmp_imm_s(IntCC::Equal, lane, WARP as i64);
        b.ins().brif(end_of_warp, after, &[], test, &[]);

        b.switch_to_block(test);
        let bit = b.ins().ushr(on, lane);
        let bit = b.ins().band_imm_u(bit, 1);
        b.ins().brif(bit, body, &[], next, &[]);

        b.switch_to_block(body);
        let offset = b.ins().ishl_imm_u(lane, 3);
        let base = b.ins().iadd(rows, offset);
        b.def_var(count, zero);
        if first == stop {
            // An empty phase (two shuffles in a row): the lane is at the next shuffle.
            let pc = b.ins().iconst(I64, stop as i64);
            b.ins().jump(leave, &[BlockArg::Value(pc)]);
        }
        // The phase's blocks, split where any branch of the segment lands.
        let ranges: Vec<(usize, usize)> = all_blocks.iter().copied().filter(|&(f, _)| (first..stop).contains(&f)).collect();
        let phase_entries_at: Vec<usize> = region_entries.iter().copied().filter(|e| (first..stop).contains(e)).collect();
        let blocks: std::collections::BTreeMap<usize, _> = ranges.iter().map(|&(f, _)| (f, b.create_block())).collect();
        // A phase that loops keeps its registers in machine registers for the lane's whole
        // run of it (loaded as it enters, stored as it leaves); other phases load and store
        // them block by block, so that a lane pays only for the blocks it runs.
        let loops = ranges.iter().any(|&(_, bstop)| matches!(ops[bstop - 1], Fast::Bra(t) if (first..bstop).contains(&(t as usize))));
        let mut phase_regs: Option<(std::collections::HashMap<u32, Variable>, Vec<u32>)> = None;
        if loops {
            let (touched, written) = regs_in(k, ops, first, stop);
            // Only where they fit the host's registers: a long phase around a short loop
            // (ggml's mul_mat_vec: 200 registers) would load and store them all for each lane
            // that runs it once.
            if touched.len() <= PHASE_REGS {
                largest = largest.max(touched.last().map_or(0, |&r| r as usize + 1));
                phase_regs = Some((load_rows(b, base, &touched), written));
            }
        }
        if first < stop {
            let mut into_block = cranelift_frontend::Switch::new();
            for &e in &phase_entries_at {
                into_block.set_entry(e as u128, blocks[&e]);
            }
            let r = b.use_var(resume);
            into_block.emit(b, r, blocks[&first]);
        }
        for &(bfirst, bstop) in &ranges {
            b.switch_to_block(blocks[&bfirst]);
            let c = b.use_var(count);
            let c = b.ins().iadd_imm_s(c, (bstop - bfirst) as i64);
            b.def_var(count, c);
            // The block's registers, from the rows.
            let (touched, written) = regs_in(k, ops, bfirst, bstop);
            largest = largest.max(touched.last().map_or(0, |&r| r as usize + 1));
            let vars = match &phase_regs {
                Some((held, _)) => held.clone(),
                None => load_rows(b, base, &touched),
            };
            let mut e = Emit { b: &mut *b, vars, sigs, env, lane, stores, store_ops, loads, abort, facts, local_direct };
            for pc in bfirst..bstop {
                if !matches!(ops[pc], Fast::Bra(_)) {
                    e.inst(&ops[pc], k.insts[pc].guard);
                }
            }
            (stores, store_ops, loads) = (e.stores, e.store_ops, e.loads);
            // The branch's guard, read before the block's registers go back.
            let cond = match (ops[bstop - 1], k.insts[bstop - 1].guard) {
                (Fast::Bra(_), Some((p, neg))) => {
                    let v = e.reg(p);
                    Some(e.b.ins().icmp_imm_s(if neg { IntCC::Equal } else { IntCC::NotEqual }, v, 0))
                }
                _ => None,
            };
            let vars = e.vars;
            if phase_regs.is_none() {
                store_rows(b, base, &vars, &written);
            }
            // Where the lane goes: into a block of the phase (through a check of its share
            // where it loops back), or out.
            let mut later = Vec::new();
            let mut to = |b: &mut FunctionBuilder, t: usize| -> (cranelift_codegen::ir::Block, Vec<BlockArg>) {
                match blocks.get(&t) {
                    Some(&blk) if t < bstop => {
                        let check = b.create_block();
                        later.push((check, blk, t));
                        (check, Vec::new())
                    }
                    Some(&blk) => (blk, Vec::new()),
                    None => (leave, vec![BlockArg::Value(b.ins().iconst(I64, t as i64))]),
                }
            };
            match (ops[bstop - 1], cond) {
                (Fast::Bra(t), Some(cond)) => {
                    let (yes, yes_args) = to(b, t as usize);
                    let (no, no_args) = to(b, bstop);
                    b.ins().brif(cond, yes, &yes_args, no, &no_args);
                }
                (Fast::Bra(t), None) => {
                    let (blk, args) = to(b, t as usize);
                    b.ins().jump(blk, &args);
                }
                _ => {
                    let (blk, args) = to(b, bstop);
                    b.ins().jump(blk, &args);
                }
            }
            for (check, blk, t) in later {
                b.switch_to_block(check);
                let c = b.use_var(count);
                let spent = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, c, LANE_CAP);
                let pc = b.ins().iconst(I64, t as i64);
                b.ins().brif(spent, leave, &[BlockArg::Value(pc)], blk, &[]);
            }
        }

        // The lane leaves at exit_pc (its registers are in the rows): its pc and count noted.
        b.switch_to_block(leave);
        if let Some((vars, written)) = &phase_regs {
            store_rows(b, base, vars, written);
        }
        let slot = b.ins().ishl_imm_u(lane, 2);
        let slot = b.ins().iadd(env, slot);
        let pc32 = b.ins().ireduce(I32, exit_pc);
        b.ins().store(flags, pc32, slot, std::mem::offset_of!(LoadEnv, exits) as i32);
        if shuffle {
            let here = b.ins().icmp_imm_s(IntCC::Equal, exit_pc, stop as i64);
            let here = b.ins().uextend(I64, here);
            let n = b.use_var(arrived);
            let n = b.ins().iadd(n, here);
            b.def_var(arrived, n);
        }
        let (t, c) = (b.use_var(total), b.use_var(count));
        let t = b.ins().iadd(t, c);
        b.def_var(total, t);
        b.ins().jump(next, &[]);

        b.switch_to_block(next);
        let lane1 = b.ins().iadd_imm_s(lane, 1);
        b.ins().jump(head, &[BlockArg::Value(lane1)]);

        // Every lane has run the phase: its shuffle, if all of them are at it and it can be
        // made here; else the run ends (the warp engine takes the lanes on from their exits).
        b.switch_to_block(after);
        if shuffle {
            let mut r = Vec::new();
            regs_of(&ops[stop], None, &mut r, &mut Vec::new());
            let mut w = Vec::new();
            regs_of(&ops[stop], None, &mut Vec::new(), &mut w);
            largest = largest.max(r.iter().chain(&w).map(|&x| x as usize + 1).max().unwrap_or(0));
            let t = b.use_var(total);
            if let Some((src, oks)) = full_warp_shuffle(&ops[stop], &facts.consts) {
                // A whole warp at it, every lane live: the exchange's lanes are known here.
                let inline = b.create_block();
                let call = b.create_block();
                let full = b.ins().icmp_imm_s(IntCC::Equal, on, u32::MAX as i64);
                let live = b.ins().load(I32, flags, env, std::mem::offset_of!(LoadEnv, live) as i32);
                let live = b.ins().icmp_imm_s(IntCC::Equal, live, -1);
                let n = b.use_var(arrived);
                let here = b.ins().icmp_imm_s(IntCC::Equal, n, WARP as i64);
                let ok = b.ins().band(full, live);
                let ok = b.ins().band(ok, here);
                b.ins().brif(ok, inline, &[], call, &[]);
                b.switch_to_block(inline);
                shuffle_rows(b, rows, &ops[stop], &src, &oks, &facts.read);
                let none = b.ins().iconst(I64, -1);
                b.def_var(resume, none);
                let t2 = b.ins().iadd_imm_s(t, 2 * WARP as i64);
                b.def_var(total, t2);
                b.ins().jump(phase_entries[i + 1], &[]);
                b.switch_to_block(call);
            }
            let f = b.ins().iconst(I64, shfl_callback as *const () as i64);
            let op = b.ins().iconst(I64, &ops[stop] as *const Fast as i64);
            let pc = b.ins().iconst(I64, stop as i64);
            let call = b.ins().call_indirect(sigs.shfl, f, &[env, rows, op, pc, on]);
            let ran = b.inst_results(call)[0];
            let none = b.ins().iconst(I64, -1);
            b.def_var(resume, none);
            // shfl counts twice per lane, as the warp engine counts it.
            let lanes = b.ins().popcnt(on);
            let lanes = b.ins().ishl_imm_u(lanes, 1);
            let t2 = b.ins().iadd(t, lanes);
            b.def_var(total, t2);
            let stopped = b.create_block();
            b.ins().brif(ran, phase_entries[i + 1], &[], stopped, &[]);
            b.switch_to_block(stopped);
            b.def_var(total, t);
            b.ins().jump(done, &[]);
        } else {
            b.ins().jump(done, &[]);
        }
    }

    b.switch_to_block(done);
    let t = b.use_var(total);
    b.ins().return_(&[t]);

    // A failed access: the run is void, the other lanes need not run.
    b.switch_to_block(abort);
    b.ins().return_(&[zero]);
    largest
}

/// For a shuffle whose lane, clamp and mask are constants (`consts`, or immediates) and whose
/// mask names the whole warp: each lane's source lane and predicate when all 32 lanes take
/// part (exec::shfl_value's choice, made here once).
fn full_warp_shuffle(op: &Fast, consts: &HashMap<u32, u64>) -> Option<([usize; WARP], [bool; WARP])> {
    let Fast::Shfl { mode, a: Src::Reg(_), b, c, mask, .. } = *op else { return None };
    let value = |s: Src| match s {
        Src::Imm(v) => Some(v),
        Src::Reg(r) => consts.get(&r).copied(),
    };
    let (bv, cv, mv) = (value(b)?, value(c)?, value(mask)?);
    if mv as u32 != u32::MAX {
        return None;
    }
    let (mut src, mut oks) = ([0; WARP], [false; WARP]);
    for l in 0..WARP {
        let (j, ok) = super::shfl_value(mode, l, |j| j as u64, bv, cv, u32::MAX);
        (src[l], oks[l]) = (j as usize, ok != 0);
    }
    Some((src, oks))
}

/// The shuffle `op` made on the warp's rows, lane l taking lane src[l]'s value (as 32 bits,
/// normalize's B32) and oks[l] as its predicate (unless no instruction reads it: ggml's
/// reductions ignore it).
fn shuffle_rows(b: &mut FunctionBuilder<'_>, rows: Value, op: &Fast, src: &[usize; WARP], oks: &[bool; WARP], read: &[bool]) {
    let Fast::Shfl { d, p, a: Src::Reg(a), .. } = *op else { return };
    let flags = MemFlagsData::trusted();
    let at = |r: u32, l: usize| ((r as usize * WARP + l) * 8) as i32;
    if let Some(d) = d {
        // Every value read before any is written, where d is a itself.
        let reads = if d == a { WARP } else { 1 };
        for chunk in (0..WARP).collect::<Vec<_>>().chunks(reads) {
            let vals: Vec<Value> = chunk.iter().map(|&l| b.ins().load(I64, flags, rows, at(a, src[l]))).collect();
            for (&l, v) in chunk.iter().zip(vals) {
                let v = b.ins().band_imm_u(v, u32::MAX as i64);
                b.ins().store(flags, v, rows, at(d, l));
            }
        }
    }
    if let Some(p) = p.filter(|&p| read.get(p as usize).copied().unwrap_or(true)) {
        for (l, &ok) in oks.iter().enumerate() {
            let v = b.ins().iconst(I64, ok as i64);
            b.ins().store(flags, v, rows, at(p, l));
        }
    }
}

/// The registers the instructions [first, stop) touch and those they write, each sorted.
fn regs_in(k: &Kernel, ops: &[Fast], first: usize, stop: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut read, mut written) = (Vec::new(), Vec::new());
    for (op, inst) in ops[first..stop].iter().zip(&k.insts[first..stop]) {
        regs_of(op, inst.guard, &mut read, &mut written);
    }
    let mut touched: Vec<u32> = read.iter().chain(&written).copied().collect();
    touched.sort_unstable();
    touched.dedup();
    written.sort_unstable();
    written.dedup();
    (touched, written)
}

/// Variables holding registers `regs` of a lane, loaded from its rows (`base`: its lane's first).
fn load_rows(b: &mut FunctionBuilder<'_>, base: Value, regs: &[u32]) -> std::collections::HashMap<u32, Variable> {
    regs.iter()
        .map(|&r| {
            let v = b.declare_var(I64);
            let x = b.ins().load(I64, MemFlagsData::trusted(), base, (r as usize * WARP * 8) as i32);
            b.def_var(v, x);
            (r, v)
        })
        .collect()
}

/// Registers `regs` of a lane back to its rows, from their variables.
fn store_rows(b: &mut FunctionBuilder<'_>, base: Value, vars: &std::collections::HashMap<u32, Variable>, regs: &[u32]) {
    for &r in regs {
        let x = b.use_var(vars[&r]);
        b.ins().store(MemFlagsData::trusted(), x, base, (r as usize * WARP * 8) as i32);
    }
}

/// The signatures of the callbacks: pure_callback, compare_callback, load_callback.
#[derive(Clone, Copy)]
struct Sigs {
    pure: SigRef,
    cmp: SigRef,
    load: SigRef,
    shfl: SigRef,
}

/// Emits instructions into a lane's body.
struct Emit<'b, 'f> {
    b: &'b mut FunctionBuilder<'f>,
    vars: std::collections::HashMap<u32, Variable>,
    sigs: Sigs,
    /// The segment's LoadEnv, the lane running, and the store records made so far (per lane).
    env: Value,
    lane: Value,
    stores: usize,
    /// Store instructions emitted so far (each has its lane mask).
    store_ops: usize,
    /// Global and generic loads emitted so far.
    loads: usize,
    /// Where a failed access goes (the run ends, void).
    abort: cranelift_codegen::ir::Block,
    facts: &'b Facts,
    /// local_direct for this segment.
    local_direct: bool,
}

/// `m` without the signs a contracted mul and sub gives an fma's factor or addend.
fn unsigned(m: Mods) -> Mods {
    Mods { neg_a: false, neg_c: false, ..m }
}

/// `.ftz` and round to nearest (or no rounding named), nothing else.
fn ftz_only(m: Mods) -> bool {
    m == Mods { ftz: true, ..Mods::default() } || m == Mods { ftz: true, rnd: Rnd::Near, ..Mods::default() }
}

fn int_type(bits: u32) -> Option<Type> {
    match bits {
        8 => Some(I8),
        16 => Some(I16),
        32 => Some(I32),
        _ => None,
    }
}

impl Emit<'_, '_> {
    fn get(&mut self, s: Src) -> Value {
        match s {
            Src::Reg(r) => self.b.use_var(self.vars[&r]),
            Src::Imm(v) => self.b.ins().iconst(I64, v as i64),
        }
    }

    fn reg(&mut self, r: u32) -> Value {
        self.b.use_var(self.vars[&r])
    }

    /// Writes `v` to register `r` where the guard (a 0/1 byte) holds.
    fn set(&mut self, r: u32, v: Value, guard: Option<Value>) {
        let v = match guard {
            Some(g) => {
                let old = self.reg(r);
                self.b.ins().select(g, v, old)
            }
            None => v,
        };
        self.b.def_var(self.vars[&r], v);
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    /// float::mask: the low `bits` bits.
    fn mask(&mut self, v: Value, bits: u32) -> Value {
        match int_type(bits) {
            _ if bits >= 64 => v,
            Some(t) => {
                let x = self.b.ins().ireduce(t, v);
                self.b.ins().uextend(I64, x)
            }
            None => self.b.ins().band_imm_u(v, ((1u64 << bits) - 1) as i64),
        }
    }

    /// float::sext: the low `bits` bits sign-extended.
    fn sext(&mut self, v: Value, bits: u32) -> Value {
        match int_type(bits) {
            _ if bits >= 64 => v,
            Some(t) => {
                let x = self.b.ins().ireduce(t, v);
                self.b.ins().sextend(I64, x)
            }
            None => {
                let x = self.b.ins().ishl_imm_u(v, 64 - bits as i64);
                self.b.ins().sshr_imm_u(x, 64 - bits as i64)
            }
        }
    }

    /// exec::normalize.
    fn norm(&mut self, ty: Ty, v: Value) -> Value {
        if ty == Ty::Pred {
            let x = self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0);
            self.b.ins().uextend(I64, x)
        } else if ty.signed() {
            self.sext(v, ty.bits())
        } else {
            self.mask(v, ty.bits())
        }
    }

    fn call_pure(&mut self, op: &Fast, x: Value, y: Value, z: Value) -> Value {
        let f = self.iconst(pure_callback as *const () as i64);
        let op = self.iconst(op as *const Fast as i64);
        let call = self.b.ins().call_indirect(self.sigs.pure, f, &[op, x, y, z]);
        self.b.inst_results(call)[0]
    }

    /// A float's bits as a value of float type `fty` (F32: the low 32 bits).
    fn float(&mut self, fty: Type, v: Value) -> Value {
        if fty == F32 {
            let x = self.b.ins().ireduce(I32, v);
            self.b.ins().bitcast(F32, MemFlagsData::new(), x)
        } else {
            self.b.ins().bitcast(F64, MemFlagsData::new(), v)
        }
    }

    /// `fast`, or where `slow` (a 0/1 byte) holds, the interpreter's result for `op`.
    fn or_interpreter(&mut self, fast: Value, slow: Value, op: &Fast, x: Value, y: Value, z: Value) -> Value {
        let (cold, merge) = (self.b.create_block(), self.b.create_block());
        let out = self.b.append_block_param(merge, I64);
        self.b.ins().brif(slow, cold, &[], merge, &[BlockArg::Value(fast)]);
        self.b.switch_to_block(cold);
        let v = self.call_pure(op, x, y, z);
        self.b.ins().jump(merge, &[BlockArg::Value(v)]);
        self.b.switch_to_block(merge);
        out
    }

    /// The f16 nearest (ties to even) to the f32 whose bits are the low 32 of `x` (bits above
    /// 32 clear), and whether it is a NaN (left to the interpreter). Normal results: the
    /// exponent rebiased and the mantissa rounded by adding half an ulp less one plus the
    /// kept mantissa's last bit; subnormal ones by the host's own rounding, adding 0.5 (whose
    /// ulp is the f16 subnormal step); 65520 and above round to infinity.
    fn f32_to_f16(&mut self, x: Value) -> (Value, Value) {
        let a = self.b.ins().band_imm_u(x, 0x7fff_ffff);
        let nan = self.b.ins().icmp_imm_u(IntCC::UnsignedGreaterThan, a, 0x7f80_0000);
        let sign = self.b.ins().ushr_imm_u(x, 16);
        let sign = self.b.ins().band_imm_u(sign, 0x8000);
        let a32 = self.b.ins().ireduce(I32, a);
        let f = self.b.ins().bitcast(F32, MemFlagsData::new(), a32);
        let half = self.b.ins().f32const(0.5);
        let s = self.b.ins().fadd(f, half);
        let s = self.b.ins().bitcast(I32, MemFlagsData::new(), s);
        let s = self.b.ins().uextend(I64, s);
        let subnormal = self.b.ins().iadd_imm_s(s, -0x3f00_0000);
        let odd = self.b.ins().ushr_imm_u(a, 13);
        let odd = self.b.ins().band_imm_u(odd, 1);
        let t = self.b.ins().iadd_imm_s(a, 0xfff - 0x3800_0000);
        let t = self.b.ins().iadd(t, odd);
        let normal = self.b.ins().ushr_imm_u(t, 13);
        let small = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, a, 0x3880_0000);
        let r = self.b.ins().select(small, subnormal, normal);
        let big = self.b.ins().icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, a, 0x477f_f000);
        let inf = self.iconst(0x7c00);
        let r = self.b.ins().select(big, inf, r);
        (self.b.ins().bor(r, sign), nan)
    }

    /// The f32 bits (zero-extended) of the f16 in the low 16 bits of `x` (exact), and whether
    /// it is a NaN (left to the interpreter).
    fn f16_to_f32(&mut self, x: Value) -> (Value, Value) {
        let h = self.b.ins().band_imm_u(x, 0xffff);
        let em = self.b.ins().band_imm_u(h, 0x7fff);
        let nan = self.b.ins().icmp_imm_u(IntCC::UnsignedGreaterThan, em, 0x7c00);
        let sign = self.b.ins().band_imm_u(h, 0x8000);
        let sign = self.b.ins().ishl_imm_u(sign, 16);
        let normal = self.b.ins().ishl_imm_u(em, 13);
        let normal = self.b.ins().iadd_imm_s(normal, 0x3800_0000);
        let inf = self.iconst(0x7f80_0000);
        let is_inf = self.b.ins().icmp_imm_u(IntCC::Equal, em, 0x7c00);
        let r = self.b.ins().select(is_inf, inf, normal);
        // Subnormals (and zero): the integer times 2^-24, exact.
        let f = self.b.ins().fcvt_from_uint(F32, em);
        let step = self.b.ins().f32const(1.0f32 / (1 << 24) as f32);
        let f = self.b.ins().fmul(f, step);
        let f = self.b.ins().bitcast(I32, MemFlagsData::new(), f);
        let subnormal = self.b.ins().uextend(I64, f);
        let small = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, em, 0x400);
        let r = self.b.ins().select(small, subnormal, r);
        (self.b.ins().bor(r, sign), nan)
    }

    /// add, sub or mul.f16x2 to nearest: each half through f32 (a product of two halves is
    /// exact there, a sum rounded to 24 bits then to 11 is rounded as once, 24 >= 2 * 11 + 2),
    /// a NaN in or out left to the interpreter.
    fn half2(&mut self, op: &Fast, bin: Bin, x: Value, y: Value, z: Value) -> Value {
        let mut out = self.iconst(0);
        let mut slow = self.b.ins().iconst(I8, 0);
        for k in [0, 16] {
            let (p, q) = (self.b.ins().ushr_imm_u(x, k), self.b.ins().ushr_imm_u(y, k));
            let ((p, pn), (q, qn)) = (self.f16_to_f32(p), self.f16_to_f32(q));
            let (p, q) = (self.float(F32, p), self.float(F32, q));
            let r = match bin {
                Bin::Add => self.b.ins().fadd(p, q),
                Bin::Sub => self.b.ins().fsub(p, q),
                _ => self.b.ins().fmul(p, q),
            };
            let rn = self.b.ins().fcmp(FloatCC::Unordered, r, r);
            let r = self.b.ins().bitcast(I32, MemFlagsData::new(), r);
            let r = self.b.ins().uextend(I64, r);
            let (h, hn) = self.f32_to_f16(r);
            for n in [pn, qn, rn, hn] {
                slow = self.b.ins().bor(slow, n);
            }
            let h = self.b.ins().ishl_imm_u(h, k);
            out = self.b.ins().bor(out, h);
        }
        self.or_interpreter(out, slow, op, x, y, z)
    }

    /// A float value's bits (zero-extended), or where it is a NaN, the interpreter's result
    /// for the instruction `op` (its NaN).
    fn float_result(&mut self, r: Value, op: &Fast, x: Value, y: Value, z: Value) -> Value {
        let fty = self.b.func.dfg.value_type(r);
        let bits = if fty == F32 {
            let i = self.b.ins().bitcast(I32, MemFlagsData::new(), r);
            self.b.ins().uextend(I64, i)
        } else {
            self.b.ins().bitcast(I64, MemFlagsData::new(), r)
        };
        let nan = self.b.ins().fcmp(FloatCC::Unordered, r, r);
        let slow = self.b.create_block();
        let merge = self.b.create_block();
        let out = self.b.append_block_param(merge, I64);
        self.b.ins().brif(nan, slow, &[], merge, &[BlockArg::Value(bits)]);
        self.b.switch_to_block(slow);
        let v = self.call_pure(op, x, y, z);
        self.b.ins().jump(merge, &[BlockArg::Value(v)]);
        self.b.switch_to_block(merge);
        out
    }

    fn inst(&mut self, op: &Fast, guard: Option<(u32, bool)>) {
        let guard = guard.map(|(p, neg)| {
            let v = self.reg(p);
            self.b.ins().icmp_imm_s(if neg { IntCC::Equal } else { IntCC::NotEqual }, v, 0)
        });
        match *op {
            Fast::Pure { eval, ty, dty, d, a, b, c } => {
                let (x, y, z) = (self.get(a), self.get(b), self.get(c));
                let v = self.pure(op, eval, ty, x, y, z);
                let v = self.norm(dty, v);
                self.set(d, v, guard);
            }
            Fast::Setp { cmp, ty, ftz, p, q, a, b, comb } => {
                let (x, y) = (self.get(a), self.get(b));
                let v = self.compare(op, cmp, ty, ftz, x, y);
                let not_v = self.b.ins().bxor_imm_u(v, 1);
                let c = comb.map(|(_, c, neg)| {
                    let c = self.reg(c);
                    self.b.ins().icmp_imm_s(if neg { IntCC::Equal } else { IntCC::NotEqual }, c, 0)
                });
                for (dst, v) in [(p, v), (q, not_v)] {
                    let Some(dst) = dst else { continue };
                    let v = match (comb, c) {
                        (Some((BoolOp::And, ..)), Some(c)) => self.b.ins().band(v, c),
                        (Some((BoolOp::Or, ..)), Some(c)) => self.b.ins().bor(v, c),
                        (Some((BoolOp::Xor, ..)), Some(c)) => self.b.ins().bxor(v, c),
                        _ => v,
                    };
                    let v = self.b.ins().uextend(I64, v);
                    self.set(dst, v, guard);
                }
            }
            Fast::Pack { ty, w, n, d, a } => {
                let mut acc = self.iconst(0);
                for (k, s) in a.iter().take(n as usize).enumerate() {
                    let x = self.get(*s);
                    let x = self.mask(x, w as u32);
                    let x = self.b.ins().ishl_imm_u(x, (w as u32 * k as u32) as i64);
                    acc = self.b.ins().bor(acc, x);
                }
                let v = self.norm(ty, acc);
                self.set(d, v, guard);
            }
            Fast::Unpack { ety, w, n, d, a } => {
                let x = self.get(a);
                for (k, dst) in d.iter().enumerate().take(n as usize) {
                    let Some(dst) = *dst else { continue };
                    let v = self.b.ins().ushr_imm_u(x, (w as u32 * k as u32) as i64);
                    let v = self.norm(ety, v);
                    self.set(dst, v, guard);
                }
            }
            Fast::Ld { space, ty, d, base, off } => self.loads(space, ty, base, off, &[(0, Some(d))], guard),
            Fast::LdV { space, ty, n, d, base, off } => {
                let parts: Vec<(u64, Option<u32>)> = d.iter().take(n as usize).enumerate().map(|(k, d)| ((k * ty.bytes()) as u64, *d)).collect();
                self.loads(space, ty, base, off, &parts, guard)
            }
            Fast::St { space, ty, base, off, a } => self.record_stores(space, ty.bytes() as u64, base, off, &[a], guard),
            Fast::Sreg { ty, d, s } => {
                let v = self.sreg(s);
                let v = self.norm(ty, v);
                self.set(d, v, guard);
            }
            Fast::StV { space, ty, n, a, base, off } => self.record_stores(space, ty.bytes() as u64, base, off, &a[..n as usize], guard),
            Fast::Sym { ty, d, s } => {
                let v = self.address(AddrBase::Sym(s), 0);
                let v = self.norm(ty, v);
                self.set(d, v, guard);
            }
            _ => unreachable!("only compilable instructions are in a segment"),
        }
    }

    /// An access's address: its base (a register, a symbol's address, or 0) plus `off`.
    /// The address `base` + `off` where it is the same in every launch (Facts::syms).
    fn constant_address(&self, base: AddrBase, off: u64) -> Option<u64> {
        match base {
            AddrBase::Abs => Some(off),
            AddrBase::Sym(sym) => self.facts.syms.get(sym as usize).copied().flatten().map(|a| a.wrapping_add(off)),
            AddrBase::Reg(_) => None,
        }
    }

    fn address(&mut self, base: AddrBase, off: u64) -> Value {
        if let Some(a) = self.constant_address(base, off) {
            return self.iconst(a as i64);
        }
        let v = match base {
            AddrBase::Reg(r) => self.reg(r),
            AddrBase::Sym(sym) => {
                let syms = self.b.ins().load(I64, MemFlagsData::trusted(), self.env, std::mem::offset_of!(LoadEnv, syms) as i32);
                self.b.ins().load(I64, MemFlagsData::trusted(), syms, (sym as usize * 8) as i32)
            }
            // (constant_address answers for it above.)
            AddrBase::Abs => self.iconst(0),
        };
        self.b.ins().iadd_imm_s(v, off as i64)
    }

    /// A special register's value in this lane (those `compilable` admits).
    fn sreg(&mut self, s: Sreg) -> Value {
        let flags = MemFlagsData::trusted();
        let field = |b: &mut FunctionBuilder, env: Value, at: usize| {
            let v = b.ins().load(I32, flags, env, at as i32);
            b.ins().uextend(I64, v)
        };
        match s {
            Sreg::Tid(d) => {
                let tids = self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, tids) as i32);
                let at = self.b.ins().imul_imm_s(self.lane, 12);
                let p = self.b.ins().iadd(tids, at);
                let v = self.b.ins().load(I32, flags, p, 4 * d as i32);
                self.b.ins().uextend(I64, v)
            }
            Sreg::Ntid(d) => field(self.b, self.env, std::mem::offset_of!(LoadEnv, ntid) + 4 * d as usize),
            Sreg::Ctaid(d) => field(self.b, self.env, std::mem::offset_of!(LoadEnv, ctaid) + 4 * d as usize),
            Sreg::Nctaid(d) => field(self.b, self.env, std::mem::offset_of!(LoadEnv, nctaid) + 4 * d as usize),
            Sreg::WarpId => field(self.b, self.env, std::mem::offset_of!(LoadEnv, warp)),
            _ => self.lane, // LaneId
        }
    }

    /// Records a store of `values` (`size` bytes each, one after another) in this lane's
    /// records of the store (StoreRec), and the lane in the store's mask where the guard lets
    /// it. A store to shared or local memory is checked here: one outside ends the run (void).
    fn record_stores(&mut self, space: Space, size: u64, base: AddrBase, off: u64, values: &[Src], guard: Option<Value>) {
        let at = self.address(base, off);
        let flags = MemFlagsData::trusted();
        if matches!(space, Space::Shared | Space::Local) {
            let len = match space {
                Space::Shared => self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, shared_len) as i32),
                _ => self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, local_len) as i32),
            };
            let inside = self.inside(at, size * values.len() as u64, len);
            let ok = match guard {
                Some(g) => {
                    let skipped = self.b.ins().icmp_imm_s(IntCC::Equal, g, 0);
                    self.b.ins().bor(inside, skipped)
                }
                None => inside,
            };
            let (fail, cont) = (self.b.create_block(), self.b.create_block());
            self.b.ins().brif(ok, cont, &[], fail, &[]);
            self.b.switch_to_block(fail);
            let one = self.iconst(1);
            self.b.ins().store(flags, one, self.env, std::mem::offset_of!(LoadEnv, fault) as i32);
            self.b.ins().jump(self.abort, &[]);
            self.b.switch_to_block(cont);
        }
        if space == Space::Local && self.local_direct {
            // Made here, in the lane's own local memory (checked just above), where the guard
            // lets it.
            let (store, done) = (self.b.create_block(), self.b.create_block());
            match guard {
                Some(g) => _ = self.b.ins().brif(g, store, &[], done, &[]),
                None => _ = self.b.ins().jump(store, &[]),
            }
            self.b.switch_to_block(store);
            let (mine, _) = self.lane_local();
            let p = self.b.ins().iadd(mine, at);
            for (k, &s) in values.iter().enumerate() {
                let v = self.get(s);
                let v = match size {
                    1 => self.b.ins().ireduce(I8, v),
                    2 => self.b.ins().ireduce(I16, v),
                    4 => self.b.ins().ireduce(I32, v),
                    _ => v,
                };
                self.b.ins().store(MemFlagsData::new().with_notrap(), v, p, (k as u64 * size) as i32);
            }
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(done);
            return;
        }
        // The lane's bit in the store's mask, where its guard lets it.
        let made = self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, made) as i32);
        let mask = self.b.ins().load(I32, flags, made, 4 * self.store_ops as i32);
        let one = self.b.ins().iconst(I32, 1);
        let lane = self.b.ins().ireduce(I32, self.lane);
        let bit = self.b.ins().ishl(one, lane);
        let bit = match guard {
            Some(g) => {
                let zero = self.b.ins().iconst(I32, 0);
                self.b.ins().select(g, bit, zero)
            }
            None => bit,
        };
        let mask = self.b.ins().bor(mask, bit);
        self.b.ins().store(flags, mask, made, 4 * self.store_ops as i32);
        self.store_ops += 1;
        let recs = self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, stores) as i32);
        // This store's records start after the earlier stores' (32 lanes each), then the lane's.
        let rec = std::mem::size_of::<StoreRec>() as i64;
        let lane_at = self.b.ins().imul_imm_s(self.lane, rec * values.len() as i64);
        let first = self.b.ins().iadd_imm_s(lane_at, rec * (self.stores * WARP) as i64);
        let p = self.b.ins().iadd(recs, first);
        for (k, &s) in values.iter().enumerate() {
            let a = self.b.ins().iadd_imm_s(at, (k as u64 * size) as i64);
            let v = self.get(s);
            let o = rec as i32 * k as i32;
            self.b.ins().store(flags, a, p, o + std::mem::offset_of!(StoreRec, addr) as i32);
            self.b.ins().store(flags, v, p, o + std::mem::offset_of!(StoreRec, value) as i32);
        }
        self.stores += values.len();
    }

    /// A load of `parts` (offset from the address, destination) of `ty` each, where the guard
    /// holds (a lane whose guard fails loads nothing, so cannot fault).
    fn loads(&mut self, space: Space, ty: Ty, base: AddrBase, off: u64, parts: &[(u64, Option<u32>)], guard: Option<Value>) {
        let at = self.address(base, off);
        let slot = match base {
            // Facts::slot_of (other loads take the next slot).
            AddrBase::Reg(r) => self.facts.slot_of.get(&r).copied(),
            _ => None,
        }
        .unwrap_or(self.loads % SLOTS);
        self.loads += 1;
        let dests: Vec<u32> = parts.iter().filter_map(|p| p.1).collect();
        let (go, merge) = (self.b.create_block(), self.b.create_block());
        let outs: Vec<Value> = dests.iter().map(|_| self.b.append_block_param(merge, I64)).collect();
        match guard {
            Some(g) => {
                let olds: Vec<BlockArg> = dests.iter().map(|&r| BlockArg::Value(self.reg(r))).collect();
                self.b.ins().brif(g, go, &[], merge, &olds);
            }
            None => {
                self.b.ins().jump(go, &[]);
            }
        }
        self.b.switch_to_block(go);
        let mut news = Vec::new();
        for &(k, d) in parts {
            // Every element is loaded (and checked), as the interpreter loads it.
            let a = self.b.ins().iadd_imm_s(at, k as i64);
            let n = ty.bytes() as u32;
            // A parameter at a known place inside the kernel's parameters: no check needed.
            let v = match self.constant_address(base, off.wrapping_add(k)) {
                Some(a) if space == Space::Param && a.checked_add(n as u64).is_some_and(|e| e <= self.facts.param_bytes) => self.param(a, n),
                _ => self.load(space, a, n, slot),
            };
            if d.is_some() {
                news.push(BlockArg::Value(self.norm(ty, v)));
            }
        }
        self.b.ins().jump(merge, &news);
        self.b.switch_to_block(merge);
        for (&r, &v) in dests.iter().zip(&outs) {
            self.b.def_var(self.vars[&r], v);
        }
    }

    /// `n` bytes at `addr` of `space`, zero-extended: inline from the allocation of the last
    /// The lane's own local memory: where it starts, and its length.
    fn lane_local(&mut self) -> (Value, Value) {
        let flags = MemFlagsData::trusted();
        let len = self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, local_len) as i32);
        let all = self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, local) as i32);
        let first = self.b.ins().imul(self.lane, len);
        (self.b.ins().iadd(all, first), len)
    }

    /// The `n` bytes of the launch's parameters at `at` (inside the kernel's).
    fn param(&mut self, at: u64, n: u32) -> Value {
        let flags = MemFlagsData::trusted();
        let ptr = self.b.ins().load(I64, flags, self.env, std::mem::offset_of!(LoadEnv, params) as i32);
        let ty = match n {
            1 => I8,
            2 => I16,
            4 => I32,
            _ => I64,
        };
        let v = self.b.ins().load(ty, MemFlagsData::new().with_notrap(), ptr, at as i32);
        if ty == I64 {
            v
        } else {
            self.b.ins().uextend(I64, v)
        }
    }

    /// load (global and generic) or from shared memory where the access lies inside, else
    /// through load_callback.
    fn load(&mut self, space: Space, addr: Value, n: u32, slot: usize) -> Value {
        let field = |f: usize| f as i32;
        let flags = MemFlagsData::trusted();
        let (base, len, ptr) = match space {
            Space::Param => {
                let len = self.b.ins().load(I64, flags, self.env, field(std::mem::offset_of!(LoadEnv, params_len)));
                let ptr = self.b.ins().load(I64, flags, self.env, field(std::mem::offset_of!(LoadEnv, params)));
                (None, len, ptr)
            }
            Space::Shared => {
                let len = self.b.ins().load(I64, flags, self.env, field(std::mem::offset_of!(LoadEnv, shared_len)));
                let ptr = self.b.ins().load(I64, flags, self.env, field(std::mem::offset_of!(LoadEnv, shared)));
                (None, len, ptr)
            }
            Space::Local => {
                let (ptr, len) = self.lane_local();
                (None, len, ptr)
            }
            _ => {
                let at = std::mem::offset_of!(LoadEnv, slots) + slot * std::mem::size_of::<Slot>();
                let base = self.b.ins().load(I64, flags, self.env, field(at + std::mem::offset_of!(Slot, base)));
                let len = self.b.ins().load(I64, flags, self.env, field(at + std::mem::offset_of!(Slot, len)));
                let ptr = self.b.ins().load(I64, flags, self.env, field(at + std::mem::offset_of!(Slot, ptr)));
                (Some(base), len, ptr)
            }
        };
        let off = match base {
            Some(base) => self.b.ins().isub(addr, base),
            None => addr,
        };
        let inside = self.inside(off, n as u64, len);
        let (fast, slow, merge) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        let out = self.b.append_block_param(merge, I64);
        self.b.ins().brif(inside, fast, &[], slow, &[]);

        self.b.switch_to_block(fast);
        let p = self.b.ins().iadd(ptr, off);
        let ty = match n {
            1 => I8,
            2 => I16,
            4 => I32,
            _ => I64,
        };
        // Unaligned is fine on the hosts Cranelift targets here (x86-64, aarch64).
        let v = self.b.ins().load(ty, MemFlagsData::new().with_notrap(), p, 0);
        let v = if ty == I64 { v } else { self.b.ins().uextend(I64, v) };
        self.b.ins().jump(merge, &[BlockArg::Value(v)]);

        self.b.switch_to_block(slow);
        let f = self.iconst(load_callback as *const () as i64);
        let code = self.iconst(match space {
            Space::Shared => 1,
            Space::Generic => 2,
            Space::Param => 3,
            Space::Local => 4,
            _ => 0,
        } | (slot as i64) << 8);
        let bytes = self.iconst(n as i64);
        let call = self.b.ins().call_indirect(self.sigs.load, f, &[self.env, code, addr, bytes]);
        let v = self.b.inst_results(call)[0];
        let fault = self.b.ins().load(I64, flags, self.env, field(std::mem::offset_of!(LoadEnv, fault)));
        self.b.ins().brif(fault, self.abort, &[], merge, &[BlockArg::Value(v)]);

        self.b.switch_to_block(merge);
        out
    }

    /// Whether `n` bytes at offset `off` lie inside `len` bytes: off < len and off + n <= len
    /// (off + n cannot wrap then).
    fn inside(&mut self, off: Value, n: u64, len: Value) -> Value {
        let below = self.b.ins().icmp(IntCC::UnsignedLessThan, off, len);
        let end = self.b.ins().iadd_imm_s(off, n as i64);
        let fits = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, end, len);
        self.b.ins().band(below, fits)
    }

    /// An fma's factor `p` and addend `s` with the signs of a contracted mul and sub (float::fma).
    fn negated(&mut self, m: Mods, p: Value, s: Value) -> (Value, Value) {
        let p = if m.neg_a { self.b.ins().fneg(p) } else { p };
        let s = if m.neg_c { self.b.ins().fneg(s) } else { s };
        (p, s)
    }

    /// float::flush for an f32 (bits in the low 32 of `x`, the rest clear): a subnormal
    /// becomes a zero of its sign.
    fn flush32(&mut self, x: Value) -> Value {
        let exp = self.b.ins().band_imm_u(x, 0x7f80_0000);
        let sub = self.b.ins().icmp_imm_u(IntCC::Equal, exp, 0);
        let zero = self.b.ins().band_imm_u(x, 0x8000_0000);
        self.b.ins().select(sub, zero, x)
    }

    fn float_bin(&mut self, bin: Bin, p: Value, q: Value) -> Value {
        match bin {
            Bin::Add => self.b.ins().fadd(p, q),
            Bin::Sub => self.b.ins().fsub(p, q),
            Bin::MulLo => self.b.ins().fmul(p, q),
            Bin::Div => self.b.ins().fdiv(p, q),
            Bin::Min => self.b.ins().fmin(p, q),
            _ => self.b.ins().fmax(p, q),
        }
    }

    /// A pure instruction's value before normalization to its destination type.
    fn pure(&mut self, op: &Fast, eval: Eval, ty: Ty, x: Value, y: Value, z: Value) -> Value {
        let plain = |m: Mods| m == Mods::default() || m == Mods { rnd: Rnd::Near, ..Mods::default() };
        let int = !ty.float() && ty != Ty::Pred;
        let (bits, signed) = (ty.bits(), ty.signed());
        let fty = match ty {
            Ty::F32 => Some(F32),
            Ty::F64 => Some(F64),
            _ => None,
        };
        match eval {
            Eval::Mov => x,
            Eval::Bin(bin, m) if int && !m.sat => match bin {
                Bin::Add => self.b.ins().iadd(x, y),
                Bin::Sub => self.b.ins().isub(x, y),
                Bin::MulLo => self.b.ins().imul(x, y),
                Bin::And => self.b.ins().band(x, y),
                Bin::Or => self.b.ins().bor(x, y),
                Bin::Xor => self.b.ins().bxor(x, y),
                // Amounts of the width or more: 0 (shl, shr.u) or the sign (shr.s), as int_bin.
                Bin::Shl => {
                    let n = self.mask(y, 32);
                    let shifted = self.b.ins().ishl(x, n);
                    let over = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, n, bits as i64);
                    let zero = self.iconst(0);
                    self.b.ins().select(over, zero, shifted)
                }
                Bin::Shr if signed => {
                    let n = self.mask(y, 32);
                    let top = self.iconst(bits as i64 - 1);
                    let n = self.b.ins().umin(n, top);
                    let sa = self.sext(x, bits);
                    self.b.ins().sshr(sa, n)
                }
                Bin::Shr => {
                    let n = self.mask(y, 32);
                    let ua = self.mask(x, bits);
                    let shifted = self.b.ins().ushr(ua, n);
                    let over = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, n, bits as i64);
                    let zero = self.iconst(0);
                    self.b.ins().select(over, zero, shifted)
                }
                Bin::Min | Bin::Max => {
                    let (p, q) = if signed { (self.sext(x, bits), self.sext(y, bits)) } else { (self.mask(x, bits), self.mask(y, bits)) };
                    match (bin, signed) {
                        (Bin::Min, true) => self.b.ins().smin(p, q),
                        (Bin::Min, false) => self.b.ins().umin(p, q),
                        (_, true) => self.b.ins().smax(p, q),
                        _ => self.b.ins().umax(p, q),
                    }
                }
                Bin::MulHi if bits == 64 => {
                    if signed {
                        self.b.ins().smulhi(x, y)
                    } else {
                        self.b.ins().umulhi(x, y)
                    }
                }
                Bin::MulHi if bits <= 32 => {
                    if signed {
                        let (p, q) = (self.sext(x, bits), self.sext(y, bits));
                        let prod = self.b.ins().imul(p, q);
                        self.b.ins().sshr_imm_u(prod, bits as i64)
                    } else {
                        let (p, q) = (self.mask(x, bits), self.mask(y, bits));
                        let prod = self.b.ins().imul(p, q);
                        self.b.ins().ushr_imm_u(prod, bits as i64)
                    }
                }
                _ => self.call_pure(op, x, y, z),
            },
            Eval::Bin(bin @ (Bin::And | Bin::Or | Bin::Xor), _) if ty == Ty::Pred => match bin {
                Bin::And => self.b.ins().band(x, y),
                Bin::Or => self.b.ins().bor(x, y),
                _ => self.b.ins().bxor(x, y),
            },
            // float::bin's plain arithmetic is the host's (div.approx too, which the ISA allows
            // to be exact); its min and max, for operands that are not NaN, are IEEE 754-2019's
            // minimum and maximum (-0 below +0), as Cranelift's fmin and fmax. A NaN result
            // (whatever NaN rule applies) goes to the interpreter's function (float_result).
            Eval::Bin(bin @ (Bin::Add | Bin::Sub | Bin::MulLo | Bin::Div | Bin::Min | Bin::Max), m) if fty.is_some() && plain(m) => {
                let fty = fty.unwrap_or(F32);
                let (p, q) = (self.float(fty, x), self.float(fty, y));
                let r = self.float_bin(bin, p, q);
                self.float_result(r, op, x, y, z)
            }
            // .ftz.f32 (float::bin: operands flushed, then the result): the same, flushed.
            Eval::Bin(bin @ (Bin::Add | Bin::Sub | Bin::MulLo | Bin::Div | Bin::Min | Bin::Max), m) if ty == Ty::F32 && ftz_only(m) => {
                let (fx, fy) = (self.flush32(x), self.flush32(y));
                let (p, q) = (self.float(F32, fx), self.float(F32, fy));
                let r = self.float_bin(bin, p, q);
                let r = self.float_result(r, op, x, y, z);
                self.flush32(r)
            }
            Eval::Mad { hi: false, m } if ty == Ty::F32 && ftz_only(unsigned(m)) => {
                let (fx, fy, fz) = (self.flush32(x), self.flush32(y), self.flush32(z));
                let (p, q, s) = (self.float(F32, fx), self.float(F32, fy), self.float(F32, fz));
                let (p, s) = self.negated(m, p, s);
                let r = self.b.ins().fma(p, q, s);
                let r = self.float_result(r, op, x, y, z);
                self.flush32(r)
            }
            Eval::Mad { hi: false, .. } if int => {
                let p = self.b.ins().imul(x, y);
                self.b.ins().iadd(p, z)
            }
            Eval::Mad { hi: false, m } if fty.is_some() && plain(unsigned(m)) => {
                let fty = fty.unwrap_or(F32);
                let (p, q, s) = (self.float(fty, x), self.float(fty, y), self.float(fty, z));
                let (p, s) = self.negated(m, p, s);
                let r = self.b.ins().fma(p, q, s);
                self.float_result(r, op, x, y, z)
            }
            Eval::Wide if bits <= 32 => {
                let (p, q) = if signed { (self.sext(x, bits), self.sext(y, bits)) } else { (self.mask(x, bits), self.mask(y, bits)) };
                let prod = self.b.ins().imul(p, q);
                let sum = self.b.ins().iadd(prod, z);
                self.mask(sum, bits * 2)
            }
            Eval::Selp => {
                let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, z, 0);
                self.b.ins().select(c, x, y)
            }
            Eval::Half2(Half2Op::Bin(bin @ (Bin::Add | Bin::Sub | Bin::MulLo)), m) if ty == Ty::F16 && plain(m) => self.half2(op, bin, x, y, z),
            // dp4a / dp2a as exec::dot_value: each part extended by its signedness, the
            // products summed onto c (the caller keeps the low 32 bits).
            Eval::Dot { halves, hi, sa, sb } => {
                let (n, wa, first) = if halves { (2, 16, if hi { 2 } else { 0 }) } else { (4, 8, 0) };
                let mut sum = z;
                for k in 0..n {
                    let p = self.b.ins().ushr_imm_u(x, (k * wa) as i64);
                    let p = if sa { self.sext(p, wa) } else { self.mask(p, wa) };
                    let q = self.b.ins().ushr_imm_u(y, ((first + k) * 8) as i64);
                    let q = if sb { self.sext(q, 8) } else { self.mask(q, 8) };
                    let prod = self.b.ins().imul(p, q);
                    sum = self.b.ins().iadd(sum, prod);
                }
                sum
            }
            // cvta moves an address by its window's base or not at all (exec::cvta_value is
            // v plus a constant for each space and direction): that constant, added here.
            Eval::Cvta(space, to) => self.b.ins().iadd_imm_s(x, cvta_value(space, to, 0) as i64),
            Eval::Un(Un::Not, _) if int => self.b.ins().bnot(x),
            Eval::Un(Un::Neg, _) if int => self.b.ins().ineg(x),
            Eval::Cvt { sty, m } => self.convert(op, ty, sty, m, x),
            _ => self.call_pure(op, x, y, z),
        }
    }

    /// cvt as float::convert makes it, inline where that is the host's plain conversion.
    fn convert(&mut self, op: &Fast, dty: Ty, sty: Ty, m: Mods, x: Value) -> Value {
        let int = |t: Ty| !t.float() && t != Ty::Pred;
        let zero = self.iconst(0);
        let plain = m == Mods::default() || m == Mods { rnd: Rnd::Near, ..Mods::default() };
        let fty = |t: Ty| match t {
            Ty::F32 => Some(F32),
            Ty::F64 => Some(F64),
            _ => None,
        };
        match (fty(dty), fty(sty)) {
            // Integer to integer: the source extended by its signedness (normalize then
            // keeps the destination's bits).
            (None, None) if int(dty) && int(sty) && !m.sat => {
                if sty.signed() {
                    self.sext(x, sty.bits())
                } else {
                    self.mask(x, sty.bits())
                }
            }
            // Integer to float, to nearest: the host's conversion from a 64-bit integer that
            // holds the source exactly (a u64 would need an unsigned one: the callback).
            (Some(f), None) if int(sty) && plain && sty != Ty::U64 && sty != Ty::B64 => {
                let v = if sty.signed() { self.sext(x, sty.bits()) } else { self.mask(x, sty.bits()) };
                let r = self.b.ins().fcvt_from_sint(f, v);
                self.float_result(r, op, x, zero, zero)
            }
            // Float to integer, truncated or to nearest even: saturating, NaN to 0, as PTX.
            (None, Some(f))
                if int(dty) && matches!(m.rnd, Rnd::None | Rnd::Zero | Rnd::Near) && !m.sat && !m.relu && matches!(dty.bits(), 32 | 64) =>
            {
                let v = self.float(f, x);
                let v = if m.rnd == Rnd::Near { self.b.ins().nearest(v) } else { v };
                let t = if dty.bits() == 32 { I32 } else { I64 };
                let i = if dty.signed() { self.b.ins().fcvt_to_sint_sat(t, v) } else { self.b.ins().fcvt_to_uint_sat(t, v) };
                if t == I32 {
                    self.b.ins().uextend(I64, i)
                } else {
                    i
                }
            }
            // f32 <-> f16 to nearest (exact the other way), NaNs left to the interpreter.
            (None, Some(F32)) if dty == Ty::F16 && plain => {
                let (h, nan) = self.f32_to_f16(x);
                self.or_interpreter(h, nan, op, x, zero, zero)
            }
            (Some(F32), None) if sty == Ty::F16 && plain => {
                let (f, nan) = self.f16_to_f32(x);
                self.or_interpreter(f, nan, op, x, zero, zero)
            }
            (Some(F64), Some(F32)) if plain => {
                let v = self.float(F32, x);
                let r = self.b.ins().fpromote(F64, v);
                self.float_result(r, op, x, zero, zero)
            }
            (Some(F32), Some(F64)) if plain => {
                let v = self.float(F64, x);
                let r = self.b.ins().fdemote(F32, v);
                self.float_result(r, op, x, zero, zero)
            }
            _ => self.call_pure(op, x, zero, zero),
        }
    }

    /// setp's comparison (an I8, 0 or 1), as exec::compare_ftz makes it.
    fn compare(&mut self, op: &Fast, cmp: Cmp, ty: Ty, ftz: bool, x: Value, y: Value) -> Value {
        if !ty.float() && ty != Ty::Pred {
            let bits = ty.bits();
            let signed = ty.signed();
            let (p, q) = if signed && !matches!(cmp, Cmp::Eq | Cmp::Equ | Cmp::Ne | Cmp::Neu | Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs) {
                (self.sext(x, bits), self.sext(y, bits))
            } else {
                (self.mask(x, bits), self.mask(y, bits))
            };
            let cc = match cmp {
                Cmp::Eq | Cmp::Equ => IntCC::Equal,
                Cmp::Ne | Cmp::Neu => IntCC::NotEqual,
                Cmp::Lt | Cmp::Ltu if signed => IntCC::SignedLessThan,
                Cmp::Le | Cmp::Leu if signed => IntCC::SignedLessThanOrEqual,
                Cmp::Gt | Cmp::Gtu if signed => IntCC::SignedGreaterThan,
                Cmp::Ge | Cmp::Geu if signed => IntCC::SignedGreaterThanOrEqual,
                Cmp::Lt | Cmp::Ltu | Cmp::Lo => IntCC::UnsignedLessThan,
                Cmp::Le | Cmp::Leu | Cmp::Ls => IntCC::UnsignedLessThanOrEqual,
                Cmp::Gt | Cmp::Gtu | Cmp::Hi => IntCC::UnsignedGreaterThan,
                Cmp::Ge | Cmp::Geu | Cmp::Hs => IntCC::UnsignedGreaterThanOrEqual,
                Cmp::Num => return self.b.ins().iconst(I8, 1),
                Cmp::Nan => return self.b.ins().iconst(I8, 0),
            };
            return self.b.ins().icmp(cc, p, q);
        }
        let fty = match ty {
            Ty::F32 if !ftz => F32,
            Ty::F64 => F64,
            _ => {
                let f = self.iconst(compare_callback as *const () as i64);
                let o = self.iconst(op as *const Fast as i64);
                let call = self.b.ins().call_indirect(self.sigs.cmp, f, &[o, x, y]);
                let r = self.b.inst_results(call)[0];
                return self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
            }
        };
        let (p, q) = (self.float(fty, x), self.float(fty, y));
        let cc = match cmp {
            Cmp::Eq => FloatCC::Equal,
            Cmp::Ne => FloatCC::OrderedNotEqual,
            Cmp::Lt | Cmp::Lo => FloatCC::LessThan,
            Cmp::Le | Cmp::Ls => FloatCC::LessThanOrEqual,
            Cmp::Gt | Cmp::Hi => FloatCC::GreaterThan,
            Cmp::Ge | Cmp::Hs => FloatCC::GreaterThanOrEqual,
            Cmp::Equ => FloatCC::UnorderedOrEqual,
            Cmp::Neu => FloatCC::NotEqual,
            Cmp::Ltu => FloatCC::UnorderedOrLessThan,
            Cmp::Leu => FloatCC::UnorderedOrLessThanOrEqual,
            Cmp::Gtu => FloatCC::UnorderedOrGreaterThan,
            Cmp::Geu => FloatCC::UnorderedOrGreaterThanOrEqual,
            Cmp::Num => FloatCC::Ordered,
            Cmp::Nan => FloatCC::Unordered,
        };
        self.b.ins().fcmp(cc, p, q)
    }
}
