#!/usr/bin/env bash
# numba-cuda's whole test suite on vgpu (sim backend, socket transport): about 12 minutes on 2
# cores. The test command runs a fixed third of it (tests/tests/numba.rs); this runs all of it,
# against the same list of known failures (tests/numba/known_failures.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --locked
VGPU_NUMBA_SLICE=0/1 cargo test --release --locked -p vgpu-tests --test numba -- --nocapture
