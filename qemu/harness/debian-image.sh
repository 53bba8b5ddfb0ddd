#!/usr/bin/env bash
# Builds (once, cached outside the repo) a stock Debian trixie guest for the install tier:
# Debian's own trixie-backports kernel 7.3 (built with Rust), its headers, dkms, rustc, udev,
# systemd and python3, a user `user` (uid 1000), and a boot-time unit that runs a payload
# (boot-debian.sh). Prints the cache directory:
#   vmlinuz, initrd.img, disk.img (ext4, root; QEMU opens it read-only with snapshot=on),
#   debs/vgpu-kernel-rust-<krel>_*.deb: the kernel's Rust metadata, which Debian's headers lack,
#     made in the image's own root by packaging/deb/vgpu-dkms/vgpu-kernel-rust-prepare with the
#     image's rustc, bindgen and linux-source (what a user would run, natively here; the guest
#     then installs the package instead of rebuilding it under TCG).
# Idempotent; the cache key is what the image is made of (packages, the harness files in
# debian/, the prepare script).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
exec 3>&1 1>&2
CACHE="${VGPU_CACHE:-$HOME/.cache/vgpu}/debian-guest"
KREL=7.3.4+deb13-amd64
PREPARE="$ROOT/packaging/deb/vgpu-dkms/vgpu-kernel-rust-prepare"
log() { echo "debian-image: $*" >&2; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -n 9 || { log "waiting for another build of the Debian image"; flock 9; }
# What the image is made of (bump IMAGE_REV when the steps below change what they make).
IMAGE_REV=1
GUEST_PKGS=linux-base/trixie-backports,systemd-sysv,udev,kmod,dkms,make,rustc,python3,procps,util-linux,initramfs-tools,linux-image-$KREL,linux-headers-$KREL
BUILD_PKGS="linux-source-7.3 rust-src openssl bindgen libclang-dev flex bison bc libelf-dev libssl-dev"
KEY=$( (echo "$IMAGE_REV $KREL $GUEST_PKGS $BUILD_PKGS"; cat "$PREPARE" "$HERE/debian/vgpu-harness" "$HERE/debian/vgpu-harness.service") | sha256sum | cut -c1-16)
OUT="$CACHE/$KEY"
# The host's tools, also when the image is cached (the tier checks the packages with lintian and
# reads the payload disk with debugfs).
need=()
for p in mmdebstrap e2fsprogs lintian; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -f "$OUT/.complete" ]; then echo "$OUT" >&3; exit 0; fi
# Removes a cache directory, first undoing any bind mount an interrupted build left in it (and
# never crossing into another file system).
remove_dir() {
  { grep -o " $1/[^ ]*" /proc/mounts || true; } | sort -r | xargs -r umount -l
  rm -rf --one-file-system "$1"
}

# trixie's keys must be known (bookworm's keyring package has them once current).
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null 2>&1 || true
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

remove_dir "$OUT" && mkdir -p "$OUT/debs"
R="$OUT/root"
log "mmdebstrap trixie + trixie-backports' kernel $KREL (about 5 minutes)"
t0=$(date +%s)
mmdebstrap --mode=root --variant=minbase --components=main \
  --include="$GUEST_PKGS,${BUILD_PKGS// /,}" \
  --customize-hook='echo vgpu-guest > "$1/etc/hostname"' \
  trixie "$R" "deb $mirror trixie main" "deb $mirror trixie-backports main" >&2
log "rootfs in $(( $(date +%s) - t0 )) s"

# The kernel's Rust metadata, made in the image's root (its rustc, bindgen, gcc, linux-source).
mount --bind /proc "$R/proc"; mount --bind /dev "$R/dev"; mount --bind /sys "$R/sys"
umount_all() { umount "$R/proc" "$R/dev" "$R/sys" 2>/dev/null || true; }
trap umount_all EXIT
install -m 755 "$PREPARE" "$R/usr/local/sbin/vgpu-kernel-rust-prepare"
mkdir -p "$R/tmp/debs"
t0=$(date +%s)
chroot "$R" /usr/local/sbin/vgpu-kernel-rust-prepare --deb /tmp/debs "$KREL" >&2
log "Rust metadata of $KREL in $(( $(date +%s) - t0 )) s"
cp "$R"/tmp/debs/*.deb "$OUT/debs/"
rm -rf "$R/tmp/debs" "$R/usr/local/sbin/vgpu-kernel-rust-prepare"
chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove $BUILD_PKGS >&2
chroot "$R" apt-get clean
umount_all
trap - EXIT

# A user who is not root; the harness unit; no login prompt on the serial console; boot fast.
chroot "$R" useradd -m -u 1000 -s /bin/sh user
install -m 755 "$HERE/debian/vgpu-harness" "$R/usr/local/sbin/vgpu-harness"
install -m 644 "$HERE/debian/vgpu-harness.service" "$R/etc/systemd/system/"
chroot "$R" systemctl enable vgpu-harness.service >&2
chroot "$R" systemctl mask serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service >&2
echo "/dev/vda / ext4 defaults 0 1" > "$R/etc/fstab"
cp -L "$R/boot/vmlinuz-$KREL" "$OUT/vmlinuz"
cp -L "$R/boot/initrd.img-$KREL" "$OUT/initrd.img"
log "making the disk image"
mke2fs -q -t ext4 -L root -d "$R" "$OUT/disk.img" 6G
remove_dir "$R"
touch "$OUT/.complete"
for old in "$CACHE"/*/; do [ "${old%/}" = "$OUT" ] || { log "removing the outdated image ${old%/}"; remove_dir "${old%/}"; }; done
echo "$OUT" >&3
