#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/): each for SECONDS (default 60), or only TARGET.
#   usage: scripts/fuzz.sh [TARGET] [SECONDS]
# Installs cargo-fuzz if missing. The sanitizer/coverage flags cargo-fuzz passes are unstable
# rustc options: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them. Corpora grow in
# $VGPU_CACHE/fuzz-corpus/<target> (seeded from fuzz/seeds/<target>); crashes land in
# fuzz/artifacts/<target>/; copy them to fuzz/regressions/<target>/ to keep them as tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${VGPU_CACHE:-$HOME/.cache/vgpu}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=(mediator_requests module_image ptx_text stub_guest guest_pages shm_ring_requests)
[ $# -ge 1 ] && [ -n "$1" ] && targets=("$1")
secs=${2:-60}
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  corpus="$CACHE/fuzz-corpus/$t"
  mkdir -p "$corpus"
  [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  case $t in  # the modules the tests load are seeds too
    ptx_text) cp -n host/tests/data/*.ptx "$corpus"/ ;;
    module_image) cp -n host/tests/data/*.ptx host/tests/data/*.fatbin "$corpus"/ ;;
  esac
  echo "== fuzz $t for ${secs}s (corpus $corpus)"
  cargo fuzz run "$t" "$corpus" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 2>&1 \
    | grep -E '^(#[0-9]+.*(DONE|INITED)|stat::|==[0-9]+==|SUMMARY|artifact|Done)' || true
done
