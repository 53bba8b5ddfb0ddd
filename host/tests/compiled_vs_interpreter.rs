//! The compiled engine (exec/jit.rs) against the interpreter, on random programs.
//!
//! Each program is a random sequence of the register instructions the compiler emits inline or
//! calls back for (integer, f32/f64/f16x2 arithmetic and conversions, comparisons, packing),
//! some guarded by a predicate, some skipped by a divergent branch, run on inputs that mix
//! random bits with the edge cases of each type (NaNs, infinities, subnormals, signed zeros,
//! integer extremes). Every register's final value must be bit for bit what the warp engine
//! without compiled code gives. The conformance test runs the ISA reference corpus on the
//! compiled engine too.

use std::collections::HashMap;
use vgpu_host::sim::ptx::{launch, with_engine, with_jit_heat, Engine, LaunchConfig, Memory, Module};

const IN_BASE: u64 = 0x3000_0000_0000;
const OUT_BASE: u64 = 0x3000_1000_0000;
const THREADS: usize = 64;
const BLOCKS: usize = 2;
/// Each thread's own part of the shared array (so that no two threads race on it).
const SHARED_BYTES: usize = 32;
/// Loop counters of a program with loops.
const LOOP_COUNTERS: usize = 8;
/// Input words per thread: one per register of CLASSES.
const INPUT_WORDS: usize = 33;

/// Register classes: name prefix, PTX type, how many.
const CLASSES: [(char, &str, &str, usize); 6] = [
    ('R', "%r", ".b32", 8),
    ('D', "%rd", ".b64", 6),
    ('F', "%f", ".f32", 6),
    ('G', "%fd", ".f64", 4),
    ('P', "%p", ".pred", 5),
    ('H', "%h", ".b16", 4),
];

