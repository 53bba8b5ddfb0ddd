//! Interpreter throughput: PTX instructions per second of the sim backend, the warp engine
//! (default) and the per-thread engine side by side in one run, on kernels that are bound by
//! ALU work, by memory, by divergence, and a tiled matmul (tests/data/kernels.cu
//! `matmul_tiled`: shared memory and barriers); and, for the default engine, launches per
//! second of a kernel that does next to nothing (what a launch costs beyond its instructions),
//! also beside 20,000 live allocations.
//! Figures to improve on, not a test:
//! `cargo bench -p vgpu-host --bench ptx_interp`. Blocks run on VGPU_SIM_THREADS host threads
//! (default: every core); `VGPU_SIM_THREADS=1` gives the figures per core.

use std::collections::HashMap;
use std::time::Instant;
use vgpu_host::sim::memory::{DeviceMemory, DevicePool};
use vgpu_host::sim::ptx::{launch, with_engine, Engine, LaunchConfig, Module};

/// out[i] = a chain of 64 rounds of fma, xor, shift and add per thread (ALU-bound).
/// copy: out[i] = in[i] * 2 + 1 over a grid-stride loop (memory-bound).
/// diverge: each lane loops lane-dependent times (1..32), so a warp runs part-empty.
const BENCH_PTX: &str = r#"
.version 8.0
.target sm_80
.address_size 64
.visible .entry alu(.param .u64 out)
{
    .reg .pred %p<2>;
    .reg .b32 %r<10>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<4>;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mad.lo.u32 %r4, %r2, %r3, %r1;
    cvt.rn.f32.u32 %f1, %r4;
    mov.f32 %f2, 0f3F800000;
    mov.u32 %r5, 0;
    mov.u32 %r6, %r4;
$L:
    fma.rn.f32 %f2, %f2, 0f3F7FFFF0, %f1;
    xor.b32 %r6, %r6, %r5;
    shl.b32 %r7, %r6, 3;
    add.u32 %r6, %r7, %r6;
    add.u32 %r5, %r5, 1;
    setp.lt.u32 %p1, %r5, 64;
    @%p1 bra $L;
    cvt.rzi.u32.f32 %r8, %f2;
    add.u32 %r8, %r8, %r6;
    ld.param.u64 %rd1, [out];
    mul.wide.u32 %rd2, %r4, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r8;
    ret;
}
.visible .entry copy(.param .u64 dst, .param .u64 src, .param .u32 n)
{
    .reg .pred %p<2>;
    .reg .b32 %r<10>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [dst];
    ld.param.u64 %rd2, [src];
    ld.param.u32 %r1, [n];
    mov.u32 %r2, %tid.x;
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %nctaid.x;
    mad.lo.u32 %r6, %r3, %r4, %r2;
    mul.lo.u32 %r7, %r4, %r5;
    setp.ge.u32 %p1, %r6, %r1;
    @%p1 bra $END;
$L:
    mul.wide.u32 %rd3, %r6, 4;
    add.s64 %rd4, %rd2, %rd3;
    ld.global.f32 %f1, [%rd4];
    fma.rn.f32 %f2, %f1, 0f40000000, 0f3F800000;
    add.s64 %rd5, %rd1, %rd3;
    st.global.f32 [%rd5], %f2;
    add.u32 %r6, %r6, %r7;
    setp.lt.u32 %p1, %r6, %r1;
    @%p1 bra $L;
$END:
    ret;
}
// launch: next to nothing per thread, with as many registers as ggml's mul_mat_vec_q (which
// declares 434): what a launch costs besides its instructions.
.visible .entry launch_cost(.param .u64 out)
{
    .reg .pred %p<2>;
    .reg .b32 %r<400>;
    .reg .b64 %rd<4>;
    mov.u32 %r399, %tid.x;
    setp.ne.u32 %p1, %r399, 0;
    @%p1 bra $END;
    ld.param.u64 %rd1, [out];
    st.global.u32 [%rd1], %r399;
$END:
    ret;
}
.visible .entry diverge(.param .u64 out)
{
    .reg .pred %p<2>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<4>;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mad.lo.u32 %r4, %r2, %r3, %r1;
    and.b32 %r5, %r1, 31;
    add.u32 %r5, %r5, 1;
    mov.u32 %r6, 0;
    mov.u32 %r7, 0;
$L:
    mad.lo.u32 %r7, %r6, %r4, %r7;
    add.u32 %r6, %r6, 1;
    setp.lt.u32 %p1, %r6, %r5;
    @%p1 bra $L;
    ld.param.u64 %rd1, [out];
    mul.wide.u32 %rd2, %r4, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r7;
    ret;
}
"#;

