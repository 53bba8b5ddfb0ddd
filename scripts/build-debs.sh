#!/usr/bin/env bash
# Builds vgpu's Debian packages from the workspace, versioned from its Cargo.toml:
#   vgpu-dkms_<v>_all.deb       guest: the driver's source for DKMS (+ vgpu-kernel-rust-prepare)
#   vgpu-libs_<v>_amd64.deb     guest: libcuda.so.1, libnvidia-ml.so.1, nvidia-smi
#   vgpu-libs-dev_<v>_amd64.deb guest: libcuda.so, libnvidia-ml.so (for -lcuda)
#   vgpu-host_<v>_amd64.deb     host: vgpu-hostd, vgpu-stub, vgpu-admin, systemd units, config
# Package files are in packaging/deb/<package>/. Builds the release binaries first.
#   usage: scripts/build-debs.sh [--no-build] [OUTDIR]   (default target/debian); prints the
#          packages' paths. --no-build: the release binaries are already built (tests).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=1
[ "${1:-}" != --no-build ] || { BUILD=""; shift; }
OUT=$(mkdir -p "${1:-$ROOT/target/debian}" && cd "${1:-$ROOT/target/debian}" && pwd)
PKG="$ROOT/packaging/deb"
log() { echo "build-debs: $*" >&2; }
VER=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
[ -n "$VER" ] || { log "no [workspace.package] version in Cargo.toml"; exit 1; }
DKMS_VER=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$ROOT/dkms.conf")
[ "$DKMS_VER" = "$VER" ] || { log "dkms.conf says $DKMS_VER, Cargo.toml $VER"; exit 1; }
# The NVIDIA driver version vgpu's libraries report (cuDriverGetVersion's, NVML's): vgpu-libs
# provides Debian's NVIDIA library package names at that version, as the drop-in it is.
NVIDIA_VER=$(sed -n 's/^pub const NVIDIA_DRIVER_VERSION: &str = "\(.*\)";/\1/p' "$ROOT/uapi/src/version.rs")
[ -n "$NVIDIA_VER" ] || { log "no NVIDIA_DRIVER_VERSION in uapi/src/version.rs"; exit 1; }
[ -z "$BUILD" ] || (cd "$ROOT" && cargo build --release -q -p vgpu-cuda -p vgpu-nvml -p vgpu-smi -p vgpu-host -p vgpu-stub) >&2
REL="$ROOT/target/release"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -f "$OUT"/vgpu-{dkms,libs,libs-dev,host}_*.deb

