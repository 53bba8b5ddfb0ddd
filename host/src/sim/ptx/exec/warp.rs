//! Warp-wide execution: the lanes of a warp that are at the same instruction run it together.
//! The instruction is decoded once per kernel ([`Fast`]) and a tight loop applies it to each lane
//! of the group, where the per-thread interpreter fetches, matches and checks every instruction
//! for every thread.
//!
//! Lanes part at a branch and meet again where their paths join: of the lanes that can run, the
//! group at the lowest pc goes first ("min-pc"), which brings structured control flow together at
//! its join point, so a warp runs converged as it does on a GPU. What has no warp-wide form runs
//! lane by lane through the interpreter's `step`; calls, barriers, warp collectives, exits and
//! mbarrier waits go through the per-thread path for one instruction. The two engines share
//! every instruction's semantics; only the order of threads differs, and both orders are ones a
//! GPU may give (CUDA orders no two threads without synchronization).
//!
//! A lane that spins waiting for another lane of its warp would keep the lowest pc for ever.
//! After SPIN_LIMIT instructions of one group while other lanes wait, the next lane in turn runs
//! its group for a while: independent thread scheduling (sm_70 and later) promises such a spin
//! progresses.

use super::*;
use std::cell::Cell;

/// Which engine runs a block's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Warps in lockstep, hot kernels' register work, branches, loops and shuffles compiled to native code
    /// (jit.rs): the default.
    Compiled,
    /// Warps in lockstep (this file), nothing compiled; `VGPU_SIM_ENGINE=warp`.
    Warp,
    /// Each thread alone until it waits (the interpreter as it was); `VGPU_SIM_ENGINE=thread`.
    Thread,
}

