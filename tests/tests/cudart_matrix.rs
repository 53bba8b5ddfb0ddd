//! Every minor release of NVIDIA's CUDA runtime, 12.0 to the newest on PyPI (installed by
//! scripts/setup-cuda-wheels.sh into the cache's cudart-matrix/), starts on vgpu's libcuda and
//! runs the runtime's basics: device query, allocation, copies, a kernel launch, streams,
//! events and a graph. Each program is built once per major version (12: against cudart
//! 12.9's headers, 13: against 13.0's) and run against every minor of that major, as an
//! application built with one toolkit runs on whatever runtime the user has. No runtime may call
//! an export-table slot vgpu does not serve (libcuda logs each such call at VGPU_LOG=info).

use vgpu_tests::*;

const PROGRAMS: [&str; 4] = ["device_query", "vector_add", "streams_events", "graphs"];

/// (version, directory holding its libcudart.so.1x), oldest first.
fn runtimes() -> Vec<(String, std::path::PathBuf)> {
    let matrix = wheels_dir().parent().unwrap().join("cudart-matrix");
    let mut v: Vec<(Vec<u32>, String, std::path::PathBuf)> = std::fs::read_dir(&matrix)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs it)", matrix.display()))
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.to_string();
            let key = version.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
            let lib = ["nvidia/cuda_runtime/lib", "nvidia/cu13/lib"].iter().map(|d| e.path().join(d)).find(|d| d.is_dir())?;
            Some((key, version, lib))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, version, lib)| (version, lib)).collect()
}

#[test]
fn every_cuda_runtime_release_starts_and_runs_on_vgpu() {
    let runtimes = runtimes();
    let majors: Vec<&str> = runtimes.iter().map(|(v, _)| v.split('.').next().unwrap()).collect();
    assert!(majors.iter().filter(|&&m| m == "12").count() >= 9 && majors.contains(&"13"), "the matrix is incomplete: {runtimes:?}");
    let m = Mediator::start();
    let mut failed = Vec::new();
    for (version, lib) in &runtimes {
        let cudart = if version.starts_with("12.") { Cudart::V12 } else { Cudart::V13 };
        for name in PROGRAMS {
            let exe = build_program(name, cudart);
            let out = std::process::Command::new(&exe)
                .env("LD_LIBRARY_PATH", format!("{}:{}", libcuda_dir().display(), lib.display()))
                .env("VGPU_SOCKET", &m.socket)
                .env("VGPU_LOG", "info")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let unserved = String::from_utf8_lossy(&out.stderr).lines().any(|l| l.contains("export table slot"));
            if !out.status.success() || stdout.lines().last() != Some("PASS") || unserved {
                failed.push(format!("cudart {version}, {name}:\n{}", describe(&out)));
            }
        }
    }
    assert!(failed.is_empty(), "{} of {} runs failed:\n{}", failed.len(), runtimes.len() * PROGRAMS.len(), failed.join("\n"));
}