# Debian's dependency fields of ELF files, from what they link (libc6's version from the newest
# GLIBC_x.y symbol they use).
elf_depends() {
  local glibc
  glibc=$(objdump -T "$@" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  local deps="libc6 (>= $glibc)"
  objdump -p "$@" | grep -q 'NEEDED *libgcc_s.so.1' && deps="$deps, libgcc-s1"
  echo "$deps"
}

# control template -> DEBIAN/, maintainer scripts with the version, md5sums, then the .deb.
finish() { # finish <package> <stage dir> [depends]
  local name=$1 stage=$2 deps=${3:-}
  mkdir -p "$stage/DEBIAN"
  sed -e "s/@VERSION@/$VER/g" -e "s/@NVIDIA_VERSION@/$NVIDIA_VER/g" -e "s/@DEPENDS@/$deps/g" "$PKG/$name/control" > "$stage/DEBIAN/control"
  echo "Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)" >> "$stage/DEBIAN/control"
  for s in postinst prerm postrm triggers shlibs; do
    [ -f "$PKG/$name/$s" ] || continue
    sed "s/@VERSION@/$VER/g" "$PKG/$name/$s" > "$stage/DEBIAN/$s"
    case $s in triggers|shlibs) chmod 644 "$stage/DEBIAN/$s" ;; *) chmod 755 "$stage/DEBIAN/$s" ;; esac
  done
  (cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | sort -z | xargs -0r md5sum > DEBIAN/md5sums)
  [ -s "$stage/DEBIAN/md5sums" ] || rm "$stage/DEBIAN/md5sums"
  if [ -d "$stage/etc" ]; then (cd "$stage" && find etc -type f -printf '/%p\n' | sort > DEBIAN/conffiles); fi
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$OUT/${name}_${VER}_$(sed -n 's/^Architecture: //p' "$stage/DEBIAN/control").deb" >/dev/null
}
doc() { # doc <stage> <package>: copyright and changelog where Debian expects them
  local d="$1/usr/share/doc/$2"
  mkdir -p "$d"
  cat > "$d/copyright" <<EOC
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vgpu

Files: *
Copyright: 2026 vgpu developers
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
 .
 Permission is hereby granted, free of charge, to any person obtaining a copy of this software
 and associated documentation files (the "Software"), to deal in the Software without
 restriction, including without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions: the above copyright
 notice and this permission notice shall be included in all copies or substantial portions of
 the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.

Files: usr/src/vgpu-*/kmod/*
Copyright: 2026 vgpu developers
License: GPL-2
 On Debian systems the GNU General Public License version 2 is in
 /usr/share/common-licenses/GPL-2.
EOC
  # A native package's changelog (the version has no Debian revision).
  printf '%s (%s) unstable; urgency=medium\n\n  * Built from the vgpu workspace.\n\n -- vgpu developers <vgpu@example.org>  %s\n' \
    "$2" "$VER" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}")" | gzip -9n > "$d/changelog.gz"
}

# vgpu-dkms: the DKMS source tree dkms.conf describes, and the Rust metadata helper.
S="$WORK/vgpu-dkms"
mkdir -p "$S/usr/src" "$S/usr/sbin"
bash "$ROOT/scripts/dkms-source.sh" "$S/usr/src" >/dev/null
install -m 755 "$PKG/vgpu-dkms/vgpu-kernel-rust-prepare" "$S/usr/sbin/"
doc "$S" vgpu-dkms
finish vgpu-dkms "$S"

# vgpu-libs: the libraries in the system's library directory (where NVIDIA's packages put
# theirs; ldconfig's cache finds them, the ldconfig trigger updates it), and nvidia-smi.
S="$WORK/vgpu-libs"
L="$S/usr/lib/x86_64-linux-gnu"
mkdir -p "$L" "$S/usr/bin"
install -m 644 "$REL/libcuda.so" "$L/libcuda.so.1"
install -m 644 "$REL/libnvidia_ml.so" "$L/libnvidia-ml.so.1"
install -m 755 "$REL/vgpu-smi" "$S/usr/bin/nvidia-smi"
strip --strip-unneeded "$L"/*.so.1 "$S/usr/bin/nvidia-smi"
doc "$S" vgpu-libs
finish vgpu-libs "$S" "$(elf_depends "$L"/*.so.1 "$S/usr/bin/nvidia-smi")"

# vgpu-libs-dev: the unversioned names, in the linker's default path.
S="$WORK/vgpu-libs-dev"
mkdir -p "$S/usr/lib/x86_64-linux-gnu"
ln -s libcuda.so.1 "$S/usr/lib/x86_64-linux-gnu/libcuda.so"
ln -s libnvidia-ml.so.1 "$S/usr/lib/x86_64-linux-gnu/libnvidia-ml.so"
doc "$S" vgpu-libs-dev
finish vgpu-libs-dev "$S"

# vgpu-host: the mediator, the device process, the admin tool, units, configuration, docs.
S="$WORK/vgpu-host"
mkdir -p "$S/usr/sbin" "$S/usr/bin" "$S/usr/lib/systemd/system" "$S/etc/vgpu"
install -m 755 "$REL/vgpu-hostd" "$S/usr/sbin/"
install -m 755 "$REL/vgpu-stub" "$REL/vgpu-admin" "$S/usr/bin/"
strip --strip-unneeded "$S/usr/sbin/vgpu-hostd" "$S/usr/bin/vgpu-stub" "$S/usr/bin/vgpu-admin"
install -m 644 "$PKG/vgpu-host/vgpu-hostd.service" "$PKG/vgpu-host/vgpu-stub@.service" "$S/usr/lib/systemd/system/"
install -m 644 "$PKG/vgpu-host/hostd.toml" "$S/etc/vgpu/hostd.toml"
install -D -m 644 "$PKG/vgpu-host/sysusers.conf" "$S/usr/lib/sysusers.d/vgpu-host.conf"
doc "$S" vgpu-host
install -m 644 "$PKG/vgpu-host/README.Debian" "$PKG/vgpu-host/libvirt-domain.xml" "$S/usr/share/doc/vgpu-host/"
install -m 644 "$ROOT/host/vgpu-hostd.example.toml" "$S/usr/share/doc/vgpu-host/hostd.toml.example"
finish vgpu-host "$S" "$(elf_depends "$S/usr/sbin/vgpu-hostd" "$S/usr/bin/vgpu-stub" "$S/usr/bin/vgpu-admin")"

ls "$OUT"/vgpu-{dkms,libs,libs-dev,host}_"$VER"_*.deb
