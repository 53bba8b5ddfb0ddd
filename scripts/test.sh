#!/usr/bin/env bash
# The project's test command (README): installs what the tests need (idempotent, cached outside
# the repo), builds everything, runs every test, and ends with one summary line.
# Needs no GPU and no KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== build"
cargo build --release --workspace --locked
echo "== test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The GPU machine's check, rehearsed without a GPU (its "native" is the sim): proves that the
# script and its bundle work, so that the day a GPU is lent goes to figures, not to fixing it.
echo "== gpu-check rehearsal"
gc=$(mktemp -d)
bash scripts/gpu-bundle.sh && bash scripts/gpu-check.sh --rehearse "$gc" > "$gc/log" 2>&1
gc_status=$?
tail -8 "$gc/log"
[ $gc_status = 0 ] && echo "test result: ok. 1 passed; 0 failed (gpu-check rehearsal)" >> "$log" \
  || { echo "test result: FAILED. 0 passed; 1 failed (gpu-check rehearsal)" >> "$log"; cat "$gc/log"; status=1; }
rm -rf "$gc"
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
