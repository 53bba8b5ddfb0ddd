//! Which of a kernel's registers a thread may read before it has written them.
//!
//! Every block starts with its registers zeroed, so a read of a register no path has written
//! yet gives 0 on every engine (PTX leaves it undefined; the sim keeps it deterministic). Only
//! those registers need the zeroing: any other is written on every path before it is read, so
//! its value at the start of a block cannot be seen. ggml's kernels declare some 340 registers,
//! and zeroing all of them for each 128-thread block (348 KB) was a tenth of a llama.cpp decode.
//!
//! The analysis is the classic "definitely assigned" one, forward over the kernel's control flow:
//! a register is written at an instruction if every path from the entry to it writes the
//! register. It errs one way only: a write that might not happen (a guarded instruction, a
//! destination some operations leave alone) does not count, and every operand in a read position
//! counts as read, so a register it does not list is one whose first value cannot be observed.

use super::super::parse::{Base, Inst, Kernel, Op, Opnd};

/// Kernels larger than this (instructions x registers, in bits) keep zeroing every register:
/// the analysis would cost more memory than the zeroing saves.
const MAX_BITS: usize = 1 << 26;

/// The registers of `k` that some path may read before writing, in increasing order; None if
/// `k` is too large to analyse (all of them must be zeroed then).
pub(crate) fn read_before_written(k: &Kernel) -> Option<Vec<u32>> {
    let n = k.insts.len();
    let words = k.nregs.div_ceil(64).max(1);
    if n.checked_mul(words * 64).is_none_or(|b| b > MAX_BITS) {
        return None;
    }
    // Each instruction's definite writes and its reads.
    let mut defs = vec![0u64; n * words];
    let mut uses: Vec<Vec<u32>> = Vec::with_capacity(n);
    for (i, inst) in k.insts.iter().enumerate() {
        let mut u = Vec::new();
        reads_of(inst, &mut u);
        if inst.guard.is_none() {
            operands(&inst.op, &mut |o, role| {
                if let Role::Write = role {
                    for r in dests(o) {
                        set(&mut defs[i * words..(i + 1) * words], r);
                    }
                }
            });
        }
        uses.push(u);
    }
    // Successors: the next instruction unless the thread cannot go on to it; a branch's target.
    let succ = |i: usize| -> [Option<usize>; 2] {
        let next = (i + 1 < n).then_some(i + 1);
        let guarded = k.insts[i].guard.is_some();
        match k.insts[i].op {
            Op::Bra { target } => [Some(target as usize).filter(|&t| t < n), next.filter(|_| guarded)],
            Op::Exit | Op::Ret | Op::Trap => [next.filter(|_| guarded), None],
            _ => [next, None],
        }
    };
    // written_in[i]: registers written on every path to i (entry: none; others start at all,
    // the top of the intersection, and only shrink).
    let mut written_in = vec![u64::MAX; n * words];
    if n > 0 {
        written_in[..words].fill(0);
    }
    let mut queued = vec![true; n];
    let mut work: std::collections::VecDeque<usize> = (0..n).collect();
    let mut out = vec![0u64; words];
    while let Some(i) = work.pop_front() {
        queued[i] = false;
        for w in 0..words {
            out[w] = written_in[i * words + w] | defs[i * words + w];
        }
        for s in succ(i).into_iter().flatten() {
            let mut changed = false;
            for w in 0..words {
                let before = written_in[s * words + w];
                let after = before & out[w];
                if after != before {
                    written_in[s * words + w] = after;
                    changed = true;
                }
            }
            if changed && !queued[s] {
                queued[s] = true;
                work.push_back(s);
            }
        }
    }
    let mut needed = vec![0u64; words];
    for (i, u) in uses.iter().enumerate() {
        for &r in u {
            let (w, b) = (r as usize / 64, r % 64);
            // A register index the kernel does not have is the engine's error to report.
            if w < words && written_in[i * words + w] & (1 << b) == 0 {
                needed[w] |= 1 << b;
            }
        }
    }
    Some((0..k.nregs as u32).filter(|&r| needed[r as usize / 64] & (1 << (r % 64)) != 0).collect())
}

