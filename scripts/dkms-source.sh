#!/usr/bin/env bash
# Stages the DKMS source tree of the guest driver: <dest>/vgpu-<version>/{dkms.conf,kmod,uapi/src}.
# `dkms add <dest>/vgpu-<version>` (or --sourcetree <dest>) then builds it like any DKMS package.
#   usage: scripts/dkms-source.sh <dest>     prints the staged directory
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:?usage: dkms-source.sh <dest>}
VER=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$ROOT/dkms.conf")
OUT="$DEST/vgpu-$VER"
rm -rf "$OUT"
mkdir -p "$OUT/uapi"
cp "$ROOT/dkms.conf" "$OUT/"
cp -r "$ROOT/kmod" "$OUT/kmod"
cp -r "$ROOT/uapi/src" "$OUT/uapi/src"
echo "$OUT"