/// Instruction forms: R b32, D b64, F f32, G f64, P pred, H b16 registers; I a shift-sized
/// immediate, K a 32-bit one, L an 8-bit one.
const FORMS: &[&str] = &[
    "add.u32 R, R, R",
    "add.s32 R, R, K",
    "sub.s32 R, R, R",
    "mul.lo.u32 R, R, R",
    "mul.lo.s32 R, R, K",
    "mul.hi.u32 R, R, R",
    "mul.hi.s32 R, R, R",
    "mad.lo.s32 R, R, R, R",
    "mad.hi.u32 R, R, R, R",
    "and.b32 R, R, R",
    "or.b32 R, R, K",
    "xor.b32 R, R, R",
    "not.b32 R, R",
    "shl.b32 R, R, I",
    "shl.b32 R, R, R",
    "shr.u32 R, R, R",
    "shr.u32 R, R, I",
    "shr.s32 R, R, I",
    "shr.s32 R, R, R",
    "min.s32 R, R, R",
    "max.u32 R, R, R",
    "min.u32 R, R, K",
    "max.s32 R, R, R",
    "div.u32 R, R, R",
    "rem.s32 R, R, R",
    "neg.s32 R, R",
    "popc.b32 R, R",
    "clz.b32 R, R",
    "brev.b32 R, R",
    "bfe.u32 R, R, I, I",
    "bfe.s32 R, R, R, R",
    "lop3.b32 R, R, R, R, L",
    "prmt.b32 R, R, R, R",
    "dp4a.s32.s32 R, R, R, R",
    "dp4a.u32.s32 R, R, R, R",
    "dp4a.s32.u32 R, R, K, R",
    "dp4a.u32.u32 R, R, R, R",
    "dp2a.lo.s32.u32 R, R, R, R",
    "dp2a.hi.u32.s32 R, R, R, R",
    "shf.l.wrap.b32 R, R, R, R",
    "shf.r.clamp.b32 R, R, R, R",
    "selp.b32 R, R, R, P",
    "selp.f32 F, F, F, P",
    "selp.b64 D, D, D, P",
    "cvt.u16.u32 H, R",
    "cvt.u32.u16 R, H",
    "cvt.s32.s16 R, H",
    "cvt.u64.u32 D, R",
    "cvt.s64.s32 D, R",
    "cvt.u32.u64 R, D",
    "cvt.s32.s64 R, D",
    "cvt.sat.s32.s64 R, D",
    "add.s64 D, D, D",
    "sub.s64 D, D, D",
    "mul.lo.u64 D, D, D",
    "mul.hi.u64 D, D, D",
    "mul.hi.s64 D, D, D",
    "shl.b64 D, D, R",
    "shr.s64 D, D, R",
    "shr.u64 D, D, I",
    "min.s64 D, D, D",
    "max.u64 D, D, D",
    "and.b64 D, D, D",
    "xor.b64 D, D, D",
    "mad.lo.u64 D, D, D, D",
    "mul.wide.u32 D, R, R",
    "mul.wide.s32 D, R, R",
    "mad.wide.s32 D, R, R, D",
    "mad.wide.u32 D, R, K, D",
    "cvta.to.global.u64 D, D",
    "cvta.global.u64 D, D",
    "cvta.to.shared.u64 D, D",
    "cvta.local.u64 D, D",
    "mul.wide.u16 R, H, H",
    "mul.wide.s16 R, H, H",
    "add.u16 H, H, H",
    "mul.lo.s16 H, H, H",
    "shr.s16 H, H, R",
    "mov.b64 D, {R, R}",
    "mov.b64 {R, R}, D",
    "mov.b32 R, {H, H}",
    "mov.b32 {H, H}, R",
    "mov.u32 R, R",
    "mov.u32 R, K",
    "mov.f32 F, F",
    "mov.b32 F, R",
    "mov.b32 R, F",
    "mov.b64 G, D",
    "mov.b64 D, G",
    "add.f32 F, F, F",
    "add.rn.f32 F, F, F",
    "sub.f32 F, F, F",
    "mul.f32 F, F, F",
    "mul.rn.f32 F, F, F",
    "mul.rz.f32 F, F, F",
    "add.ftz.f32 F, F, F",
    "add.sat.f32 F, F, F",
    "fma.rn.f32 F, F, F, F",
    "fma.rn.ftz.f32 F, F, F, F",
    "fma.rm.f32 F, F, F, F",
    "min.f32 F, F, F",
    "max.f32 F, F, F",
    "div.rn.f32 F, F, F",
    "div.approx.f32 F, F, F",
    "min.ftz.f32 F, F, F",
    "max.ftz.f32 F, F, F",
    "max.NaN.f32 F, F, F",
    "div.approx.ftz.f32 F, F, F",
    "div.full.f32 F, F, F",
    "div.rn.ftz.f32 F, F, F",
    "neg.f32 F, F",
    "abs.f32 F, F",
    "sqrt.rn.f32 F, F",
    "rcp.approx.f32 F, F",
    "ex2.approx.f32 F, F",
    "cvt.rn.f32.s32 F, R",
    "cvt.rn.f32.u32 F, R",
    "cvt.rz.f32.s32 F, R",
    "cvt.rzi.s32.f32 R, F",
    "cvt.rni.s32.f32 R, F",
    "cvt.rzi.u32.f32 R, F",
    "cvt.rmi.s32.f32 R, F",
    "cvt.rzi.ftz.s32.f32 R, F",
    "cvt.rzi.s64.f64 D, G",
    "cvt.rni.u64.f64 D, G",
    "cvt.rzi.u64.f32 D, F",
    "cvt.rzi.s16.f32 H, F",
    "cvt.rn.f64.s64 G, D",
    "cvt.rn.f64.u64 G, D",
    "cvt.rn.f32.s64 F, D",
    "cvt.rn.f64.s32 G, R",
    "cvt.f64.f32 G, F",
    "cvt.rn.f32.f64 F, G",
    "cvt.rz.f32.f64 F, G",
    "cvt.rn.f16.f32 H, F",
    "cvt.f32.f16 F, H",
    "cvt.rni.f32.f32 F, F",
    "add.f64 G, G, G",
    "mul.rn.f64 G, G, G",
    "fma.rn.f64 G, G, G, G",
    "sub.f64 G, G, G",
    "min.f64 G, G, G",
    "max.f64 G, G, G",
    "div.rn.f64 G, G, G",
    "add.rn.f16x2 R, R, R",
    "mul.rn.f16x2 R, R, R",
    "sub.f16x2 R, R, R",
    "fma.rn.f16x2 R, R, R, R",
    "setp.lt.s32 P, R, R",
    "setp.eq.u32 P, R, K",
    "setp.ne.b32 P, R, R",
    "setp.ge.u32 P, R, R",
    "setp.hi.u32 P, R, R",
    "setp.le.s64 P, D, D",
    "setp.lo.u64 P, D, D",
    "setp.gt.s64 P, D, D",
    "setp.lt.f32 P, F, F",
    "setp.nan.f32 P, F, F",
    "setp.num.f32 P, F, F",
    "setp.geu.f32 P, F, F",
    "setp.neu.f32 P, F, F",
    "setp.ne.f32 P, F, F",
    "setp.equ.f64 P, G, G",
    "setp.le.f64 P, G, G",
    "setp.gt.ftz.f32 P, F, F",
    "setp.lt.and.s32 P, R, R, P",
    "setp.ge.or.u32 P, R, R, !P",
    "setp.eq.xor.f32 P|P, F, F, P",
    "setp.lt.u32 P|P, R, R",
    "setp.ne.u16 P, H, H",
    "setp.lt.s16 P, H, H",
    "and.pred P, P, P",
    "or.pred P, P, P",
    "xor.pred P, P, P",
    "not.pred P, P",
    // Loads and stores (A: a 4-byte-aligned offset into the thread's input, B: an 8-byte-aligned
    // one, J and S: 4- and 8-byte-aligned ones into the thread's part of the shared array; now
    // and then far outside, which faults).
    "ld.global.u32 R, [%in+A]",
    "ld.global.f32 F, [%in+A]",
    "ld.global.b64 D, [%in+B]",
    "ld.global.s16 H, [%in+A]",
    "ld.global.v2.u32 {R, R}, [%in+B]",
    "ld.global.v4.b32 {R, _, R, R}, [%in+B]",
    "ld.global.nc.f64 G, [%in+B]",
    "ld.u32 R, [%in+A]",
    "ld.global.s8 R, [%in+A]",
    "ld.shared.u32 R, [%sh+J]",
    "ld.shared.f32 F, [%sh+J]",
    "ld.u32 R, [%gsh+J]",
    "st.shared.u32 [%sh+J], R",
    "st.shared.f32 [%sh+J], F",
    "st.global.u32 [%in+A], R",
    "st.global.b64 [%in+B], D",
    "st.global.v2.f32 [%in+B], {F, F}",
    "st.u16 [%in+A], H",
    "st.shared.v2.u32 [%sh+S], {R, R}",
    "st.global.s8 [%in+A], R",
    // Special registers and parameters.
    "mov.u32 R, %tid.x",
    "mov.u32 R, %tid.y",
    "mov.u32 R, %ntid.x",
    "mov.u32 R, %ctaid.x",
    "mov.u32 R, %nctaid.x",
    "mov.u32 R, %laneid",
    "mov.u32 R, %warpid",
    "cvt.u16.u32 H, %tid.x",
    "ld.param.u64 D, [pout]",
    "ld.param.u32 R, [pin+4]",
    // Local memory: the compiled code makes each lane's own accesses; a generic load there is
    // one it leaves to the warp engine (which then runs the segment from its start, the
    // registers it had changed put back).
    "st.local.u32 [%lo+J], R",
    "ld.u32 R, [%glo+J]",
    "ld.local.u32 R, [%lo+J]",
    "st.local.v2.f32 [%lo+S], {F, F}",
    "ld.local.v2.u32 {R, R}, [%lo+S]",
    "st.local.u16 [%lo+J], H",
    "ld.local.s8 R, [%lo+J]",
];