/// Registers of `k` that hold one constant wherever they are read: written by a single
/// instruction in the whole kernel, the unguarded one `is_constant` gives a value for, and
/// never read before written (`zeroed`, read_before_written's answer), so every read comes
/// after that write. ggml's shuffles take their lane, clamp and mask from such registers.
pub(crate) fn constants(k: &Kernel, zeroed: &[u32], is_constant: impl Fn(usize) -> Option<u64>) -> std::collections::HashMap<u32, u64> {
    let mut writers: std::collections::HashMap<u32, (usize, u32)> = std::collections::HashMap::new();
    for (i, inst) in k.insts.iter().enumerate() {
        operands(&inst.op, &mut |o, role| {
            if matches!(role, Role::Write | Role::MaybeWrite) {
                for r in dests(o) {
                    let w = writers.entry(r).or_insert((i, 0));
                    w.1 += 1;
                }
            }
        });
    }
    writers
        .into_iter()
        .filter(|&(r, (i, n))| n == 1 && k.insts[i].guard.is_none() && zeroed.binary_search(&r).is_err())
        .filter_map(|(r, (i, _))| Some((r, is_constant(i)?)))
        .collect()
}

/// Whether each register of `k` is read by some instruction (as an operand, an address base
/// or a guard).
pub(crate) fn read_somewhere(k: &Kernel) -> Vec<bool> {
    let mut read = vec![false; k.nregs];
    let mut u = Vec::new();
    for inst in &k.insts {
        u.clear();
        reads_of(inst, &mut u);
        for &r in &u {
            if let Some(x) = read.get_mut(r as usize) {
                *x = true;
            }
        }
    }
    read
}

/// The registers `inst` reads, onto `u`: its guard, its operands in a read position and the
/// address bases of its writes.
fn reads_of(inst: &Inst, u: &mut Vec<u32>) {
    if let Some((p, _)) = inst.guard {
        u.push(p);
    }
    operands(&inst.op, &mut |o, role| match role {
        Role::Read => reads(o, u),
        Role::Write | Role::MaybeWrite => writes_addr_bases(o, u),
    });
}

/// The registers `op` writes or may write (its destinations).
pub(crate) fn written_by(op: &Op) -> Vec<u32> {
    let mut w = Vec::new();
    operands(op, &mut |o, role| {
        if matches!(role, Role::Write | Role::MaybeWrite) {
            w.extend(dests(o));
        }
    });
    w
}

#[derive(Clone, Copy)]
enum Role {
    Read,
    /// A destination the operation always writes when it runs.
    Write,
    /// A destination the operation may leave unwritten.
    MaybeWrite,
}

fn set(bits: &mut [u64], r: u32) {
    if let Some(w) = bits.get_mut(r as usize / 64) {
        *w |= 1 << (r % 64);
    }
}

/// Registers an operand in a read position reads.
fn reads(o: &Opnd, u: &mut Vec<u32>) {
    match o {
        Opnd::Reg(r) | Opnd::Addr(Base::Reg(r), _) => u.push(*r),
        Opnd::Vec(v) => v.iter().for_each(|o| reads(o, u)),
        Opnd::Imm(_) | Opnd::Sreg(_) | Opnd::Sym(_) | Opnd::Addr(..) | Opnd::Sink => {}
    }
}

/// A destination written as an address (which no instruction has) still reads its base.
fn writes_addr_bases(o: &Opnd, u: &mut Vec<u32>) {
    match o {
        Opnd::Addr(Base::Reg(r), _) => u.push(*r),
        Opnd::Vec(v) => v.iter().for_each(|o| writes_addr_bases(o, u)),
        _ => {}
    }
}

/// Registers a destination operand names.
fn dests(o: &Opnd) -> Vec<u32> {
    match o {
        Opnd::Reg(r) => vec![*r],
        Opnd::Vec(v) => v.iter().flat_map(dests).collect(),
        _ => Vec::new(),
    }
}

