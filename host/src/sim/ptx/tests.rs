//! The interpreter on real nvcc output (tests/data/kernels.ptx, from kernels.cu), results
//! checked against the same computation in Rust.

use super::*;
use std::collections::HashMap;

/// Flat test memory: allocations at 0x2000_0000_0000 + 1 MiB * i.
#[derive(Default)]
struct Mem {
    bufs: Vec<Vec<u8>>,
}

const BASE: u64 = 0x2000_0000_0000;
const STRIDE: u64 = 1 << 20;

impl Mem {
    fn alloc(&mut self, data: &[u8]) -> u64 {
        self.bufs.push(data.to_vec());
        BASE + STRIDE * (self.bufs.len() as u64 - 1)
    }

    fn get(&self, addr: u64) -> &[u8] {
        &self.bufs[((addr - BASE) / STRIDE) as usize]
    }
}

impl Memory for Mem {
    fn regions(&mut self) -> Vec<(u64, &mut [u8])> {
        self.bufs.iter_mut().enumerate().map(|(i, b)| (BASE + STRIDE * i as u64, &mut b[..])).collect()
    }
}

fn module() -> Module {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx")).unwrap();
    Module::parse(&text).unwrap()
}

fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain-old-data slices (ints/floats) viewed as bytes for the test's device memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)).to_vec() }
}

fn read<T: Copy + Default>(b: &[u8], n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    // SAFETY: `out` has room for n values of T, copied from at least that many bytes.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), out.as_mut_ptr().cast::<u8>(), n * std::mem::size_of::<T>()) };
    out
}

/// Packs kernel arguments per the kernel's parameter layout.
fn params(k: &Kernel, args: &[u64]) -> Vec<u8> {
    let mut p = vec![0u8; k.param_bytes as usize];
    for (info, a) in k.params.iter().zip(args) {
        let o = info.offset as usize;
        p[o..o + info.size as usize].copy_from_slice(&a.to_le_bytes()[..info.size as usize]);
    }
    p
}

fn run(m: &Module, name: &str, grid: [u32; 3], block: [u32; 3], dyn_shared: u32, args: &[u64], mem: &mut Mem) -> Result<LaunchStats, ExecError> {
    let k = m.kernel(name).unwrap();
    let cfg = LaunchConfig { grid, block, dynamic_shared_bytes: dyn_shared };
    launch(m, k, &cfg, &params(k, args), &HashMap::new(), mem)
}

#[test]
fn vector_add_with_a_partial_last_block() {
    let m = module();
    let n = 1000usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n).map(|i| 3.0 - i as f32).collect();
    let mut mem = Mem::default();
    let (pa, pb, pc) = (mem.alloc(&bytes(&a)), mem.alloc(&bytes(&b)), mem.alloc(&vec![0u8; n * 4]));
    run(&m, "vadd", [4, 1, 1], [256, 1, 1], 0, &[pa, pb, pc, n as u64 - 1], &mut mem).unwrap();
    let c: Vec<f32> = read(mem.get(pc), n);
    for i in 0..n - 1 {
        assert_eq!(c[i], a[i] + b[i], "c[{i}]");
    }
    assert_eq!(c[n - 1], 0.0, "the thread past n must not write");
    let k = m.kernel("vadd").unwrap();
    assert_eq!(k.params.iter().map(|p| (p.offset, p.size)).collect::<Vec<_>>(), vec![(0, 8), (8, 8), (16, 8), (24, 4)]);
    assert_eq!(k.param_bytes, 28);
}

#[test]
fn shared_memory_reduction_with_barriers() {
    let m = module();
    let n = 1000;
    let input: Vec<i32> = (0..n).map(|i| (i * 37 % 101) - 50).collect();
    let mut mem = Mem::default();
    let (pi, po) = (mem.alloc(&bytes(&input)), mem.alloc(&[0u8; 16]));
    run(&m, "block_sum", [4, 1, 1], [256, 1, 1], 0, &[pi, po, n as u64], &mut mem).unwrap();
    let out: Vec<i32> = read(mem.get(po), 4);
    for b in 0..4 {
        let want: i32 = input.iter().skip(b * 256).take(256).sum();
        assert_eq!(out[b], want, "block {b}");
    }
    assert_eq!(m.kernel("block_sum").unwrap().static_shared_bytes, 1024);
}

#[test]
fn dynamic_shared_memory() {
    let m = module();
    let d: Vec<i32> = (0..100).collect();
    let mut mem = Mem::default();
    let p = mem.alloc(&bytes(&d));
    run(&m, "reverse_dyn", [1, 1, 1], [128, 1, 1], 100 * 4, &[p, 100], &mut mem).unwrap();
    let out: Vec<i32> = read(mem.get(p), 100);
    assert_eq!(out, (0..100).rev().collect::<Vec<i32>>());
    // Without the dynamic shared memory the kernel's accesses are out of bounds: an error.
    let err = run(&m, "reverse_dyn", [1, 1, 1], [128, 1, 1], 0, &[p, 100], &mut mem).unwrap_err();
    assert!(matches!(err, ExecError::IllegalAddress { space: "shared", .. }), "{err}");
}

/// The `histogram` kernel (global atomics in a grid-stride loop) over `n` bytes, checked.
fn check_histogram(m: &Module, mem: &mut Mem, n: u32, blocks: u32, threads: u32) {
    let input: Vec<u8> = (0..n).map(|i| (i * 7 + i / 3) as u8).collect();
    let (pi, pb) = (mem.alloc(&input), mem.alloc(&[0u8; 64]));
    run(m, "histogram", [blocks, 1, 1], [threads, 1, 1], 0, &[pi, pb, input.len() as u64], mem).unwrap();
    let bins: Vec<u32> = read(mem.get(pb), 16);
    let mut want = [0u32; 16];
    for v in &input {
        want[(*v % 16) as usize] += 1;
    }
    assert_eq!(bins, want, "{blocks} blocks of {threads}");
}

#[test]
fn atomics_in_a_grid_stride_loop() {
    check_histogram(&module(), &mut Mem::default(), 5000, 3, 64);
}

#[test]
fn integer_and_float_semantics() {
    let m = module();
    for (a, b, x, y) in [(-1000i32, 7i32, 1.5f32, -2.25f32), (123456789, -3, 3.0, 0.1), (-7, 2, -0.5, 7.0)] {
        let mut mem = Mem::default();
        let (pi, pf, po) = (mem.alloc(&bytes(&[a, b])), mem.alloc(&bytes(&[x, y])), mem.alloc(&[0u8; 16 * 8]));
        run(&m, "arith", [1, 1, 1], [1, 1, 1], 0, &[pi, pf, po], &mut mem).unwrap();
        let out: Vec<i64> = read(mem.get(po), 16);
        let ua = a as u32;
        let want: [i64; 16] = [
            (a / b) as i64,
            (a % b) as i64,
            a as i64 * b as i64,
            (ua >> 3) as i64,
            (a >> 3) as i64,
            ua.count_ones() as i64,
            ua.leading_zeros() as i64,
            x.mul_add(y, 1.0) as i64,
            x.mul_add(y, 0.5).to_bits() as i32 as i64,
            (x / y).round_ties_even() as i32 as i64,
            (x as f64 as i64) * 1000,
            (a.min(b) as u32).wrapping_add(ua.max(7)) as i64, // unsigned sum, zero-extended
            ua.reverse_bits() as i64, // unsigned, zero-extended
            (a & 0xffff) as i16 as i64,
            y.sqrt().to_bits() as i32 as i64,
            (a.wrapping_add(300) as u8) as i64,
        ];
        assert_eq!(out, want, "a={a} b={b} x={x} y={y}");
    }
}

#[test]
fn module_variables_and_local_memory() {
    let m = module();
    let g: HashMap<&str, &GlobalVar> = m.globals().iter().map(|g| (g.name.as_str(), g)).collect();
    assert_eq!(g["table_c"].init, bytes(&[10i32, 20, 30, 40]));
    assert_eq!(g["counter_g"].size, 4);
    let mut mem = Mem::default();
    let mut globals = HashMap::new();
    for v in m.globals() {
        globals.insert(v.name.clone(), mem.alloc(&v.init));
    }
    let out = mem.alloc(&[0u8; 32 * 4]);
    let k = m.kernel("globals").unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [32, 1, 1], dynamic_shared_bytes: 0 };
    launch(&m, k, &cfg, &params(k, &[out]), &globals, &mut mem).unwrap();
    let got: Vec<i32> = read(mem.get(out), 32);
    assert_eq!(got, (0..32).map(|t| [10, 20, 30, 40][t % 4]).collect::<Vec<_>>());
    let counter: Vec<i32> = read(mem.get(globals["counter_g"]), 1);
    assert_eq!(counter[0], 32, "one atomicAdd per thread");

    let k = m.kernel("local_array").unwrap();
    assert!(k.local_bytes >= 128);
    run(&m, "local_array", [1, 1, 1], [32, 1, 1], 0, &[out, 5], &mut mem).unwrap();
    let got: Vec<i32> = read(mem.get(out), 32);
    for t in 0..32 {
        assert_eq!(got[t], ((t * 7 + 5) % 32) as i32 * 5 + t as i32, "thread {t}");
    }
}

