#!/usr/bin/env bash
# The main job, end to end on this machine: set everything up, start the vgpu mediator (sim
# backend: no GPU needed), and run a CUDA program built with nvcc against NVIDIA's own cudart
# on vgpu's libcuda.so.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --locked
CACHE="${VGPU_CACHE:-$HOME/.cache/vgpu}"
W="$CACHE/cuda-wheels"
WORK="$(mktemp -d)"
trap 'kill $MEDIATOR 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lib" "$WORK/link"
ln -s "$PWD/target/release/libcuda.so" "$WORK/lib/libcuda.so.1"
ln -s "$W/cu12/nvidia/cuda_runtime/lib/libcudart.so.12" "$WORK/link/libcudart.so"
ln -s "$W/cu12/nvidia/cuda_runtime/lib/libcudadevrt.a" "$WORK/link/libcudadevrt.a"
echo "== compiling tests/cuda/vector_add.cu with nvcc (PTX for sm_90, NVIDIA cudart 12.9)"
"$W/cu13/nvidia/cu13/bin/nvcc" -gencode arch=compute_90,code=compute_90 -cudart shared \
  -I "$W/cu12/nvidia/cuda_runtime/include" -L "$WORK/link" -o "$WORK/vector_add" tests/cuda/vector_add.cu
echo "== starting the mediator (sim backend) on $WORK/hostd.sock"
target/release/vgpu-hostd --socket "$WORK/hostd.sock" &
MEDIATOR=$!
for _ in $(seq 100); do [ -S "$WORK/hostd.sock" ] && break; sleep 0.1; done
echo "== running it on vgpu's libcuda.so.1"
LD_LIBRARY_PATH="$WORK/lib:$W/cu12/nvidia/cuda_runtime/lib" VGPU_SOCKET="$WORK/hostd.sock" "$WORK/vector_add"
