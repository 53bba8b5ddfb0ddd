#!/usr/bin/env bash
# Builds here (where Rust is) everything scripts/gpu-check.sh needs on a GPU machine that has no
# Rust and no network: the release mediator, CLI tools and guest libraries, stripped, into an
# ignored folder that travels with the repository (default target/gpu-bundle, < 60 MiB).
#   usage: bash scripts/gpu-bundle.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/gpu-bundle}
cargo build --release --workspace --locked -q
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib"
for b in vgpu-hostd vgpu-admin vgpu-smi; do
  cp target/release/$b "$dir/bin/"
done
# Under the sonames the loader looks for, as the Debian packages install them.
cp target/release/libcuda.so "$dir/lib/libcuda.so.1"
cp target/release/libnvidia_ml.so "$dir/lib/libnvidia-ml.so.1"
strip "$dir"/bin/* "$dir"/lib/*
git rev-parse HEAD > "$dir/COMMIT" 2>/dev/null || true
size=$(du -sm "$dir" | cut -f1)
if [ "$size" -ge 60 ]; then
  echo "gpu-bundle: $dir is $size MiB, over the 60 MiB that may travel" >&2
  exit 1
fi
echo "gpu-bundle: $dir ($size MiB): $(ls "$dir"/bin "$dir"/lib | tr '\n' ' ')"