#[test]
fn faults_and_endless_loops_are_errors() {
    let m = module();
    let mut mem = Mem::default();
    let p = mem.alloc(&[0u8; 64]);
    let err = run(&m, "oob", [1, 1, 1], [1, 1, 1], 0, &[p], &mut mem).unwrap_err();
    match &err {
        ExecError::IllegalAddress { addr, space, at, .. } => {
            assert_eq!(*addr, p + (4 << 24));
            assert_eq!(*space, "global");
            assert!(at.contains("st.global") && at.contains("oob"), "{at}");
        }
        e => panic!("{e}"),
    }
    // Unsupported instructions name themselves (the kernel is refused when looked up).
    let text = ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k()\n{\n\ttex.cube.v4.f32.f32 {%f1,%f1,%f1,%f1}, [t, {%f1,%f1,%f1,%f1}];\n\tret;\n}\n";
    let text = text.replace("{\n\ttex", "{\n\t.reg .f32 %f<2>;\n\t.reg .b32 %r<2>;\n\t.reg .b64 t;\n\ttex");
    let m2 = Module::parse(&text).unwrap();
    assert!(m2.kernel("k").is_none());
    let (err, _) = m2.unsupported("k").unwrap();
    assert!(err.to_string().contains("tex.cube.v4.f32.f32"), "{err}");
}

#[test]
fn the_instruction_budget_stops_a_spinning_kernel() {
    let m = module();
    let mut mem = Mem::default();
    let p = mem.alloc(&[0u8; 4]);
    let k = m.kernel("spin").unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [1, 1, 1], dynamic_shared_bytes: 0 };
    // A small budget keeps the test fast; the real launch uses INSTRUCTION_BUDGET.
    let err = exec::launch_with_budget(&m, k, &cfg, &params(k, &[p]), &HashMap::new(), &mut mem, 100_000).unwrap_err();
    assert_eq!(err, ExecError::Timeout(100_000));
}

#[test]
fn hostile_ptx_is_rejected_without_panicking() {
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx")).unwrap();
    // Every prefix, and a few corruptions, must parse or fail cleanly.
    for n in (0..good.len()).step_by(97) {
        let _ = Module::parse(&good[..n]);
    }
    for bad in [
        ".visible .entry k(.param .u64 p) { .reg .b32 %r<99999999>; ret; }",
        ".visible .entry k() { .shared .b8 s[999999999]; ret; }",
        ".visible .entry k() { .local .b8 s[999999999999]; ret; }",
        ".visible .entry k() { bra $nowhere; }",
        ".visible .entry k() { mov.u32 %r1, 1; }",
        ".global .b8 g[18446744073709551615];",
        "}}}{{{",
    ] {
        assert!(Module::parse(bad).is_err(), "accepted: {bad}");
    }
}

/// Reference product in f32 with the same summation order as the kernel (k ascending, fused).
pub(crate) fn matmul_reference(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    for r in 0..n {
        for col in 0..n {
            let mut acc = 0f32;
            for k in 0..n {
                acc = a[r * n + k].mul_add(b[k * n + col], acc);
            }
            c[r * n + col] = acc;
        }
    }
    c
}

#[test]
fn tiled_matmul_with_partial_tiles() {
    let m = module();
    let n = 37usize; // not a multiple of the tile
    let a: Vec<f32> = (0..n * n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i * 5) % 11) as f32 * 0.5).collect();
    let mut mem = Mem::default();
    let (pa, pb, pc) = (mem.alloc(&bytes(&a)), mem.alloc(&bytes(&b)), mem.alloc(&vec![0u8; n * n * 4]));
    let g = n.div_ceil(16) as u32;
    run(&m, "matmul_tiled", [g, g, 1], [16, 16, 1], 0, &[pa, pb, pc, n as u64], &mut mem).unwrap();
    let c: Vec<f32> = read(mem.get(pc), n * n);
    assert_eq!(c, matmul_reference(&a, &b, n));
}

/// What libraries' PTX contains beyond nvcc's plain output (CUB, via CuPy): pointer-parameter
/// attributes, `[reg+-off]` addresses, inline-asm `{ }` blocks declaring their own registers (after a label, and the
/// same name twice), and, in a module of many kernels, one the interpreter cannot run, which
/// fails alone when looked up.
#[test]
fn library_ptx_blocks_pointer_params_and_one_malformed_kernel() {
    let text = r#"
.version 8.8
.target sm_90
.address_size 64
.visible .entry copy_plus(.param .u64 .ptr .global .align 1 copy_plus_param_0, .param .u64 .ptr .align 4 copy_plus_param_1)
{
.reg .b64 %rd<5>;
.reg .b32 %r<3>;
.reg .b16 %rs<2>;
ld.param.u64 %rd1, [copy_plus_param_0];
ld.param.u64 %rd2, [copy_plus_param_1];
cvta.to.global.u64 %rd3, %rd1;
cvta.to.global.u64 %rd4, %rd2;
mov.u32 %r1, 7;
$L__BB0_1:
{ .reg .u8 datum; ld.global.u8 datum, [%rd3]; cvt.u16.u8 %rs1, datum;}
{ .reg .b32 datum; mov.b32 datum, %r1; add.s32 %r2, datum, 1;}
cvt.u32.u16 %r1, %rs1;
add.s32 %r1, %r1, %r2;
add.s64 %rd4, %rd4, 4;
st.global.u32 [%rd4+-4], %r1;
ret;
}
.visible .entry malformed(.param .u64 p)
{
.reg .b16 %rs<3>;
.reg .f32 %f<3>;
cvt.rn.f32 %f1, %f2;
ret;
}
"#;
    let m = Module::parse(text).unwrap();
    let k = m.kernel("copy_plus").unwrap();
    assert_eq!(k.params.iter().map(|p| (p.offset, p.size)).collect::<Vec<_>>(), vec![(0, 8), (8, 8)]);
    let mut mem = Mem::default();
    let (src, dst) = (mem.alloc(&[5u8]), mem.alloc(&[0u8; 4]));
    run(&m, "copy_plus", [1, 1, 1], [1, 1, 1], 0, &[src, dst], &mut mem).unwrap();
    assert_eq!(read::<u32>(mem.get(dst), 1), [5 + 7 + 1]);
    assert!(m.kernel("malformed").is_none());
    let (why, rejection) = m.unsupported("malformed").expect("the rejected kernel is known by name");
    assert!(why.to_string().contains("cvt needs two types"), "{why}");
    assert_eq!(rejection, Rejection::Invalid);
    assert_eq!(m.kernel_names().collect::<Vec<_>>(), ["copy_plus", "malformed"]);
    // Alone, it fails the module.
    assert!(Module::parse(&text[text.find(".visible .entry malformed").unwrap()..]).is_err());
}

/// CUDA's definition of each shuffle: the source lane, or None where CUDA leaves the value
/// undefined (the source lane is not in the mask).
fn shfl_source(case: usize, lane: usize, active: usize) -> Option<usize> {
    let in_seg = |w: usize, j: usize| j / w == lane / w;
    let j = match case {
        0 => if lane % 32 >= 3 { lane - 3 } else { lane },
        1 => if lane + 5 < 32 { lane + 5 } else { lane },
        2 => lane ^ 6,
        3 => (lane * 7) % active,
        4 => if lane % 8 >= 1 { lane - 1 } else { lane },
        5 => if lane % 16 + 2 < 16 { lane + 2 } else { lane },
        6 => (lane / 4) * 4 + 3,
        _ => {
            let j = lane ^ 1;
            if in_seg(2, j) { j } else { lane }
        }
    };
    (j < active).then_some(j)
}

#[test]
fn warp_shuffles_all_modes_widths_and_partial_masks() {
    let m = module();
    let input: Vec<i32> = (0..32).map(|i| i * 10 + 1).collect();
    for active in [32usize, 20, 7] {
        let mut mem = Mem::default();
        let (pi, po) = (mem.alloc(&bytes(&input)), mem.alloc(&vec![0u8; 8 * 32 * 4]));
        run(&m, "shuffles", [1, 1, 1], [32, 1, 1], 0, &[pi, po, active as u64], &mut mem).unwrap();
        let out: Vec<i32> = read(mem.get(po), 8 * 32);
        for case in 0..8 {
            for lane in 0..active {
                if let Some(j) = shfl_source(case, lane, active) {
                    assert_eq!(out[case * 32 + lane], input[j], "case {case}, lane {lane}, {active} active lanes");
                }
            }
        }
    }
}

