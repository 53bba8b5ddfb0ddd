#!/usr/bin/env bash
# Builds (once, cached outside the repo) the guest kernel: Linux 7.3 with Rust, for QEMU under
# TCG, with what the vgpu guest needs. Prints the cache directory holding bzImage and the build
# tree (for out-of-tree modules). Idempotent; the cache key is (kernel version, config, rustc).
# Layout: $VGPU_CACHE/guest/{debs,tools,src,kernel-<key>}
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# Only the final path goes to stdout (callers capture it); everything else to stderr.
exec 3>&1 1>&2
CACHE="${VGPU_CACHE:-$HOME/.cache/vgpu}/guest"
mkdir -p "$CACHE/debs"
log() { echo "guest-kernel: $*" >&2; }
# One build at a time (tests boot guests in parallel); the others wait, then find it cached.
exec 9>"$CACHE/.lock"
flock -n 9 || { log "waiting for another build of the guest kernel to finish"; flock 9; }

RUSTC_VER=$(rustc --version | awk '{print $2}')
RUST_SRC_DEB_VER="${RUSTC_VER}+dfsg1-2~bpo13+1"
KVER=7.3

need_pkgs=(flex bison bc libelf-dev libssl-dev cpio kmod dkms clang-19 lld-19 llvm-19 libclang-19-dev busybox-static)
missing=()
for p in "${need_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Kernel source and the Rust library source matching our rustc, from trixie-backports,
# downloaded and extracted only. The .debs are cached: backports may drop these versions.
if ! ls "$CACHE/debs"/linux-source-${KVER}_*_all.deb >/dev/null 2>&1 || ! ls "$CACHE/debs"/rust-src_*.deb >/dev/null 2>&1; then
  bash "$HERE/setup-apt-trixie.sh"
  (cd "$CACHE/debs" && apt-get download -q "linux-source-${KVER}/trixie-backports" "rust-src=${RUST_SRC_DEB_VER}")
fi
SRC="$CACHE/src"
if [ ! -d "$SRC/linux-source-${KVER}" ]; then
  log "extracting sources"
  rm -rf "$SRC" && mkdir -p "$SRC"
  dpkg -x "$CACHE/debs"/linux-source-${KVER}_*_all.deb "$SRC/pkg-linux"
  tar -C "$SRC" -xf "$SRC"/pkg-linux/usr/src/linux-source-${KVER}.tar.xz
  dpkg -x "$CACHE/debs"/rust-src_*.deb "$SRC/pkg-rustsrc"
fi
export RUST_LIB_SRC="$SRC/pkg-rustsrc/usr/src/rustc-${RUSTC_VER}/library"
[ -d "$RUST_LIB_SRC" ] || { log "rust-src does not match rustc $RUSTC_VER"; exit 1; }

# bindgen >= 0.71.1 (bookworm's 0.60 is too old).
TOOLS="$CACHE/tools"
if [ ! -x "$TOOLS/bin/bindgen" ]; then
  log "installing bindgen-cli 0.73.2 (a few minutes)"
  CARGO_TARGET_DIR="$CACHE/cargo-target" cargo install -q bindgen-cli --version 0.73.2 --locked --root "$TOOLS"
  rm -rf "$CACHE/cargo-target"
fi
export PATH="$TOOLS/bin:$PATH"

K="$SRC/linux-source-${KVER}"
KEY=$( (echo "$KVER $RUSTC_VER"; cat "$HERE/guest.config") | sha256sum | cut -c1-16)
O="$CACHE/kernel-$KEY"
if [ -f "$O/.complete" ]; then
  echo "$O" >&3; exit 0
fi
log "building the kernel into $O (several minutes on 2 cores)"
MK=(make -C "$K" O="$O" LLVM=-19)
mkdir -p "$O"
"${MK[@]}" rustavailable >&2
"${MK[@]}" tinyconfig >/dev/null
"$K/scripts/kconfig/merge_config.sh" -m -O "$O" "$O/.config" "$HERE/guest.config" >/dev/null
"${MK[@]}" olddefconfig >/dev/null
for o in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=.*/\1/p' "$HERE/guest.config"); do
  grep -q "^$o=" "$O/.config" || { log "config option $o did not stick"; exit 1; }
done
"${MK[@]}" -j"$(nproc)" bzImage modules >&2
touch "$O/.complete"
# Kernels of earlier configurations (a few hundred MiB each) are not needed again.
for old in "$CACHE"/kernel-*; do
  [ "$old" = "$O" ] || { log "removing the outdated kernel build $old"; rm -rf "$old"; }
done
echo "$O" >&3
