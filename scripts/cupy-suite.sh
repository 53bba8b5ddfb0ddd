#!/usr/bin/env bash
# CuPy's own test suite (the core, math, manipulation, sorting, statistics and CUDA test
# directories of CuPy 14.2.0, not slow) on vgpu (sim backend, socket transport). The test
# command runs a fixed tenth of it (tests/tests/cupy_suite.rs); this runs all of it, against the
# same list of known failures (tests/cupy_suite/known_failures.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --locked
VGPU_CUPY_SLICE=0/1 cargo test --release --locked -p vgpu-tests --test cupy_suite -- --nocapture