#[test]
fn warp_votes_ballots_and_reductions() {
    let m = module();
    let input: Vec<i32> = (0..64).map(|t| ((t * 13) % 17) - 8).collect();
    let mut mem = Mem::default();
    let (pi, po) = (mem.alloc(&bytes(&input)), mem.alloc(&[0u8; 2 * 5 * 4]));
    run(&m, "votes", [1, 1, 1], [64, 1, 1], 0, &[pi, po], &mut mem).unwrap();
    let out: Vec<u32> = read(mem.get(po), 10);
    for w in 0..2 {
        let v = &input[w * 32..w * 32 + 32];
        let ballot = v.iter().enumerate().filter(|(_, &x)| x > 0).fold(0u32, |b, (l, _)| b | 1 << l);
        let want = [ballot, 1, v.contains(&7) as u32, v.iter().map(|&x| x as u32).fold(0u32, u32::wrapping_add), *v.iter().max().unwrap() as u32];
        assert_eq!(&out[w * 5..w * 5 + 5], &want, "warp {w}");
    }
}

#[test]
fn block_scan_with_warp_shuffles() {
    let m = module();
    let n = 1000usize;
    let input: Vec<i32> = (0..n as i32).map(|i| (i * 7) % 23 - 11).collect();
    let mut mem = Mem::default();
    let (pi, po) = (mem.alloc(&bytes(&input)), mem.alloc(&vec![0u8; n * 4]));
    run(&m, "warp_scan", [4, 1, 1], [256, 1, 1], 0, &[pi, po, n as u64], &mut mem).unwrap();
    let out: Vec<i32> = read(mem.get(po), n);
    for (b, chunk) in input.chunks(256).enumerate() {
        let mut acc = 0;
        for (k, x) in chunk.iter().enumerate() {
            acc += x;
            assert_eq!(out[b * 256 + k], acc, "element {}", b * 256 + k);
        }
    }
}

/// A shuffle whose mask names a lane that never arrives (it waits at a block barrier) is a
/// deadlock: an error naming the instruction, not a hang.
#[test]
fn a_shuffle_waiting_for_a_lane_at_a_barrier_is_an_error() {
    let text = r#"
.version 8.8
.target sm_90
.address_size 64
.visible .entry k(.param .u64 p)
{
.reg .pred %p<2>;
.reg .b32 %r<4>;
mov.u32 %r1, %tid.x;
setp.eq.u32 %p1, %r1, 0;
@%p1 bra $L_bar;
shfl.sync.idx.b32 %r2, %r1, 0, 31, -1;
ret;
$L_bar:
bar.sync 0;
ret;
}
"#;
    let m = Module::parse(text).unwrap();
    let err = run(&m, "k", [1, 1, 1], [32, 1, 1], 0, &[0], &mut Mem::default()).unwrap_err();
    assert!(matches!(&err, ExecError::BarrierDeadlock(s) if s.contains("shfl.sync.idx.b32")), "{err}");
}

#[test]
fn device_printf_formats_each_threads_call_in_order() {
    let m = module();
    let mut mem = Mem::default();
    // The format strings are module variables ($str).
    let globals: HashMap<String, u64> = m.globals().iter().map(|v| (v.name.clone(), mem.alloc(&v.init))).collect();
    let name = mem.alloc(b"vgpu\0");
    let k = m.kernel("say").unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [8, 1, 1], dynamic_shared_bytes: 0 };
    let stats = launch(&m, k, &cfg, &params(k, &[name, 1.5f32.to_bits() as u64]), &globals, &mut mem).unwrap();
    assert_eq!(
        String::from_utf8(stats.output).unwrap(),
        "thread 0 of vgpu:  0.00 0 a beef\nthread 1 of vgpu:  1.50 1099511627776 b bef0\nthread 2 of vgpu:  3.00 2199023255552 c bef1\n"
    );
}

#[test]
fn device_function_calls_recursion_and_local_frames() {
    let m = module();
    let mut mem = Mem::default();
    let n = 40usize;
    let (out, fout) = (mem.alloc(&vec![0u8; n * 3 * 4]), mem.alloc(&vec![0u8; n * 4]));
    run(&m, "calls", [1, 1, 1], [n as u32, 1, 1], 0, &[out, fout], &mut mem).unwrap();
    let got: Vec<i32> = read(mem.get(out), n * 3);
    let fgot: Vec<f32> = read(mem.get(fout), n);
    fn fib(n: i32) -> i32 {
        if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
    }
    for t in 0..n as i32 {
        let sum: i32 = (0..6).map(|i| (t + i) * (i + 1)).sum();
        let fsum: f32 = (0..8).rev().map(|i| (t + i) as f32 * 0.5).sum();
        assert_eq!(&got[t as usize * 3..t as usize * 3 + 3], &[2 * t, fib(t % 12), sum], "thread {t}");
        assert_eq!(fgot[t as usize], fsum, "thread {t}");
    }
}

/// A call whose callee has no body (an .extern function other than vprintf) is an error naming it.
#[test]
fn a_call_to_a_function_without_a_body_is_an_error_naming_it() {
    let text = r#"
.version 8.8
.target sm_90
.address_size 64
.extern .func (.param .b32 func_retval0) elsewhere(.param .b32 elsewhere_param_0);
.visible .entry k(.param .u64 p)
{
.reg .b32 %r<3>;
{ .param .b32 param0; st.param.b32 [param0+0], %r1; .param .b32 retval0;
call.uni (retval0), elsewhere, (param0);
ld.param.b32 %r2, [retval0+0]; }
ret;
}
"#;
    let m = Module::parse(text).unwrap();
    let err = run(&m, "k", [1, 1, 1], [1, 1, 1], 0, &[0], &mut Mem::default()).unwrap_err();
    assert!(matches!(&err, ExecError::Unsupported(s) if s.contains("call to elsewhere")), "{err}");
}

#[test]
fn packed_half_arithmetic_lane_by_lane() {
    use half::{bf16, f16};
    let m = module();
    let n = 100usize;
    let val = |i: usize, k: usize| 0.25 + ((i * 7 + k * 3) % 29) as f32 * 0.125;
    let pack = |lo: f32, hi: f32| (f16::from_f32(lo).to_bits() as u32) | (f16::from_f32(hi).to_bits() as u32) << 16;
    let (a, b, c): (Vec<u32>, Vec<u32>, Vec<u32>) = (
        (0..n).map(|i| pack(val(i, 0), -val(i, 1))).collect(),
        (0..n).map(|i| pack(val(i, 2), val(i, 3))).collect(),
        (0..n).map(|i| pack(-val(i, 4), val(i, 5))).collect(),
    );
    let mut mem = Mem::default();
    let (pa, pb, pc, po) = (mem.alloc(&bytes(&a)), mem.alloc(&bytes(&b)), mem.alloc(&bytes(&c)), mem.alloc(&vec![0u8; n * 16]));
    run(&m, "half2_ops", [1, 1, 1], [128, 1, 1], 0, &[pa, pb, pc, po, n as u64], &mut mem).unwrap();
    let out: Vec<u32> = read(mem.get(po), n * 4);
    let lanes = |v: u32| [f16::from_bits(v as u16).to_f64(), f16::from_bits((v >> 16) as u16).to_f64()];
    for i in 0..n {
        let (x, y, z) = (lanes(a[i]), lanes(b[i]), lanes(c[i]));
        for l in 0..2 {
            // Each result is the exact value rounded once to f16 (exact in f64 for these inputs).
            let want = [x[l] + y[l], x[l] * y[l], x[l] * y[l] + z[l], -(x[l] - z[l])].map(|v| f16::from_f64(v).to_bits());
            let got: Vec<u16> = (0..4).map(|k| (out[i * 4 + k] >> (16 * l)) as u16).collect();
            assert_eq!(got, want, "element {i} lane {l}");
        }
    }
    let bpack = |lo: f32, hi: f32| (bf16::from_f32(lo).to_bits() as u32) | (bf16::from_f32(hi).to_bits() as u32) << 16;
    let (a, b): (Vec<u32>, Vec<u32>) = ((0..n).map(|i| bpack(val(i, 0), val(i, 1))).collect(), (0..n).map(|i| bpack(val(i, 2), -val(i, 3) * 100.0)).collect());
    let (pa, pb, po) = (mem.alloc(&bytes(&a)), mem.alloc(&bytes(&b)), mem.alloc(&vec![0u8; n * 4]));
    run(&m, "bf162_add", [1, 1, 1], [128, 1, 1], 0, &[pa, pb, po, n as u64], &mut mem).unwrap();
    let out: Vec<u32> = read(mem.get(po), n);
    for i in 0..n {
        for l in 0..2 {
            let lane = |v: u32| bf16::from_bits((v >> (16 * l)) as u16).to_f64();
            assert_eq!((out[i] >> (16 * l)) as u16, bf16::from_f64(lane(a[i]) + lane(b[i])).to_bits(), "bf16 element {i} lane {l}");
        }
    }
}