fn measure(label: &str, f: &mut dyn FnMut() -> u64) {
    // PTX_BENCH_ENGINE=compiled, warp or thread: that engine alone, for a profiler.
    let only = std::env::var("PTX_BENCH_ENGINE").ok();
    if let Some(only) = only.as_deref() {
        let engine = match only {
            "thread" => Engine::Thread,
            "warp" => Engine::Warp,
            _ => Engine::Compiled,
        };
        for _ in 0..2 {
            let t = Instant::now();
            let n = with_engine(engine, &mut *f);
            println!("{label:<22} {n:>11} instructions: {only} {:7.1} M/s", n as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
        return;
    }
    // Best of three runs of each, the engines alternating (this machine's other work shows as
    // noise in a single run). The compiled engine compiles a kernel once it is hot, during
    // its first run here; its best run is one on compiled code.
    let engines = [Engine::Compiled, Engine::Warp, Engine::Thread];
    let mut per_engine = [(0u64, 0f64); 3];
    for _ in 0..3 {
        for (e, engine) in engines.into_iter().enumerate() {
            let t = Instant::now();
            let n = with_engine(engine, &mut *f);
            let rate = n as f64 / t.elapsed().as_secs_f64() / 1e6;
            per_engine[e] = (n, per_engine[e].1.max(rate));
        }
    }
    let [(n, compiled), (n_warp, warp), (n_thread, thread)] = per_engine;
    assert!(n == n_warp && n == n_thread, "the engines run the same instructions");
    println!(
        "{label:<22} {n:>11} instructions: compiled {compiled:7.1} M/s, warp {warp:7.1} M/s, thread {thread:7.1} M/s; compiled/warp {:.2}, compiled/thread {:.2}",
        compiled / warp,
        compiled / thread
    );
}

/// How many times per second `f` runs, over one second.
fn per_second(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < 1.0 {
        f();
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn params(ptrs: &[u64], tail: Option<u32>) -> Vec<u8> {
    let mut p: Vec<u8> = ptrs.iter().flat_map(|v| v.to_le_bytes()).collect();
    if let Some(t) = tail {
        p.extend_from_slice(&t.to_le_bytes());
    }
    p
}

fn main() {
    let bench = Module::parse(BENCH_PTX).expect("parse bench PTX");
    let mut mem = DeviceMemory::new(DevicePool::new(1 << 30));
    let threads = 64 * 256u32;
    let out = mem.alloc(threads as u64 * 4).unwrap();
    let cfg = |grid: u32, block: u32| LaunchConfig { grid: [grid, 1, 1], block: [block, 1, 1], dynamic_shared_bytes: 0 };
    let run = |name: &str, cfg: LaunchConfig, p: &[u8], mem: &mut DeviceMemory| {
        launch(&bench, bench.kernel(name).expect(name), &cfg, p, &HashMap::new(), mem).expect("launch").instructions
    };
    let (src, n) = (mem.alloc(4 << 20).unwrap(), 1u32 << 20);
    // Launches per second, not instructions: 80 blocks of 128 threads, as ggml's decode kernels.
    let rate = per_second(&mut || {
        run("launch_cost", cfg(80, 128), &params(&[out], None), &mut mem);
    });
    println!("launch (80x128, 400 regs) {rate:9.0} launches/s");
    // A small launch beside many live allocations (a CuPy process keeps thousands in its memory
    // pool): what a launch costs should not grow with them.
    for extra in [0usize, 20_000] {
        let mut mem = DeviceMemory::new(DevicePool::new(1 << 30));
        let out = mem.alloc(4096).unwrap();
        for _ in 0..extra {
            mem.alloc(512).unwrap();
        }
        let rate = per_second(&mut || {
            run("launch_cost", cfg(1, 32), &params(&[out], None), &mut mem);
        });
        println!("launch (1x32) beside {extra:>6} allocations {rate:9.0} launches/s");
    }

    measure("alu (fma/int chain)", &mut || run("alu", cfg(64, 256), &params(&[out], None), &mut mem));
    let dst = mem.alloc(4 << 20).unwrap();
    measure("copy (global ld/st)", &mut || run("copy", cfg(128, 256), &params(&[dst, src], Some(n)), &mut mem));
    measure("diverge (1..32 trips)", &mut || run("diverge", cfg(64, 256), &params(&[out], None), &mut mem));

    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx")).expect("kernels.ptx");
    let module = Module::parse(&text).expect("parse");
    let k = module.kernel("matmul_tiled").expect("matmul_tiled");
    for n in [64usize, 256] {
        let mut mem = DeviceMemory::new(DevicePool::new(1 << 30));
        let bytes = (n * n * 4) as u64;
        let (a, b, c) = (mem.alloc(bytes).unwrap(), mem.alloc(bytes).unwrap(), mem.alloc(bytes).unwrap());
        for (p, seed) in [(a, 1.0f32), (b, 0.5)] {
            let data: Vec<u8> = (0..n * n).flat_map(|i| (seed * (i % 17) as f32).to_le_bytes()).collect();
            mem.slice_mut(p, bytes).unwrap().copy_from_slice(&data);
        }
        let p = params(&[a, b, c], Some(n as u32));
        let g = n.div_ceil(16) as u32;
        let cfg = LaunchConfig { grid: [g, g, 1], block: [16, 16, 1], dynamic_shared_bytes: 0 };
        measure(&format!("matmul_tiled n={n}"), &mut || launch(&module, k, &cfg, &p, &HashMap::new(), &mut mem).expect("launch").instructions);
    }
}
