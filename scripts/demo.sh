#!/usr/bin/env bash
# The main job, end to end on this machine: set everything up, then boot a QEMU guest with the
# VGPU-STUB device (served by vgpu-stub, with the vgpu-hostd mediator behind it on the sim
# backend: no GPU needed) and run a CUDA program in it. In the guest, vgpu's driver (built by
# DKMS) binds the device and vgpu's libcuda.so.1, found through ldconfig's cache, runs the
# program built with nvcc against NVIDIA's own cudart 12.9, directly and from `env -i`.
# The first run builds and caches the guest kernel and QEMU 11.1 (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== build"
cargo build --release --workspace --locked
CACHE="${VGPU_CACHE:-$HOME/.cache/vgpu}"
W="$CACHE/cuda-wheels"
CUDART="$W/cu12/nvidia/cuda_runtime/lib"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/link" "$WORK/payload"
ln -s "$CUDART/libcudart.so.12" "$WORK/link/libcudart.so"
ln -s "$CUDART/libcudadevrt.a" "$WORK/link/libcudadevrt.a"
echo "== compiling tests/cuda/vector_add.cu with nvcc (PTX for sm_90, NVIDIA cudart 12.9)"
# RUNPATH $ORIGIN: the program finds cudart next to itself; libcuda.so.1 only through ldconfig.
"$W/cu13/nvidia/cu13/bin/nvcc" -gencode arch=compute_90,code=compute_90 -cudart shared \
  -Xlinker '-rpath=$ORIGIN' -I "$W/cu12/nvidia/cuda_runtime/include" -L "$WORK/link" \
  -o "$WORK/payload/vector_add" tests/cuda/vector_add.cu
cp "$CUDART/libcudart.so.12" "$WORK/payload/"
cat > "$WORK/payload/demo.sh" <<'EOS'
set -e
echo "\$ nvidia-smi -L"; nvidia-smi -L
echo "\$ /opt/vgpu/vector_add"; /opt/vgpu/vector_add
echo "\$ env -i /opt/vgpu/vector_add   # an empty environment, like Ollama's runner"; env -i /opt/vgpu/vector_add
EOS
echo "== booting the guest (QEMU, TCG) and running vector_add in it"
bash qemu/harness/boot-guest.sh --payload "$WORK/payload" --run demo.sh