/// Many blocks, run on several host threads, hammering the same 16 global counters with
/// atomics: every increment counts. Each block's printf lines stay together.
#[test]
fn blocks_on_several_host_threads_keep_atomics_exact_and_printf_lines_together() {
    let m = module();
    let mut mem = Mem::default();
    check_histogram(&m, &mut mem, 200_000, 64, 128);

    let globals: HashMap<String, u64> = m.globals().iter().map(|v| (v.name.clone(), mem.alloc(&v.init))).collect();
    let name = mem.alloc(b"b\0");
    let k = m.kernel("say").unwrap();
    let cfg = LaunchConfig { grid: [40, 1, 1], block: [64, 1, 1], dynamic_shared_bytes: 0 };
    let out = launch(&m, k, &cfg, &params(k, &[name, 1.0f32.to_bits() as u64]), &globals, &mut mem).unwrap().output;
    let lines: Vec<String> = String::from_utf8(out).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 40 * 3);
    for (n, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("thread {} of b:", n % 3)), "line {n}: {l}");
    }
}

/// A block sum whose __shfl_down_sync reduction and __syncthreads run inside __noinline__
/// device functions: lanes park inside a callee and meet there.
#[test]
fn warp_collectives_and_barriers_inside_device_functions() {
    let m = module();
    let n = 300usize;
    let input: Vec<i32> = (0..n as i32).map(|i| (i * 13) % 29 - 14).collect();
    for (grid, block) in [(4u32, 96u32), (10, 32), (1, 320)] {
        let mut mem = Mem::default();
        let (pi, po) = (mem.alloc(&bytes(&input)), mem.alloc(&vec![0u8; grid as usize * 4]));
        run(&m, "reduce_in_calls", [grid, 1, 1], [block, 1, 1], 0, &[pi, po, n as u64], &mut mem).unwrap();
        let out: Vec<i32> = read(mem.get(po), grid as usize);
        for (b, got) in out.iter().enumerate() {
            let want: i32 = input.iter().skip(b * block as usize).take(block as usize).sum();
            assert_eq!(*got, want, "block {b} of {grid}x{block}");
        }
    }
}

#[test]
fn block_reduction_ending_in_shfl_down() {
    let m = module();
    let n = 1200usize;
    // Small integers: every order of summation gives the exact same float.
    let input: Vec<f32> = (0..n).map(|i| ((i * 7) % 19) as f32 - 9.0).collect();
    let mut mem = Mem::default();
    let (pi, po) = (mem.alloc(&bytes(&input)), mem.alloc(&[0u8; 5 * 4]));
    run(&m, "shfl_down_reduce", [5, 1, 1], [256, 1, 1], 0, &[pi, po, n as u64], &mut mem).unwrap();
    let out: Vec<f32> = read(mem.get(po), 5);
    for (b, got) in out.iter().enumerate() {
        let want: f32 = input.iter().skip(b * 256).take(256).sum();
        assert_eq!(*got, want, "block {b}");
    }
}

/// Source lanes past 31 or past the width wrap (PTX uses b[4:0]), the in-range predicate of
/// down and segmented up shuffles, activemask, and two half-warps voting apart.
#[test]
fn shuffle_lane_wrapping_predicates_and_half_warp_ballots() {
    let m = module();
    let input: Vec<i32> = (0..32).map(|i| i * 7 + 3).collect();
    let mut mem = Mem::default();
    let (pi, po) = (mem.alloc(&bytes(&input)), mem.alloc(&vec![0u8; 8 * 32 * 4]));
    run(&m, "shfl_wrap_and_pred", [1, 1, 1], [32, 1, 1], 0, &[pi, po], &mut mem).unwrap();
    let out: Vec<i32> = read(mem.get(po), 8 * 32);
    let ballot = |lanes: std::ops::Range<usize>, bit: i32| lanes.filter(|&l| input[l] & bit != 0).fold(0u32, |b, l| b | 1 << l) as i32;
    for l in 0..32 {
        let row = |r: usize| out[r * 32 + l];
        assert_eq!(row(0), input[(l + 37) % 32], "idx lane+37, lane {l}");
        assert_eq!(row(1), input[l / 8 * 8 + (l + 9) % 8], "idx lane+9 width 8, lane {l}");
        assert_eq!((row(2), row(3)), if l + 3 < 32 { (input[l + 3], 1) } else { (input[l], 0) }, "down 3, lane {l}");
        assert_eq!((row(4), row(5)), if l % 8 >= 2 { (input[l - 2], 1) } else { (input[l], 0) }, "up 2 in 8-lane segments, lane {l}");
        assert_eq!(row(6), -1, "activemask, lane {l}");
        assert_eq!(row(7), if l < 16 { ballot(0..16, 1) } else { ballot(16..32, 2) }, "ballot, lane {l}");
    }
}

fn warp_ptx(body: &str) -> Module {
    let text = format!(
        ".version 8.8\n.target sm_90\n.address_size 64\n.visible .entry k(.param .u64 p)\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<8>;\n.reg .b64 %rd<4>;\n{body}\n}}\n"
    );
    Module::parse(&text).unwrap()
}

/// `__syncwarp()` in both arms of a branch synchronizes the warp (sm_70 on); shuffles at two
/// different instructions are not exchanged by the sim: an error naming one, not a hang.
#[test]
fn bar_warp_sync_in_both_arms_of_a_branch_and_split_shuffles() {
    let branch = |a: &str, b: &str| {
        format!(
            "ld.param.u64 %rd1, [p];\nmov.u32 %r1, %tid.x;\nmul.wide.u32 %rd2, %r1, 4;\nadd.s64 %rd3, %rd1, %rd2;\nmov.u32 %r2, 0;\n\
             setp.lt.u32 %p1, %r1, 16;\n@%p1 bra $L_a;\n{b}\nbra $L_end;\n$L_a:\n{a}\n$L_end:\nst.global.u32 [%rd3], %r2;\nret;"
        )
    };
    let m = warp_ptx(&branch("bar.warp.sync -1;\nadd.u32 %r2, %r1, 100;", "bar.warp.sync -1;\nadd.u32 %r2, %r1, 200;"));
    let mut mem = Mem::default();
    let p = mem.alloc(&[0u8; 32 * 4]);
    run(&m, "k", [1, 1, 1], [32, 1, 1], 0, &[p], &mut mem).unwrap();
    let want: Vec<u32> = (0..32).map(|t| t + if t < 16 { 100 } else { 200 }).collect();
    assert_eq!(read::<u32>(mem.get(p), 32), want);

    let m = warp_ptx(&branch("shfl.sync.idx.b32 %r2, %r1, 0, 31, -1;", "shfl.sync.idx.b32 %r2, %r1, 1, 31, -1;"));
    let err = run(&m, "k", [1, 1, 1], [32, 1, 1], 0, &[p], &mut mem).unwrap_err();
    assert!(matches!(&err, ExecError::BarrierDeadlock(s) if s.contains("shfl.sync.idx.b32") && s.contains("another warp collective")), "{err}");
}

/// A lane executing a collective whose membermask leaves it out is undefined in PTX: an error.
#[test]
fn a_membermask_without_the_executing_lane_is_an_error() {
    let m = warp_ptx("mov.u32 %r1, %tid.x;\nshfl.sync.bfly.b32 %r2, %r1, 1, 31, 0xfffffffe;\nret;");
    let err = run(&m, "k", [1, 1, 1], [32, 1, 1], 0, &[0], &mut Mem::default()).unwrap_err();
    assert!(matches!(&err, ExecError::Undefined(s) if s.contains("lane 0") && s.contains("0xfffffffe")), "{err}");
    // vote and bar.warp.sync too; lanes that exited before do not count as missing.
    let m = warp_ptx("mov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 8;\n@%p1 ret;\nbar.warp.sync 0xff;\nvote.sync.ballot.b32 %r2, %p1, 0xf0;\nret;");
    let err = run(&m, "k", [1, 1, 1], [32, 1, 1], 0, &[0], &mut Mem::default()).unwrap_err();
    assert!(matches!(&err, ExecError::Undefined(s) if s.contains("vote.sync.ballot.b32") && s.contains("lane 0")), "{err}");
}