/// Warp shuffles over the whole warp (all four modes, immediate and register lanes, whole and
/// 8-lane segments, with and without the predicate).
const SHUFFLES: &[&str] = &[
    "shfl.sync.bfly.b32 R|P, R, I, 31, -1",
    "shfl.sync.bfly.b32 R, R, R, 6175, -1",
    "shfl.sync.down.b32 R|P, R, R, 31, -1",
    "shfl.sync.down.b32 R|P, R, I, 6175, -1",
    "shfl.sync.up.b32 R|P, R, I, 0, -1",
    "shfl.sync.up.b32 R, R, R, 6144, -1",
    "shfl.sync.idx.b32 R|P, R, R, 31, -1",
    "shfl.sync.idx.b32 R, R, I, 6175, -1",
    // Lane, clamp and mask from registers written once with a constant, as ggml's are (the
    // compiled code makes those exchanges inline).
    "shfl.sync.bfly.b32 R|P, R, %k0, %k1, %k2",
    "shfl.sync.down.b32 R, R, %k0, %k1, %k2",
    "shfl.sync.up.b32 R|P, R, %k0, %k1, %k2",
    "shfl.sync.idx.b32 R|P, R, %k0, %k1, %k2",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An input word: random bits, or an edge case of some type.
fn input(g: &mut Rng) -> u64 {
    const EDGES: &[u64] = &[
        0,
        1,
        2,
        31,
        32,
        33,
        63,
        64,
        0xff,
        0x7fff,
        0x8000,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0x8000_0000_0000_0000,
        0x7fff_ffff_ffff_ffff,
        u64::MAX,
        0x3f80_0000,
        0xbf80_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7fa0_0001,
        0xffc0_1234,
        0x0000_0001,
        0x807f_ffff,
        0x4f00_0000,
        0xcf00_0000,
        0x4f80_0000,
        0x5f00_0000,
        0x3f00_0000,
        0x3fc0_0000,
        0x4040_0000,
        0x3ff0_0000_0000_0000,
        0x7ff0_0000_0000_0000,
        0x7ff8_0000_0000_0000,
        0x7ff4_0000_0000_0001,
        0x0000_0000_0000_0001,
        0xc3e0_0000_0000_0000,
        0x43e0_0000_0000_0000,
        0x43f0_0000_0000_0000,
        0x3c00_3c00,
        0x7c00_fc00,
        0x7e00_0001,
        0x0001_8001,
        0x7bff_fbff,
    ];
    match g.below(4) {
        0 => g.next(),
        1 => g.next() & 0xffff,
        2 => {
            // A float of a small integer over a power of two (exact, rounding-sensitive sums).
            let v = (g.below(2001) as f32 - 1000.0) / (1 << g.below(12)) as f32;
            if g.below(2) == 0 {
                v.to_bits() as u64
            } else {
                (v as f64).to_bits()
            }
        }
        _ => EDGES[g.below(EDGES.len())],
    }
}

fn reg(g: &mut Rng, class: char) -> String {
    let &(_, prefix, _, n) = CLASSES.iter().find(|c| c.0 == class).unwrap();
    format!("{prefix}{}", g.below(n))
}

/// One instruction of a form, its operands drawn (`words`: the thread's input words; `far`:
/// whether the program may still get its one access far outside).
fn instance(g: &mut Rng, form: &str, words: usize, far: &mut bool) -> String {
    let mut out = String::new();
    let mut chars = form.chars().peekable();
    // The opcode itself holds letters that are not operands.
    let split = form.find(' ').unwrap();
    out.push_str(&form[..split]);
    for _ in 0..split {
        chars.next();
    }
    for c in chars {
        match c {
            'R' | 'D' | 'F' | 'G' | 'P' | 'H' => out.push_str(&reg(g, c)),
            'I' => out.push_str(&g.below(40).to_string()),
            'K' => out.push_str(&format!("{}", g.next() as u32)),
            'L' => out.push_str(&g.below(256).to_string()),
            'A' | 'B' | 'J' | 'S' => {
                let (align, room) = match c {
                    'A' => (4, words * 8),
                    'B' => (8, words * 8),
                    'S' => (8, SHARED_BYTES + 16),
                    _ => (4, SHARED_BYTES + 16),
                };
                // Far outside now and then, once at most in a program: the access faults, in
                // every engine alike. (Where two instructions fault, in different threads,
                // which one comes first is a matter of how the warps take turns, as on a GPU.)
                let at = if *far && g.below(60) == 0 {
                    *far = false;
                    1 << 24
                } else {
                    align * g.below((room - 16) / align)
                };
                out.push_str(&at.to_string());
            }
            c => out.push(c),
        }
    }
    out
}

/// A random kernel: load every register, `n` random instructions (some guarded, some inside a
/// divergent branch; with `loops`, some inside loops whose trip count differs from lane to lane,
/// up to 512 turns, and whose bodies mostly only load; with `shuffles`, warp shuffles where the
/// warp's lanes are together), store every register.
fn program(g: &mut Rng, n: usize, loops: bool, shuffles: bool) -> (String, usize) {
    let mut body = String::new();
    let mut slot = 0usize;
    for &(class, prefix, _, count) in &CLASSES {
        for k in 0..count {
            let at = slot * 8;
            match class {
                'P' => body.push_str(&format!("\tld.global.u32 %t, [%in+{at}];\n\tsetp.ne.u32 {prefix}{k}, %t, 0;\n")),
                'H' => body.push_str(&format!("\tld.global.b16 {prefix}{k}, [%in+{at}];\n")),
                'R' => body.push_str(&format!("\tld.global.u32 {prefix}{k}, [%in+{at}];\n")),
                'F' => body.push_str(&format!("\tld.global.f32 {prefix}{k}, [%in+{at}];\n")),
                _ => body.push_str(&format!("\tld.global.b64 {prefix}{k}, [%in+{at}];\n")),
            }
            slot += 1;
        }
    }
    // The shuffles' constant registers: a lane, a clamp (and segment), the whole warp's mask
    // (one naming fewer lanes would be undefined behaviour for the others).
    body.push_str(&format!("\tmov.u32 %k0, {};\n\tmov.u32 %k1, {};\n\tmov.u32 %k2, -1;\n", g.below(32), [31, 6175, 0, 6144][g.below(4)]));
    // Each loop's trip count: 1 to 8 or 1 to 512 turns, from the lane's inputs.
    for k in 0..LOOP_COUNTERS {
        body.push_str(&format!("\tand.b32 %c{k}, %r{k}, {};\n\tadd.u32 %c{k}, %c{k}, 1;\n", if k % 2 == 0 { 7 } else { 511 }));
    }
    let mut far = true;
    let mut open_labels = Vec::new();
    // The open loop: its label, the instruction it closes after, its counter.
    let mut open_loop: Option<(usize, usize, usize)> = None;
    let mut next_counter = 0;
    let close = |body: &mut String, (l, _, c): (usize, usize, usize)| {
        body.push_str(&format!("\tsub.u32 %c{c}, %c{c}, 1;\n\tsetp.gt.s32 %pw, %c{c}, 0;\n\t@%pw bra $W{l};\n"));
    };
    for i in 0..n {
        if loops && open_loop.is_none() && g.below(6) == 0 {
            body.push_str(&format!("$W{i}:\n"));
            open_loop = Some((i, i + 2 + g.below(8), next_counter % LOOP_COUNTERS));
            next_counter += 1;
        }
        if g.below(12) == 0 {
            // A branch the whole warp takes or not (the block decides) may jump over shuffles.
            let (p, uniform) = if shuffles && g.below(2) == 0 { (["%pu", "!%pu"][g.below(2)].to_string(), true) } else { (reg(g, 'P'), false) };
            body.push_str(&format!("\t@{p} bra $L{i};\n"));
            open_labels.push((i, i + 1 + g.below(6), uniform));
        }
        if shuffles && open_loop.is_none() && open_labels.iter().all(|l| l.2) && g.below(4) == 0 {
            let form = SHUFFLES[g.below(SHUFFLES.len())];
            body.push_str(&format!("\t{};\n", instance(g, form, INPUT_WORDS, &mut far)));
        }
        let form = loop {
            // Loops mostly only load (a loop that stores runs on the warp engine).
            let f = FORMS[g.below(FORMS.len())];
            if !(open_loop.is_some() && f.starts_with("st") && g.below(4) != 0) {
                break f;
            }
        };
        let guard = match g.below(6) {
            0 => format!("@{} ", reg(g, 'P')),
            1 => format!("@!{} ", reg(g, 'P')),
            _ => String::new(),
        };
        body.push_str(&format!("\t{guard}{};\n", instance(g, form, INPUT_WORDS, &mut far)));
        if let Some(l) = open_loop.filter(|l| l.1 == i) {
            close(&mut body, l);
            open_loop = None;
        }
        open_labels.retain(|&(l, at, _)| {
            if at == i {
                body.push_str(&format!("$L{l}:\n"));
                false
            } else {
                true
            }
        });
    }
    if let Some(l) = open_loop {
        close(&mut body, l);
    }
    for (l, _, _) in open_labels {
        body.push_str(&format!("$L{l}:\n"));
    }
    let mut slot_out = 0usize;
    for &(class, prefix, _, count) in &CLASSES {
        for k in 0..count {
            let at = slot_out * 8;
            match class {
                'P' => body.push_str(&format!("\tselp.u32 %t, 1, 0, {prefix}{k};\n\tst.global.u32 [%out+{at}], %t;\n")),
                'H' => body.push_str(&format!("\tst.global.b16 [%out+{at}], {prefix}{k};\n")),
                'R' => body.push_str(&format!("\tst.global.u32 [%out+{at}], {prefix}{k};\n")),
                'F' => body.push_str(&format!("\tst.global.f32 [%out+{at}], {prefix}{k};\n")),
                _ => body.push_str(&format!("\tst.global.b64 [%out+{at}], {prefix}{k};\n")),
            }
            slot_out += 1;
        }
    }
    assert_eq!(slot, INPUT_WORDS);
    let decls: String = CLASSES.iter().map(|&(_, prefix, ty, count)| format!("\t.reg {ty} {prefix}<{count}>;\n")).collect();
    let text = format!(
        ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 pin, .param .u64 pout)\n{{\n{decls}\t.reg .b32 %c<{LOOP_COUNTERS}>;\n\t.reg .b32 %k<3>;\n\t.reg .pred %pw;\n\t.reg .pred %pu;\n\t.reg .b32 %t;\n\t.reg .b32 %tid;\n\t.reg .b64 %in;\n\t.reg .b64 %out;\n\t.reg .b64 %o;\n\t.reg .b64 %sh;\n\t.reg .b64 %gsh;\n\t.reg .b64 %lo;\n\t.reg .b64 %glo;\n\t.local .align 8 .b8 lo[{}];\n\t.shared .align 8 .b8 sh[{}];\n\
         \tmov.u32 %t, %tid.x;\n\tmul.wide.u32 %o, %t, {SHARED_BYTES};\n\tmov.u64 %sh, sh;\n\tadd.s64 %sh, %sh, %o;\n\tcvta.shared.u64 %gsh, %sh;\n\tmov.u64 %lo, lo;\n\tcvta.local.u64 %glo, %lo;\n\
         \tmov.u32 %tid, %tid.x;\n\tmov.u32 %t, %ctaid.x;\n\tsetp.ne.u32 %pu, %t, 0;\n\tmad.lo.u32 %tid, %t, {THREADS}, %tid;\n\tmul.wide.u32 %o, %tid, {};\n\
         \tld.param.u64 %in, [pin];\n\tadd.s64 %in, %in, %o;\n\tld.param.u64 %out, [pout];\n\tadd.s64 %out, %out, %o;\n{body}\tret;\n}}\n",
        SHARED_BYTES + 16,
        SHARED_BYTES * THREADS,
        slot * 8
    );
    (text, slot)
}

struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Memory for Buffers {
    fn regions(&mut self) -> Vec<(u64, &mut [u8])> {
        vec![(IN_BASE, &mut self.input[..]), (OUT_BASE, &mut self.output[..])]
    }
}

/// The outputs of one run, or the launch's error; the instructions it ran and, of them, those
/// compiled code ran.
fn run(module: &Module, input: &[u8], words: usize, engine: Engine) -> (Result<(), String>, Vec<u8>, u64, u64) {
    let mut mem = Buffers { input: input.to_vec(), output: vec![0xA5; THREADS * BLOCKS * words * 8] };
    let params: Vec<u8> = [IN_BASE, OUT_BASE].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cfg = LaunchConfig { grid: [BLOCKS as u32, 1, 1], block: [THREADS as u32, 1, 1], dynamic_shared_bytes: 0 };
    let k = module.kernel("k").unwrap();
    let r = with_jit_heat(0, || with_engine(engine, || launch(module, k, &cfg, &params, &HashMap::new(), &mut mem)));
    let (ran, compiled) = r.as_ref().map_or((0, 0), |s| (s.instructions, s.compiled));
    (r.map(|_| ()).map_err(|e| e.to_string()), mem.output, ran, compiled)
}

/// An error without its address: which thread's access faults first is a matter of how the
/// block's warps take turns (each engine's order is one a GPU may show), where it faults and how
/// is not.
fn fault_site(e: &str) -> String {
    match (e.split_once(" at 0x"), e.split_once(" by ")) {
        (Some((what, _)), Some((_, by))) => format!("{what} by {by}"),
        _ => e.to_string(),
    }
}

