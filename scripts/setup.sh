#!/usr/bin/env bash
# Installs everything vgpu's build and tests need on a fresh Debian 12 machine; safe to re-run.
# Caches live outside the repo ($VGPU_CACHE, default ~/.cache/vgpu).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in cc c++ nm readelf python3; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
# The guest tests copy Debian's own interpreter (not, say, a pyenv one) into the guest.
[ -x /usr/bin/python3 ] || need+=(/usr/bin/python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing build tools (missing: ${need[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential binutils python3 python3-pip
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust >= 1.85) is required" >&2; exit 1; }
bash scripts/setup-cuda-wheels.sh