#[test]
fn device_printf_conversions_lengths_and_flags() {
    let m = module();
    let mut mem = Mem::default();
    let globals: HashMap<String, u64> = m.globals().iter().map(|v| (v.name.clone(), mem.alloc(&v.init))).collect();
    let s = mem.alloc(b"vgpu\0");
    let k = m.kernel("say_more").unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [4, 1, 1], dynamic_shared_bytes: 0 };
    let args = [s, 12345.678f64.to_bits(), 2.5f32.to_bits() as u64, 0x1234567890ab, 0x2000_0010_0000];
    let stats = launch(&m, k, &cfg, &params(k, &args), &globals, &mut mem).unwrap();
    // What glibc's printf prints for the same call.
    assert_eq!(
        String::from_utf8(stats.output).unwrap(),
        "-7|4000000000|BEEF|10|vgpu  |1.234568e+04|2.5|0x200000100000|20015998341291|1234567890ab|0002.500|+5|1.2e+04|Z   |vgp|010|%\n"
    );
}

/// vote.sync.uni and .all over a negated predicate, per warp: uniform true, mixed, uniform false.
#[test]
fn vote_uni_and_negated_predicates() {
    let m = warp_ptx(
        "ld.param.u64 %rd1, [p];\nmov.u32 %r1, %tid.x;\nmul.wide.u32 %rd2, %r1, 4;\nadd.s64 %rd3, %rd1, %rd2;\n\
         setp.lt.u32 %p1, %r1, 40;\nvote.sync.uni.pred %p2, %p1, -1;\nvote.sync.all.pred %p3, !%p1, -1;\n\
         selp.u32 %r2, 1, 0, %p2;\nselp.u32 %r3, 2, 0, %p3;\nor.b32 %r4, %r2, %r3;\nst.global.u32 [%rd3], %r4;\nret;",
    );
    let mut mem = Mem::default();
    let p = mem.alloc(&[0u8; 96 * 4]);
    run(&m, "k", [1, 1, 1], [96, 1, 1], 0, &[p], &mut mem).unwrap();
    let want: Vec<u32> = (0..96).map(|t| [1, 0, 3][t / 32]).collect();
    assert_eq!(read::<u32>(mem.get(p), 96), want);
}

/// A kernel's shared variables, its callee's and the dynamic shared memory do not overlap.
#[test]
fn shared_memory_of_kernel_callee_and_dynamic_are_distinct() {
    let m = module();
    let k = m.kernel("shared_layout").unwrap();
    assert_eq!(k.static_shared_bytes, 512, "the kernel's 256 bytes, then its callee's 256");
    let mut mem = Mem::default();
    let p = mem.alloc(&[0u8; 64 * 4]);
    run(&m, "shared_layout", [1, 1, 1], [64, 1, 1], 64 * 4, &[p], &mut mem).unwrap();
    let want: Vec<i32> = (0..64).map(|t| (63 - t) * 3 + ((t + 1) % 64) * 5 + 1000 + (t + 2) % 64).collect();
    assert_eq!(read::<i32>(mem.get(p), 64), want);
    // Kernels that call no function with shared variables keep their own size.
    assert_eq!(m.kernel("block_sum").unwrap().static_shared_bytes, 1024);
}

#[test]
fn a_kernel_reaching_an_instruction_the_sim_lacks_is_rejected_at_lookup_naming_it() {
    // Directly, and through a device function; the module's other kernel still runs, and a
    // module made only of such kernels loads (each lookup fails, not the load).
    let text = r#"
.version 8.0
.target sm_80
.address_size 64
.func helper(.param .b32 x)
{
.reg .b32 %r<3>;
.reg .pred %p<2>;
ld.param.b32 %r1, [x];
bar.red.popc.u32 %r2, 0, 1, %p1;
ret;
}
.visible .entry direct(.param .u64 p)
{
.reg .b32 %r<3>;
bar.arrive 1, 64;
ret;
}
.visible .entry indirect(.param .u64 p)
{
.param .b32 a;
st.param.b32 [a], 1;
call helper, (a);
ret;
}
.visible .entry fine(.param .u64 p)
{
ret;
}
"#;
    let m = Module::parse(text).unwrap();
    assert!(m.kernel("fine").is_some());
    for (name, inst) in [("direct", "bar.arrive 1, 64"), ("indirect", "bar.red.popc.u32")] {
        assert!(m.kernel(name).is_none(), "{name}");
        let (why, rejection) = m.unsupported(name).unwrap();
        assert_eq!(rejection, Rejection::Unsupported, "{name}");
        assert!(why.message.contains(inst) && why.message.contains("does not implement"), "{name}: {why}");
    }
    assert!(m.unsupported("indirect").unwrap().0.message.contains("in helper"));
    let alone = Module::parse(&text[..text.find(".visible .entry indirect").unwrap()]).unwrap();
    assert_eq!(alone.unsupported("direct").unwrap().1, Rejection::Unsupported);
}

/// Performance directives bound the block (`.maxntid`, `.reqntid`) and the register count
/// (`.maxnreg`); the register estimate is at least what must be live at once: here ten 64-bit
/// values summed only after all are loaded (20 32-bit registers), and no more than those plus
/// the few the loads' addresses need.
#[test]
fn kernel_attributes_from_directives_and_live_registers() {
    let mut loads = String::new();
    for k in 0..10 {
        loads += &format!("\tld.global.u64 %rd{}, [%rd0+{}];\n", k + 1, 8 * k);
    }
    let mut sums = String::new();
    for k in 2..=10 {
        sums += &format!("\tadd.s64 %rd1, %rd1, %rd{k};\n");
    }
    let body = format!("{{\n\t.reg .b64 %rd<12>;\n\tld.param.u64 %rd0, [p];\n{loads}{sums}\tst.global.u64 [%rd0], %rd1;\n\tret;\n}}\n");
    let text = format!(
        ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry plain(.param .u64 p)\n{body}.visible .entry bounded(.param .u64 p) .maxntid 128, 1, 1 .maxnreg 12\n{body}.visible .entry exact(.param .u64 p) .reqntid 32, 2\n{body}"
    );
    let m = Module::parse(&text).unwrap();
    let plain = m.kernel("plain").unwrap();
    assert_eq!((plain.max_threads, plain.req_block), (1024, None));
    assert!((20..=26).contains(&plain.regs), "estimate {} for 10 live 64-bit values", plain.regs);
    let bounded = m.kernel("bounded").unwrap();
    assert_eq!((bounded.max_threads, bounded.regs), (128, 12));
    let exact = m.kernel("exact").unwrap();
    assert_eq!((exact.max_threads, exact.req_block), (64, Some([32, 2, 1])));
}

/// Line directives end at their line's end, also after a label on the line before (NVVM's
/// debug builds: `$L__func_begin0:` then `.loc 1 4 0`): the instruction after them runs. Once
/// it was swallowed into the directive, silently (numba's kernel exceptions read their flag
/// from a parameter loaded right there).
#[test]
fn an_instruction_after_a_label_and_a_line_directive_runs() {
    let text = ".version 8.0\n.target sm_90, debug\n.address_size 64\n.file 1 \"k.py\"\n.visible .entry k(.param .u64 p, .param .u32 v)\n{\n\t.reg .b32 %r<3>;\n\t.reg .b64 %rd<3>;\n\t.loc 1 4 0\n$L__func_begin0:\n\t.loc 1 4 0\n\n\n\tld.param.u32 %r1, [v];\n$L__tmp0:\n\t.loc 1 5 1\n\tadd.s32 %r2, %r1, 1;\n\tld.param.u64 %rd1, [p];\n\tst.global.u32 [%rd1], %r2;\n\tret;\n$L__func_end0:\n}\n";
    let m = Module::parse(text).unwrap();
    let mut mem = Mem::default();
    let out = mem.alloc(&[0u8; 4]);
    run(&m, "k", [1, 1, 1], [1, 1, 1], 0, &[out, 41], &mut mem).unwrap();
    assert_eq!(read::<u32>(mem.get(out), 1), [42]);
}

/// Cooperative groups' grid-wide barrier (what numba and nvcc emit for `grid.sync()`): each
/// thread writes its index, the grid synchronizes, then each reads the next thread's, which for
/// the last thread of a block belongs to the next block. Without all blocks waiting for each
/// other, a block would read the next block's value before it was written (0).
const GRID_SYNC_PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64
.extern .func (.param .b64 func_retval0) cudaCGGetIntrinsicHandle(.param .b32 p0);
.extern .func (.param .b32 func_retval0) cudaCGSynchronize(.param .b64 p0, .param .b32 p1);
.visible .entry next_after_sync(.param .u64 a, .param .u64 b, .param .u32 n) {
  .reg .b32 %r<8>; .reg .b64 %rd<12>;
  ld.param.u64 %rd1, [a]; ld.param.u64 %rd2, [b]; ld.param.u32 %r1, [n];
  mov.u32 %r2, %ctaid.x; mov.u32 %r3, %ntid.x; mov.u32 %r4, %tid.x;
  mad.lo.s32 %r5, %r2, %r3, %r4;
  mul.wide.u32 %rd3, %r5, 4; add.s64 %rd4, %rd1, %rd3;
  add.s32 %r6, %r5, 1; st.global.u32 [%rd4], %r6;
  { .param .b32 param0; st.param.b32 [param0], 1;
    .param .b64 retval0;
    call.uni (retval0), cudaCGGetIntrinsicHandle, (param0);
    ld.param.b64 %rd5, [retval0]; }
  { .param .b64 param0; st.param.b64 [param0], %rd5;
    .param .b32 param1; st.param.b32 [param1], 0;
    .param .b32 retval0;
    call.uni (retval0), cudaCGSynchronize, (param0, param1);
    ld.param.b32 %r7, [retval0]; }
  add.s32 %r6, %r5, 1; rem.u32 %r6, %r6, %r1;
  mul.wide.u32 %rd6, %r6, 4; add.s64 %rd7, %rd1, %rd6; ld.global.u32 %r6, [%rd7];
  add.s64 %rd8, %rd2, %rd3; add.s32 %r6, %r6, %r7; st.global.u32 [%rd8], %r6;
  ret;
}
"#;

