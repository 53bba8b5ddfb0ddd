#!/usr/bin/env bash
# CuPy's own test suite (the core, math, manipulation, sorting, statistics and CUDA test
# directories of CuPy 14.2.0, not slow) on vgpu (sim backend, socket transport). The test
# command runs fixed slices of it (tests/tests/cupy_suite.rs); this runs all of it, against the
# same lists of known failures: with cupy-cuda12x (tests/cupy_suite/known_failures.txt, about
# 110 minutes on 2 cores) and with cupy-cuda13x (tests/cupy_suite/cuda13/known_failures.txt).
#     bash scripts/cupy-suite.sh [12|13]     (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-both}
bash scripts/setup.sh
cargo build --release --workspace --locked
if [ "$which" = 12 ] || [ "$which" = both ]; then
  VGPU_CUPY_SLICE=0/1 cargo test --release --locked -p vgpu-tests --test cupy_suite -- --nocapture --exact cupy_test_suite_passes_as_recorded
fi
if [ "$which" = 13 ] || [ "$which" = both ]; then
  VGPU_CUPY13_SLICE=0/1 cargo test --release --locked -p vgpu-tests --test cupy_suite -- --nocapture --exact cupy_for_cuda13_test_suite_passes_as_recorded
fi
