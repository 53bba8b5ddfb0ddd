#!/usr/bin/env bash
# Builds and installs the guest driver the way a distribution would: DKMS (dkms.conf at the repo
# top), against the harness's guest kernel tree, into a staging root for the initramfs:
#   <root>/lib/modules/<kernel release>/updates/dkms/vgpu.ko + modules.dep (depmod -b).
#   usage: qemu/harness/dkms-install.sh <kernel build dir> <staging root>
# Only the module path goes to stdout; DKMS's own output goes to stderr.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KDIR=${1:?kernel build dir}
STAGE=${2:?staging root}
CACHE="${VGPU_CACHE:-$HOME/.cache/vgpu}"
command -v dkms >/dev/null || {
  echo "dkms-install: installing dkms" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dkms >/dev/null
}
KREL=$(cat "$KDIR/include/config/kernel.release")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SRC=$(bash "$ROOT/scripts/dkms-source.sh" "$WORK/src")
VER=${SRC##*/vgpu-}
mkdir -p "$WORK/tree" "$STAGE/lib/modules/$KREL"
export PATH="$CACHE/guest/tools/bin:$PATH" # bindgen
common=(-m vgpu -v "$VER" -k "$KREL" --kernelsourcedir "$KDIR" --sourcetree "$WORK/src" --dkmstree "$WORK/tree")
if ! dkms build "${common[@]}" >&2 || ! dkms install --no-depmod "${common[@]}" --installtree "$STAGE/lib/modules" >&2; then
  echo "dkms-install: DKMS failed; make.log:" >&2
  cat "$WORK/tree/vgpu/$VER/build/make.log" >&2 2>/dev/null || true
  exit 1
fi
depmod -b "$STAGE" "$KREL" 2>/dev/null
ko="$STAGE/lib/modules/$KREL/updates/dkms/vgpu.ko"
[ -f "$ko" ] || { echo "dkms-install: $ko missing after dkms install" >&2; exit 1; }
echo "$ko"