#[test]
fn a_grid_sync_waits_for_every_block() {
    let m = Module::parse(GRID_SYNC_PTX).unwrap();
    assert!(m.kernel("next_after_sync").unwrap().grid_sync);
    let (blocks, threads) = (8u32, 32u32);
    let n = blocks * threads;
    let mut mem = Mem::default();
    let a = mem.alloc(&vec![0u8; n as usize * 4]);
    let b = mem.alloc(&vec![0u8; n as usize * 4]);
    run(&m, "next_after_sync", [blocks, 1, 1], [threads, 1, 1], 0, &[a, b, n as u64], &mut mem).unwrap();
    let got: Vec<u32> = read(mem.get(b), n as usize);
    // Thread i wrote i + 1; after the barrier it reads thread (i + 1) % n's value; the barrier
    // returned cudaSuccess (0).
    let want: Vec<u32> = (0..n).map(|i| (i + 1) % n + 1).collect();
    assert_eq!(got, want);
}

/// mbarrier, as cuda::barrier and pipelines use it: the consumers (threads 0-31) wait for the
/// phase that the producers (threads 32-63) complete by arriving after writing shared memory.
/// The consumers come first in the block, so a wait must let the producers run (on a GPU they
/// run concurrently). A second kernel waits on a phase no thread completes: a deadlock, reported
/// as one rather than spinning through the instruction budget.
const MBARRIER_PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64
.visible .entry mbar_pc(.param .u64 out) {
  .reg .b32 %r<16>; .reg .b64 %rd<8>; .reg .pred %p<4>;
  .shared .align 8 .b64 bar;
  .shared .align 4 .b32 data[32];
  ld.param.u64 %rd1, [out];
  mov.u32 %r1, %tid.x;
  mov.u32 %r2, bar;
  setp.ne.u32 %p1, %r1, 0;
  @%p1 bra $SKIP_INIT;
  mbarrier.init.shared.b64 [%r2], 32;
$SKIP_INIT:
  bar.sync 0;
  setp.lt.u32 %p2, %r1, 32;
  @%p2 bra $CONSUMER;
  sub.u32 %r3, %r1, 32;
  mul.lo.u32 %r4, %r3, 7;
  mov.u32 %r5, data; shl.b32 %r6, %r3, 2; add.u32 %r5, %r5, %r6;
  st.shared.u32 [%r5], %r4;
  mbarrier.arrive.shared.b64 %rd2, [%r2];
  mbarrier.pending_count.b64 %r9, %rd2;
  bra $END;
$CONSUMER:
  mbarrier.try_wait.parity.shared.b64 %p3, [%r2], 0;
  @!%p3 bra $CONSUMER;
  mov.u32 %r5, data; mov.u32 %r7, 31; sub.u32 %r7, %r7, %r1; shl.b32 %r6, %r7, 2; add.u32 %r5, %r5, %r6;
  ld.shared.u32 %r8, [%r5];
  mul.wide.u32 %rd3, %r1, 4; add.s64 %rd4, %rd1, %rd3;
  st.global.u32 [%rd4], %r8;
$END:
  ret;
}
.visible .entry mbar_stuck(.param .u64 out) {
  .reg .b32 %r<4>; .reg .b64 %rd<4>; .reg .pred %p<4>;
  .shared .align 8 .b64 bar;
  mov.u32 %r1, %tid.x;
  mov.u32 %r2, bar;
  setp.ne.u32 %p1, %r1, 0;
  @%p1 bra $W;
  mbarrier.init.shared.b64 [%r2], 64;
$W:
  bar.sync 0;
  mbarrier.arrive.shared.b64 %rd1, [%r2];
$SPIN:
  mbarrier.test_wait.shared.b64 %p2, [%r2], %rd1;
  @!%p2 bra $SPIN;
  ret;
}
"#;

#[test]
fn mbarrier_waits_let_the_arriving_threads_run() {
    let m = Module::parse(MBARRIER_PTX).unwrap();
    let mut mem = Mem::default();
    let out = mem.alloc(&[0u8; 32 * 4]);
    run(&m, "mbar_pc", [2, 1, 1], [64, 1, 1], 0, &[out], &mut mem).unwrap();
    let got: Vec<u32> = read(mem.get(out), 32);
    let want: Vec<u32> = (0..32).map(|t| (31 - t) * 7).collect();
    assert_eq!(got, want);
    // 32 threads arrive on a barrier that expects 64: the waits can never complete.
    let err = run(&m, "mbar_stuck", [1, 1, 1], [32, 1, 1], 0, &[out], &mut mem).unwrap_err();
    assert!(matches!(err, ExecError::BarrierDeadlock(_)), "{err}");
}

/// The grid barrier of CUDA's cooperative_groups headers (details/sync.h), as nvcc compiles
/// it: the workspace address from %envreg1 (high) and %envreg2 (low); each block's thread 0
/// adds to its barrier word (block 0 adds 0x80000000 - (blocks - 1)) and spins until the top
/// bit flips. Block 0 spins first, before any other block has arrived: its turn must end so
/// that the others run. After the barrier each thread reads a value another block wrote.
const HEADER_GRID_SYNC_PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64
.visible .entry header_sync(.param .u64 a, .param .u64 b, .param .u32 n) {
  .reg .b32 %r<20>; .reg .b64 %rd<12>; .reg .pred %p<4>;
  ld.param.u64 %rd1, [a]; ld.param.u64 %rd2, [b]; ld.param.u32 %r1, [n];
  mov.u32 %r2, %ctaid.x; mov.u32 %r3, %ntid.x; mov.u32 %r4, %tid.x;
  mad.lo.s32 %r5, %r2, %r3, %r4;
  mul.wide.u32 %rd3, %r5, 4; add.s64 %rd4, %rd1, %rd3;
  add.s32 %r6, %r5, 1; st.global.u32 [%rd4], %r6;
  bar.sync 0;
  setp.ne.u32 %p1, %r4, 0;
  @%p1 bra $AFTER;
  mov.u32 %r10, %envreg1; mov.u32 %r11, %envreg2;
  cvt.u64.u32 %rd5, %r10; shl.b64 %rd5, %rd5, 32; cvt.u64.u32 %rd6, %r11; or.b64 %rd5, %rd5, %rd6;
  add.s64 %rd7, %rd5, 4;
  mov.u32 %r12, %nctaid.x;
  mov.u32 %r13, 1;
  setp.ne.u32 %p2, %r2, 0;
  @%p2 bra $ADD;
  sub.u32 %r14, %r12, 1; mov.u32 %r13, -2147483648; sub.u32 %r13, %r13, %r14;
$ADD:
  membar.gl;
  atom.global.add.u32 %r15, [%rd7], %r13;
$SPIN:
  ld.volatile.global.u32 %r16, [%rd7];
  xor.b32 %r17, %r16, %r15;
  and.b32 %r17, %r17, -2147483648;
  setp.eq.u32 %p3, %r17, 0;
  @%p3 bra $SPIN;
  membar.gl;
$AFTER:
  bar.sync 0;
  add.s32 %r6, %r5, 1; rem.u32 %r6, %r6, %r1;
  mul.wide.u32 %rd8, %r6, 4; add.s64 %rd9, %rd1, %rd8; ld.global.u32 %r6, [%rd9];
  add.s64 %rd10, %rd2, %rd3; st.global.u32 [%rd10], %r6;
  ret;
}
"#;

/// Test memory with a grid workspace, as a session's device memory has.
#[derive(Default)]
struct MemWithWorkspace {
    mem: Mem,
    ws: Option<u64>,
}

impl Memory for MemWithWorkspace {
    fn regions(&mut self) -> Vec<(u64, &mut [u8])> {
        self.mem.regions()
    }

    fn grid_workspace(&mut self) -> Result<Option<u64>, ExecError> {
        if self.ws.is_none() {
            self.ws = Some(self.mem.alloc(&[8, 0, 0, 0, 0, 0, 0, 0]));
        }
        Ok(self.ws)
    }
}