/// Every operand of `op` with its role. The match names every operation (no catch-all), so a
/// new one cannot be missed.
fn operands(op: &Op, f: &mut impl FnMut(&Opnd, Role)) {
    use Role::*;
    let mut all = |ops: &[(&Opnd, Role)]| ops.iter().for_each(|&(o, r)| f(o, r));
    match op {
        Op::Mov { d, a, .. } => all(&[(a, Read), (d, Write)]),
        Op::Ld { d, addr, .. } => all(&[(addr, Read), (d, Write)]),
        Op::St { addr, a, .. } => all(&[(addr, Read), (a, Read)]),
        Op::Bin { d, a, b, .. } | Op::MulWide { d, a, b, .. } => all(&[(a, Read), (b, Read), (d, Write)]),
        Op::Mad { d, a, b, c, .. } | Op::MadWide { d, a, b, c, .. } => all(&[(a, Read), (b, Read), (c, Read), (d, Write)]),
        Op::Carry { cin, cout, cc, d, a, b, c, .. } => {
            all(&[(a, Read), (b, Read), (c, Read), (d, Write)]);
            if *cin {
                all(&[(cc, Read)]);
            }
            if *cout {
                all(&[(cc, Write)]);
            }
        }
        Op::Un { d, a, .. } | Op::Bfind { d, a, .. } | Op::Cvt { d, a, .. } | Op::Cvta { d, a, .. } => all(&[(a, Read), (d, Write)]),
        Op::Setp { p, q, a, b, comb, .. } => {
            all(&[(a, Read), (b, Read), (p, Write), (q, Write)]);
            if let Some((_, r, _)) = comb {
                all(&[(&Opnd::Reg(*r), Read)]);
            }
        }
        Op::Set { d, a, b, comb, .. } => {
            all(&[(a, Read), (b, Read), (d, Write)]);
            if let Some((_, r, _)) = comb {
                all(&[(&Opnd::Reg(*r), Read)]);
            }
        }
        Op::CopySign { d, a, b, .. } | Op::CvtPack { d, a, b, .. } | Op::CvtF8 { d, a, b, .. } => all(&[(a, Read), (b, Read), (d, Write)]),
        Op::Dot { d, a, b, c, .. }
        | Op::Prmt { d, a, b, c, .. }
        | Op::Sad { d, a, b, c, .. }
        | Op::Shf { d, a, b, c, .. }
        | Op::Selp { d, a, b, c, .. }
        | Op::Bfe { d, a, b, c, .. }
        | Op::Half2 { d, a, b, c, .. } => all(&[(a, Read), (b, Read), (c, Read), (d, Write)]),
        Op::Mul24 { d, a, b, c, .. } => {
            all(&[(a, Read), (b, Read)]);
            if let Some(c) = c {
                all(&[(c, Read)]);
            }
            all(&[(d, Write)]);
        }
        Op::Testp { p, a, .. } | Op::IsSpace { p, a, .. } => all(&[(a, Read), (p, Write)]),
        Op::CpAsync { dst, src, size, src_size } => {
            all(&[(dst, Read), (src, Read), (size, Read)]);
            if let Some(s) = src_size {
                all(&[(s, Read)]);
            }
        }
        Op::Bfi { d, f: x, b, c, e, .. } => all(&[(x, Read), (b, Read), (c, Read), (e, Read), (d, Write)]),
        Op::Lop3 { d, a, b, c, lut } => all(&[(a, Read), (b, Read), (c, Read), (lut, Read), (d, Write)]),
        Op::Atom { d, addr, b, c, .. } => {
            all(&[(addr, Read), (b, Read)]);
            if let Some(c) = c {
                all(&[(c, Read)]);
            }
            if let Some(d) = d {
                all(&[(d, MaybeWrite)]);
            }
        }
        Op::Bra { .. } | Op::Ret | Op::Exit | Op::Trap | Op::Fence | Op::Nop | Op::Unsupported => {}
        Op::Vprintf { ret, fmt, args } => {
            all(&[(fmt, Read), (args, Read)]);
            if let Some(r) = ret {
                all(&[(r, MaybeWrite)]);
            }
        }
        Op::AssertFail { args } => args.iter().for_each(|a| all(&[(a, Read)])),
        Op::Call { via, ret, args, .. } => {
            if let Some(v) = via {
                all(&[(v, Read)]);
            }
            args.iter().for_each(|a| all(&[(a, Read)]));
            if let Some(r) = ret {
                all(&[(r, MaybeWrite)]);
            }
        }
        Op::Malloc { ret, size } => all(&[(size, Read), (ret, MaybeWrite)]),
        Op::Free { ptr } => all(&[(ptr, Read)]),
        Op::Mbar { d, addr, a, .. } => {
            all(&[(addr, Read)]);
            if let Some(a) = a {
                all(&[(a, Read)]);
            }
            all(&[(d, MaybeWrite)]);
        }
        Op::CgHandle { ret, scope } => all(&[(scope, Read), (ret, MaybeWrite)]),
        Op::GridSync { ret, handle } => {
            all(&[(handle, Read)]);
            if let Some(r) = ret {
                all(&[(r, MaybeWrite)]);
            }
        }
        Op::Bar { red } => {
            if let Some((_, d, p, _)) = red {
                all(&[(&Opnd::Reg(*p), Read), (d, MaybeWrite)]);
            }
        }
        Op::Warp { d, p, a, b, c, mask, .. } => all(&[(a, Read), (b, Read), (c, Read), (mask, Read), (d, MaybeWrite), (p, MaybeWrite)]),
        Op::Tex { d, h, c, .. } | Op::Suld { d, h, c, .. } => all(&[(h, Read), (c, Read), (d, MaybeWrite)]),
        Op::Sust { h, c, a, .. } => all(&[(h, Read), (c, Read), (a, Read)]),
        Op::TexQuery { d, h, .. } => all(&[(h, Read), (d, MaybeWrite)]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::parse::Module;

    fn analyse(body: &str) -> Vec<u32> {
        let text = format!(
            ".version 8.8\n.target sm_90\n.address_size 64\n.visible .entry k(.param .u64 out)\n{{\n.reg .pred %p<3>;\n.reg .b32 %r<8>;\n.reg .b64 %rd<4>;\n{body}\n}}\n"
        );
        let m = Module::parse(&text).unwrap();
        super::read_before_written(m.kernel("k").unwrap()).expect("small enough to analyse")
    }

    #[test]
    fn reads_on_some_path_before_any_write_are_found() {
        // Written before every read, on both sides of a branch: nothing to zero.
        let none = analyse(
            "ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nsetp.eq.u32 %p1, %r1, 0;\n@%p1 bra A;\nmov.u32 %r2, 1;\nbra B;\nA:\nmov.u32 %r2, 2;\nB:\nst.global.u32 [%rd1], %r2;\nret;",
        );
        assert_eq!(none, Vec::<u32>::new());
        // Written on one side only, by a guarded write, or never: each of those is zeroed.
        let one_side = analyse(
            "ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nsetp.eq.u32 %p1, %r1, 0;\n@%p1 bra A;\nmov.u32 %r2, 1;\nA:\nst.global.u32 [%rd1], %r2;\nret;",
        );
        assert_eq!(one_side.len(), 1, "{one_side:?}");
        let guarded = analyse("ld.param.u64 %rd1, [out];\nsetp.eq.u32 %p1, %r1, 0;\n@%p1 mov.u32 %r2, 1;\nst.global.u32 [%rd1], %r2;\nret;");
        assert_eq!(guarded.len(), 2, "%r1 (never written) and %r2 (guarded): {guarded:?}");
        // A loop that reads a register before the body's write on its first turn.
        let looped = analyse("ld.param.u64 %rd1, [out];\nmov.u32 %r1, 0;\nL:\nadd.s32 %r2, %r2, %r1;\nadd.s32 %r1, %r1, 1;\nsetp.lt.u32 %p1, %r1, 4;\n@%p1 bra L;\nst.global.u32 [%rd1], %r2;\nret;");
        assert_eq!(looped.len(), 1, "{looped:?}");
        // The address base of a store is a read; a guard is a read.
        let bases = analyse("st.global.u32 [%rd2], 1;\n@%p2 ret;\nret;");
        assert_eq!(bases.len(), 2, "{bases:?}");
    }
}
