//! PTX text -> pre-decoded kernels.

use super::texture::{Oob, Query};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for PtxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, PtxError> {
    Err(PtxError { line, message: message.into() })
}

/// Limits on what a guest's PTX may declare (the sim backend must stay within host memory).
pub const MAX_REGS: usize = 1 << 16;
pub const MAX_SHARED: u64 = 228 << 10;
pub const MAX_LOCAL: u64 = 512 << 10;
pub const MAX_GLOBAL_VAR: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    Bf16,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub fn from_name(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "bf16" => Ty::Bf16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    pub fn bytes(self) -> usize {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 | Ty::Pred => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }

    pub fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }

    pub fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn float(self) -> bool {
        matches!(self, Ty::F16 | Ty::Bf16 | Ty::F32 | Ty::F64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
    Const,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    Clock,
    Clock64,
    GlobalTimer,
    SmId,
    NSmId,
    GridId,
    LaneMask(u8), // eq lt le gt ge
    DynSmem,
    TotalSmem,
    /// `%envreg0`..`%envreg31`: set by the driver per launch; 1 and 2 hold the cooperative
    /// groups grid workspace's address (high and low half), the rest are 0 here.
    EnvReg(u8),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Opnd {
    Reg(u32),
    Imm(u64),
    Sreg(Sreg),
    Sym(u32),
    /// [base + off]
    Addr(Base, i64),
    Vec(Vec<Opnd>),
    /// `_` (a discarded result)
    Sink,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Base {
    Reg(u32),
    Sym(u32),
    Abs,
}

/// The mbarrier operations (PTX ISA "Parallel Synchronization and Communication
/// Instructions: mbarrier").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MbarKind {
    /// `mbarrier.init [addr], count`
    Init,
    /// `mbarrier.inval [addr]`
    Inval,
    /// `mbarrier.arrive state, [addr]{, count}`; `drop`: arrive_drop (the expected count of
    /// later phases goes down too).
    Arrive { drop: bool },
    /// `cp.async.mbarrier.arrive.noinc [addr]`: the sim's cp.async has completed, so this is
    /// an arrival (without `.noinc` it changes nothing).
    CpAsyncArrive,
    /// `mbarrier.test_wait` / `try_wait` `p, [addr], state`; `parity`: the operand is a phase
    /// parity instead of an arrive's state.
    Wait { parity: bool },
    /// `mbarrier.pending_count count, state`
    PendingCount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarryOp {
    Add,
    Sub,
    /// a * b's low (MadLo) or high (MadHi) half, plus c.
    MadLo,
    MadHi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin {
    Add,
    Sub,
    MulLo,
    MulHi,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half2Op {
    Bin(Bin),
    Fma,
    Neg,
    Abs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarpOp {
    Shfl(ShflMode),
    VoteAll,
    VoteAny,
    VoteUni,
    Ballot,
    /// redux.sync: add/min/max/and/or/xor over the lanes; the type says signedness.
    Redux(Bin, Ty),
    /// bar.warp.sync
    Sync,
    /// activemask: the lanes that reached it together
    ActiveMask,
    /// match.any.sync: the lanes whose value (of the type's width) equals this lane's.
    MatchAny(Ty),
    /// match.all.sync: the mask if every lane's value is equal (predicate true), else 0.
    MatchAll(Ty),
    /// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].b16: `num` 8x8 matrices of 16-bit elements
    /// from rows whose shared-memory addresses lanes give, spread over the warp's registers
    /// (`generic`: the addresses are generic ones, the instruction naming no state space).
    Ldmatrix { num: u8, trans: bool, generic: bool },
    /// mma.sync.aligned (row.col): D = A * B + C over the warp's fragments.
    Mma(MmaKind),
}

/// 8-bit float formats: OCP e4m3 (no infinity) and e5m2, and ue8m0 (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F8 {
    E4m3,
    E5m2,
    Ue8m0,
}

/// A tensor-core multiply-add the sim runs: its shape and element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaKind {
    pub m: u8,
    pub n: u8,
    pub k: u8,
    pub ab: MmaType,
    /// For integer inputs: whether A's and B's elements are signed (s8) or not (u8).
    pub a_signed: bool,
    pub b_signed: bool,
    pub acc: MmaType,
    /// Integer results clamp to s32 instead of wrapping.
    pub satfinite: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaType {
    F16,
    Bf16,
    Tf32,
    F32,
    F64,
    I8,
    S32,
}

impl MmaType {
    /// Bits of one element in a fragment register.
    pub fn width(self) -> u32 {
        match self {
            MmaType::I8 => 8,
            MmaType::F16 | MmaType::Bf16 => 16,
            MmaType::Tf32 | MmaType::F32 | MmaType::S32 => 32,
            MmaType::F64 => 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarRed {
    Popc,
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Un {
    Not,
    Cnot,
    Neg,
    Abs,
    Popc,
    Clz,
    Brev,
    Sqrt,
    Rsqrt,
    Rcp,
    Sin,
    Cos,
    Ex2,
    Lg2,
    Tanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rnd {
    /// Default for the conversion.
    #[default]
    None,
    /// To nearest even (rn / rni).
    Near,
    Zero,
    Down,
    Up,
}

/// Modifiers of arithmetic and conversions: rounding (`.rn/.rz/.rm/.rp`, `.rni`...), `.ftz`,
/// `.sat`, `.NaN` (min/max), `.relu`. `neg_a`/`neg_c` are no PTX modifier: an fma the sim made
/// of a mul and an add or sub ([`contract_mul_add`]) negates its first factor or its addend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mods {
    pub rnd: Rnd,
    pub ftz: bool,
    pub sat: bool,
    pub nan: bool,
    pub relu: bool,
    pub neg_a: bool,
    pub neg_c: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    Exch,
    Cas,
    And,
    Or,
    Xor,
    Inc,
    Dec,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Mov { ty: Ty, d: Opnd, a: Opnd },
    Ld { space: Space, ty: Ty, d: Opnd, addr: Opnd },
    St { space: Space, ty: Ty, addr: Opnd, a: Opnd },
    Bin { op: Bin, ty: Ty, m: Mods, d: Opnd, a: Opnd, b: Opnd },
    MulWide { ty: Ty, d: Opnd, a: Opnd, b: Opnd },
    /// mad.lo / mad.hi / fma / mad.f
    Mad { hi: bool, ty: Ty, m: Mods, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    MadWide { ty: Ty, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    /// Extended-precision arithmetic (add.cc, addc, sub.cc, subc, mad.cc, madc): `cin` adds
    /// (subtracts, for Sub) the carry flag CC.CF, kept in the function's hidden register `cc`;
    /// `cout` writes the carry (borrow, for Sub) out of the operation's width to it.
    Carry { op: CarryOp, ty: Ty, cin: bool, cout: bool, cc: Opnd, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    Un { op: Un, ty: Ty, m: Mods, d: Opnd, a: Opnd },
    /// `comb`: setp.CMP.BOOLOP: (op, predicate register, negated)
    /// `packed`: `.f16x2`/`.bf16x2` operands, compared half by half (`p` gets the low halves',
    /// `q` the high halves' result).
    Setp { cmp: Cmp, ty: Ty, m: Mods, packed: bool, p: Opnd, q: Opnd, a: Opnd, b: Opnd, comb: Option<(BoolOp, u32, bool)> },
    /// `set`: a comparison written as a value of `dty` (all ones, or 1.0); with packed halves,
    /// one value per half.
    Set { cmp: Cmp, dty: Ty, sty: Ty, m: Mods, packed: bool, d: Opnd, a: Opnd, b: Opnd, comb: Option<(BoolOp, u32, bool)> },
    /// bfind[.shiftamt]: the position of the most significant non-sign bit (or its distance
    /// from the top), 0xffffffff if there is none.
    Bfind { ty: Ty, shift: bool, d: Opnd, a: Opnd },
    /// copysign: `b` with the sign of `a`.
    CopySign { ty: Ty, d: Opnd, a: Opnd, b: Opnd },
    /// cvt.rn[.relu].f16x2.f32 / .bf16x2.f32: `a` rounded into the upper half, `b` the lower.
    CvtPack { ty: Ty, m: Mods, d: Opnd, a: Opnd, b: Opnd },
    /// Conversions to and from pairs of 8-bit floats: `wide` is the other side's type (f32 as
    /// two sources `a` (upper byte) and `b`, or f16/bf16 pairs in one 32-bit register `a`);
    /// `to_f8` says the direction.
    CvtF8 { f8: F8, wide: Ty, to_f8: bool, m: Mods, d: Opnd, a: Opnd, b: Opnd },
    /// dp4a (`halves` false) and dp2a.lo/.hi: byte (or halfword by byte) dot product plus `c`;
    /// `sa`/`sb`: the signedness of a's and b's parts.
    Dot { halves: bool, hi: bool, sa: bool, sb: bool, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    /// prmt: bytes of {b, a} picked by selector `c`; `mode` None is the default (generic) mode,
    /// else the row table of f4e, b4e, rc8, ecl, ecr, rc16.
    Prmt { mode: Option<u8>, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    /// sad: |a - b| + c.
    Sad { ty: Ty, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    /// shf.l / shf.r: the 64-bit {b, a} shifted by c (mod 32 with .wrap, at most 32 with
    /// .clamp); the high (left) or low (right) 32 bits.
    Shf { left: bool, clamp: bool, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    /// mul24 / mad24 (`c` Some): the low 24 bits of a and b multiplied (48 bits), its low 32
    /// bits or (`hi`) bits 47..16, plus c.
    Mul24 { hi: bool, signed: bool, d: Opnd, a: Opnd, b: Opnd, c: Option<Opnd> },
    /// testp: whether a float is of a class (`class`: finite, infinite, number, notanumber,
    /// normal, subnormal).
    Testp { class: u8, ty: Ty, p: Opnd, a: Opnd },
    /// isspacep.space: whether a generic address is in that state space.
    IsSpace { space: Space, p: Opnd, a: Opnd },
    /// cp.async (global to shared, `size` bytes of which the first `src_size` are copied and the
    /// rest zeroed): done at once, so commit_group / wait_group have nothing to wait for.
    CpAsync { dst: Opnd, src: Opnd, size: Opnd, src_size: Option<Opnd> },
    Selp { ty: Ty, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    Cvt { dty: Ty, sty: Ty, m: Mods, d: Opnd, a: Opnd },
    Cvta { to: bool, space: Space, d: Opnd, a: Opnd },
    Bfe { ty: Ty, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    Bfi { ty: Ty, d: Opnd, f: Opnd, b: Opnd, c: Opnd, e: Opnd },
    Lop3 { d: Opnd, a: Opnd, b: Opnd, c: Opnd, lut: Opnd },
    Atom { space: Space, op: AtomOp, ty: Ty, d: Option<Opnd>, addr: Opnd, b: Opnd, c: Option<Opnd> },
    Bra { target: u32 },
    /// `call vprintf, (fmt, args)`: CUDA's device printf (format pointer, packed arguments),
    /// run by the interpreter; `ret` receives the number of arguments.
    Vprintf { ret: Option<Opnd>, fmt: Opnd, args: Opnd },
    /// `call __assertfail, (message, file, line, function, charSize)`: a failed device-side
    /// `assert` (what nvcc emits for it): prints CUDA's message and stops the launch with
    /// CUDA_ERROR_ASSERT.
    AssertFail { args: Vec<Opnd> },
    /// `call (ret), name, (args..)` of a device function of the module (`callee`: its index in
    /// Module::funcs once resolved; u32::MAX if it has no body here).
    Call { name: String, callee: u32, via: Option<Opnd>, ret: Option<Opnd>, args: Vec<Opnd> },
    /// `call (ret), malloc, (size)`: device-side malloc from the launch's device heap.
    Malloc { ret: Opnd, size: Opnd },
    /// `call free, (ptr)`.
    Free { ptr: Opnd },
    /// An mbarrier operation on the 64-bit barrier object at `addr` (shared memory).
    Mbar { kind: MbarKind, space: Space, d: Opnd, addr: Opnd, a: Option<Opnd> },
    /// `call (ret), cudaCGGetIntrinsicHandle, (scope)`.
    CgHandle { ret: Opnd, scope: Opnd },
    /// `call (ret), cudaCGSynchronize, (handle, flags)`: every thread of the grid waits here
    /// for all the others (run by exec as a barrier over all the grid's blocks).
    GridSync { ret: Option<Opnd>, handle: Opnd },
    /// `ret`: ends the thread in a kernel, returns to the caller in a device function.
    Ret,
    /// Arithmetic on two halves packed in 32 bits (`.f16x2`/`.bf16x2`), lane by lane: `op` is
    /// Add/Sub/MulLo/Min/Max (with `b`), or Fma (with `b`, `c`), Neg or Abs (on `a` alone).
    Half2 { op: Half2Op, ty: Ty, m: Mods, d: Opnd, a: Opnd, b: Opnd, c: Opnd },
    /// bar.sync / barrier.sync, and bar.red (`red`: the reduction, its destination, and the
    /// predicate register each thread contributes, negated or not).
    Bar { red: Option<(BarRed, Opnd, u32, bool)> },
    /// A warp-collective instruction: the lanes named by each lane's `mask` exchange values
    /// once all of them have reached it (see exec.rs). `p` is a predicate result or Sink.
    Warp { op: WarpOp, d: Opnd, p: Opnd, a: Opnd, b: Opnd, c: Opnd, mask: Opnd, neg_a: bool },
    /// `tex` (and `tld4` with `gather`, the channel): `d` the four results, `h` the texture
    /// object, `c` the coordinates (a layer index first where the geometry is layered). A
    /// `.level`/`.grad` operand is dropped: vgpu's arrays have one level.
    Tex { geom: Geom, cty: Ty, gather: Option<u8>, d: Opnd, h: Opnd, c: Opnd },
    /// `suld.b`: elements of `ty` (a vector in `d`) at x in bytes, y, z.
    Suld { geom: Geom, ty: Ty, oob: Oob, d: Opnd, h: Opnd, c: Opnd },
    /// `sust.b`.
    Sust { geom: Geom, ty: Ty, oob: Oob, h: Opnd, c: Opnd, a: Opnd },
    /// `txq` / `suq`.
    TexQuery { q: Query, d: Opnd, h: Opnd },
    Exit,
    Trap,
    /// membar/fence: orders this thread's global accesses for the blocks on other host threads.
    Fence,
    Nop,
    /// Kept so that a module using it still loads; running it is an error naming it.
    Unsupported,
}

/// A texture or surface instruction's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geom {
    D1,
    D2,
    D3,
    /// Layered 1D and 2D: the first coordinate is the layer.
    A1d,
    A2d,
}

impl Geom {
    fn from_mods(mods: &[&str]) -> Option<Geom> {
        mods.iter().find_map(|m| match *m {
            "1d" => Some(Geom::D1),
            "2d" => Some(Geom::D2),
            "3d" => Some(Geom::D3),
            "a1d" => Some(Geom::A1d),
            "a2d" => Some(Geom::A2d),
            _ => None,
        })
    }

    pub fn layered(self) -> bool {
        matches!(self, Geom::A1d | Geom::A2d)
    }

    /// Coordinates besides the layer.
    pub fn dims(self) -> usize {
        match self {
            Geom::D1 | Geom::A1d => 1,
            Geom::D2 | Geom::A2d => 2,
            Geom::D3 => 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Inst {
    pub guard: Option<(u32, bool)>,
    pub op: Op,
    pub line: u32,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    pub offset: u32,
    pub size: u32,
    pub align: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymKind {
    Param(u32),
    Shared(u32),
    /// A device function's own .shared variable: its offset among the function's own, which a
    /// kernel calling it has after its own variables (Kernel::func_shared_at).
    FuncShared(u32),
    /// The dynamic shared memory (`.extern .shared` arrays): after the launched kernel's static.
    DynShared,
    Local(u32),
    Global(usize),
}

#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<ParamInfo>,
    pub param_bytes: u32,
    pub static_shared_bytes: u32,
    pub local_bytes: u32,
    pub(crate) insts: Vec<Inst>,
    pub(crate) nregs: usize,
    pub(crate) syms: Vec<SymKind>,
    pub(crate) dynamic_shared_offset: u32,
    /// For a `.func`: the size of its own shared variables.
    pub(crate) func_shared: u32,
    /// For a kernel: where each device function's own shared variables start in its shared
    /// memory (by index in Module::funcs; empty if it calls none that has any).
    pub(crate) func_shared_at: Vec<u32>,
    /// For a `.func`: its return value (offset in its local frame, size). Its parameters'
    /// offsets in `params` are in its local frame too.
    pub(crate) ret: Option<(u32, u32)>,
    /// Largest block it may be launched with: 1024, or fewer by `.maxntid` / `.reqntid`.
    pub max_threads: u32,
    /// `.reqntid`: the only block shape it may be launched with.
    pub req_block: Option<[u32; 3]>,
    /// It (or a device function it calls) synchronizes the whole grid (cooperative groups'
    /// grid.sync()): its blocks must all be resident at once.
    pub grid_sync: bool,
    /// Registers per thread a compiler would give it: the most 32-bit registers its PTX keeps
    /// live at once (see `register_estimate`), at most `.maxnreg`.
    pub regs: u32,
    /// Its instructions as the warp engine runs them, made at its first launch.
    pub(crate) fast: std::sync::OnceLock<Vec<super::exec::Fast>>,
    /// Its compiled segments, made once it is hot (exec/jit.rs).
    pub(crate) jit: super::exec::JitSlot,
    /// The registers a block must start with zeroed (those a thread may read before writing:
    /// exec/unwritten.rs), made at its first launch; None: all of them.
    pub(crate) zeroed: std::sync::OnceLock<Option<Vec<u32>>>,
}

/// A kernel's performance directives (after its parameter list): `.maxntid`, `.reqntid`,
/// `.maxnreg`; others (`.minnctapersm`, cluster shapes) change nothing the sim runs.
fn perf_directive(text: &str, name: &str) -> Option<Vec<u32>> {
    let at = text.find(name)? + name.len();
    let rest = &text[at..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == ',' || c.is_whitespace())).unwrap_or(rest.len());
    let v: Vec<u32> = rest[..end].split(',').filter_map(|t| t.trim().parse().ok()).collect();
    (!v.is_empty()).then_some(v)
}

/// Float `mul` and `add`/`sub` written without a rounding modifier may be fused into one fma
/// (PTX ISA, add/mul: "mul/add sequences with no rounding modifiers may be optimized to use
/// fused-multiply-add instructions on the target device"), and ptxas does so by default
/// (`--fmad=true`): that is how NVVM marks what the source lets it contract. A GPU then rounds
/// once where two roundings would differ: CuPy's `mod` (x - floor(x/y)*y) of 255.6 by 1.2 is
/// 3.8e-15 fused, 0.0 unfused. So the sim fuses them too: an f32/f64 `add`/`sub` without
/// modifiers (other than `.ftz`) one of whose operands was last written by such a `mul` (same
/// type and `.ftz`, same guard) in the same straight-line stretch, whose factors are unchanged
/// since, becomes `fma.rn` of those factors (the mul stays, for any other reader). The first
/// operand's product is fused first, as LLVM's combiner does: x*y + z, x*y - z = fma(x, y, -z),
/// z - x*y = fma(-x, y, z).
fn contract_mul_add(insts: &mut [Inst]) {
    let mut entered = vec![false; insts.len()];
    for inst in insts.iter() {
        if let Op::Bra { target } = inst.op {
            if let Some(e) = entered.get_mut(target as usize) {
                *e = true;
            }
        }
    }
    for i in 0..insts.len() {
        let Op::Bin { op: op @ (Bin::Add | Bin::Sub), ty: ty @ (Ty::F32 | Ty::F64), m, ref d, ref a, ref b } = insts[i].op else { continue };
        if m != (Mods { ftz: m.ftz, ..Mods::default() }) {
            continue;
        }
        let (d, a, b, guard) = (d.clone(), a.clone(), b.clone(), insts[i].guard);
        // Registers written since each earlier instruction, back to where control may enter.
        let mut since: Vec<u32> = Vec::new();
        let mut producers: [Option<(Opnd, Opnd)>; 2] = [None, None];
        let mut open = [matches!(a, Opnd::Reg(_)), matches!(b, Opnd::Reg(_))];
        let mut k = i;
        while k > 0 && !entered[k] && open.iter().any(|&o| o) {
            k -= 1;
            let written = super::exec::written_by(&insts[k].op);
            for (n, x) in [&a, &b].into_iter().enumerate() {
                let Opnd::Reg(r) = x else { continue };
                if !open[n] || !written.contains(r) {
                    continue;
                }
                open[n] = false;
                if let Op::Bin { op: Bin::MulLo, ty: mty, m: mm, d: Opnd::Reg(md), a: ref ma, b: ref mb } = insts[k].op {
                    let unchanged = |o: &Opnd| match o {
                        Opnd::Reg(q) => !since.contains(q) && q != &md,
                        Opnd::Imm(_) => true,
                        _ => false,
                    };
                    let same_guard = insts[k].guard == guard && guard.is_none_or(|(p, _)| !since.contains(&p));
                    if mty == ty && mm == (Mods { ftz: m.ftz, ..Mods::default() }) && same_guard && unchanged(ma) && unchanged(mb) {
                        producers[n] = Some((ma.clone(), mb.clone()));
                    }
                }
            }
            since.extend(written);
        }
        let fused = match (op, &producers) {
            (_, [Some((x, y)), _]) => Some((x.clone(), y.clone(), b.clone(), false, op == Bin::Sub)),
            (Bin::Add, [None, Some((x, y))]) => Some((x.clone(), y.clone(), a.clone(), false, false)),
            (_, [None, Some((x, y))]) => Some((x.clone(), y.clone(), a.clone(), true, false)),
            _ => None,
        };
        if let Some((x, y, c, neg_a, neg_c)) = fused {
            let m = Mods { rnd: Rnd::Near, ftz: m.ftz, neg_a, neg_c, ..Mods::default() };
            insts[i].op = Op::Mad { hi: false, ty, m, d, a: x, b: y, c };
        }
    }
}

/// Registers a compiler would allocate, estimated from the PTX: each virtual register is live
/// from its first mention to its last (to a loop's end if it is used inside a loop it was
/// defined before), weighted by its 32-bit words (predicates are not counted); the estimate is
/// the most live at any instruction.
fn register_estimate(f: &Func) -> u32 {
    let mut spans: Vec<(u32, u32, u32)> = f
        .reg_span
        .iter()
        .filter_map(|(r, &(a, b))| {
            let words = f.reg_bits.get(r).map_or(1, |&bits| bits.div_ceil(32));
            (words > 0).then_some((a, b, words))
        })
        .collect();
    for (j, inst) in f.insts.iter().enumerate() {
        if let Op::Bra { target } = inst.op {
            let (t, j) = (target, j as u32);
            if t <= j {
                for s in spans.iter_mut().filter(|s| s.0 < t && s.1 >= t) {
                    s.1 = s.1.max(j);
                }
            }
        }
    }
    let mut events: Vec<(u32, i64)> = spans.iter().flat_map(|&(a, b, w)| [(a, w as i64), (b + 1, -(w as i64))]).collect();
    events.sort_by_key(|&(at, d)| (at, d));
    let (mut live, mut most) = (0i64, 0i64);
    for (_, d) in events {
        live += d;
        most = most.max(live);
    }
    most as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarSpace {
    Global,
    Const,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalVar {
    pub name: String,
    pub space: VarSpace,
    pub size: u64,
    pub align: u32,
    pub init: Vec<u8>,
    /// Initializers that are addresses of the module's variables (`generic(sym)`, `sym`,
    /// `sym+8`): (byte offset in `init`, variable name, addend), written once the variables
    /// have device addresses.
    pub relocs: Vec<(u64, String, i64)>,
}

/// Why a kernel of a module cannot run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Its PTX is malformed or breaks a limit.
    Invalid,
    /// It uses an instruction (or form) the interpreter does not implement.
    Unsupported,
}

#[derive(Clone, Debug)]
struct Rejected {
    kernel: String,
    error: PtxError,
    why: Rejection,
}

#[derive(Clone, Debug, Default)]
pub struct Module {
    kernels: Vec<Kernel>,
    globals: Vec<GlobalVar>,
    /// Kernels the interpreter cannot run, with the reason. Libraries ship every kernel of a
    /// template family in one module (CUB: hundreds); one using an unsupported instruction fails
    /// when it is looked up, not the whole module.
    unsupported: Vec<Rejected>,
    /// The `.target sm_XY` architecture the PTX was written for (XY, e.g. 90), 0 if none.
    target: u32,
    /// Device functions (`.func` with a body), which `call` runs.
    funcs: Vec<Kernel>,
    /// For each function address the module hands out (see FUNC_ADDR_BASE), the index of its
    /// function in `funcs` (u32::MAX: declared without a body here).
    func_by_addr: Vec<u32>,
    /// A kernel or function calls device-side malloc or free.
    uses_heap: bool,
}

impl Module {
    pub(crate) fn funcs(&self) -> &[Kernel] {
        &self.funcs
    }

    /// The function (index in `funcs`) at a function address, for a call through a pointer.
    pub(crate) fn func_at(&self, addr: u64) -> Option<u32> {
        let off = addr.checked_sub(FUNC_ADDR_BASE).filter(|o| o % FUNC_ADDR_STRIDE == 0)?;
        let i = usize::try_from(off / FUNC_ADDR_STRIDE).ok()?;
        self.func_by_addr.get(i).copied().filter(|&f| (f as usize) < self.funcs.len())
    }

    /// Whether its kernels use device-side malloc/free (the launch then gets the device heap).
    pub fn uses_heap(&self) -> bool {
        self.uses_heap
    }

    /// The architecture of `.target` (e.g. 90 for sm_90): what the functions report as their
    /// PTX version. Libraries such as CUB pick tuning parameters on the host by it, and they
    /// must match the code the interpreter runs.
    pub fn target(&self) -> u32 {
        self.target
    }

    pub fn parse(text: &str) -> Result<Module, PtxError> {
        Parser::default().module(text)
    }

    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// Why kernel `name` cannot run here, if it is one of the module's rejected kernels.
    pub fn unsupported(&self, name: &str) -> Option<(&PtxError, Rejection)> {
        self.unsupported.iter().find(|r| r.kernel == name).map(|r| (&r.error, r.why))
    }

    /// Every kernel's name, runnable or not.
    pub fn kernel_names(&self) -> impl Iterator<Item = &str> {
        self.kernels.iter().map(|k| k.name.as_str()).chain(self.unsupported.iter().map(|r| r.kernel.as_str()))
    }

    pub fn globals(&self) -> &[GlobalVar] {
        &self.globals
    }
}

/// A statement of the source, with the line it starts on.
#[derive(Debug)]
enum Stmt {
    Text(usize, String),
    Open(usize),
    Close(usize),
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    out.push('\n'); // keep line numbers
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            // String literals (in .file) may hold "//".
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                out.push(b[i] as char);
                i += 1;
            }
            if i < b.len() {
                out.push('"');
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// `s` after any leading labels (`$L__BB0_1:`; not the first colon of a `::`).
fn after_labels(s: &str) -> &str {
    let mut s = s.trim_start();
    while let Some(colon) = s.find(':') {
        let label = s[..colon].trim();
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || "_$".contains(c)) || s[colon + 1..].starts_with(':') {
            break;
        }
        s = s[colon + 1..].trim_start();
    }
    s
}

const LINE_DIRECTIVES: [&str; 5] = [".version", ".target", ".address_size", ".file", ".loc"];

fn statements(text: &str) -> Vec<Stmt> {
    let text = strip_comments(text);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_line = 1;
    let mut line = 1;
    for c in text.chars() {
        // Whitespace before a statement is not kept: `cur` starts with what the statement
        // does, and checking it stays cheap however many blank lines there are.
        if cur.is_empty() {
            if c.is_whitespace() {
                if c == '\n' {
                    line += 1;
                }
                continue;
            }
            cur_line = line;
        }
        match c {
            ';' => {
                out.push(Stmt::Text(cur_line, std::mem::take(&mut cur)));
            }
            // A block opens a function body, or a scope in one (after a label, too).
            '{' if cur.trim().is_empty() || cur.trim_end().ends_with(':') || cur.contains(".entry") || cur.contains(".func") => {
                if !cur.trim().is_empty() {
                    out.push(Stmt::Text(cur_line, std::mem::take(&mut cur)));
                }
                cur.clear();
                out.push(Stmt::Open(line));
            }
            // A block ends; a label may stand right before the brace (nvcc -G, NVVM debug builds).
            '}' if cur.trim().is_empty() || cur.trim_end().ends_with(':') => {
                if !cur.trim().is_empty() {
                    out.push(Stmt::Text(cur_line, std::mem::take(&mut cur)));
                }
                cur.clear();
                out.push(Stmt::Close(line));
            }
            '\n' if LINE_DIRECTIVES.iter().any(|d| after_labels(&cur).starts_with(d)) => {
                // These directives end at the end of their line, not at a ';' (also after a
                // label: `$L__func_begin0:` then `.loc 1 4 0` on the next line, as NVVM's
                // debug builds write them; the next instruction is a statement of its own).
                out.push(Stmt::Text(cur_line, std::mem::take(&mut cur)));
                line += 1;
            }
            _ => {
                if c == '\n' {
                    line += 1;
                }
                cur.push(if c.is_whitespace() { ' ' } else { c });
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(Stmt::Text(cur_line, cur));
    }
    out
}

/// Splits on commas outside brackets and braces.
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn parse_int(s: &str) -> Option<u64> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let s = s.strip_suffix('U').unwrap_or(s);
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else if s.len() > 1 && s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()) {
        u64::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse::<u64>().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Float immediates: 0fXXXXXXXX (f32 bits), 0dXXXXXXXXXXXXXXXX (f64 bits), or decimal.
fn parse_imm(s: &str, ty: Option<Ty>) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        let bits = u32::from_str_radix(h, 16).ok()?;
        return Some(match ty {
            Some(Ty::F64) => (f32::from_bits(bits) as f64).to_bits(),
            _ => bits as u64,
        });
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        let bits = u64::from_str_radix(h, 16).ok()?;
        return Some(match ty {
            Some(Ty::F32) => (f64::from_bits(bits) as f32).to_bits() as u64,
            _ => bits,
        });
    }
    if let Some(v) = parse_int(s) {
        return Some(match ty {
            Some(Ty::F32) => (v as i64 as f32).to_bits() as u64,
            Some(Ty::F64) => (v as i64 as f64).to_bits(),
            _ => v,
        });
    }
    if s.contains('.') || s.contains('e') {
        let f: f64 = s.parse().ok()?;
        return Some(match ty {
            Some(Ty::F32) => (f as f32).to_bits() as u64,
            _ => f.to_bits(),
        });
    }
    None
}

fn sreg(s: &str) -> Option<Sreg> {
    let dim = |d: &str| match d {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, d)) = s.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            _ => return None,
        });
    }
    Some(match s {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%clock" => Sreg::Clock,
        "%clock64" => Sreg::Clock64,
        "%globaltimer" => Sreg::GlobalTimer,
        "%smid" => Sreg::SmId,
        "%nsmid" => Sreg::NSmId,
        "%gridid" => Sreg::GridId,
        "%lanemask_eq" => Sreg::LaneMask(0),
        "%lanemask_lt" => Sreg::LaneMask(1),
        "%lanemask_le" => Sreg::LaneMask(2),
        "%lanemask_gt" => Sreg::LaneMask(3),
        "%lanemask_ge" => Sreg::LaneMask(4),
        "%dynamic_smem_size" => Sreg::DynSmem,
        "%total_smem_size" => Sreg::TotalSmem,
        _ if s.starts_with("%envreg") => Sreg::EnvReg(s["%envreg".len()..].parse().ok().filter(|&n: &u8| n < 32)?),
        _ => return None,
    })
}

/// Module-level variable as declared.
struct VarDecl {
    space: String,
    name: String,
    align: u32,
    size: u64,
    ty: Ty,
    init: Option<String>,
    external: bool,
}

fn parse_var(line: usize, s: &str) -> Result<VarDecl, PtxError> {
    // [.visible|.extern|.weak] .space [.align N] .type name[dims] [= init]
    let (decl, init) = match s.split_once('=') {
        Some((d, i)) => (d.trim(), Some(i.trim().to_string())),
        None => (s.trim(), None),
    };
    let mut space = String::new();
    let mut align = 0u32;
    let mut ty = None;
    let mut name = String::new();
    let mut external = false;
    let mut toks = decl.split_whitespace().peekable();
    while let Some(t) = toks.next() {
        match t {
            ".visible" | ".weak" | ".common" => {}
            ".extern" => external = true,
            ".global" | ".const" | ".shared" | ".local" | ".param" => space = t[1..].to_string(),
            ".align" => align = toks.next().and_then(parse_int).unwrap_or(1) as u32,
            // A kernel pointer parameter's pointee attributes (`.ptr [.space] [.align N]`) say
            // what it points to, not how the parameter itself is laid out.
            ".ptr" => {
                while let Some(&a) = toks.peek() {
                    match a {
                        ".global" | ".const" | ".local" | ".shared" => drop(toks.next()),
                        ".align" => drop((toks.next(), toks.next())),
                        _ => break,
                    }
                }
            }
            ".v2" | ".v4" => return err(line, format!("vector variables are not supported: `{s}`")),
            _ if t.starts_with('.') => {
                ty = Some(Ty::from_name(&t[1..]).ok_or_else(|| PtxError { line, message: format!("unknown type {t} in `{s}`") })?)
            }
            _ => name.push_str(t),
        }
    }
    let ty = ty.ok_or_else(|| PtxError { line, message: format!("variable without a type: `{s}`") })?;
    // name[a][b] -> elements
    let (base, dims) = match name.find('[') {
        Some(i) => (name[..i].to_string(), &name[i..]),
        None => (name.clone(), ""),
    };
    let mut count: u64 = 1;
    for d in dims.split('[').skip(1) {
        let d = d.trim_end_matches(']').trim();
        if d.is_empty() {
            count = 0; // extern shared array of unknown size
        } else {
            let n = parse_int(d).ok_or_else(|| PtxError { line, message: format!("bad array size in `{s}`") })?;
            count = count.checked_mul(n).ok_or_else(|| PtxError { line, message: "array too large".into() })?;
        }
    }
    let size = count.checked_mul(ty.bytes() as u64).ok_or_else(|| PtxError { line, message: "array too large".into() })?;
    Ok(VarDecl { space, name: base, align: align.max(ty.bytes() as u32), size, ty, init, external })
}

/// A variable's initial bytes, and the address initializers among them (see GlobalVar::relocs).
#[allow(clippy::type_complexity)]
fn var_init(line: usize, v: &VarDecl) -> Result<(Vec<u8>, Vec<(u64, String, i64)>), PtxError> {
    let mut bytes = vec![0u8; v.size as usize];
    let mut relocs = Vec::new();
    if let Some(init) = &v.init {
        let inner = init.trim().trim_start_matches('{').trim_end_matches('}');
        let w = v.ty.bytes();
        for (i, item) in split_operands(inner).iter().map(|x| x.trim()).filter(|x| !x.is_empty()).enumerate() {
            let at = i * w;
            if at + w > bytes.len() {
                return err(line, "too many initializers");
            }
            match parse_imm(item, Some(v.ty)) {
                Some(val) => bytes[at..at + w].copy_from_slice(&val.to_le_bytes()[..w]),
                None => {
                    // generic(sym)[+off] or sym[+off]: the variable's (generic) address.
                    let (sym, off) = match item.split_once('+') {
                        Some((sym, off)) => (sym.trim(), parse_int(off).ok_or_else(|| PtxError { line, message: format!("unsupported initializer `{item}`") })? as i64),
                        None => (item, 0),
                    };
                    let sym = sym.strip_prefix("generic(").and_then(|r| r.strip_suffix(')')).unwrap_or(sym).trim();
                    let ident = !sym.is_empty() && sym.chars().all(|c| c.is_ascii_alphanumeric() || "_$".contains(c));
                    if !ident || w != 8 {
                        return err(line, format!("unsupported initializer `{item}`"));
                    }
                    relocs.push((at as u64, sym.to_string(), off));
                }
            }
        }
    }
    Ok((bytes, relocs))
}

#[derive(Default)]
struct Parser {
    globals: Vec<GlobalVar>,
    /// Module-level .shared variables: (name, size, align).
    shared: Vec<(String, u64, u32)>,
    extern_shared: Vec<(String, u32)>,
    kernels: Vec<Kernel>,
    unsupported: Vec<Rejected>,
    target: u32,
    funcs: Vec<Kernel>,
    /// Every `.func` the module declares (with a body or not), in order: a function's address
    /// (`mov.u64 %rd, f`) is FUNC_ADDR_BASE + its index here times FUNC_ADDR_STRIDE.
    func_names: HashMap<String, u32>,
    /// The `.func`s with a body here.
    func_bodies: std::collections::HashSet<String>,
}

/// Where the sim puts device functions' addresses (for calls through pointers): outside every
/// memory window, so that reading or writing through one faults.
pub const FUNC_ADDR_BASE: u64 = 0x0f00_0000_0000;
pub const FUNC_ADDR_STRIDE: u64 = 16;

/// Per-function parsing state.
struct Func {
    name: String,
    regs: HashMap<String, u32>,
    /// Register groups declared `%r<N>`: prefix -> (first index, N).
    reg_ranges: HashMap<String, (u32, u32)>,
    /// Registers allocated so far (named, in groups, and in `{ }` blocks).
    nregs: u32,
    /// Open `{ }` blocks (inline asm declares registers in them): per block, the names it
    /// declared with what they meant outside, to restore at its end.
    scopes: Vec<Vec<(String, Option<u32>)>>,
    /// Registers of closed blocks, reused by later blocks.
    free_regs: Vec<u32>,
    syms: Vec<SymKind>,
    sym_names: HashMap<String, u32>,
    params: Vec<ParamInfo>,
    param_bytes: u32,
    shared_bytes: u64,
    local_bytes: u64,
    labels: HashMap<String, u32>,
    insts: Vec<Inst>,
    /// (instruction index, label name) to patch once all labels are known.
    fixups: Vec<(usize, String, usize)>,
    /// Each register's width in bits (0 for predicates), from its declaration.
    reg_bits: HashMap<u32, u32>,
    /// Each register's first and last mention, by instruction index.
    reg_span: HashMap<u32, (u32, u32)>,
}

impl Func {
    /// Records that instruction `at` mentions the registers named in its `text`.
    fn note_registers(&mut self, at: u32, text: &str) {
        let mut rest = text;
        while let Some(p) = rest.find('%') {
            let tail = &rest[p..];
            let end = tail[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$')).map_or(tail.len(), |e| e + 1);
            if let Some(r) = self.reg(&tail[..end]) {
                let span = self.reg_span.entry(r).or_insert((at, at));
                span.1 = at;
            }
            rest = &tail[end.max(1)..];
        }
    }

    /// The condition code register CC.CF: a hidden register of the function (a name PTX cannot
    /// write), allocated at its first carry instruction, never reused by `{ }` blocks.
    fn carry_reg(&mut self, line: usize) -> Result<u32, PtxError> {
        const NAME: &str = "%%cc.cf";
        if let Some(&r) = self.regs.get(NAME) {
            return Ok(r);
        }
        if self.nregs as usize + 1 > MAX_REGS {
            return err(line, "too many registers");
        }
        self.nregs += 1;
        self.regs.insert(NAME.to_string(), self.nregs - 1);
        Ok(self.nregs - 1)
    }

    fn add_sym(&mut self, name: &str, kind: SymKind) {
        let id = self.syms.len() as u32;
        self.syms.push(kind);
        self.sym_names.insert(name.to_string(), id);
    }

    fn reg(&self, name: &str) -> Option<u32> {
        if let Some(&r) = self.regs.get(name) {
            return Some(r);
        }
        // %r12 from a %r<N> group
        let split = name.trim_end_matches(|c: char| c.is_ascii_digit());
        let idx: u32 = name[split.len()..].parse().ok()?;
        let &(first, n) = self.reg_ranges.get(split)?;
        (idx < n).then_some(first + idx)
    }
}

/// `.param` accesses to a call sequence's own parameters go to local memory (see body_stmt).
fn param_space(f: &Func, space: Space, addr: &Opnd) -> Space {
    match (space, addr) {
        (Space::Param, Opnd::Addr(Base::Sym(id), _)) if matches!(f.syms.get(*id as usize), Some(SymKind::Local(_))) => Space::Local,
        _ => space,
    }
}

/// The name in a `.entry NAME(` or `.func [(ret)] NAME(` header.
fn decl_name(header: &str) -> String {
    let rest = header.split(".entry").nth(1).or_else(|| header.split(".func").nth(1)).unwrap_or("").trim_start();
    let rest = if rest.starts_with('(') { rest.split_once(')').map_or("", |(_, r)| r) } else { rest };
    rest.split('(').next().unwrap_or("").split_whitespace().last().unwrap_or("").to_string()
}

/// The first `found` answer among the instructions of kernel `k` and of the device functions
/// it calls, directly or not (each function looked at once).
fn first_reached<T>(funcs: &[Kernel], k: &Kernel, mut found: impl FnMut(&Kernel, &Inst) -> Option<T>) -> Option<T> {
    let mut seen = vec![false; funcs.len()];
    let mut todo = vec![k];
    while let Some(f) = todo.pop() {
        for i in &f.insts {
            if let Some(t) = found(f, i) {
                return Some(t);
            }
            if let Op::Call { callee, .. } = &i.op {
                if let Some(c) = funcs.get(*callee as usize).filter(|_| !seen[*callee as usize]) {
                    seen[*callee as usize] = true;
                    todo.push(c);
                }
            }
        }
    }
    None
}

fn align_up(v: u64, a: u64) -> u64 {
    let a = a.max(1);
    v.div_ceil(a) * a
}

impl Parser {
    fn module(mut self, text: &str) -> Result<Module, PtxError> {
        let stmts = statements(text);
        // Functions may be named (by address) before their bodies: know them all first.
        for (i, st) in stmts.iter().enumerate() {
            if let Stmt::Text(_, s) = st {
                if s.contains(".func") && !s.contains(".entry") {
                    let name = decl_name(s.trim());
                    if name.is_empty() {
                        continue;
                    }
                    if matches!(stmts.get(i + 1), Some(Stmt::Open(_))) {
                        self.func_bodies.insert(name.clone());
                    }
                    let n = self.func_names.len() as u32;
                    self.func_names.entry(name).or_insert(n);
                }
            }
        }
        let mut i = 0;
        while i < stmts.len() {
            match &stmts[i] {
                Stmt::Text(line, s) => {
                    let s = s.trim();
                    if s.contains(".entry") || s.contains(".func") {
                        let body_follows = matches!(stmts.get(i + 1), Some(Stmt::Open(_)));
                        if !body_follows {
                            i += 1; // a prototype
                            continue;
                        }
                        let end = matching_close(&stmts, i + 1).ok_or_else(|| PtxError { line: *line, message: "unterminated function body".into() })?;
                        match (s.contains(".entry"), self.function(*line, s, &stmts[i + 2..end])) {
                            (true, Ok(k)) => self.kernels.push(k),
                            (true, Err(error)) => self.unsupported.push(Rejected { kernel: decl_name(s), error, why: Rejection::Invalid }),
                            (false, Ok(f)) => self.funcs.push(f),
                            // A call to it fails, naming it, when it runs.
                            (false, Err(e)) => tracing::debug!("device function {} cannot run on the sim: {e}", decl_name(s)),
                        }
                        i = end + 1;
                        continue;
                    }
                    self.directive(*line, s)?;
                }
                Stmt::Open(line) | Stmt::Close(line) => return err(*line, "unexpected brace at module level"),
            }
            i += 1;
        }
        // A module none of whose kernels is valid PTX fails to load, with the first reason.
        if self.kernels.is_empty() && !self.unsupported.is_empty() {
            return Err(self.unsupported.swap_remove(0).error);
        }
        // Calls name their callee; resolve the names to indices now that all are known.
        let index: HashMap<String, u32> = self.funcs.iter().enumerate().map(|(i, f)| (f.name.clone(), i as u32)).collect();
        for k in self.kernels.iter_mut().chain(self.funcs.iter_mut()) {
            for inst in &mut k.insts {
                if let Op::Call { name, callee, .. } = &mut inst.op {
                    *callee = index.get(name.as_str()).copied().unwrap_or(u32::MAX);
                }
            }
        }
        let mut func_by_addr = vec![u32::MAX; self.func_names.len()];
        for (name, &a) in &self.func_names {
            func_by_addr[a as usize] = index.get(name.as_str()).copied().unwrap_or(u32::MAX);
        }
        let uses_heap = self.kernels.iter().chain(&self.funcs).flat_map(|k| &k.insts).any(|i| matches!(i.op, Op::Malloc { .. } | Op::Free { .. }));
        self.reject_lacking();
        self.mark_grid_sync();
        self.place_func_shared();
        // Initializers that are functions' addresses (C++ vtables, tables of function
        // pointers) get them now; the rest must name the module's own variables.
        for g in &mut self.globals {
            let func_names = &self.func_names;
            let mut i = 0;
            while i < g.relocs.len() {
                let (off, name, addend) = &g.relocs[i];
                if let Some(&a) = func_names.get(name) {
                    let v = (FUNC_ADDR_BASE + a as u64 * FUNC_ADDR_STRIDE).wrapping_add_signed(*addend);
                    let at = *off as usize;
                    if at + 8 > g.init.len() {
                        g.init.resize(at + 8, 0);
                    }
                    g.init[at..at + 8].copy_from_slice(&v.to_le_bytes());
                    g.relocs.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        for g in &self.globals {
            if let Some((_, name, _)) = g.relocs.iter().find(|(_, n, _)| !self.globals.iter().any(|t| &t.name == n)) {
                return err(0, format!("the initializer of {} names {name}, which is not a variable of this module", g.name));
            }
        }
        Ok(Module { kernels: self.kernels, globals: self.globals, unsupported: self.unsupported, target: self.target, funcs: self.funcs, func_by_addr, uses_heap })
    }

    /// A kernel that reaches an instruction the interpreter lacks (itself or in a device
    /// function it calls) is rejected here, so that looking it up fails at once, naming the
    /// instruction, instead of a launch failing later (CUDA reports launch errors late).
    fn reject_lacking(&mut self) {
        let funcs = &self.funcs;
        let mut rejected = Vec::new();
        self.kernels.retain(|k| {
            let lacking = first_reached(funcs, k, |f, i| {
                matches!(i.op, Op::Unsupported).then(|| {
                    let message = format!("`{}` is an instruction the sim backend does not implement{}", i.text, if f.name == k.name { String::new() } else { format!(" (in {})", f.name) });
                    PtxError { line: i.line as usize, message }
                })
            });
            match lacking {
                Some(error) => {
                    rejected.push(Rejected { kernel: k.name.clone(), error, why: Rejection::Unsupported });
                    false
                }
                None => true,
            }
        });
        self.unsupported.extend(rejected);
    }

    /// Kernels that reach a grid-wide barrier (themselves or in a device function they call).
    fn mark_grid_sync(&mut self) {
        let funcs = &self.funcs;
        let marks: Vec<bool> = self
            .kernels
            .iter()
            .map(|k| {
                first_reached(funcs, k, |_, i| {
                    // CUDA's cooperative_groups headers find the grid barrier's workspace through
                    // %envreg1/2, and synchronize the grid by spinning on it.
                    matches!(i.op, Op::GridSync { .. } | Op::Mov { a: Opnd::Sreg(Sreg::EnvReg(1 | 2)), .. }).then_some(())
                })
                .is_some()
            })
            .collect();
        for (k, m) in self.kernels.iter_mut().zip(marks) {
            k.grid_sync = m;
        }
    }

    /// Device functions' own shared variables: each kernel gets those of the functions it
    /// calls (directly or not) after its own, as ptxas adds the callees' shared memory to a
    /// kernel's. Its dynamic shared memory moves after them.
    fn place_func_shared(&mut self) {
        if self.funcs.iter().all(|f| f.func_shared == 0) {
            return;
        }
        let callees = |k: &Kernel| k.insts.iter().filter_map(|i| match i.op { Op::Call { callee, .. } => Some(callee as usize), _ => None }).collect::<Vec<_>>();
        let mut kernels = std::mem::take(&mut self.kernels);
        kernels.retain_mut(|k| {
            let mut at = vec![u32::MAX; self.funcs.len()];
            let mut end = align_up(k.static_shared_bytes as u64, 16);
            let mut todo = callees(k);
            let mut reaches = false;
            while let Some(c) = todo.pop() {
                let Some(f) = self.funcs.get(c).filter(|_| at[c] == u32::MAX) else { continue };
                let start = align_up(end, 16);
                end = start + f.func_shared as u64;
                if end > MAX_SHARED {
                    let message = format!("{} and the device functions it calls declare more than {MAX_SHARED} bytes of shared memory", k.name);
                    self.unsupported.push(Rejected { kernel: k.name.clone(), error: PtxError { line: 0, message }, why: Rejection::Invalid });
                    return false;
                }
                at[c] = start as u32;
                reaches |= f.func_shared > 0;
                todo.extend(callees(f));
            }
            if reaches {
                k.static_shared_bytes = end as u32;
                k.dynamic_shared_offset = align_up(end, 16) as u32;
                k.func_shared_at = at;
            }
            true
        });
        self.kernels = kernels;
    }

    fn directive(&mut self, line: usize, s: &str) -> Result<(), PtxError> {
        let first = s.split_whitespace().next().unwrap_or("");
        match first {
            ".target" => {
                // .target sm_90[a], other options
                let arch = s.split_whitespace().nth(1).unwrap_or("").trim_end_matches(',');
                let digits: String = arch.strip_prefix("sm_").unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
                self.target = digits.parse().unwrap_or(0);
                Ok(())
            }
            ".version" | ".address_size" | ".file" | ".loc" | ".pragma" | ".section" => Ok(()),
            _ if s.contains(".global") || s.contains(".const") => {
                let v = parse_var(line, s)?;
                if v.external {
                    return err(line, format!("external variable {} is not defined in this module", v.name));
                }
                if v.size > MAX_GLOBAL_VAR {
                    return err(line, format!("variable {} of {} bytes is too large", v.name, v.size));
                }
                let (init, relocs) = var_init(line, &v)?;
                let space = if v.space == "const" { VarSpace::Const } else { VarSpace::Global };
                self.globals.push(GlobalVar { name: v.name, space, size: v.size, align: v.align, init, relocs });
                Ok(())
            }
            _ if s.contains(".shared") => {
                let v = parse_var(line, s)?;
                if v.external || v.size == 0 {
                    self.extern_shared.push((v.name, v.align));
                } else {
                    self.shared.push((v.name, v.size, v.align));
                }
                Ok(())
            }
            _ => err(line, format!("unsupported module directive `{s}`")),
        }
    }

    fn function(&self, line: usize, header: &str, body: &[Stmt]) -> Result<Kernel, PtxError> {
        // .visible .entry NAME( params ) [perf directives]
        // [.visible] .func [(.param .b32 ret)] NAME[( params )]
        let is_func = !header.contains(".entry");
        let (ret_decl, header) = match header.find(".func") {
            Some(at) if is_func && header[at + 5..].trim_start().starts_with('(') => {
                let rest = header[at + 5..].trim_start();
                let close = rest.find(')').ok_or_else(|| PtxError { line, message: "unterminated return list".into() })?;
                (Some(rest[1..close].to_string()), rest[close + 1..].to_string())
            }
            _ => (None, header.to_string()),
        };
        let header = if is_func && !header.contains('(') { format!("{header}()") } else { header };
        let open = header.find('(').ok_or_else(|| PtxError { line, message: "entry without parameter list".into() })?;
        let close = header.rfind(')').ok_or_else(|| PtxError { line, message: "entry without parameter list".into() })?;
        let name = header[..open].split_whitespace().last().unwrap_or("").to_string();
        let mut f = Func {
            name: name.clone(),
            regs: HashMap::new(),
            reg_ranges: HashMap::new(),
            nregs: 0,
            scopes: Vec::new(),
            free_regs: Vec::new(),
            syms: Vec::new(),
            sym_names: HashMap::new(),
            params: Vec::new(),
            param_bytes: 0,
            shared_bytes: 0,
            local_bytes: 0,
            labels: HashMap::new(),
            insts: Vec::new(),
            fixups: Vec::new(),
            reg_bits: HashMap::new(),
            reg_span: HashMap::new(),
        };
        let mut ret = None;
        let params = split_operands(&header[open + 1..close.max(open + 1)]);
        if is_func {
            // A device function's parameters and return value live in its local frame; `call`
            // copies the arguments in and the result out.
            for (p, is_ret) in split_operands(ret_decl.as_deref().unwrap_or("")).into_iter().map(|p| (p, true)).chain(params.into_iter().map(|p| (p, false))) {
                let v = parse_var(line, &p)?;
                if v.space != "param" {
                    return err(line, format!("function parameter is not .param: `{p}`"));
                }
                let off = align_up(f.local_bytes, v.align.max(1) as u64);
                f.add_sym(&v.name, SymKind::Local(off as u32));
                f.local_bytes = off + v.size;
                if is_ret {
                    ret = Some((off as u32, v.size as u32));
                } else {
                    f.params.push(ParamInfo { offset: off as u32, size: v.size as u32, align: v.align });
                }
            }
        } else {
            for p in params {
                let v = parse_var(line, &p)?;
                if v.space != "param" {
                    return err(line, format!("entry parameter is not .param: `{p}`"));
                }
                let offset = align_up(f.param_bytes as u64, v.align as u64);
                let end = offset + v.size;
                if end > vgpu_uapi::proto::MAX_PARAM_BYTES as u64 {
                    return err(line, "kernel parameters exceed 32764 bytes");
                }
                f.params.push(ParamInfo { offset: offset as u32, size: v.size as u32, align: v.align });
                f.add_sym(&v.name, SymKind::Param(offset as u32));
                f.param_bytes = end as u32;
            }
        }
        // Shared memory: module-level variables first, then the function's own.
        for (n, size, align) in &self.shared {
            let off = align_up(f.shared_bytes, *align as u64);
            f.add_sym(n, SymKind::Shared(off as u32));
            f.shared_bytes = off + size;
        }
        // A device function's own ones are placed per kernel at the module's end (see module()).
        let mut func_own = 0u64;
        for (n, size) in body_vars(body, ".shared")? {
            if is_func {
                let off = align_up(func_own, size.1 as u64);
                f.add_sym(&n, SymKind::FuncShared(off as u32));
                func_own = off + size.0;
            } else {
                let off = align_up(f.shared_bytes, size.1 as u64);
                f.add_sym(&n, SymKind::Shared(off as u32));
                f.shared_bytes = off + size.0;
            }
        }
        if f.shared_bytes + func_own > MAX_SHARED {
            return err(line, format!("{name} declares {} bytes of shared memory", f.shared_bytes + func_own));
        }
        let dyn_off = align_up(f.shared_bytes, 16);
        for (n, _) in &self.extern_shared {
            f.add_sym(n, SymKind::DynShared);
        }
        for (i, g) in self.globals.iter().enumerate() {
            f.add_sym(&g.name, SymKind::Global(i));
        }
        for st in body {
            match st {
                Stmt::Open(_) => f.scopes.push(Vec::new()),
                Stmt::Close(_) => {
                    for (name, outer) in f.scopes.pop().unwrap_or_default().into_iter().rev() {
                        if let Some(r) = f.regs.remove(&name) {
                            f.free_regs.push(r);
                        }
                        if let Some(o) = outer {
                            f.regs.insert(name, o);
                        }
                    }
                }
                Stmt::Text(l, s) => self.body_stmt(&mut f, *l, s.trim())?,
            }
        }
        for (at, label, l) in std::mem::take(&mut f.fixups) {
            let target = *f.labels.get(&label).ok_or_else(|| PtxError { line: l, message: format!("unknown label {label}") })?;
            if let Op::Bra { target: t } = &mut f.insts[at].op {
                *t = target;
            }
        }
        contract_mul_add(&mut f.insts);
        if f.local_bytes > MAX_LOCAL {
            return err(line, format!("{name} declares {} bytes of local memory", f.local_bytes));
        }
        let perf = &header[close + 1..];
        let req_block = perf_directive(perf, ".reqntid").map(|v| [v[0], v.get(1).copied().unwrap_or(1), v.get(2).copied().unwrap_or(1)]);
        let bound = perf_directive(perf, ".maxntid").map(|v| v.iter().product::<u32>()).into_iter().chain(req_block.map(|b| b.iter().product()));
        let max_threads = bound.fold(1024u32, u32::min);
        let regs = register_estimate(&f).min(perf_directive(perf, ".maxnreg").map_or(u32::MAX, |v| v[0])).max(1);
        Ok(Kernel {
            max_threads,
            req_block,
            regs,
            name: f.name,
            params: f.params,
            param_bytes: f.param_bytes,
            static_shared_bytes: f.shared_bytes as u32,
            local_bytes: f.local_bytes as u32,
            insts: f.insts,
            nregs: f.nregs as usize,
            syms: f.syms,
            dynamic_shared_offset: dyn_off as u32,
            func_shared: if is_func { func_own as u32 } else { 0 },
            func_shared_at: Vec::new(),
            ret,
            grid_sync: false,
            fast: Default::default(),
            jit: Default::default(),
            zeroed: Default::default(),
        })
    }

    fn body_stmt(&self, f: &mut Func, line: usize, mut s: &str) -> Result<(), PtxError> {
        // Leading labels: "$L__BB0_2: ret"
        while let Some(colon) = s.find(':') {
            let label = s[..colon].trim();
            // A PTX identifier (no dots), and not the first colon of a `::` qualifier.
            if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || "_$".contains(c)) || s[colon + 1..].starts_with(':') {
                break;
            }
            f.labels.insert(label.to_string(), f.insts.len() as u32);
            s = s[colon + 1..].trim();
        }
        if s.is_empty() {
            return Ok(());
        }
        if s.starts_with(".reg") {
            return self.reg_decl(f, line, s);
        }
        if s.starts_with(".local") {
            let v = parse_var(line, s)?;
            let off = align_up(f.local_bytes, v.align as u64);
            f.add_sym(&v.name, SymKind::Local(off as u32));
            f.local_bytes = off + v.size;
            return Ok(());
        }
        if s.starts_with(".shared") {
            return Ok(()); // laid out in function()
        }
        if s.starts_with(".loc") || s.starts_with(".callprototype") || s.starts_with(".pragma") || s.starts_with(".maxntid") || s.starts_with(".reqntid") || s.starts_with(".minnctapersm") || s.starts_with(".maxnreg") {
            return Ok(());
        }
        if s.starts_with(".param") {
            // A call sequence's own parameters (`.param .b64 param0;` before a `call`) live in
            // the thread's local memory; st.param/ld.param on them go there.
            let v = parse_var(line, s)?;
            let off = align_up(f.local_bytes, v.align.max(1) as u64);
            f.add_sym(&v.name, SymKind::Local(off as u32));
            f.local_bytes = off + v.size;
            return Ok(());
        }
        let inst = self.instruction(f, line, s)?;
        f.note_registers(f.insts.len() as u32, &inst.text);
        f.insts.push(inst);
        Ok(())
    }

    fn reg_decl(&self, f: &mut Func, line: usize, s: &str) -> Result<(), PtxError> {
        // .reg .b32 %r<26>;  .reg .f32 %f1, %f2;  .reg .v2 .f32 ... (rare)
        let rest = s.trim_start_matches(".reg").trim();
        let names = rest.split_whitespace().skip_while(|t| t.starts_with('.')).collect::<Vec<_>>().join(" ");
        // The width, for the register estimate: predicates take no general register.
        let (lanes, bits) = rest.split_whitespace().take_while(|t| t.starts_with('.')).fold((1, 32), |(lanes, bits), t| match t {
            ".pred" => (lanes, 0),
            ".v2" => (2, bits),
            ".v4" => (4, bits),
            t => (lanes, Ty::from_name(&t[1..]).map_or(bits, |ty| ty.bits())),
        });
        let bits = lanes * bits;
        for n in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Some(lt) = n.find('<') {
                let count = parse_int(n[lt + 1..].trim_end_matches('>')).ok_or_else(|| PtxError { line, message: format!("bad register group {n}") })?;
                if f.nregs as u64 + count > MAX_REGS as u64 {
                    return err(line, "too many registers");
                }
                f.reg_ranges.insert(n[..lt].to_string(), (f.nregs, count as u32));
                f.reg_bits.extend((f.nregs..f.nregs + count as u32).map(|r| (r, bits)));
                f.nregs += count as u32;
            } else {
                let r = match f.free_regs.pop() {
                    Some(r) if !f.scopes.is_empty() => r,
                    other => {
                        f.free_regs.extend(other);
                        if f.nregs as usize + 1 > MAX_REGS {
                            return err(line, "too many registers");
                        }
                        f.nregs += 1;
                        f.nregs - 1
                    }
                };
                f.reg_bits.insert(r, bits);
                let outer = f.regs.insert(n.to_string(), r);
                if let Some(scope) = f.scopes.last_mut() {
                    scope.push((n.to_string(), outer));
                }
            }
        }
        Ok(())
    }

    fn operand(&self, f: &Func, line: usize, s: &str, ty: Option<Ty>) -> Result<Opnd, PtxError> {
        let s = s.trim();
        if s == "_" {
            return Ok(Opnd::Sink);
        }
        if s == "WARP_SZ" {
            return Ok(Opnd::Imm(32)); // PTX's predefined constant
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return self.address(f, line, inner);
        }
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            let parts = split_operands(inner);
            let v: Result<Vec<Opnd>, PtxError> = parts.iter().map(|p| self.operand(f, line, p, ty)).collect();
            return Ok(Opnd::Vec(v?));
        }
        if s.starts_with('%') {
            if let Some(r) = f.reg(s) {
                return Ok(Opnd::Reg(r));
            }
            if let Some(sr) = sreg(s) {
                return Ok(Opnd::Sreg(sr));
            }
            return err(line, format!("unknown register {s}"));
        }
        if let Some(&r) = f.regs.get(s) {
            return Ok(Opnd::Reg(r)); // a register named without `%`
        }
        if let Some(v) = parse_imm(s, ty) {
            return Ok(Opnd::Imm(v));
        }
        if let Some(&id) = f.sym_names.get(s) {
            return Ok(Opnd::Sym(id));
        }
        if let Some(&a) = self.func_names.get(s) {
            return Ok(Opnd::Imm(FUNC_ADDR_BASE + a as u64 * FUNC_ADDR_STRIDE)); // a function's address
        }
        err(line, format!("unknown operand `{s}`"))
    }

    fn address(&self, f: &Func, line: usize, inner: &str) -> Result<Opnd, PtxError> {
        let inner = inner.replace(' ', "");
        // base, base+off, base+-off, off
        // base+off, base-off and base+-off (nvcc writes the last for negative offsets)
        let split = inner.find('+').or_else(|| inner.rfind('-')).filter(|&i| i > 0);
        let (base, off) = match split {
            Some(i) => {
                let (b, o) = inner.split_at(i);
                let off = parse_int(o.strip_prefix('+').unwrap_or(o)).ok_or_else(|| PtxError { line, message: format!("bad address offset in [{inner}]") })?;
                (b.to_string(), off as i64)
            }
            None => (inner.clone(), 0),
        };
        if let Some(v) = parse_int(&base) {
            return Ok(Opnd::Addr(Base::Abs, (v as i64).wrapping_add(off)));
        }
        if base.starts_with('%') || f.regs.contains_key(&base) {
            let r = f.reg(&base).ok_or_else(|| PtxError { line, message: format!("unknown register {base}") })?;
            return Ok(Opnd::Addr(Base::Reg(r), off));
        }
        let id = *f.sym_names.get(&base).ok_or_else(|| PtxError { line, message: format!("unknown symbol {base}") })?;
        Ok(Opnd::Addr(Base::Sym(id), off))
    }

    /// `tex`, `tld4`, `suld.b`, `sust.b`, `txq`, `suq` on texture and surface objects (the
    /// handle in a register or an immediate). Texture references, formatted surface stores
    /// (`sust.p`), cubemaps, multisample and depth-compare forms are not run (Op::Unsupported).
    fn texture_op(&self, f: &Func, line: usize, s: &str, name: &str, mods: &[&str], ops: &[String]) -> Result<Op, PtxError> {
        let has = |m: &str| mods.contains(&m);
        let types: Vec<Ty> = mods.iter().filter_map(|m| Ty::from_name(m)).collect();
        let bad = |what: &str| PtxError { line, message: format!("{what} in `{s}`") };
        // `[h, {c..}]` or `[h]`.
        type Target = (Opnd, Option<Opnd>);
        let target = |k: usize| -> Result<Target, PtxError> {
            let t = ops.get(k).ok_or_else(|| bad("missing operand"))?;
            let inner = t.trim().strip_prefix('[').and_then(|r| r.strip_suffix(']')).ok_or_else(|| bad("no [object, coordinates]"))?;
            match inner.split_once(',') {
                Some((h, c)) => Ok((self.operand(f, line, h, Some(Ty::B64))?, Some(self.operand(f, line, c, Some(Ty::B32))?))),
                None => Ok((self.operand(f, line, inner, Some(Ty::B64))?, None)),
            }
        };
        let oob = if has("clamp") {
            Oob::Clamp
        } else if has("zero") {
            Oob::Zero
        } else {
            Oob::Trap
        };
        let Some(geom) = Geom::from_mods(mods) else {
            if matches!(name, "txq" | "suq") {
                let q = mods.iter().find_map(|m| match *m {
                    "width" => Some(Query::Width),
                    "height" => Some(Query::Height),
                    "depth" => Some(Query::Depth),
                    "array_size" => Some(Query::ArraySize),
                    "normalized_coords" => Some(Query::NormalizedCoords),
                    "filter_mode" => Some(Query::FilterMode),
                    "addr_mode_0" => Some(Query::AddrMode(0)),
                    "addr_mode_1" => Some(Query::AddrMode(1)),
                    "addr_mode_2" => Some(Query::AddrMode(2)),
                    _ => None,
                });
                let (Some(q), false) = (q, has("level")) else { return Ok(Op::Unsupported) };
                let d = self.operand(f, line, ops.first().ok_or_else(|| bad("missing destination"))?, Some(Ty::B32))?;
                return Ok(Op::TexQuery { q, d, h: target(1)?.0 });
            }
            return Ok(Op::Unsupported);
        };
        Ok(match name {
            "tex" | "tld4" if has("v4") && types.len() == 2 && !ops.first().is_some_and(|d| d.contains('|')) => {
                let gather = if name == "tld4" {
                    Some(["r", "g", "b", "a"].iter().position(|c| has(c)).ok_or_else(|| bad("no channel"))? as u8)
                } else {
                    None
                };
                // Only `.level`/`.grad` may add operands (dropped); offsets and depth compare
                // are not run.
                let extra = ops.len().saturating_sub(2);
                if gather.is_some() && geom != Geom::D2 || extra > 0 && !(has("level") && extra == 1 || has("grad") && extra == 2) {
                    return Ok(Op::Unsupported);
                }
                let (h, c) = target(1)?;
                let d = self.operand(f, line, &ops[0], Some(types[0]))?;
                if !matches!(&d, Opnd::Vec(v) if v.len() == 4) {
                    return Ok(Op::Unsupported);
                }
                Op::Tex { geom, cty: types[1], gather, d, h, c: c.ok_or_else(|| bad("no coordinates"))? }
            }
            "suld" | "sust" if has("b") && types.len() == 1 && types[0].bytes() <= 8 => {
                let ty = types[0];
                if name == "suld" {
                    let (h, c) = target(1)?;
                    let d = self.operand(f, line, ops.first().ok_or_else(|| bad("missing destination"))?, Some(ty))?;
                    Op::Suld { geom, ty, oob, d, h, c: c.ok_or_else(|| bad("no coordinates"))? }
                } else {
                    let (h, c) = target(0)?;
                    let a = self.operand(f, line, ops.get(1).ok_or_else(|| bad("missing value"))?, Some(ty))?;
                    Op::Sust { geom, ty, oob, h, c: c.ok_or_else(|| bad("no coordinates"))?, a }
                }
            }
            _ => Op::Unsupported,
        })
    }

    fn instruction(&self, f: &mut Func, line: usize, s: &str) -> Result<Inst, PtxError> {
        let text = s.to_string();
        let mut rest = s;
        let mut guard = None;
        if let Some(r) = rest.strip_prefix('@') {
            let (p, r2) = r.split_once(' ').ok_or_else(|| PtxError { line, message: format!("bad predicate in `{s}`") })?;
            let (neg, p) = match p.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, p),
            };
            let reg = f.reg(p).ok_or_else(|| PtxError { line, message: format!("unknown predicate {p}") })?;
            guard = Some((reg, neg));
            rest = r2.trim();
        }
        let (opcode, args) = match rest.split_once(' ') {
            Some((o, a)) => (o, a.trim()),
            None => (rest, ""),
        };
        let mut parts = opcode.split('.');
        let name = parts.next().unwrap_or("");
        // `.shared::cta`, `.shared::cluster` (a cluster is one block here), `.global::...`: the
        // state space is the part before `::`; hints such as `.L2::128B` are kept as written.
        let mods: Vec<&str> = parts.map(|m| match m.split_once("::") {
            Some((space @ ("shared" | "global" | "local" | "const" | "param"), _)) => space,
            _ => m,
        }).collect();
        let types: Vec<Ty> = mods.iter().filter_map(|m| Ty::from_name(m)).collect();
        let has = |m: &str| mods.contains(&m);
        let ty0 = types.first().copied();
        let ops = split_operands(args);
        let carry = matches!(name, "addc" | "subc" | "madc") || (matches!(name, "add" | "sub" | "mad") && mods.contains(&"cc"));
        let cc = if carry { Some(Opnd::Reg(f.carry_reg(line)?)) } else { None };
        let o = |i: usize, ty: Option<Ty>| -> Result<Opnd, PtxError> {
            let a = ops.get(i).ok_or_else(|| PtxError { line, message: format!("missing operand {} in `{s}`", i + 1) })?;
            self.operand(f, line, a, ty)
        };
        let need_ty = || ty0.ok_or_else(|| PtxError { line, message: format!("no type in `{s}`") });
        let rnd = if has("rn") || has("rni") {
            Rnd::Near
        } else if has("rz") || has("rzi") {
            Rnd::Zero
        } else if has("rm") || has("rmi") {
            Rnd::Down
        } else if has("rp") || has("rpi") {
            Rnd::Up
        } else {
            Rnd::None
        };
        let m = Mods { rnd, ftz: has("ftz"), sat: has("sat"), nan: has("NaN"), relu: has("relu"), ..Mods::default() };
        let space = || {
            if has("global") {
                Space::Global
            } else if has("shared") {
                Space::Shared
            } else if has("local") {
                Space::Local
            } else if has("param") {
                Space::Param
            } else if has("const") {
                Space::Const
            } else {
                Space::Generic
            }
        };
        let packed = mods.iter().find_map(|m| match *m {
            "f16x2" => Some(Ty::F16),
            "bf16x2" => Some(Ty::Bf16),
            // min/max.{u16x2,s16x2}{.relu} (sm_90): two 16-bit integer lanes.
            "u16x2" => Some(Ty::U16),
            "s16x2" => Some(Ty::S16),
            _ => None,
        });
        if let Some(ty) = packed.filter(|_| !matches!(name, "setp" | "set" | "cvt" | "mov" | "ld" | "st")) {
            let h2 = match name {
                "add" => Some(Half2Op::Bin(Bin::Add)),
                "sub" => Some(Half2Op::Bin(Bin::Sub)),
                "mul" => Some(Half2Op::Bin(Bin::MulLo)),
                "min" => Some(Half2Op::Bin(Bin::Min)),
                "max" => Some(Half2Op::Bin(Bin::Max)),
                "fma" => Some(Half2Op::Fma),
                "neg" => Some(Half2Op::Neg),
                "abs" => Some(Half2Op::Abs),
                _ => None,
            };
            // The rest of the packed family (and directed rounding, which PTX lacks for
            // halves) is not run by the sim.
            let int_lanes = !ty.float();
            let op = match h2 {
                Some(op) if int_lanes && !matches!(op, Half2Op::Bin(Bin::Min | Bin::Max)) => Op::Unsupported,
                Some(op) if !matches!(rnd, Rnd::Zero | Rnd::Down | Rnd::Up) => {
                    let opt = |k: usize| if ops.len() > k { o(k, Some(Ty::B32)) } else { Ok(Opnd::Sink) };
                    Op::Half2 { op, ty, m, d: o(0, Some(Ty::B32))?, a: o(1, Some(Ty::B32))?, b: opt(2)?, c: opt(3)? }
                }
                _ => Op::Unsupported,
            };
            return Ok(Inst { guard, op, line: line as u32, text });
        }
        let op = match name {
            _ if carry => {
                let ty = need_ty()?;
                if !matches!(ty, Ty::U32 | Ty::S32 | Ty::U64 | Ty::S64) {
                    return err(line, format!("`{s}`: carry arithmetic is for .u32/.s32/.u64/.s64"));
                }
                let op = match name {
                    "add" | "addc" => CarryOp::Add,
                    "sub" | "subc" => CarryOp::Sub,
                    _ if has("hi") => CarryOp::MadHi,
                    _ => CarryOp::MadLo,
                };
                let mad = matches!(op, CarryOp::MadLo | CarryOp::MadHi);
                let c = if mad { o(3, Some(ty))? } else { Opnd::Imm(0) };
                let cc = cc.clone().ok_or_else(|| PtxError { line, message: "no carry register".into() })?;
                Op::Carry { op, ty, cin: name.ends_with('c'), cout: has("cc"), cc, d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, Some(ty))?, c }
            }
            "mov" => {
                let ty = need_ty()?;
                Op::Mov { ty, d: o(0, Some(ty))?, a: o(1, Some(ty))? }
            }
            "ld" | "ldu" => {
                let ty = need_ty()?;
                let addr = o(1, None)?;
                Op::Ld { space: param_space(f, space(), &addr), ty, d: o(0, Some(ty))?, addr }
            }
            "st" => {
                let ty = need_ty()?;
                let addr = o(0, None)?;
                Op::St { space: param_space(f, space(), &addr), ty, addr, a: o(1, Some(ty))? }
            }
            "call" => {
                // call[.uni] [(ret),] callee[, (args..)]
                let (ret, rest) = match ops.first() {
                    Some(r) if r.starts_with('(') => (Some(r.trim_matches(|c| c == '(' || c == ')').trim().to_string()), &ops[1..]),
                    _ => (None, &ops[..]),
                };
                let callee = rest.first().map(String::as_str).unwrap_or("");
                let args: Vec<&str> = rest.get(1).map(|a| a.trim_matches(|c| c == '(' || c == ')').split(',').map(str::trim).collect()).unwrap_or_default();
                match (callee, &args[..]) {
                    ("vprintf", [fmt, a]) => Op::Vprintf {
                        ret: ret.map(|r| self.operand(f, line, &r, Some(Ty::B32))).transpose()?,
                        fmt: self.operand(f, line, fmt, Some(Ty::B64))?,
                        args: self.operand(f, line, a, Some(Ty::B64))?,
                    },
                    // The C library's malloc/free, which CUDA provides on the device (unless
                    // the module brings its own).
                    ("malloc", [size]) if ret.is_some() && !self.func_bodies.contains("malloc") => Op::Malloc {
                        ret: self.operand(f, line, ret.as_deref().unwrap_or(""), Some(Ty::B64))?,
                        size: self.operand(f, line, size, Some(Ty::B64))?,
                    },
                    ("free", [ptr]) if ret.is_none() && !self.func_bodies.contains("free") => Op::Free { ptr: self.operand(f, line, ptr, Some(Ty::B64))? },
                    // Cooperative groups' grid-wide barrier, which CUDA provides in libcudadevrt:
                    // the handle of a scope (1: the grid), and the barrier over it.
                    ("cudaCGGetIntrinsicHandle", [scope]) if ret.is_some() && !self.func_bodies.contains(callee) => Op::CgHandle {
                        ret: self.operand(f, line, ret.as_deref().unwrap_or(""), Some(Ty::B64))?,
                        scope: self.operand(f, line, scope, Some(Ty::B32))?,
                    },
                    ("cudaCGSynchronize" | "cudaCGSynchronizeGrid", [handle, _flags]) if !self.func_bodies.contains(callee) => Op::GridSync {
                        ret: ret.map(|r| self.operand(f, line, &r, Some(Ty::B32))).transpose()?,
                        handle: self.operand(f, line, handle, Some(Ty::B64))?,
                    },
                    ("__assertfail", [message, file, line_no, function, _char_size]) => Op::AssertFail {
                        args: [message, file, line_no, function].map(|a| self.operand(f, line, a, Some(Ty::B64))).into_iter().collect::<Result<_, _>>()?,
                    },
                    (name, _) if !name.is_empty() && !name.starts_with('%') => Op::Call {
                        name: name.to_string(),
                        callee: u32::MAX,
                        via: None,
                        ret: ret.map(|r| self.operand(f, line, &r, None)).transpose()?,
                        args: args.iter().filter(|a| !a.is_empty()).map(|a| self.operand(f, line, a, None)).collect::<Result<_, _>>()?,
                    },
                    // Through a function pointer: `call (ret), %rd, (args), prototype;`
                    (reg, _) if reg.starts_with('%') => Op::Call {
                        name: format!("the function at {reg}"),
                        callee: u32::MAX,
                        via: Some(self.operand(f, line, reg, Some(Ty::B64))?),
                        ret: ret.map(|r| self.operand(f, line, &r, None)).transpose()?,
                        args: args.iter().filter(|a| !a.is_empty()).map(|a| self.operand(f, line, a, None)).collect::<Result<_, _>>()?,
                    },
                    _ => Op::Unsupported,
                }
            }
            "add" | "sub" | "min" | "max" | "and" | "or" | "xor" | "div" | "rem" | "shl" | "shr" | "mul" => {
                let ty = need_ty()?;
                let bin = match name {
                    "add" => Bin::Add,
                    "sub" => Bin::Sub,
                    "min" => Bin::Min,
                    "max" => Bin::Max,
                    "and" => Bin::And,
                    "or" => Bin::Or,
                    "xor" => Bin::Xor,
                    "div" => Bin::Div,
                    "rem" => Bin::Rem,
                    "shl" => Bin::Shl,
                    "shr" => Bin::Shr,
                    _ if has("hi") => Bin::MulHi,
                    _ if has("wide") => {
                        let src = ty;
                        let wide = wide_of(src).ok_or_else(|| PtxError { line, message: format!("mul.wide of {src:?}") })?;
                        return Ok(Inst { guard, op: Op::MulWide { ty: src, d: o(0, Some(wide))?, a: o(1, Some(src))?, b: o(2, Some(src))? }, line: line as u32, text });
                    }
                    _ => Bin::MulLo,
                };
                let bty = if matches!(bin, Bin::Shl | Bin::Shr) { Some(Ty::U32) } else { Some(ty) };
                // Saturating integer arithmetic exists for add/sub.s32 only.
                if m.sat && !ty.float() && !(ty == Ty::S32 && matches!(bin, Bin::Add | Bin::Sub)) {
                    Op::Unsupported
                } else {
                    Op::Bin { op: bin, ty, m, d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, bty)? }
                }
            }
            "mad" | "fma" => {
                let ty = need_ty()?;
                if has("wide") {
                    let wide = wide_of(ty).ok_or_else(|| PtxError { line, message: format!("mad.wide of {ty:?}") })?;
                    Op::MadWide { ty, d: o(0, Some(wide))?, a: o(1, Some(ty))?, b: o(2, Some(ty))?, c: o(3, Some(wide))? }
                } else {
                    if m.sat && !ty.float() {
                        Op::Unsupported // mad.hi.sat.s32
                    } else {
                        Op::Mad { hi: has("hi"), ty, m, d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, Some(ty))?, c: o(3, Some(ty))? }
                    }
                }
            }
            "not" | "cnot" | "neg" | "abs" | "popc" | "clz" | "brev" | "sqrt" | "rsqrt" | "rcp" | "sin" | "cos" | "ex2" | "lg2" | "tanh" => {
                let ty = need_ty()?;
                let un = match name {
                    "not" => Un::Not,
                    "cnot" => Un::Cnot,
                    "neg" => Un::Neg,
                    "abs" => Un::Abs,
                    "popc" => Un::Popc,
                    "clz" => Un::Clz,
                    "brev" => Un::Brev,
                    "sqrt" => Un::Sqrt,
                    "rsqrt" => Un::Rsqrt,
                    "rcp" => Un::Rcp,
                    "sin" => Un::Sin,
                    "cos" => Un::Cos,
                    "ex2" => Un::Ex2,
                    "lg2" => Un::Lg2,
                    _ => Un::Tanh,
                };
                // popc/clz write a u32 from a wider source.
                let dty = if matches!(un, Un::Popc | Un::Clz) { Ty::U32 } else { ty };
                Op::Un { op: un, ty, m, d: o(0, Some(dty))?, a: o(1, Some(ty))? }
            }
            "setp" | "set" => {
                let sty = packed.or_else(|| types.last().copied()).ok_or_else(|| PtxError { line, message: format!("no type in `{s}`") })?;
                let opty = if packed.is_some() { Ty::B32 } else { sty };
                let cmp = mods.iter().find_map(|m| cmp_of(m)).ok_or_else(|| PtxError { line, message: format!("no comparison in `{s}`") })?;
                let comb = mods.iter().find_map(|m| match *m {
                    "and" => Some(BoolOp::And),
                    "or" => Some(BoolOp::Or),
                    "xor" => Some(BoolOp::Xor),
                    _ => None,
                });
                let comb = match comb {
                    Some(b) => {
                        let c = ops.get(3).ok_or_else(|| PtxError { line, message: format!("missing predicate operand in `{s}`") })?;
                        let (neg, c) = match c.strip_prefix('!') {
                            Some(c) => (true, c),
                            None => (false, c.as_str()),
                        };
                        let reg = f.reg(c).ok_or_else(|| PtxError { line, message: format!("unknown predicate {c}") })?;
                        Some((b, reg, neg))
                    }
                    None => None,
                };
                let (a, b) = (o(1, Some(opty))?, o(2, Some(opty))?);
                if name == "set" {
                    // set.CMP[.BOOL].dtype.stype: the destination type is the first one named.
                    let dty = match mods.iter().find(|m| Ty::from_name(m).is_some() || m.ends_with("x2")) {
                        Some(&"f16x2") => Ty::F16,
                        Some(&"bf16x2") => Ty::Bf16,
                        Some(t) => Ty::from_name(t).unwrap_or(Ty::U32),
                        None => Ty::U32,
                    };
                    let packed = packed.is_some();
                    Op::Set { cmp, dty, sty, m, packed, d: o(0, Some(if packed { Ty::B32 } else { dty }))?, a, b, comb }
                } else {
                    let dst = ops.first().cloned().unwrap_or_default();
                    let (p, q) = match dst.split_once('|') {
                        Some((p, q)) => (self.operand(f, line, p, None)?, self.operand(f, line, q, None)?),
                        None => (self.operand(f, line, &dst, None)?, Opnd::Sink),
                    };
                    Op::Setp { cmp, ty: sty, m, packed: packed.is_some(), p, q, a, b, comb }
                }
            }
            "bfind" => Op::Bfind { ty: need_ty()?, shift: has("shiftamt"), d: o(0, Some(Ty::U32))?, a: o(1, ty0)? },
            "copysign" => {
                let ty = need_ty()?;
                Op::CopySign { ty, d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, Some(ty))? }
            }
            "dp4a" | "dp2a" => {
                let (ta, tb) = (types.first().copied(), types.get(1).copied());
                let (Some(ta), Some(tb)) = (ta, tb) else { return err(line, format!("{name} needs two types: `{s}`")) };
                let halves = name == "dp2a";
                if halves && !has("lo") && !has("hi") {
                    return err(line, format!("dp2a needs .lo or .hi: `{s}`"));
                }
                Op::Dot { halves, hi: has("hi"), sa: ta.signed(), sb: tb.signed(), d: o(0, Some(Ty::B32))?, a: o(1, Some(Ty::B32))?, b: o(2, Some(Ty::B32))?, c: o(3, Some(Ty::B32))? }
            }
            "prmt" => {
                let mode = ["f4e", "b4e", "rc8", "ecl", "ecr", "rc16"].iter().position(|m| has(m)).map(|i| i as u8);
                Op::Prmt { mode, d: o(0, Some(Ty::B32))?, a: o(1, Some(Ty::B32))?, b: o(2, Some(Ty::B32))?, c: o(3, Some(Ty::B32))? }
            }
            "shf" => Op::Shf { left: has("l"), clamp: has("clamp"), d: o(0, Some(Ty::B32))?, a: o(1, Some(Ty::B32))?, b: o(2, Some(Ty::B32))?, c: o(3, Some(Ty::U32))? },
            "mul24" | "mad24" => {
                let ty = need_ty()?;
                let c = if name == "mad24" { Some(o(3, Some(ty))?) } else { None };
                if has("sat") {
                    Op::Unsupported // mad24.hi.sat.s32
                } else {
                    Op::Mul24 { hi: has("hi"), signed: ty.signed(), d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, Some(ty))?, c }
                }
            }
            "testp" => {
                let class = ["finite", "infinite", "number", "notanumber", "normal", "subnormal"].iter().position(|c| has(c));
                match class {
                    Some(class) => {
                        let ty = need_ty()?;
                        Op::Testp { class: class as u8, ty, p: o(0, Some(Ty::Pred))?, a: o(1, Some(ty))? }
                    }
                    None => return err(line, format!("no class in `{s}`")),
                }
            }
            "sad" => {
                let ty = need_ty()?;
                Op::Sad { ty, d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, Some(ty))?, c: o(3, Some(ty))? }
            }
            "selp" => {
                let ty = need_ty()?;
                Op::Selp { ty, d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, Some(ty))?, c: o(3, None)? }
            }
            "cvt" if mods.iter().any(|m| matches!(*m, "e4m3x2" | "e5m2x2" | "ue8m0x2")) => {
                let f8 = match mods.iter().find(|m| m.ends_with("x2") && m.contains('m')) {
                    Some(&"e4m3x2") => F8::E4m3,
                    Some(&"e5m2x2") => F8::E5m2,
                    _ => F8::Ue8m0,
                };
                let (dst, src) = (mods[mods.len() - 2], mods[mods.len() - 1]);
                let to_f8 = dst.ends_with("m3x2") || dst.ends_with("m2x2") || dst == "ue8m0x2";
                let wide = match if to_f8 { src } else { dst } {
                    "f32" => Ty::F32,
                    "f16x2" => Ty::F16,
                    _ => Ty::Bf16, // bf16x2
                };
                // What the ISA defines: from f32 or f16x2 with .satfinite (e4m3/e5m2 in .rn,
                // ue8m0 in .rz or .rp), and back to f16x2 (e4m3/e5m2) or bf16x2 (ue8m0).
                let valid = if to_f8 {
                    has("satfinite")
                        && match f8 {
                            F8::Ue8m0 => wide == Ty::F32 && matches!(rnd, Rnd::Zero | Rnd::Up),
                            _ => wide != Ty::Bf16 && rnd == Rnd::Near,
                        }
                } else {
                    (f8 == F8::Ue8m0) == (wide == Ty::Bf16) && wide != Ty::F32
                };
                if !valid {
                    Op::Unsupported
                } else {
                    let two = to_f8 && wide == Ty::F32;
                    let (d, a) = (o(0, Some(if to_f8 { Ty::B16 } else { Ty::B32 }))?, o(1, Some(Ty::B32))?);
                    let b = if two { o(2, Some(Ty::B32))? } else { Opnd::Sink };
                    Op::CvtF8 { f8, wide, to_f8, m, d, a, b }
                }
            }
            "cvt" => {
                if let (Some(ty), Some(&"f32")) = (packed, mods.last()) {
                    // cvt.rn[.relu].f16x2.f32 d, a, b
                    if rnd != Rnd::Near || has("satfinite") {
                        Op::Unsupported
                    } else {
                        Op::CvtPack { ty, m, d: o(0, Some(Ty::B32))?, a: o(1, Some(Ty::F32))?, b: o(2, Some(Ty::F32))? }
                    }
                } else {
                    let dty = need_ty()?;
                    let sty = *types.get(1).ok_or_else(|| PtxError { line, message: format!("cvt needs two types: `{s}`") })?;
                    if has("rna") || has("satfinite") || types.len() != 2 {
                        Op::Unsupported
                    } else {
                        Op::Cvt { dty, sty, m, d: o(0, Some(dty))?, a: o(1, Some(sty))? }
                    }
                }
            }
            "cvta" => {
                let sp = space();
                Op::Cvta { to: has("to"), space: sp, d: o(0, Some(Ty::U64))?, a: o(1, Some(Ty::U64))? }
            }
            "bfe" => {
                let ty = need_ty()?;
                Op::Bfe { ty, d: o(0, Some(ty))?, a: o(1, Some(ty))?, b: o(2, Some(Ty::U32))?, c: o(3, Some(Ty::U32))? }
            }
            "bfi" => {
                let ty = need_ty()?;
                Op::Bfi { ty, d: o(0, Some(ty))?, f: o(1, Some(ty))?, b: o(2, Some(ty))?, c: o(3, Some(Ty::U32))?, e: o(4, Some(Ty::U32))? }
            }
            "lop3" => Op::Lop3 { d: o(0, Some(Ty::B32))?, a: o(1, Some(Ty::B32))?, b: o(2, Some(Ty::B32))?, c: o(3, Some(Ty::B32))?, lut: o(4, Some(Ty::B32))? },
            "atom" | "red" => {
                let ty = *types.last().ok_or_else(|| PtxError { line, message: format!("no type in `{s}`") })?;
                let aop = mods
                    .iter()
                    .find_map(|m| match *m {
                        "add" => Some(AtomOp::Add),
                        "min" => Some(AtomOp::Min),
                        "max" => Some(AtomOp::Max),
                        "exch" => Some(AtomOp::Exch),
                        "cas" => Some(AtomOp::Cas),
                        "and" => Some(AtomOp::And),
                        "or" => Some(AtomOp::Or),
                        "xor" => Some(AtomOp::Xor),
                        "inc" => Some(AtomOp::Inc),
                        "dec" => Some(AtomOp::Dec),
                        _ => None,
                    })
                    .ok_or_else(|| PtxError { line, message: format!("no atomic operation in `{s}`") })?;
                if name == "atom" {
                    let c = if aop == AtomOp::Cas { Some(o(3, Some(ty))?) } else { None };
                    Op::Atom { space: space(), op: aop, ty, d: Some(o(0, Some(ty))?), addr: o(1, None)?, b: o(2, Some(ty))?, c }
                } else {
                    Op::Atom { space: space(), op: aop, ty, d: None, addr: o(0, None)?, b: o(1, Some(ty))?, c: None }
                }
            }
            "bra" => {
                let label = ops.first().cloned().unwrap_or_default();
                f.fixups.push((f.insts.len(), label, line));
                Op::Bra { target: 0 }
            }
            "shfl" => {
                let mode = if has("up") {
                    ShflMode::Up
                } else if has("down") {
                    ShflMode::Down
                } else if has("bfly") {
                    ShflMode::Bfly
                } else if has("idx") {
                    ShflMode::Idx
                } else {
                    return err(line, format!("no shuffle mode in `{s}`"));
                };
                // d|p: the value and whether the source lane was in range
                let dst = ops.first().ok_or_else(|| PtxError { line, message: format!("missing operands in `{s}`") })?;
                let (d, p) = match dst.split_once('|') {
                    Some((d, p)) => (self.operand(f, line, d.trim(), Some(Ty::B32))?, self.operand(f, line, p.trim(), Some(Ty::Pred))?),
                    None => (self.operand(f, line, dst, Some(Ty::B32))?, Opnd::Sink),
                };
                // Without .sync (sm_6x PTX) all 32 lanes take part.
                let mask = if has("sync") { o(4, Some(Ty::B32))? } else { Opnd::Imm(0xffff_ffff) };
                Op::Warp { op: WarpOp::Shfl(mode), d, p, a: o(1, Some(Ty::B32))?, b: o(2, Some(Ty::B32))?, c: o(3, Some(Ty::B32))?, mask, neg_a: false }
            }
            "vote" => {
                let op = if has("ballot") {
                    WarpOp::Ballot
                } else if has("all") {
                    WarpOp::VoteAll
                } else if has("any") {
                    WarpOp::VoteAny
                } else if has("uni") {
                    WarpOp::VoteUni
                } else {
                    return err(line, format!("no vote mode in `{s}`"));
                };
                let src = ops.get(1).ok_or_else(|| PtxError { line, message: format!("missing operands in `{s}`") })?;
                let (neg_a, src) = match src.strip_prefix('!') {
                    Some(r) => (true, r),
                    None => (false, src.as_str()),
                };
                let dty = if op == WarpOp::Ballot { Ty::B32 } else { Ty::Pred };
                let mask = if has("sync") { o(2, Some(Ty::B32))? } else { Opnd::Imm(0xffff_ffff) };
                Op::Warp { op, d: o(0, Some(dty))?, p: Opnd::Sink, a: self.operand(f, line, src, Some(Ty::Pred))?, b: Opnd::Sink, c: Opnd::Sink, mask, neg_a }
            }
            "redux" if has("sync") => {
                let ty = need_ty()?;
                let bin = [("add", Bin::Add), ("min", Bin::Min), ("max", Bin::Max), ("and", Bin::And), ("or", Bin::Or), ("xor", Bin::Xor)]
                    .iter()
                    .find(|(m, _)| has(m))
                    .map(|(_, b)| *b)
                    .ok_or_else(|| PtxError { line, message: format!("no reduction in `{s}`") })?;
                if ty.bits() != 32 || mods.iter().any(|m| m.starts_with('f')) {
                    Op::Unsupported
                } else {
                    Op::Warp { op: WarpOp::Redux(bin, ty), d: o(0, Some(ty))?, p: Opnd::Sink, a: o(1, Some(ty))?, b: Opnd::Sink, c: Opnd::Sink, mask: o(2, Some(Ty::B32))?, neg_a: false }
                }
            }
            "activemask" => Op::Warp { op: WarpOp::ActiveMask, d: o(0, Some(Ty::B32))?, p: Opnd::Sink, a: Opnd::Sink, b: Opnd::Sink, c: Opnd::Sink, mask: Opnd::Imm(0xffff_ffff), neg_a: false },
            "bar" if has("warp") => Op::Warp { op: WarpOp::Sync, d: Opnd::Sink, p: Opnd::Sink, a: Opnd::Sink, b: Opnd::Sink, c: Opnd::Sink, mask: o(0, Some(Ty::B32))?, neg_a: false },
            "bar" | "barrier" if has("red") => {
                // bar.red.popc.u32 d, a{, b}, {!}c / bar.red.and|or.pred p, a{, b}, {!}c
                let op = if has("popc") {
                    BarRed::Popc
                } else if has("and") {
                    BarRed::And
                } else if has("or") {
                    BarRed::Or
                } else {
                    return err(line, format!("no reduction in `{s}`"));
                };
                let c = ops.last().filter(|_| ops.len() >= 3).ok_or_else(|| PtxError { line, message: format!("missing predicate in `{s}`") })?;
                let (neg, c) = match c.strip_prefix('!') {
                    Some(c) => (true, c),
                    None => (false, c.as_str()),
                };
                let reg = f.reg(c).ok_or_else(|| PtxError { line, message: format!("unknown predicate {c}") })?;
                let dty = if op == BarRed::Popc { Ty::U32 } else { Ty::Pred };
                // A barrier over fewer threads than the block (operand b) is not run by the sim.
                if ops.len() > 3 {
                    Op::Unsupported
                } else {
                    Op::Bar { red: Some((op, o(0, Some(dty))?, reg, neg)) }
                }
            }
            "bar" | "barrier" => {
                if has("arrive") {
                    Op::Unsupported
                } else {
                    Op::Bar { red: None }
                }
            }
            "mbarrier" => {
                let addr_at = |i: usize| -> Result<Opnd, PtxError> { o(i, Some(Ty::U64)) };
                if has("expect_tx") || has("complete_tx") || has("cluster") || mods.iter().any(|m| m.starts_with("remote")) {
                    Op::Unsupported // transaction counts (TMA) and other blocks' barriers
                } else if has("init") {
                    Op::Mbar { kind: MbarKind::Init, space: space(), d: Opnd::Sink, addr: addr_at(0)?, a: Some(o(1, Some(Ty::U32))?) }
                } else if has("inval") {
                    Op::Mbar { kind: MbarKind::Inval, space: space(), d: Opnd::Sink, addr: addr_at(0)?, a: None }
                } else if has("arrive") || has("arrive_drop") {
                    let count = if ops.len() > 2 { Some(o(2, Some(Ty::U32))?) } else { None };
                    Op::Mbar { kind: MbarKind::Arrive { drop: has("arrive_drop") }, space: space(), d: o(0, Some(Ty::B64))?, addr: addr_at(1)?, a: count }
                } else if has("test_wait") || has("try_wait") {
                    let parity = has("parity");
                    Op::Mbar { kind: MbarKind::Wait { parity }, space: space(), d: o(0, Some(Ty::Pred))?, addr: addr_at(1)?, a: Some(o(2, Some(if parity { Ty::U32 } else { Ty::B64 }))?) }
                } else if has("pending_count") {
                    Op::Mbar { kind: MbarKind::PendingCount, space: Space::Generic, d: o(0, Some(Ty::U32))?, addr: Opnd::Sink, a: Some(o(1, Some(Ty::B64))?) }
                } else {
                    Op::Unsupported
                }
            }
            "cp" if has("async") && has("mbarrier") && has("arrive") => {
                if has("noinc") {
                    Op::Mbar { kind: MbarKind::CpAsyncArrive, space: space(), d: Opnd::Sink, addr: o(0, Some(Ty::U64))?, a: None }
                } else {
                    Op::Nop
                }
            }
            "isspacep" => Op::IsSpace { space: space(), p: o(0, Some(Ty::Pred))?, a: o(1, Some(Ty::U64))? },
            "match" if has("sync") => {
                let ty = need_ty()?;
                let op = if has("any") { WarpOp::MatchAny(ty) } else { WarpOp::MatchAll(ty) };
                let dst = ops.first().ok_or_else(|| PtxError { line, message: format!("missing operands in `{s}`") })?;
                let (d, p) = match dst.split_once('|') {
                    Some((d, p)) => (self.operand(f, line, d.trim(), Some(Ty::B32))?, self.operand(f, line, p.trim(), Some(Ty::Pred))?),
                    None => (self.operand(f, line, dst, Some(Ty::B32))?, Opnd::Sink),
                };
                Op::Warp { op, d, p, a: o(1, Some(ty))?, b: Opnd::Sink, c: Opnd::Sink, mask: o(2, Some(Ty::B32))?, neg_a: false }
            }
            "tex" | "tld4" | "suld" | "sust" | "txq" | "suq" => self.texture_op(f, line, s, name, &mods, &ops)?,
            "ldmatrix" => {
                let num = [("x1", 1u8), ("x2", 2), ("x4", 4)].iter().find(|(m, _)| has(m)).map(|(_, n)| *n);
                match num {
                    Some(num) if has("m8n8") && has("b16") && has("sync") => {
                        let (d, a) = (o(0, Some(Ty::B32))?, o(1, None)?);
                        match &d {
                            Opnd::Vec(v) if v.len() == num as usize => {
                                Op::Warp { op: WarpOp::Ldmatrix { num, trans: has("trans"), generic: !has("shared") }, d, p: Opnd::Sink, a, b: Opnd::Sink, c: Opnd::Sink, mask: Opnd::Imm(0xffff_ffff), neg_a: false }
                            }
                            _ => return err(line, format!("ldmatrix .x{num} needs {num} destination registers: `{s}`")),
                        }
                    }
                    _ => Op::Unsupported,
                }
            }
            "mma" if has("sync") && has("aligned") => match mma_kind(&mods) {
                Some(kind) => {
                    let rty = if kind.ab == MmaType::F64 { Ty::B64 } else { Ty::B32 };
                    let (d, a, b, c) = (o(0, Some(rty))?, o(1, Some(rty))?, o(2, Some(rty))?, o(3, Some(rty))?);
                    let (nd, na, nb, nc) = mma_regs(kind);
                    let len = |x: &Opnd| if let Opnd::Vec(v) = x { v.len() } else { 1 };
                    if (len(&d), len(&a), len(&b), len(&c)) != (nd, na, nb, nc) {
                        return err(line, format!("mma operands of the wrong length (want {nd}, {na}, {nb}, {nc} registers): `{s}`"));
                    }
                    let as_vec = |x: Opnd| if let Opnd::Vec(_) = x { x } else { Opnd::Vec(vec![x]) };
                    Op::Warp { op: WarpOp::Mma(kind), d: as_vec(d), p: Opnd::Sink, a: as_vec(a), b: as_vec(b), c: as_vec(c), mask: Opnd::Imm(0xffff_ffff), neg_a: false }
                }
                None => Op::Unsupported,
            },
            "cp" if has("async") && (has("commit_group") || has("wait_group") || has("wait_all")) => Op::Nop,
            "cp" if has("async") && !has("bulk") && has("shared") && has("global") => Op::CpAsync {
                dst: o(0, None)?,
                src: o(1, None)?,
                size: o(2, Some(Ty::U32))?,
                // With .L2::cache_hint the last operand is the cache policy, not the source size.
                src_size: (ops.len() == 4 + mods.contains(&"L2::cache_hint") as usize).then(|| o(3, Some(Ty::U32))).transpose()?,
            },
            "ret" => Op::Ret,
            "exit" => Op::Exit,
            "trap" => Op::Trap,
            "membar" | "fence" => Op::Fence,
            // griddepcontrol (programmatic dependent launch): the sim runs the grids of a stream one
            // after the other to completion, so the grids a kernel would wait for are done.
            "prefetch" | "prefetchu" | "pmevent" | "nanosleep" | "griddepcontrol" => Op::Nop,
            _ => Op::Unsupported,
        };
        Ok(Inst { guard, op, line: line as u32, text })
    }
}

/// The mma.sync forms the sim runs: (shape, A/B type, accumulator) of the PTX ISA's
/// m16n8k8/m16n8k16 f16 and bf16, m16n8k8 tf32, m8n8k16/m16n8k16/m16n8k32 s8/u8 and m8n8k4 f64,
/// all `.row.col`. None for any other.
fn mma_kind(mods: &[&str]) -> Option<MmaKind> {
    let shape = mods.iter().find(|m| m.starts_with('m') && m.contains('n') && m.contains('k'))?;
    let (m, rest) = shape[1..].split_once('n')?;
    let (n, k) = rest.split_once('k')?;
    let (m, n, k): (u8, u8, u8) = (m.parse().ok()?, n.parse().ok()?, k.parse().ok()?);
    if !(mods.contains(&"row") && mods.contains(&"col")) || mods.iter().any(|x| x.starts_with("kind") || *x == "sp") {
        return None;
    }
    let pos = mods.iter().position(|x| *x == "col")?;
    let types: Vec<&str> = mods[pos + 1..].iter().copied().filter(|x| *x != "satfinite").collect();
    let [dt, at, bt, ct] = types[..] else { return None };
    let ty = |t: &str| match t {
        "f16" => Some(MmaType::F16),
        "bf16" => Some(MmaType::Bf16),
        "tf32" => Some(MmaType::Tf32),
        "f32" => Some(MmaType::F32),
        "f64" => Some(MmaType::F64),
        "s8" | "u8" => Some(MmaType::I8),
        "s32" => Some(MmaType::S32),
        _ => None,
    };
    let (d, a, b, c) = (ty(dt)?, ty(at)?, ty(bt)?, ty(ct)?);
    if d != c || a != b {
        return None;
    }
    let ok = matches!(
        (m, n, k, a, d),
        (16, 8, 16, MmaType::F16, MmaType::F32 | MmaType::F16)
            | (16, 8, 8, MmaType::F16, MmaType::F32 | MmaType::F16)
            | (16, 8, 16 | 8, MmaType::Bf16, MmaType::F32)
            | (16, 8, 8, MmaType::Tf32, MmaType::F32)
            | (16, 8, 32 | 16, MmaType::I8, MmaType::S32)
            | (8, 8, 16, MmaType::I8, MmaType::S32)
            | (8, 8, 4, MmaType::F64, MmaType::F64)
    );
    ok.then_some(MmaKind { m, n, k, ab: a, a_signed: at == "s8", b_signed: bt == "s8", acc: d, satfinite: mods.contains(&"satfinite") })
}

/// Registers per lane of an mma's D, A, B and C fragments.
pub(crate) fn mma_regs(k: MmaKind) -> (usize, usize, usize, usize) {
    let reg = if k.ab == MmaType::F64 { 64 } else { 32 };
    let per_lane = |elems: u32, width: u32| (elems * width).div_ceil(reg) as usize;
    let (m, n, kk) = (k.m as u32, k.n as u32, k.k as u32);
    let c = per_lane(m * n / 32, k.acc.width());
    (c, per_lane(m * kk / 32, k.ab.width()), per_lane(kk * n / 32, k.ab.width()), c)
}

fn wide_of(t: Ty) -> Option<Ty> {
    Some(match t {
        Ty::U16 => Ty::U32,
        Ty::S16 => Ty::S32,
        Ty::U32 => Ty::U64,
        Ty::S32 => Ty::S64,
        _ => return None,
    })
}

fn cmp_of(m: &str) -> Option<Cmp> {
    Some(match m {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "lo" => Cmp::Lo,
        "ls" => Cmp::Ls,
        "hi" => Cmp::Hi,
        "hs" => Cmp::Hs,
        "equ" => Cmp::Equ,
        "neu" => Cmp::Neu,
        "ltu" => Cmp::Ltu,
        "leu" => Cmp::Leu,
        "gtu" => Cmp::Gtu,
        "geu" => Cmp::Geu,
        "num" => Cmp::Num,
        "nan" => Cmp::Nan,
        _ => return None,
    })
}

fn matching_close(stmts: &[Stmt], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, s) in stmts.iter().enumerate().skip(open) {
        match s {
            Stmt::Open(_) => depth += 1,
            Stmt::Close(_) => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Variables of `space` declared in a function body: name -> (size, align).
fn body_vars(body: &[Stmt], space: &str) -> Result<Vec<(String, (u64, u32))>, PtxError> {
    let mut out = Vec::new();
    for st in body {
        if let Stmt::Text(l, s) = st {
            let s = s.trim();
            if s.starts_with(space) {
                let v = parse_var(*l, s)?;
                out.push((v.name, (v.size, v.align)));
            }
        }
    }
    Ok(out)
}