#[test]
fn the_headers_grid_barrier_runs_every_block_in_turns() {
    let m = Module::parse(HEADER_GRID_SYNC_PTX).unwrap();
    let k = m.kernel("header_sync").unwrap();
    assert!(k.grid_sync, "reading %envreg1/2 makes a kernel grid-synchronizing");
    let (blocks, threads) = (6u32, 64u32);
    let n = blocks * threads;
    let mut mem = MemWithWorkspace::default();
    let a = mem.mem.alloc(&vec![0u8; n as usize * 4]);
    let b = mem.mem.alloc(&vec![0u8; n as usize * 4]);
    for round in 0..2 {
        // The barrier word carries over between launches (its top bit flips each time).
        let cfg = LaunchConfig { grid: [blocks, 1, 1], block: [threads, 1, 1], dynamic_shared_bytes: 0 };
        launch(&m, k, &cfg, &params(k, &[a, b, n as u64]), &HashMap::new(), &mut mem).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let got: Vec<u32> = read(mem.mem.get(b), n as usize);
        let want: Vec<u32> = (0..n).map(|i| (i + 1) % n + 1).collect();
        assert_eq!(got, want, "round {round}");
    }
}

/// A block whose threads take different paths: loops of different trip counts, branches on
/// both sides of a device function call, guarded stores, a barrier and a shuffle after the
/// paths join, lanes that exit early. Both engines give what the same computation gives in
/// Rust, and count the same instructions.
#[test]
fn divergent_paths_rejoin_and_both_engines_agree() {
    let text = r#"
.version 8.8
.target sm_90
.address_size 64
.func (.param .b32 ret) triple(.param .b32 x)
{
    .reg .b32 %r<3>;
    ld.param.b32 %r1, [x];
    mul.lo.u32 %r2, %r1, 3;
    st.param.b32 [ret], %r2;
    ret;
}
.visible .entry diverge(.param .u64 out)
{
    .reg .pred %p<8>;
    .reg .b32 %r<20>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [out];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u32 %r10, %ntid.x;
    rem.u32 %r3, %r1, 7;
    mov.u32 %r4, 0;
    mov.u32 %r5, 0;
    setp.eq.u32 %p1, %r3, 0;
    @%p1 bra $SKIP;
$LOOP:
    mad.lo.u32 %r4, %r5, %r1, %r4;
    add.u32 %r5, %r5, 1;
    setp.lt.u32 %p2, %r5, %r3;
    @%p2 bra $LOOP;
$SKIP:
    and.b32 %r6, %r1, 1;
    setp.eq.u32 %p3, %r6, 0;
    @%p3 bra $EVEN;
    {
    .param .b32 a0;
    st.param.b32 [a0+0], %r4;
    .param .b32 rv;
    call.uni (rv), triple, (a0);
    ld.param.b32 %r7, [rv+0];
    }
    add.u32 %r4, %r7, 1;
    bra $JOIN;
$EVEN:
    shl.b32 %r4, %r4, 1;
$JOIN:
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r4;
    bar.sync 0;
    shfl.sync.bfly.b32 %r8, %r4, 1, 31, -1;
    add.u32 %r9, %r1, %r10;
    mul.wide.u32 %rd4, %r9, 4;
    add.s64 %rd5, %rd1, %rd4;
    setp.gt.u32 %p4, %r1, 40;
    @%p4 st.global.u32 [%rd5], %r8;
    rem.u32 %r11, %r1, 5;
    setp.eq.u32 %p5, %r11, 4;
    @%p5 exit;
    add.u32 %r12, %r9, %r10;
    mul.wide.u32 %rd6, %r12, 4;
    add.s64 %rd7, %rd1, %rd6;
    st.global.u32 [%rd7], %r5;
    ret;
}
"#;
    let m = Module::parse(text).unwrap();
    let n = 96usize;
    let acc = |t: u32| {
        let s: u32 = (0..t % 7).map(|i| i * t).sum();
        if t % 2 == 1 {
            s * 3 + 1
        } else {
            s * 2
        }
    };
    let mut want = vec![0u32; 3 * n];
    for t in 0..n as u32 {
        want[t as usize] = acc(t);
        if t > 40 {
            want[n + t as usize] = acc(t ^ 1);
        }
        if t % 5 != 4 {
            want[2 * n + t as usize] = t % 7;
        }
    }
    let mut counts = Vec::new();
    for engine in [Engine::Warp, Engine::Thread, Engine::Compiled] {
        let mut mem = Mem::default();
        let p = mem.alloc(&vec![0u8; 3 * n * 4]);
        let stats = with_jit_heat(0, || with_engine(engine, || run(&m, "diverge", [1, 1, 1], [n as u32, 1, 1], 0, &[p], &mut mem))).unwrap();
        assert_eq!(read::<u32>(mem.get(p), 3 * n), want, "{engine:?}");
        counts.push((stats.instructions, stats.warp_wide));
    }
    assert_eq!(counts[0].0, counts[1].0, "instructions counted by the warp and thread engines");
    assert_eq!(counts[0], counts[2], "instructions counted by the warp and compiled engines");
    // Most of it ran warp-wide (all but the special registers, the call, the barrier, the
    // exits); the per-thread engine runs nothing warp-wide.
    assert!(counts[0].1 * 10 > counts[0].0 * 7 && counts[0].1 < counts[0].0, "warp-wide {} of {}", counts[0].1, counts[0].0);
    assert_eq!(counts[1].1, 0);
}

/// A lane spinning on a flag that a later lane of its warp sets: on sm_70 and later (independent
/// thread scheduling) the spin ends. The warp engine gives the other lane a turn.
#[test]
fn a_lane_spinning_on_a_flag_of_another_lane_of_its_warp_progresses() {
    let m = warp_ptx(
        ".shared .align 4 .u32 flag;\n\
         mov.u32 %r1, %tid.x;\n\
         setp.ne.u32 %p1, %r1, 0;\n@%p1 bra $L_other;\n\
         $L_spin:\nld.volatile.shared.u32 %r2, [flag];\nsetp.eq.u32 %p2, %r2, 0;\n@%p2 bra $L_spin;\n\
         ld.param.u64 %rd1, [p];\nst.global.u32 [%rd1], %r2;\nbra $L_end;\n\
         $L_other:\nsetp.ne.u32 %p3, %r1, 31;\n@%p3 bra $L_end;\nmov.u32 %r3, 7;\nst.volatile.shared.u32 [flag], %r3;\n\
         $L_end:\nret;",
    );
    // One warp alone, and warps that take turns (the spin is counted across them).
    for threads in [32, 64, 128] {
        let mut mem = Mem::default();
        let p = mem.alloc(&[0u8; 4]);
        with_engine(Engine::Warp, || run(&m, "k", [1, 1, 1], [threads, 1, 1], 0, &[p], &mut mem)).unwrap();
        assert_eq!(read::<u32>(mem.get(p), 1), vec![7], "{threads} threads");
    }
}