thread_local! {
    static OVERRIDE: Cell<Option<Engine>> = const { Cell::new(None) };
    static HEAT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` with launches made on this thread compiling their kernels once they have run `heat`
/// lane-instructions (0: at once; tests that compare the compiled code with the interpreter).
pub fn with_jit_heat<R>(heat: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            HEAT.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(HEAT.with(|o| o.replace(Some(heat))));
    f()
}

/// How hot a kernel of a launch made now must be to be compiled.
pub(super) fn jit_heat() -> u64 {
    HEAT.with(|o| o.get()).unwrap_or(super::jit::JIT_HEAT)
}

/// Runs `f` with launches made on this thread using `engine` (benchmarks and the tests that
/// compare the two engines).
pub fn with_engine<R>(engine: Engine, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Engine>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(engine))));
    f()
}

/// The engine of a launch made now: with_engine's, else VGPU_SIM_ENGINE's, else Warp.
pub(super) fn engine() -> Engine {
    if let Some(e) = OVERRIDE.with(|o| o.get()) {
        return e;
    }
    static DEFAULT: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| match std::env::var("VGPU_SIM_ENGINE").as_deref() {
        Ok("thread") => Engine::Thread,
        Ok("warp") => Engine::Warp,
        Ok("compiled") | Err(_) => Engine::Compiled,
        Ok(other) => {
            tracing::warn!("VGPU_SIM_ENGINE={other:?} is not \"compiled\", \"warp\" or \"thread\"; using compiled");
            Engine::Compiled
        }
    })
}

/// A source operand of a warp-wide instruction.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Src {
    Reg(u32),
    Imm(u64),
}

/// Where a warp-wide load or store's address comes from (plus an offset).
#[derive(Clone, Copy, Debug)]
pub(crate) enum AddrBase {
    Reg(u32),
    Sym(u32),
    Abs,
}

/// The value a warp-wide pure instruction computes, from its operands (`exec`'s functions, the
/// same the interpreter's `step` uses).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Eval {
    Mov,
    Bin(Bin, Mods),
    Mad { hi: bool, m: Mods },
    /// mul.wide (c is 0) and mad.wide.
    Wide,
    Cvt { sty: Ty, m: Mods },
    /// selp: a if c else b.
    Selp,
    Un(Un, Mods),
    Cvta(Space, bool),
    Bfe,
    Shf { left: bool, clamp: bool },
    /// lop3 with its immediate table.
    Lop3(u8),
    Prmt(Option<u8>),
    /// dp4a / dp2a (exec::dot_value).
    Dot { halves: bool, hi: bool, sa: bool, sb: bool },
    /// `.f16x2` / `.bf16x2` arithmetic, half by half.
    Half2(Half2Op, Mods),
}

/// An instruction as the warp engine runs it. Register numbers are below the kernel's count.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fast {
    /// Control flow or a wait: each lane takes the per-thread path for this instruction.
    Lane,
    /// Each lane runs it through the interpreter's `step`.
    Step,
    /// A warp collective without a guard: run at once when all the warp's live lanes are here.
    Warp,
    /// shfl.sync without a guard, its operands registers or immediates: as Warp, the exchange
    /// done here.
    Shfl { mode: ShflMode, d: Option<u32>, p: Option<u32>, a: Src, b: Src, c: Src, mask: Src },
    Bra(u32),
    /// d = eval(a, b, c): `ty` the operation's type, `dty` the destination's.
    Pure { eval: Eval, ty: Ty, dty: Ty, d: u32, a: Src, b: Src, c: Src },
    Setp { cmp: Cmp, ty: Ty, ftz: bool, p: Option<u32>, q: Option<u32>, a: Src, b: Src, comb: Option<(BoolOp, u32, bool)> },
    Ld { space: Space, ty: Ty, d: u32, base: AddrBase, off: u64 },
    St { space: Space, ty: Ty, base: AddrBase, off: u64, a: Src },
    /// ld.v2 / ld.v4 (`_` elements: None) and st.v2 / st.v4: `n` elements of `ty`, in order.
    LdV { space: Space, ty: Ty, n: u8, d: [Option<u32>; 4], base: AddrBase, off: u64 },
    StV { space: Space, ty: Ty, n: u8, a: [Src; 4], base: AddrBase, off: u64 },
    /// mov of a special register (%tid.x, %laneid, ...) into `d`.
    Sreg { ty: Ty, d: u32, s: Sreg },
    /// mov of a symbol's address (`mov.u32 %r, smem`) into `d`.
    Sym { ty: Ty, d: u32, s: u32 },
    /// mov.b32 %r, {%h1, %h2} / mov.b64 %rd, {%r1, %r2} (and 4 parts): `n` elements of `w`
    /// bits, the first in the lowest bits.
    Pack { ty: Ty, w: u8, n: u8, d: u32, a: [Src; 4] },
    /// mov.b32 {%h1, %h2}, %r and the like (`_` elements: None); elements of type `ety`.
    Unpack { ety: Ty, w: u8, n: u8, d: [Option<u32>; 4], a: Src },
}

/// How the warp engine runs each of `k`'s instructions.
pub(crate) fn translate(k: &Kernel) -> Vec<Fast> {
    let started = std::time::Instant::now();
    let fast: Vec<Fast> = k.insts.iter().map(|i| translate_one(i, k.nregs)).collect();
    let micros = started.elapsed().as_micros() as u64;
    let lane_by_lane: Vec<&Inst> = k.insts.iter().zip(&fast).filter(|(_, f)| matches!(f, Fast::Step)).map(|(i, _)| i).collect();
    match lane_by_lane.first() {
        Some(first) => tracing::debug!(
            micros,
            "{}: translated for the warp engine; {} of its {} instructions have no warp-wide form and run lane by lane (the first: `{}`)",
            k.name,
            lane_by_lane.len(),
            k.insts.len(),
            first.text
        ),
        None => tracing::debug!(micros, "{}: translated for the warp engine, all {} instructions warp-wide", k.name, k.insts.len()),
    }
    fast
}

fn translate_one(i: &Inst, nregs: usize) -> Fast {
    let reg = |r: u32| ((r as usize) < nregs).then_some(r);
    let src = |o: &Opnd| match o {
        Opnd::Reg(r) => reg(*r).map(Src::Reg),
        Opnd::Imm(v) => Some(Src::Imm(*v)),
        _ => None,
    };
    // A destination register, or None for `_`; anything else is no form of ours.
    let dst = |o: &Opnd| match o {
        Opnd::Reg(r) => reg(*r).map(Some),
        Opnd::Sink => Some(None),
        _ => None,
    };
    let addr = |o: &Opnd| match o {
        Opnd::Addr(Base::Reg(r), off) => reg(*r).map(|r| (AddrBase::Reg(r), *off as u64)),
        Opnd::Addr(Base::Sym(s), off) => Some((AddrBase::Sym(*s), *off as u64)),
        Opnd::Addr(Base::Abs, off) => Some((AddrBase::Abs, *off as u64)),
        Opnd::Reg(r) => reg(*r).map(|r| (AddrBase::Reg(r), 0)),
        Opnd::Sym(s) => Some((AddrBase::Sym(*s), 0)),
        _ => None,
    };
    if let (Op::Warp { op, d, p, a, b, c, mask, .. }, None) = (&i.op, i.guard) {
        let shfl = || match op {
            WarpOp::Shfl(mode) => Some(Fast::Shfl { mode: *mode, d: dst(d)?, p: dst(p)?, a: src(a)?, b: src(b)?, c: src(c)?, mask: src(mask)? }),
            _ => None,
        };
        return shfl().unwrap_or(Fast::Warp);
    }
    let control = matches!(
        i.op,
        Op::Exit | Op::Ret | Op::Call { .. } | Op::Bar { .. } | Op::Warp { .. } | Op::GridSync { .. } | Op::Mbar { kind: MbarKind::Wait { .. }, .. }
    );
    if control || i.guard.is_some_and(|(p, _)| reg(p).is_none()) {
        return Fast::Lane;
    }
    let pure = |eval: Eval, ty: Ty, dty: Ty, d: &Opnd, a: &Opnd, b: Option<&Opnd>, c: Option<&Opnd>| -> Option<Fast> {
        let operand = |o: Option<&Opnd>| o.map_or(Some(Src::Imm(0)), src);
        let Opnd::Reg(d) = d else { return None };
        Some(Fast::Pure { eval, ty, dty, d: reg(*d)?, a: src(a)?, b: operand(b)?, c: operand(c)? })
    };
    let fast = match &i.op {
        Op::Bra { target } => Some(Fast::Bra(*target)),
        Op::Mov { ty, d: Opnd::Reg(d), a: Opnd::Sreg(s) } => reg(*d).map(|d| Fast::Sreg { ty: *ty, d, s: *s }),
        Op::Mov { ty, d: Opnd::Reg(d), a: Opnd::Sym(s) } => reg(*d).map(|d| Fast::Sym { ty: *ty, d, s: *s }),
        Op::Mov { ty, d, a: Opnd::Vec(parts) } if (2..=4).contains(&parts.len()) && !matches!(d, Opnd::Vec(_)) => (|| {
            let mut a = [Src::Imm(0); 4];
            for (k, p) in parts.iter().enumerate() {
                a[k] = src(p)?;
            }
            let Opnd::Reg(d) = d else { return None };
            Some(Fast::Pack { ty: *ty, w: (ty.bits() / parts.len() as u32) as u8, n: parts.len() as u8, d: reg(*d)?, a })
        })(),
        Op::Mov { ty, d: Opnd::Vec(parts), a } if (2..=4).contains(&parts.len()) && !matches!(a, Opnd::Vec(_)) => (|| {
            let w = ty.bits() / parts.len() as u32;
            let ety = match w {
                8 => Ty::B8,
                16 => Ty::B16,
                32 => Ty::B32,
                _ => return None, // step's error
            };
            let mut d = [None; 4];
            for (k, p) in parts.iter().enumerate() {
                d[k] = dst(p)?;
            }
            Some(Fast::Unpack { ety, w: w as u8, n: parts.len() as u8, d, a: src(a)? })
        })(),
        Op::Mov { ty, d, a } => pure(Eval::Mov, *ty, *ty, d, a, None, None),
        // A missing operand (`_` in the parse) reads as 0, as `step` reads it.
        Op::Half2 { op, ty, m, d, a, b, c } if half2_value(*op, *ty, *m, 0, 0, 0).is_some() => (|| {
            let opt = |o: &Opnd| if matches!(o, Opnd::Sink) { Some(Src::Imm(0)) } else { src(o) };
            let Opnd::Reg(d) = d else { return None };
            Some(Fast::Pure { eval: Eval::Half2(*op, *m), ty: *ty, dty: Ty::B32, d: reg(*d)?, a: src(a)?, b: opt(b)?, c: opt(c)? })
        })(),
        // Only what bin_value computes (the rest is an error `step` reports).
        Op::Bin { op, ty, m, d, a, b } if bin_value(*op, *ty, *m, 0, 0).is_some() => pure(Eval::Bin(*op, *m), *ty, *ty, d, a, Some(b), None),
        Op::Mad { hi, ty, m, d, a, b, c } => pure(Eval::Mad { hi: *hi, m: *m }, *ty, *ty, d, a, Some(b), Some(c)),
        Op::MulWide { ty, d, a, b } => pure(Eval::Wide, *ty, Ty::B64, d, a, Some(b), None),
        Op::MadWide { ty, d, a, b, c } => pure(Eval::Wide, *ty, Ty::B64, d, a, Some(b), Some(c)),
        Op::Cvt { dty, sty, m, d, a } => pure(Eval::Cvt { sty: *sty, m: *m }, *dty, *dty, d, a, None, None),
        Op::Selp { ty, d, a, b, c } => pure(Eval::Selp, *ty, *ty, d, a, Some(b), Some(c)),
        Op::Un { op, ty, m, d, a } if un_value(*op, *ty, *m, 0).is_some() => pure(Eval::Un(*op, *m), *ty, un_type(*op, *ty), d, a, None, None),
        Op::Cvta { to, space, d, a } => pure(Eval::Cvta(*space, *to), Ty::U64, Ty::U64, d, a, None, None),
        Op::Bfe { ty, d, a, b, c } => pure(Eval::Bfe, *ty, *ty, d, a, Some(b), Some(c)),
        Op::Shf { left, clamp, d, a, b, c } => pure(Eval::Shf { left: *left, clamp: *clamp }, Ty::B32, Ty::B32, d, a, Some(b), Some(c)),
        Op::Lop3 { d, a, b, c, lut: Opnd::Imm(lut) } => pure(Eval::Lop3(*lut as u8), Ty::B32, Ty::B32, d, a, Some(b), Some(c)),
        Op::Prmt { mode, d, a, b, c } => pure(Eval::Prmt(*mode), Ty::B32, Ty::B32, d, a, Some(b), Some(c)),
        Op::Dot { halves, hi, sa, sb, d, a, b, c } => pure(Eval::Dot { halves: *halves, hi: *hi, sa: *sa, sb: *sb }, Ty::B32, Ty::B32, d, a, Some(b), Some(c)),
        Op::Setp { cmp, ty, m, packed: false, p, q, a, b, comb } if comb.is_none_or(|(_, c, _)| reg(c).is_some()) => {
            (|| Some(Fast::Setp { cmp: *cmp, ty: *ty, ftz: m.ftz, p: dst(p)?, q: dst(q)?, a: src(a)?, b: src(b)?, comb: *comb }))()
        }
        Op::Ld { space, ty, d, addr: at } if !matches!(d, Opnd::Vec(_)) => (|| {
            let (base, off) = addr(at)?;
            Some(Fast::Ld { space: *space, ty: *ty, d: dst(d)??, base, off })
        })(),
        Op::St { space, ty, addr: at, a } if !matches!(a, Opnd::Vec(_)) => (|| {
            let (base, off) = addr(at)?;
            Some(Fast::St { space: *space, ty: *ty, base, off, a: src(a)? })
        })(),
        Op::Ld { space, ty, d: Opnd::Vec(parts), addr: at } if (2..=4).contains(&parts.len()) => (|| {
            let (base, off) = addr(at)?;
            let mut d = [None; 4];
            for (k, p) in parts.iter().enumerate() {
                d[k] = dst(p)?;
            }
            Some(Fast::LdV { space: *space, ty: *ty, n: parts.len() as u8, d, base, off })
        })(),
        Op::St { space, ty, addr: at, a: Opnd::Vec(parts) } if (2..=4).contains(&parts.len()) => (|| {
            let (base, off) = addr(at)?;
            let mut a = [Src::Imm(0); 4];
            for (k, p) in parts.iter().enumerate() {
                a[k] = src(p)?;
            }
            Some(Fast::StV { space: *space, ty: *ty, n: parts.len() as u8, a, base, off })
        })(),
        _ => None,
    };
    fast.unwrap_or(Fast::Step)
}

/// shfl.sync (`f`) for the lanes of `group` on a warp's rows, where they are every `live` lane
/// and each lane's mask names itself: all of them exchange at once. False (nothing done) where
/// they are not: warp_op's way then, with its waits and errors.
pub(super) fn shfl_warp(rows: &mut [u64], group: u32, live: u32, f: &Fast) -> bool {
    let Fast::Shfl { mode, d, p, a, b, c, mask } = *f else { return false };
    // Every lane's operands as they are before any lane writes.
    let (av, bv, cv, mv) = (row(rows, a), row(rows, b), row(rows, c), row(rows, mask));
    let named = (0..WARP).fold(0u32, |m, l| m | ((mv[l] as u32 >> l) & 1) << l);
    if group != live || named & group != group {
        return false;
    }
    let (mut out, mut oks) = ([0u64; WARP], [0u64; WARP]);
    for l in lanes_of(group) {
        let (v, ok) = shfl_value(mode, l, |j| av[j], bv[l], cv[l], mv[l] as u32 & group);
        (out[l], oks[l]) = (normalize(Ty::B32, v), ok);
    }
    for l in lanes_of(group) {
        if let Some(d) = d {
            rows[d as usize * WARP + l] = out[l];
        }
        if let Some(p) = p {
            rows[p as usize * WARP + l] = oks[l];
        }
    }
    true
}

/// A register's or an immediate's value in lane `l` of a warp's rows.
#[inline(always)]
fn val(rows: &[u64], s: Src, l: usize) -> u64 {
    match s {
        Src::Reg(x) => rows[x as usize * WARP + l],
        Src::Imm(v) => v,
    }
}

/// A register's row, or an immediate in every lane.
#[inline(always)]
fn row(rows: &[u64], s: Src) -> [u64; WARP] {
    match s {
        Src::Reg(x) => {
            let mut v = [0; WARP];
            v.copy_from_slice(&rows[x as usize * WARP..][..WARP]);
            v
        }
        Src::Imm(v) => [v; WARP],
    }
}

/// Groups of at least this many lanes compute every lane's value (whole rows, vectorized) and
/// keep the active lanes'; smaller ones compute only theirs.
const DENSE: u32 = 12;

/// d = f(a, b, c) in each lane of `on`, on a warp's rows (register r of lane l at r * 32 + l).
/// `f` is pure and total, so computing it for a lane that is not in `on` is harmless.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lanes(rows: &mut [u64], on: u32, dty: Ty, d: u32, ops: [Src; 3], f: impl Fn(u64, u64, u64) -> u64) {
    // normalize(dty, v), its type's questions answered once.
    let (pred, signed, shift) = (dty == Ty::Pred, dty.signed(), 64 - dty.bits().min(64));
    let d = d as usize * WARP;
    if on.count_ones() < DENSE {
        for l in lanes_of(on) {
            let v = f(val(rows, ops[0], l), val(rows, ops[1], l), val(rows, ops[2], l));
            rows[d + l] = if pred {
                (v != 0) as u64
            } else if signed {
                (((v << shift) as i64) >> shift) as u64
            } else {
                (v << shift) >> shift
            };
        }
        return;
    }
    let (a, b, c) = (row(rows, ops[0]), row(rows, ops[1]), row(rows, ops[2]));
    let mut out = [0u64; WARP];
    for l in 0..WARP {
        out[l] = f(a[l], b[l], c[l]);
    }
    if pred {
        out.iter_mut().for_each(|v| *v = (*v != 0) as u64);
    } else if signed {
        out.iter_mut().for_each(|v| *v = (((*v << shift) as i64) >> shift) as u64);
    } else if shift != 0 {
        out.iter_mut().for_each(|v| *v = (*v << shift) >> shift);
    }
    let dst = &mut rows[d..d + WARP];
    if on == u32::MAX {
        dst.copy_from_slice(&out);
    } else {
        for l in 0..WARP {
            if on >> l & 1 != 0 {
                dst[l] = out[l];
            }
        }
    }
}

/// A pure instruction in each lane of `on`. The commonest operations get a loop of their own
/// (what they compute is the same as the general functions': integer add, sub, mul.lo and
/// logic on the low bits, which the destination's type then keeps; f32 round-to-nearest
/// arithmetic without modifiers is the host's own IEEE arithmetic, as in float::bin).
#[allow(clippy::too_many_arguments)]
fn pure(rows: &mut [u64], on: u32, eval: Eval, ty: Ty, dty: Ty, d: u32, ops: [Src; 3]) {
    let plain = |m: Mods| m == Mods::default() || m == Mods { rnd: Rnd::Near, ..Mods::default() };
    let int = !ty.float() && ty != Ty::Pred;
    let f32s = |x: u64| f32::from_bits(x as u32);
    match eval {
        Eval::Mov => lanes(rows, on, dty, d, ops, |x, _, _| x),
        Eval::Bin(op, m) if int && !m.sat => match op {
            Bin::Add => lanes(rows, on, dty, d, ops, |x, y, _| x.wrapping_add(y)),
            Bin::Sub => lanes(rows, on, dty, d, ops, |x, y, _| x.wrapping_sub(y)),
            Bin::MulLo => lanes(rows, on, dty, d, ops, |x, y, _| x.wrapping_mul(y)),
            Bin::And => lanes(rows, on, dty, d, ops, |x, y, _| x & y),
            Bin::Or => lanes(rows, on, dty, d, ops, |x, y, _| x | y),
            Bin::Xor => lanes(rows, on, dty, d, ops, |x, y, _| x ^ y),
            // The operation a constant in each loop, so that int_bin's match folds away.
            Bin::Shl => lanes(rows, on, dty, d, ops, |x, y, _| int_bin(Bin::Shl, ty, x, y)),
            Bin::Shr => lanes(rows, on, dty, d, ops, |x, y, _| int_bin(Bin::Shr, ty, x, y)),
            Bin::MulHi => lanes(rows, on, dty, d, ops, |x, y, _| int_bin(Bin::MulHi, ty, x, y)),
            Bin::Min => lanes(rows, on, dty, d, ops, |x, y, _| int_bin(Bin::Min, ty, x, y)),
            Bin::Max => lanes(rows, on, dty, d, ops, |x, y, _| int_bin(Bin::Max, ty, x, y)),
            _ => lanes(rows, on, dty, d, ops, |x, y, _| int_bin(op, ty, x, y)),
        },
        // A NaN result is float::bin's (the host's NaN payloads differ between its scalar and
        // vector instructions).
        Eval::Bin(op @ (Bin::Add | Bin::Sub | Bin::MulLo), m) if ty == Ty::F32 && plain(m) => {
            let or_bin = |r: f32, x: u64, y: u64| {
                if r.is_nan() {
                    bin_value(op, ty, m, x, y).unwrap_or(0)
                } else {
                    r.to_bits() as u64
                }
            };
            match op {
                Bin::Add => lanes(rows, on, dty, d, ops, |x, y, _| or_bin(f32s(x) + f32s(y), x, y)),
                Bin::Sub => lanes(rows, on, dty, d, ops, |x, y, _| or_bin(f32s(x) - f32s(y), x, y)),
                _ => lanes(rows, on, dty, d, ops, |x, y, _| or_bin(f32s(x) * f32s(y), x, y)),
            }
        }
        Eval::Bin(op, m) => lanes(rows, on, dty, d, ops, |x, y, _| bin_value(op, ty, m, x, y).unwrap_or(0)),
        Eval::Mad { hi: false, .. } if int => lanes(rows, on, dty, d, ops, |x, y, z| x.wrapping_mul(y).wrapping_add(z)),
        Eval::Mad { hi, m } => lanes(rows, on, dty, d, ops, |x, y, z| mad_value(hi, ty, m, x, y, z)),
        Eval::Wide => lanes(rows, on, dty, d, ops, |x, y, z| mul_wide(ty, x, y, z)),
        // f32 <-> f16 to nearest, NaNs aside: the `half` crate's conversions, exact or rounded
        // once as float::convert rounds (through f64, which holds an f32 exactly).
        Eval::Cvt { sty: Ty::F32, m } if ty == Ty::F16 && plain(m) => lanes(rows, on, dty, d, ops, |x, _, _| match f32s(x) {
            f if f.is_nan() => float::convert(ty, Ty::F32, m, x),
            f => half::f16::from_f32(f).to_bits() as u64,
        }),
        Eval::Cvt { sty: Ty::F16, m } if ty == Ty::F32 && plain(m) => lanes(rows, on, dty, d, ops, |x, _, _| match half::f16::from_bits(x as u16) {
            h if h.is_nan() => float::convert(ty, Ty::F16, m, x),
            h => h.to_f32().to_bits() as u64,
        }),
        Eval::Cvt { sty, m } => lanes(rows, on, dty, d, ops, |x, _, _| float::convert(ty, sty, m, x)),
        Eval::Selp => lanes(rows, on, dty, d, ops, |x, y, z| if z != 0 { x } else { y }),
        Eval::Un(op, m) => lanes(rows, on, dty, d, ops, |x, _, _| un_value(op, ty, m, x).unwrap_or(0)),
        Eval::Cvta(space, to) => lanes(rows, on, dty, d, ops, |x, _, _| cvta_value(space, to, x)),
        Eval::Bfe => lanes(rows, on, dty, d, ops, |x, y, z| bfe_value(ty, x, y, z)),
        Eval::Shf { left, clamp } => lanes(rows, on, dty, d, ops, |x, y, z| shf_value(left, clamp, x, y, z)),
        Eval::Lop3(lut) => lanes(rows, on, dty, d, ops, |x, y, z| lop3_value(x, y, z, lut as u64)),
        Eval::Prmt(mode) => lanes(rows, on, dty, d, ops, |x, y, z| prmt_value(mode, x, y, z)),
        Eval::Dot { halves, hi, sa, sb } => lanes(rows, on, dty, d, ops, |x, y, z| dot_value(halves, hi, sa, sb, x, y, z)),
        // f16x2 add, sub and mul to nearest, NaNs aside: as float::bin, each half computed
        // exactly (a sum of two halves fits an f64, a product an f32) and rounded once.
        Eval::Half2(Half2Op::Bin(op @ (Bin::Add | Bin::Sub | Bin::MulLo)), m) if ty == Ty::F16 && plain(m) => lanes(rows, on, dty, d, ops, |x, y, z| {
            let half = |v: u64, k: u32| half::f16::from_bits((v >> k) as u16);
            let each = |k: u32| {
                let (a, b) = (half(x, k), half(y, k));
                let r = match op {
                    _ if a.is_nan() || b.is_nan() => return None,
                    Bin::Add => half::f16::from_f64(a.to_f64() + b.to_f64()),
                    Bin::Sub => half::f16::from_f64(a.to_f64() - b.to_f64()),
                    _ => half::f16::from_f32(a.to_f32() * b.to_f32()),
                };
                Some(r.to_bits() as u64)
            };
            match (each(0), each(16)) {
                (Some(lo), Some(hi)) => lo | hi << 16,
                _ => half2_value(Half2Op::Bin(op), ty, m, x, y, z).unwrap_or(0),
            }
        }),
        Eval::Half2(op, m) => lanes(rows, on, dty, d, ops, |x, y, z| half2_value(op, ty, m, x, y, z).unwrap_or(0)),
    }
}

/// A pure instruction's value in one lane, before normalization to its destination: what
/// `pure` computes, by the general functions (compiled code calls back into this).
pub(super) fn pure_value(eval: Eval, ty: Ty, x: u64, y: u64, z: u64) -> u64 {
    match eval {
        Eval::Mov => x,
        Eval::Bin(op, m) => bin_value(op, ty, m, x, y).unwrap_or(0),
        Eval::Mad { hi, m } => mad_value(hi, ty, m, x, y, z),
        Eval::Wide => mul_wide(ty, x, y, z),
        Eval::Cvt { sty, m } => float::convert(ty, sty, m, x),
        Eval::Selp => {
            if z != 0 {
                x
            } else {
                y
            }
        }
        Eval::Un(op, m) => un_value(op, ty, m, x).unwrap_or(0),
        Eval::Cvta(space, to) => cvta_value(space, to, x),
        Eval::Bfe => bfe_value(ty, x, y, z),
        Eval::Shf { left, clamp } => shf_value(left, clamp, x, y, z),
        Eval::Lop3(lut) => lop3_value(x, y, z, lut as u64),
        Eval::Prmt(mode) => prmt_value(mode, x, y, z),
        Eval::Dot { halves, hi, sa, sb } => dot_value(halves, hi, sa, sb, x, y, z),
        Eval::Half2(op, m) => half2_value(op, ty, m, x, y, z).unwrap_or(0),
    }
}

/// The lanes of a mask, lowest first.
pub(super) fn lanes_of(mut m: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (m != 0).then(|| {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            l
        })
    })
}

/// Instructions one group runs while other lanes of its warp wait, before another gets a turn.
const SPIN_LIMIT: u32 = 1 << 12;

/// Instructions (per lane) a warp runs before the block's next warp takes its turn. GPUs
/// interleave the warps of a block instruction by instruction; running one warp far ahead of the
/// others (until it waits) would show code that races between warps a timing no GPU shows:
/// ggml's block_reduce reuses its shared buffer for the next reduction with no barrier after
/// the other warps read it, which is right on a GPU only because no warp gets that far ahead.
pub(super) const WARP_TURN: u64 = 32 * 32;

/// Where run_warp left a warp.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum WarpRun {
    /// None of its lanes can run (each has exited or waits).
    Waiting,
    /// Its turn is over; lanes can still run.
    TurnOver,
    /// The block's turn (a grid-synchronizing launch) is over.
    Preempted,
}

/// A warp's spin detection, kept between its turns: instructions its leading group ran while
/// other lanes waited, the lane whose group had the last round-robin turn, and whether the next
/// turn goes by round robin.
#[derive(Clone, Copy, Default)]
pub(super) struct WarpSpin {
    spun: u32,
    cursor: usize,
    favor: bool,
}

/// Why a group stopped running warp-wide.
enum Stop {
    /// Its lanes are all still at `pc` (written back by the caller).
    At,
    /// Its lanes' pcs are written already (a divergent branch, an exit).
    Written,
    /// At an instruction each lane runs on the per-thread path.
    Lane,
}

impl<'a> Ctx<'a> {
    /// Runs the `lanes` threads of the warp starting at thread `w0` until none of them can run
    /// (each has exited or waits), or its turn (`self.warp_turn_end`) or the block's is over (the
    /// lanes keep their state, and go on at the next turn).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_warp(
        &mut self,
        w0: usize,
        lanes: usize,
        b: &BlockShape,
        regs: &mut RegFile,
        local: &mut [u8],
        pcs: &mut [u32],
        state: &mut [u8],
        calls: &mut [Vec<Frame>],
    ) -> Result<WarpRun, ExecError> {
        let kernel: &'a Kernel = self.kernel;
        let fast: &'a [Fast] = kernel.fast.get_or_init(|| translate(kernel));
        let insts: &'a [Inst] = &kernel.insts;
        if self.jit.is_none() && self.engine == Engine::Compiled {
            self.jit = kernel.jit.ready(kernel, fast, self.executed, self.jit_heat);
        }
        let jit: Option<&'a super::jit::Compiled> = self.jit;
        let ptl = b.per_thread_local;
        let bl = self.cfg.block;
        // Round-robin turns after a long spin; a spin goes on counting across the warp's turns.
        let w = w0 / 32;
        if self.warp_spin.len() <= w {
            self.warp_spin.resize(w + 1, WarpSpin::default());
        }
        let WarpSpin { spun: mut carried, cursor: mut turn, mut favor } = self.warp_spin[w];
        // The lanes' %tid, counted on from the first lane's (no division per lane).
        let mut tids = [[0u32; 3]; WARP];
        let mut tid = thread_index(bl, w0 as u32);
        for slot in tids.iter_mut().take(lanes) {
            *slot = tid;
            tid[0] += 1;
            if tid[0] == bl[0] {
                tid[0] = 0;
                tid[1] += 1;
                if tid[1] == bl[1] {
                    tid[1] = 0;
                    tid[2] += 1;
                }
            }
        }
        loop {
            // Lanes inside device functions run on their own until back in the kernel.
            let mut runnable = 0u32;
            for l in 0..lanes {
                let t = w0 + l;
                if state[t] == RUN && !calls[t].is_empty() {
                    let s = self.run_thread(t as u32, &mut pcs[t], &mut regs.lane_mut(t), &mut local[t * ptl..(t + 1) * ptl], &mut calls[t], Resume::UntilKernel)?;
                    if s == PREEMPTED {
                        return Ok(WarpRun::Preempted);
                    }
                    state[t] = s;
                }
                if state[t] == RUN {
                    runnable |= 1 << l;
                }
            }
            if runnable == 0 {
                // All its lanes wait or have exited: the warp's collectives whose lanes have all
                // arrived run now (as they would once the whole block waits), and the warp goes on.
                if state[w0..w0 + lanes].contains(&AT_WARP) && self.warp_collectives_of(w0, state, pcs, regs, calls)? {
                    continue;
                }
                self.warp_spin[w] = WarpSpin { cursor: turn, ..WarpSpin::default() };
                return Ok(WarpRun::Waiting);
            }
            let favored = std::mem::take(&mut favor);
            let lead = if favored {
                turn = lanes_of(runnable).find(|&l| l > turn).unwrap_or(runnable.trailing_zeros() as usize);
                turn
            } else {
                lanes_of(runnable).min_by_key(|&l| pcs[w0 + l]).unwrap_or(0)
            };
            let mut pc = pcs[w0 + lead];
            // Over every lane without branches (the compiler vectorizes these), then masked.
            let at = |m: u32, pc: u32, pcs: &[u32]| pcs[w0..w0 + lanes].iter().enumerate().fold(0u32, |g, (l, &p)| g | ((p == pc) as u32) << l) & m;
            let mut group = at(runnable, pc, pcs);
            let mut others = runnable & !group;
            let lowest = |m: u32, pcs: &[u32]| pcs[w0..w0 + lanes].iter().enumerate().fold(u32::MAX, |lo, (l, &p)| lo.min(if m >> l & 1 != 0 { p } else { u32::MAX }));
            let mut next_other = lowest(others, pcs);
            // A group given a turn runs on past lower lanes for a while.
            let mut free_run = if favored { SPIN_LIMIT } else { 0 };
            let mut spun = std::mem::take(&mut carried);
            let stop = loop {
                if others != 0 {
                    if pc == next_other {
                        // Paths join: the lanes waiting here go on with the group.
                        let joining = at(others, pc, pcs);
                        group |= joining;
                        others &= !joining;
                        next_other = lowest(others, pcs);
                    } else if pc > next_other && free_run == 0 {
                        break Stop::At; // lanes behind run first
                    }
                    free_run = free_run.saturating_sub(1);
                    spun += 1;
                    if spun > SPIN_LIMIT && free_run == 0 {
                        favor = true;
                        break Stop::At;
                    }
                }
                let Some(inst) = insts.get(pc as usize) else {
                    // Fell off the end of the kernel: an implicit `ret`, the threads exit.
                    for l in lanes_of(group) {
                        state[w0 + l] = DONE;
                    }
                    break Stop::At;
                };
                let f = fast.get(pc as usize).copied().unwrap_or(Fast::Lane);
                if matches!(f, Fast::Lane) {
                    break Stop::Lane;
                }
                if self.executed >= self.warp_turn_end.min(self.quantum_end) {
                    for l in lanes_of(group) {
                        pcs[w0 + l] = pc;
                    }
                    // A group still running ahead of waiting lanes keeps its count of spun
                    // instructions (a favored one its favor) for the warp's next turn.
                    let spun = if others != 0 && free_run == 0 { spun } else { 0 };
                    self.warp_spin[w] = WarpSpin { spun, cursor: turn, favor: favored && free_run > 0 };
                    return Ok(if self.executed >= self.quantum_end { WarpRun::Preempted } else { WarpRun::TurnOver });
                }
                // A compiled segment here runs whole, unless lanes waiting inside it would join
                // the group (or the group would stop for them) before its end. Its lanes may
                // leave one with branches at different pcs: they go on from there as if they
                // had parted at a branch. Lanes waiting inside such a segment may join the
                // group only where it stores nothing (else the order of its lanes' stores
                // and loads would differ from the lockstep warp's); where they may not, the
                // segment without branches here runs, if lanes join none of its instructions.
                let seg = jit.and_then(|j| {
                    let quiet = |seg: &&super::jit::Segment| {
                        let rest = seg.last - pc;
                        seg.usable()
                            && (others == 0
                            || seg.stores_nothing()
                            || if seg.branches {
                                next_other > seg.last && free_run == 0
                            } else {
                                spun + rest <= SPIN_LIMIT && (next_other > pc + rest || (next_other < pc && free_run >= rest))
                            })
                    };
                    j.at(pc).filter(quiet).or_else(|| j.straight_at(pc).filter(quiet)).map(|seg| (j, seg))
                });
                if let Some((j, seg)) = seg {
                    {
                        let at = super::jit::Place {
                            mem: self.mem,
                            hint: &mut self.region_hint,
                            slots: &mut self.jit_slots,
                            shared: &mut self.shared,
                            local: &mut local[w0 * ptl..(w0 + lanes) * ptl],
                            per_lane: ptl,
                            params: self.params,
                            syms: &self.syms,
                            tids: &tids,
                            ntid: self.cfg.block,
                            ctaid: self.ctaid,
                            nctaid: self.cfg.grid,
                            warp: w as u32,
                            live: (0..lanes).filter(|&l| state[w0 + l] != DONE).fold(0u32, |m, l| m | 1 << l),
                        };
                        // None: one of its accesses could not be made there; the
                        // instructions run here, one by one.
                        if let Some(ran) = j.run(seg, pc, regs.warp(w0), group, at)? {
                            let n = ran.count;
                            self.executed += n;
                            self.warp_wide += n;
                            self.compiled += n;
                            while self.executed >= self.next_check {
                                self.checkpoint()?;
                            }
                            if others != 0 {
                                let steps = (n / group.count_ones().max(1) as u64).saturating_sub(1) as u32;
                                spun = spun.saturating_add(steps);
                                free_run = free_run.saturating_sub(steps);
                            }
                            let first = ran.exits[group.trailing_zeros() as usize];
                            if lanes_of(group).all(|l| ran.exits[l] == first) {
                                pc = first;
                                continue;
                            }
                            for l in lanes_of(group) {
                                pcs[w0 + l] = ran.exits[l];
                            }
                            break Stop::Written;
                        }
                    }
                }
                self.executed += group.count_ones() as u64;
                if !matches!(f, Fast::Step) {
                    self.warp_wide += group.count_ones() as u64;
                }
                while self.executed >= self.next_check {
                    self.checkpoint()?;
                }
                let on = match inst.guard {
                    None => group,
                    Some((p, neg)) => {
                        let pr = &regs.warp(w0)[p as usize * WARP..][..WARP];
                        pr.iter().enumerate().fold(0u32, |g, (l, &v)| g | (((v != 0) != neg) as u32) << l) & group
                    }
                };
                match f {
                    Fast::Bra(target) => {
                        if on == group {
                            pc = target;
                        } else if on == 0 {
                            pc += 1;
                        } else {
                            for l in lanes_of(group) {
                                pcs[w0 + l] = if on & (1 << l) != 0 { target } else { pc + 1 };
                            }
                            break Stop::Written;
                        }
                        continue;
                    }
                    Fast::Pure { eval, ty, dty, d, a, b: bo, c } => pure(regs.warp(w0), on, eval, ty, dty, d, [a, bo, c]),
                    Fast::Setp { cmp, ty, ftz, p, q, a, b: bo, comb } => {
                        let rows = regs.warp(w0);
                        for l in lanes_of(on) {
                            let v = compare_ftz(cmp, ty, ftz, val(rows, a, l), val(rows, bo, l));
                            let c = comb.map_or(0, |(_, c, _)| rows[c as usize * WARP + l]);
                            if let Some(p) = p {
                                rows[p as usize * WARP + l] = combine(comb, c, v) as u64;
                            }
                            if let Some(q) = q {
                                rows[q as usize * WARP + l] = combine(comb, c, !v) as u64;
                            }
                        }
                    }
                    Fast::Ld { space, ty, d, base, off } => {
                        let rows = regs.warp(w0);
                        if self.load_lanes(space, ty, base, off, rows, on, d) {
                            pc += 1;
                            continue;
                        }
                        for l in lanes_of(on) {
                            let t = w0 + l;
                            let a = self.base_value(base, rows, l).wrapping_add(off);
                            let v = self.load(space, a, ty, &mut local[t * ptl..(t + 1) * ptl], inst)?;
                            rows[d as usize * WARP + l] = normalize(ty, v);
                        }
                    }
                    Fast::St { space, ty, base, off, a } => {
                        let rows = regs.warp(w0);
                        for l in lanes_of(on) {
                            let t = w0 + l;
                            let (to, v) = (self.base_value(base, rows, l).wrapping_add(off), val(rows, a, l));
                            self.store(space, to, ty, v, &mut local[t * ptl..(t + 1) * ptl], inst)?;
                        }
                    }
                    Fast::LdV { space, ty, n, d, base, off } => {
                        let rows = regs.warp(w0);
                        for l in lanes_of(on) {
                            let t = w0 + l;
                            let a = self.base_value(base, rows, l).wrapping_add(off);
                            for (k, d) in d.iter().enumerate().take(n as usize) {
                                let v = self.load(space, a.wrapping_add((k * ty.bytes()) as u64), ty, &mut local[t * ptl..(t + 1) * ptl], inst)?;
                                if let Some(d) = d {
                                    rows[*d as usize * WARP + l] = normalize(ty, v);
                                }
                            }
                        }
                    }
                    Fast::StV { space, ty, n, a, base, off } => {
                        let rows = regs.warp(w0);
                        for l in lanes_of(on) {
                            let t = w0 + l;
                            let to = self.base_value(base, rows, l).wrapping_add(off);
                            for (k, a) in a.iter().enumerate().take(n as usize) {
                                let v = val(rows, *a, l);
                                self.store(space, to.wrapping_add((k * ty.bytes()) as u64), ty, v, &mut local[t * ptl..(t + 1) * ptl], inst)?;
                            }
                        }
                    }
                    Fast::Warp => {
                        // Every live lane of the warp is in the group: the collective runs now
                        // (what warp_collectives would do once they had parked here).
                        let live = (0..lanes).filter(|&l| state[w0 + l] != DONE).fold(0u32, |m, l| m | 1 << l);
                        if self.collective_now(w0, group, live, pc, pcs, state, regs, calls)? {
                            pc += 1;
                            continue;
                        }
                        break Stop::Written;
                    }
                    Fast::Shfl { .. } => {
                        let live = (0..lanes).filter(|&l| state[w0 + l] != DONE).fold(0u32, |m, l| m | 1 << l);
                        if !shfl_warp(regs.warp(w0), group, live, &f) {
                            if self.collective_now(w0, group, live, pc, pcs, state, regs, calls)? {
                                pc += 1;
                                continue;
                            }
                            break Stop::Written;
                        }
                        self.executed += group.count_ones() as u64;
                    }
                    Fast::Sreg { ty, d, s } => {
                        let rows = regs.warp(w0);
                        for l in lanes_of(on) {
                            rows[d as usize * WARP + l] = normalize(ty, self.sreg(s, tids[l], (w0 + l) as u32));
                        }
                    }
                    Fast::Sym { ty, d, s } => {
                        let (rows, v) = (regs.warp(w0), normalize(ty, self.syms.get(s as usize).copied().unwrap_or(0)));
                        for l in lanes_of(on) {
                            rows[d as usize * WARP + l] = v;
                        }
                    }
                    Fast::Pack { ty, w, n, d, a } => {
                        let (rows, w) = (regs.warp(w0), w as u32);
                        for l in lanes_of(on) {
                            let v = a.iter().take(n as usize).enumerate().fold(0u64, |acc, (k, p)| acc | mask(val(rows, *p, l), w) << (w * k as u32));
                            rows[d as usize * WARP + l] = normalize(ty, v);
                        }
                    }
                    Fast::Unpack { ety, w, n, d, a } => {
                        let rows = regs.warp(w0);
                        for l in lanes_of(on) {
                            let v = val(rows, a, l);
                            for (k, p) in d.iter().enumerate().take(n as usize) {
                                if let Some(p) = p {
                                    rows[*p as usize * WARP + l] = normalize(ety, v >> (w as u32 * k as u32));
                                }
                            }
                        }
                    }
                    Fast::Step => {
                        for l in lanes_of(on) {
                            let t = w0 + l;
                            self.step(inst, tids[l], t as u32, &mut regs.lane_mut(t), &mut local[t * ptl..(t + 1) * ptl])?;
                        }
                    }
                    Fast::Lane => {}
                }
                pc += 1;
            };
            match stop {
                Stop::Written => {}
                Stop::At | Stop::Lane => {
                    for l in lanes_of(group) {
                        pcs[w0 + l] = pc;
                    }
                }
            }
            if let Stop::Lane = stop {
                // A barrier, ret or exit without a guard: what the per-thread path does for
                // each lane (count it, then wait at the barrier or end), for the group at once.
                let n = group.count_ones() as u64;
                let at_once = match insts.get(pc as usize) {
                    Some(i) if i.guard.is_none() && self.executed + n < self.quantum_end => match i.op {
                        Op::Bar { .. } => Some(AT_BARRIER),
                        Op::Ret | Op::Exit => Some(DONE),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(s) = at_once {
                    self.executed += n;
                    while self.executed >= self.next_check {
                        self.checkpoint()?;
                    }
                    for l in lanes_of(group) {
                        state[w0 + l] = s;
                    }
                    continue;
                }
                for l in lanes_of(group) {
                    let t = w0 + l;
                    let s = self.run_thread(t as u32, &mut pcs[t], &mut regs.lane_mut(t), &mut local[t * ptl..(t + 1) * ptl], &mut calls[t], Resume::One)?;
                    if s == PREEMPTED {
                        return Ok(WarpRun::Preempted);
                    }
                    state[t] = s;
                }
            }
        }
    }

    /// The warp collective at `pc`, reached by the lanes of `group`: run by warp_op for those
    /// whose masks' live lanes are all here (when the group is every live lane); the others wait
    /// there (AT_WARP) for the block's turn of warp_collectives. True if all of them ran (pc
    /// still to advance), else their pcs and states are written.
    #[allow(clippy::too_many_arguments)]
    fn collective_now(&mut self, w0: usize, group: u32, live: u32, pc: u32, pcs: &mut [u32], state: &mut [u8], regs: &mut RegFile, calls: &mut [Vec<Frame>]) -> Result<bool, ExecError> {
        for l in lanes_of(group) {
            pcs[w0 + l] = pc;
        }
        let ran = if group == live { self.warp_op(w0, group, live, pcs, regs, calls)? } else { 0 };
        if ran == group {
            return Ok(true);
        }
        for l in lanes_of(group) {
            if ran & (1 << l) != 0 {
                pcs[w0 + l] += 1;
            } else {
                state[w0 + l] = AT_WARP;
            }
        }
        Ok(false)
    }

    /// A warp-wide load of global or shared memory at once, every lane's access checked first:
    /// false (nothing loaded) where any is outside its space or the space is another, and the
    /// lanes then load one by one through `load` (which reports the fault).
    #[allow(clippy::too_many_arguments)]
    fn load_lanes(&mut self, space: Space, ty: Ty, base: AddrBase, off: u64, rows: &mut [u64], on: u32, d: u32) -> bool {
        let n = ty.bytes();
        let mut addrs = [0u64; WARP];
        let mut space_of_all = None;
        for l in lanes_of(on) {
            let (s, a) = resolve(space, self.base_value(base, rows, l).wrapping_add(off));
            if space_of_all.is_some_and(|s0| s0 != s) {
                return false;
            }
            (space_of_all, addrs[l]) = (Some(s), a);
        }
        let mut vals = [0u64; WARP];
        let loaded = match space_of_all {
            Some(Space::Global) => self.mem.load_lanes(&addrs, on, n, &mut self.region_hint, &mut vals),
            Some(Space::Shared) => lanes_of(on).all(|l| read_le(&self.shared, addrs[l], n).map(|v| vals[l] = v).is_some()),
            _ => false,
        };
        if loaded {
            for l in lanes_of(on) {
                // As `load` gives it (signed types sign-extended), then as the register holds it.
                let v = if ty.signed() { sext(vals[l], ty.bits()) as u64 } else { vals[l] };
                rows[d as usize * WARP + l] = normalize(ty, v);
            }
        }
        loaded
    }

    /// The base of a warp-wide access's address in lane `l` of a warp's rows (the kernel's
    /// symbols: warp-wide instructions run only in the kernel itself).
    fn base_value(&self, base: AddrBase, rows: &[u64], l: usize) -> u64 {
        match base {
            AddrBase::Reg(x) => rows[x as usize * WARP + l],
            AddrBase::Sym(s) => self.syms.get(s as usize).copied().unwrap_or(0),
            AddrBase::Abs => 0,
        }
    }
}