/// Runs `count` random programs (with loops or without) on the compiled engine and on both
/// references; returns (programs run, of them faulted, instructions run, of them compiled).
fn agree(seed: u64, count: usize, loops: bool, shuffles: bool) -> (usize, usize, u64, u64) {
    let mut g = Rng(seed);
    let (mut ran, mut rejected, mut instructions, mut compiled, mut faulted) = (0, Vec::new(), 0u64, 0u64, 0);
    let mut wrong = Vec::new();
    for n in 0..count {
        let (text, words) = program(&mut g, 24 + n % 40, loops, shuffles);
        let module = match Module::parse(&text) {
            Ok(m) => m,
            Err(e) => {
                rejected.push(e.to_string());
                continue;
            }
        };
        let input: Vec<u8> = (0..THREADS * BLOCKS * words).flat_map(|_| input(&mut g).to_le_bytes()).collect();
        let (got_r, got, got_n, c) = run(&module, &input, words, Engine::Compiled);
        compiled += c;
        instructions += got_n;
        ran += 1;
        // The interpreter proper (per thread) and the warp engine without compiled code.
        for reference in [Engine::Thread, Engine::Warp] {
            let (want_r, want, want_n, _) = run(&module, &input, words, reference);
            if want_r.as_ref().map_err(|e| fault_site(e)) != got_r.as_ref().map_err(|e| fault_site(e)) {
                wrong.push(format!("program {n}: {reference:?} engine {want_r:?}, compiled {got_r:?}\n{text}"));
                break;
            }
            // A launch that faulted leaves what its threads stored before, in an order that
            // differs between engines (as between GPUs): only its error must be the same.
            if got_r.is_err() {
                faulted += 1;
                continue;
            }
            // The warp engine counts what the compiled one does, lane by lane.
            if reference == Engine::Warp && want_n != got_n {
                wrong.push(format!("program {n}: the warp engine ran {want_n} instructions, the compiled one {got_n}\n{text}"));
                break;
            }
            if let Some(at) = (0..want.len() / 8).find(|&w| want[w * 8..w * 8 + 8] != got[w * 8..w * 8 + 8]) {
                let word = |b: &[u8]| u64::from_le_bytes(b[at * 8..at * 8 + 8].try_into().unwrap());
                let (thread, slot) = (at / words, at % words);
                let lane_in: Vec<String> =
                    (0..words).map(|s| format!("{:#x}", u64::from_le_bytes(input[(thread * words + s) * 8..][..8].try_into().unwrap()))).collect();
                wrong.push(format!(
                    "program {n}: thread {thread}, register slot {slot}: {reference:?} engine {:#x}, compiled {:#x}\ninputs {}\n{text}",
                    word(&want),
                    word(&got),
                    lane_in.join(" ")
                ));
                break;
            }
        }
        if wrong.len() >= 3 {
            break;
        }
    }
    assert!(wrong.is_empty(), "{} programs differ:\n{}", wrong.len(), wrong.join("\n\n"));
    // Nearly all programs parse (a form the parser rejects would test nothing).
    assert!(rejected.len() * 20 < ran, "{} of {} programs rejected: {:?}", rejected.len(), ran + rejected.len(), &rejected[..rejected.len().min(3)]);
    (ran, faulted, instructions, compiled)
}

