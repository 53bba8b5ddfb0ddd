#!/usr/bin/env bash
# Decode speed of llama.cpp's prebuilt CUDA backend on vgpu's sim backend, beside llama.cpp's own
# CPU backend on the same tiny models (tests/llama_check.py makes them), and on a baseline engine
# of the sim (a second mediator: VGPU_BENCH_BASELINE=warp, the warp engine without compiled code,
# by default; or thread, the per-thread interpreter) for the default engine's gain, in one run:
#   bash scripts/bench-llama.sh [CONFIG ...]     (CONFIG: WEIGHTS:KV:MODE, e.g. Q4_0:f16:one)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release --workspace --locked -q
cache=${VGPU_CACHE:-$HOME/.cache/vgpu}
py=$cache/llama-venv/bin/python
nv=$cache/llama-venv/lib/python3.11/site-packages/nvidia
work=$(mktemp -d)
trap 'kill $hostd $hostd_base 2>/dev/null; rm -rf "$work"' EXIT
baseline=${VGPU_BENCH_BASELINE:-warp}
mkdir -p "$work/lib"
ln -s "$PWD/target/release/libcuda.so" "$work/lib/libcuda.so.1"
export LD_LIBRARY_PATH=$nv/cuda_runtime/lib:$nv/cublas/lib:$work/lib
VGPU_SOCKET=/nonexistent "$py" tests/llama_check.py make "$work/models" >/dev/null 2>&1
target/release/vgpu-hostd --socket "$work/hostd.sock" 2>"$work/hostd.log" &
hostd=$!
VGPU_SIM_ENGINE=$baseline target/release/vgpu-hostd --socket "$work/hostd-base.sock" 2>"$work/hostd-base.log" &
hostd_base=$!
while [ ! -S "$work/hostd.sock" ] || [ ! -S "$work/hostd-base.sock" ]; do sleep 0.1; done
echo "llama.cpp decode, $(nproc) cores, tiny model (2 layers, n_embd 256, vocab 259), 16 tokens after a 12-token prompt"
VGPU_SOCKET=$work/hostd.sock VGPU_SOCKET_BASELINE=$work/hostd-base.sock VGPU_BASELINE_ENGINE=$baseline "$py" tests/llama_check.py bench "$work/models" "$@"
