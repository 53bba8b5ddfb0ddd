#!/usr/bin/env bash
# The project's test command (README): installs what the tests need (idempotent, cached outside
# the repo), builds everything, runs every test. Needs no GPU and no KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== build"
cargo build --release --workspace --locked
echo "== test"
cargo test --release --workspace --locked