#[test]
fn compiled_segments_compute_what_the_interpreter_computes() {
    let (ran, faulted, _, compiled) = agree(0x5eed_1234_abcd_0001, 400, false, false);
    // The compiled engine ran most of their instructions as compiled code.
    assert!(compiled > 0, "no instruction ran compiled");
    // Some programs fault (a load far outside), most do not.
    assert!(faulted > 0 && faulted * 4 < ran, "{faulted} of {ran} programs faulted");
    eprintln!("{ran} random programs agree ({faulted} fault alike); {compiled} instructions ran compiled");
}

/// Loops run by compiled code lane after lane (each lane's turns, then the next lane's), cut
/// where a lane has run its share, must leave every lane where the lockstep warp does.
#[test]
fn compiled_loops_compute_what_the_interpreter_computes() {
    let (ran, faulted, instructions, compiled) = agree(0x100b_5eed_0000_0002, 160, true, false);
    // Most instructions are the loops' turns, and most of those ran compiled.
    assert!(compiled * 2 > instructions, "{compiled} of {instructions} instructions ran compiled");
    assert!(faulted > 0 && faulted * 3 < ran, "{faulted} of {ran} programs faulted");
    eprintln!("{ran} random programs with loops agree ({faulted} fault alike); {compiled} of {instructions} instructions ran compiled");
}