/// ggml's block_reduce (soft_max, rms_norm): each warp reduces with shuffles, lane 0 writes the
/// warp's value to a shared buffer, a barrier, every warp reads the buffer back; the next
/// reduction writes the same buffer with no barrier after those reads. That is right on a GPU
/// only because its warps interleave: none gets a long loop ahead of the others. The warps of a
/// block take turns here too, so every thread gets the first reduction's total.
#[test]
fn warps_take_turns_so_a_reduction_reusing_its_buffer_reads_the_right_values() {
    let text = r#"
.version 8.8
.target sm_90
.address_size 64
.visible .entry reduce_twice(.param .u64 out)
{
    .shared .align 4 .b8 buf[16];
    .reg .pred %p<4>;
    .reg .b32 %r<24>;
    .reg .b64 %rd<4>;
    mov.u32 %r1, %tid.x;
    and.b32 %r2, %r1, 31;
    shr.u32 %r3, %r1, 5;
    shl.b32 %r4, %r3, 2;
    mov.u32 %r5, buf;
    add.u32 %r6, %r5, %r4;
    shl.b32 %r7, %r2, 2;
    add.u32 %r8, %r5, %r7;
    setp.eq.u32 %p1, %r2, 0;
    setp.lt.u32 %p2, %r2, 4;
    // first reduction: the sum of the thread indices
    mov.u32 %r10, %r1;
    shfl.sync.bfly.b32 %r11, %r10, 16, 31, -1;
    add.u32 %r10, %r10, %r11;
    shfl.sync.bfly.b32 %r11, %r10, 8, 31, -1;
    add.u32 %r10, %r10, %r11;
    shfl.sync.bfly.b32 %r11, %r10, 4, 31, -1;
    add.u32 %r10, %r10, %r11;
    shfl.sync.bfly.b32 %r11, %r10, 2, 31, -1;
    add.u32 %r10, %r10, %r11;
    shfl.sync.bfly.b32 %r11, %r10, 1, 31, -1;
    add.u32 %r10, %r10, %r11;
    @%p1 st.shared.u32 [%r6], %r10;
    bar.sync 0;
    mov.u32 %r12, 0;
    @%p2 ld.shared.u32 %r12, [%r8];
    shfl.sync.bfly.b32 %r11, %r12, 16, 31, -1;
    add.u32 %r12, %r12, %r11;
    shfl.sync.bfly.b32 %r11, %r12, 8, 31, -1;
    add.u32 %r12, %r12, %r11;
    shfl.sync.bfly.b32 %r11, %r12, 4, 31, -1;
    add.u32 %r12, %r12, %r11;
    shfl.sync.bfly.b32 %r11, %r12, 2, 31, -1;
    add.u32 %r12, %r12, %r11;
    shfl.sync.bfly.b32 %r11, %r12, 1, 31, -1;
    add.u32 %r12, %r12, %r11;
    // work between the two (ggml: the exponentials)
    mov.u32 %r13, 0;
$LOOP:
    add.u32 %r14, %r14, %r13;
    add.u32 %r13, %r13, 1;
    setp.lt.u32 %p3, %r13, 40;
    @%p3 bra $LOOP;
    // second reduction into the same buffer, no barrier before the write
    mov.u32 %r15, 1;
    shfl.sync.bfly.b32 %r11, %r15, 16, 31, -1;
    add.u32 %r15, %r15, %r11;
    @%p1 st.shared.u32 [%r6], %r15;
    bar.sync 0;
    ld.param.u64 %rd1, [out];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r12;
    ret;
}
"#;
    let m = Module::parse(text).unwrap();
    for engine in [Engine::Warp, Engine::Thread, Engine::Compiled] {
        let mut mem = Mem::default();
        let p = mem.alloc(&[0u8; 128 * 4]);
        with_jit_heat(0, || with_engine(engine, || run(&m, "reduce_twice", [1, 1, 1], [128, 1, 1], 0, &[p], &mut mem))).unwrap();
        assert_eq!(read::<u32>(mem.get(p), 128), vec![(0..128).sum::<u32>(); 128], "{engine:?}");
    }
}

/// Blocks start with zeroed registers wherever a thread can read one before writing it, even
/// though only some registers are zeroed (exec/unwritten.rs): a block that leaves values behind
/// must not show them to the next block a host thread runs. Each block has one thread; an even
/// block writes %r3 before storing it, an odd one does not (the guarded write does not count);
/// %r5 is never written before it is read; %r2 is read before its first write in a loop.
#[test]
fn registers_read_before_written_start_at_zero_in_every_block() {
    let text = r#"
.version 8.8
.target sm_90
.address_size 64
.visible .entry k(.param .u64 out)
{
.reg .pred %p<3>;
.reg .b32 %r<8>;
.reg .b64 %rd<5>;
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %ctaid.x;
    and.b32 %r2, %r1, 1;
    setp.eq.u32 %p1, %r2, 0;
    @%p1 mov.u32 %r3, 7;
    mul.wide.u32 %rd2, %r1, 12;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r3;
    mov.u32 %r4, %r5;
    st.global.u32 [%rd3+4], %r4;
    mov.u32 %r6, 0;
LOOP:
    add.s32 %r7, %r7, %r6;
    add.s32 %r6, %r6, 1;
    setp.lt.u32 %p2, %r6, 4;
    @%p2 bra LOOP;
    st.global.u32 [%rd3+8], %r7;
    mov.u32 %r3, 99;
    mov.u32 %r5, 55;
    ret;
}
"#;
    let m = Module::parse(text).unwrap();
    let blocks = 64u32;
    for engine in [Engine::Warp, Engine::Thread, Engine::Compiled] {
        let mut mem = Mem::default();
        let p = mem.alloc(&vec![0xffu8; blocks as usize * 12]);
        with_jit_heat(0, || with_engine(engine, || run(&m, "k", [blocks, 1, 1], [1, 1, 1], 0, &[p], &mut mem))).unwrap();
        let got = read::<u32>(mem.get(p), blocks as usize * 3);
        let want: Vec<u32> = (0..blocks).flat_map(|b| [if b % 2 == 0 { 7 } else { 0 }, 0, 6]).collect();
        assert_eq!(got, want, "{engine:?}");
    }
}

/// Float mul and add/sub without rounding modifiers are fused into one fma, as ptxas fuses them
/// on a GPU (parse::contract_mul_add); `.rn` forms, a label in between (control may enter
/// there), a factor rewritten in between and a mul under another guard are not. The reference
/// is the PTX ISA's fma.rn (one rounding: Rust's `mul_add`) against two roundings; at
/// 255.6 - 213 * 1.2 they differ (CuPy's mod, which unwrap uses: 3.8e-15 against 0).
#[test]
fn mul_and_add_without_rounding_modifiers_fuse_as_on_a_gpu() {
    let text = r#"
.version 8.0
.target sm_90
.address_size 64
.visible .entry contract(.param .u64 out, .param .f64 x, .param .f64 y, .param .f64 f, .param .f32 xs, .param .f32 ys, .param .f32 fs)
{
    .reg .pred %p<2>;
    .reg .f32 %f<8>;
    .reg .f64 %fd<24>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out];
    ld.param.f64 %fd1, [x];
    ld.param.f64 %fd2, [y];
    ld.param.f64 %fd3, [f];
    mul.f64 %fd4, %fd3, %fd2;
    sub.f64 %fd5, %fd1, %fd4;
    st.global.f64 [%rd1], %fd5;
    mul.rn.f64 %fd6, %fd3, %fd2;
    sub.rn.f64 %fd7, %fd1, %fd6;
    st.global.f64 [%rd1+8], %fd7;
    neg.f64 %fd20, %fd1;
    mul.f64 %fd8, %fd3, %fd2;
    add.f64 %fd9, %fd8, %fd20;
    st.global.f64 [%rd1+16], %fd9;
    mul.f64 %fd10, %fd3, %fd2;
    sub.f64 %fd11, %fd10, %fd1;
    st.global.f64 [%rd1+24], %fd11;
    mul.f64 %fd12, %fd3, %fd2;
    bra.uni $L1;
$L1:
    sub.f64 %fd13, %fd1, %fd12;
    st.global.f64 [%rd1+32], %fd13;
    setp.ne.f64 %p1, %fd2, 0d0000000000000000;
    @%p1 mul.f64 %fd16, %fd3, %fd2;
    sub.f64 %fd17, %fd1, %fd16;
    st.global.f64 [%rd1+48], %fd17;
    mul.f64 %fd14, %fd3, %fd2;
    mov.f64 %fd3, 0d4000000000000000;
    sub.f64 %fd15, %fd1, %fd14;
    st.global.f64 [%rd1+40], %fd15;
    ld.param.f32 %f1, [xs];
    ld.param.f32 %f2, [ys];
    ld.param.f32 %f3, [fs];
    mul.f32 %f4, %f3, %f2;
    sub.f32 %f5, %f1, %f4;
    st.global.f32 [%rd1+56], %f5;
    ret;
}
"#;
    let m = Module::parse(text).unwrap();
    let (x, y, f) = (255.6f64, 1.2f64, 213.0f64);
    let (fused, twice) = ((-f).mul_add(y, x), x - f * y);
    assert_ne!(fused, twice, "the reference values must tell fused from unfused");
    let (xs, ys, fs) = (8.1f32, 0.7f32, 11.3f32);
    let (fused32, twice32) = ((-fs).mul_add(ys, xs), xs - fs * ys);
    assert_ne!(fused32, twice32, "the f32 reference values must tell fused from unfused");
    let mut mem = Mem::default();
    let out = mem.alloc(&[0u8; 64]);
    let args = [out, x.to_bits(), y.to_bits(), f.to_bits(), xs.to_bits() as u64, ys.to_bits() as u64, fs.to_bits() as u64];
    run(&m, "contract", [1, 1, 1], [1, 1, 1], 0, &args, &mut mem).unwrap();
    let got: Vec<f64> = read(mem.get(out), 7);
    assert_eq!(got[0], fused, "x - f*y without modifiers: fma(-f, y, x)");
    assert_eq!(got[1], twice, ".rn forms are never fused");
    assert_eq!(got[2], -fused, "f*y + (-x): fma(f, y, -x)");
    assert_eq!(got[3], -fused, "f*y - x: fma(f, y, -x)");
    assert_eq!(got[4], twice, "a label between: control may enter there, not fused");
    assert_eq!(got[5], twice, "a factor rewritten between: not fused");
    assert_eq!(got[6], twice, "the mul under a guard the sub does not have: not fused");
    let got32: Vec<f32> = read(&mem.get(out)[56..], 1);
    assert_eq!(got32[0], fused32, "f32: fma(-f, y, x)");
}
