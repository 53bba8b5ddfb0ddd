//! Interpreter throughput: PTX instructions per second of the sim backend on a tiled matmul
//! (tests/data/kernels.cu `matmul_tiled`, shared memory + barriers). A figure to improve on,
//! not a test: `cargo bench -p vgpu-host --bench ptx_interp`.

use std::collections::HashMap;
use std::time::Instant;
use vgpu_host::sim::memory::DeviceMemory;
use vgpu_host::sim::ptx::{launch, LaunchConfig, Module};

fn main() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernels.ptx")).expect("kernels.ptx");
    let module = Module::parse(&text).expect("parse");
    let k = module.kernel("matmul_tiled").expect("matmul_tiled");
    for n in [64usize, 128, 256] {
        let mut mem = DeviceMemory::new(1 << 30);
        let bytes = (n * n * 4) as u64;
        let (a, b, c) = (mem.alloc(bytes).unwrap(), mem.alloc(bytes).unwrap(), mem.alloc(bytes).unwrap());
        for (p, seed) in [(a, 1.0f32), (b, 0.5)] {
            let data: Vec<u8> = (0..n * n).flat_map(|i| (seed * (i % 17) as f32).to_le_bytes()).collect();
            mem.slice_mut(p, bytes).unwrap().copy_from_slice(&data);
        }
        let mut params = Vec::new();
        for v in [a, b, c] {
            params.extend_from_slice(&v.to_le_bytes());
        }
        params.extend_from_slice(&(n as u32).to_le_bytes());
        let g = n.div_ceil(16) as u32;
        let cfg = LaunchConfig { grid: [g, g, 1], block: [16, 16, 1], dynamic_shared_bytes: 0 };
        let t = Instant::now();
        let stats = launch(&module, k, &cfg, &params, &HashMap::new(), &mut mem).expect("launch");
        let s = t.elapsed().as_secs_f64();
        println!(
            "matmul_tiled n={n:4}: {:>11} PTX instructions in {:7.3} s = {:6.1} M instructions/s ({:.3} GFLOP/s)",
            stats.instructions,
            s,
            stats.instructions as f64 / s / 1e6,
            2.0 * (n * n * n) as f64 / s / 1e9
        );
    }
}