/// One-instruction kernels over many inputs: out[i] = op(in[i]) (two 32-bit words in, one out).
fn elementwise(op: &str, inputs: &[(u32, u32)], engine: Engine) -> Vec<u32> {
    let text = format!(
        ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 pin, .param .u64 pout)\n{{\n\
         \t.reg .b32 %r<4>;\n\t.reg .b16 %h<2>;\n\t.reg .f32 %f<2>;\n\t.reg .b64 %rd<6>;\n\
         \tmov.u32 %r0, %tid.x;\n\tmov.u32 %r1, %ctaid.x;\n\tmad.lo.u32 %r0, %r1, 256, %r0;\n\
         \tld.param.u64 %rd0, [pin];\n\tld.param.u64 %rd1, [pout];\n\tmul.wide.u32 %rd2, %r0, 8;\n\tadd.s64 %rd3, %rd0, %rd2;\n\
         \tmul.wide.u32 %rd4, %r0, 4;\n\tadd.s64 %rd5, %rd1, %rd4;\n\tld.global.v2.u32 {{%r1, %r2}}, [%rd3];\n\
         \tmov.b32 %f0, %r1;\n\tcvt.u16.u32 %h0, %r1;\n\t{op}\n\tst.global.u32 [%rd5], %r3;\n\tret;\n}}\n"
    );
    let module = Module::parse(&text).unwrap();
    let input: Vec<u8> = inputs.iter().flat_map(|(a, b)| a.to_le_bytes().into_iter().chain(b.to_le_bytes())).collect();
    let mut mem = Buffers { input, output: vec![0; inputs.len() * 4] };
    let params: Vec<u8> = [IN_BASE, OUT_BASE].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cfg = LaunchConfig { grid: [(inputs.len() / 256) as u32, 1, 1], block: [256, 1, 1], dynamic_shared_bytes: 0 };
    let k = module.kernel("k").unwrap();
    let stats = with_jit_heat(0, || with_engine(engine, || launch(&module, k, &cfg, &params, &HashMap::new(), &mut mem))).unwrap();
    assert!(engine != Engine::Compiled || stats.compiled > 0, "{op}: nothing compiled");
    mem.output.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// The compiled f16 conversions and f16x2 arithmetic (done in integer and f32 code, not by the
/// interpreter's functions) on every f16, and on f32s around every rounding boundary of f16.
#[test]
fn compiled_half_precision_matches_the_interpreter_on_every_half() {
    let mut g = Rng(0x0f16_0f16_0f16_0f16);
    // Every f16 (in both halves) with a random partner.
    let halves: Vec<(u32, u32)> = (0..65536u32).map(|h| (h | (g.next() as u32) << 16, g.next() as u32)).collect();
    // f32s near f16's range: every exponent from 2^-27 to 2^17, mantissas with the 13 bits
    // that rounding drops exactly halfway, just below, just above, and random.
    let mut floats = Vec::new();
    for e in (127 - 27)..=(127 + 17u32) {
        for m in 0..256u32 {
            let top = (g.next() as u32 & 0x3ff) << 13;
            for low in [0x1000, 0x0fff, 0x1001, 0, 0x1fff, g.next() as u32 & 0x1fff, m << 5] {
                let sign = (g.next() as u32) << 31;
                floats.push((sign | e << 23 | top | low, 0));
            }
        }
    }
    floats.extend([0x7f80_0000, 0xff80_0000, 0x7fc0_0001, 0x477f_efff, 0x477f_f000, 0x477f_f001, 0x3880_0000, 0x387f_ffff, 0x3300_0000, 0x3300_0001].map(|v| (v, 0)));
    floats.resize(floats.len().next_multiple_of(256), (0, 0));
    let cases: [(&str, &[(u32, u32)]); 5] = [
        ("cvt.f32.f16 %f1, %h0;\n\tmov.b32 %r3, %f1;", &halves),
        ("cvt.rn.f16.f32 %h1, %f0;\n\tcvt.u32.u16 %r3, %h1;", &floats),
        ("add.rn.f16x2 %r3, %r1, %r2;", &halves),
        ("sub.f16x2 %r3, %r1, %r2;", &halves),
        ("mul.rn.f16x2 %r3, %r1, %r2;", &halves),
    ];
    for (op, inputs) in cases {
        let want = elementwise(op, inputs, Engine::Thread);
        let got = elementwise(op, inputs, Engine::Compiled);
        let bad: Vec<String> = (0..inputs.len()).filter(|&i| want[i] != got[i]).take(5).map(|i| format!("{:#x},{:#x}: interpreter {:#x}, compiled {:#x}", inputs[i].0, inputs[i].1, want[i], got[i])).collect();
        assert!(bad.is_empty(), "{op}:\n{}", bad.join("\n"));
    }
}

/// Shuffles between compiled phases (made on the warp's rows once every lane has arrived),
/// among loops and branches.
#[test]
fn compiled_shuffles_compute_what_the_interpreter_computes() {
    let (ran, faulted, instructions, compiled) = agree(0x0054_ff1e_0000_0003, 160, true, true);
    assert!(compiled * 2 > instructions, "{compiled} of {instructions} instructions ran compiled");
    assert!(faulted > 0 && faulted * 3 < ran, "{faulted} of {ran} programs faulted");
    eprintln!("{ran} random programs with shuffles agree ({faulted} fault alike); {compiled} of {instructions} instructions ran compiled");
}

/// A loop whose lanes read what their neighbours stored the turn before: in lockstep every
/// lane loads before any stores, turn after turn. Compiled code runs lane after lane, so it
/// must leave such a loop to the warp engine; the result is checked against that rule computed
/// here.
#[test]
fn a_loop_that_reads_its_neighbours_stores_runs_in_lockstep() {
    const TURNS: u32 = 20;
    let text = format!(
        ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 pin, .param .u64 pout)\n{{\n\
         \t.reg .b32 %t, %c, %n, %v, %x, %nb, %i;\n\t.reg .b64 %out, %a, %b, %o;\n\t.reg .pred %p;\n\
         \tld.param.u64 %out, [pout];\n\tmov.u32 %t, %tid.x;\n\tmov.u32 %c, %ctaid.x;\n\
         \tmad.lo.u32 %i, %c, {THREADS}, %t;\n\tmul.wide.u32 %o, %i, 4;\n\tadd.s64 %a, %out, %o;\n\
         \tadd.u32 %nb, %t, 1;\n\tand.b32 %nb, %nb, 31;\n\tand.b32 %x, %t, -32;\n\tor.b32 %nb, %nb, %x;\n\
         \tmad.lo.u32 %nb, %c, {THREADS}, %nb;\n\tmul.wide.u32 %o, %nb, 4;\n\tadd.s64 %b, %out, %o;\n\
         \tmov.u32 %n, 0;\n$L:\n\tld.global.u32 %v, [%b];\n\tld.global.u32 %x, [%a];\n\tadd.u32 %v, %v, %x;\n\
         \tadd.u32 %v, %v, %t;\n\tst.global.u32 [%a], %v;\n\tadd.u32 %n, %n, 1;\n\tsetp.lt.u32 %p, %n, {TURNS};\n\
         \t@%p bra $L;\n\tret;\n}}\n"
    );
    let module = Module::parse(&text).unwrap();
    // The lockstep result: each turn, every lane's loads, then every lane's store.
    let n = THREADS * BLOCKS;
    let mut want = vec![0xA5A5_A5A5u32; n];
    for _ in 0..TURNS {
        let old = want.clone();
        for (i, w) in want.iter_mut().enumerate() {
            let t = i % THREADS;
            let nb = i - t + (t & !31) + ((t + 1) & 31);
            *w = old[nb].wrapping_add(old[i]).wrapping_add(t as u32);
        }
    }
    let word = |out: &[u8], i: usize| u32::from_le_bytes(out[i * 4..i * 4 + 4].try_into().unwrap());
    for engine in [Engine::Compiled, Engine::Warp] {
        let (r, out, _, _) = run(&module, &[0u8; 8], 1, engine);
        r.unwrap();
        let got: Vec<u32> = (0..n).map(|i| word(&out, i)).collect();
        assert_eq!(got, want, "{engine:?} engine");
    }
}
