#!/usr/bin/env bash
# Boots the vgpu guest under QEMU 11 (TCG) with the VGPU-STUB device served by vgpu-stub, loads
# the guest driver (kmod/), and checks: the guest sees PCI 10de:2331 class 0x030200 at 00:05.0,
# vgpu.ko binds it (BAR0 magic, version, scratch self-test) and unloads cleanly.
# Builds/caches the kernel and the QEMU sysroot on first use (see build-kernel.sh,
# setup-qemu-sysroot.sh). Exit 0 only if the guest reported the device.
#   usage: qemu/harness/boot-guest.sh   (after `cargo build --release -p vgpu-stub`)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KDIR=$(bash "$HERE/build-kernel.sh")
QEMU=$(bash "$HERE/setup-qemu-sysroot.sh")
STUB="$ROOT/target/release/vgpu-stub"
[ -x "$STUB" ] || { echo "boot-guest: build vgpu-stub first (cargo build --release -p vgpu-stub)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'kill $STUB_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The guest driver, built out of tree from a copy (kmod/ includes uapi/src by relative path).
mkdir -p "$WORK/src/uapi" "$WORK/root/lib/modules"
cp -r "$ROOT/kmod" "$WORK/src/kmod"
cp -r "$ROOT/uapi/src" "$WORK/src/uapi/src"
RUSTC_VER=$(rustc --version | awk '{print $2}')
PATH="${VGPU_CACHE:-$HOME/.cache/vgpu}/guest/tools/bin:$PATH" \
RUST_LIB_SRC="${VGPU_CACHE:-$HOME/.cache/vgpu}/guest/src/pkg-rustsrc/usr/src/rustc-$RUSTC_VER/library" \
  make -s -C "$KDIR" M="$WORK/src/kmod" LLVM=-19 modules >"$WORK/kmod-build.log" 2>&1 \
  || { echo "boot-guest: building kmod failed:" >&2; cat "$WORK/kmod-build.log" >&2; exit 1; }
cp "$WORK/src/kmod/vgpu.ko" "$WORK/root/lib/modules/"

# initramfs: busybox, the driver, and an init that reports what the guest found.
mkdir -p "$WORK/root/bin" "$WORK/root/proc" "$WORK/root/sys" "$WORK/root/dev"
cp /bin/busybox "$WORK/root/bin/busybox"
cat > "$WORK/root/init" <<'EOI'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /lib/modules/vgpu.ko || echo "INSMOD-FAILED"
for d in /sys/bus/pci/devices/*; do
  drv=$(basename "$(readlink $d/driver 2>/dev/null)" 2>/dev/null)
  echo "PCI $(basename $d) $(cat $d/vendor) $(cat $d/device) $(cat $d/class) driver=${drv:-none}"
done
dmesg | grep -a "VGPU-STUB" | sed 's/^/DMESG /'
rmmod vgpu && echo "RMMOD-OK"
dmesg | grep -a "VGPU-STUB unbound" | sed 's/^/DMESG /'
echo "GUEST-DONE"
reboot -f
EOI
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.cpio.gz"

"$STUB" --socket "$WORK/vgpu.sock" 2> "$WORK/stub.log" &
STUB_PID=$!
for _ in $(seq 100); do [ -S "$WORK/vgpu.sock" ] && break; sleep 0.05; done
start=$(date +%s%N)
timeout 300 "$QEMU" -accel tcg -cpu max -m 512 -smp 1 -nographic -no-reboot \
  -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \
  -kernel "$KDIR/arch/x86/boot/bzImage" -initrd "$WORK/initramfs.cpio.gz" \
  -append "console=ttyS0 quiet panic=-1" -nic none \
  -device "{\"driver\":\"vfio-user-pci\",\"addr\":\"0x5\",\"socket\":{\"path\":\"$WORK/vgpu.sock\",\"type\":\"unix\"}}" \
  > "$WORK/guest.log" 2>&1 || true
end=$(date +%s%N)
grep -a -E '^(PCI|DMESG|RMMOD|INSMOD|GUEST-DONE)' "$WORK/guest.log" || true
echo "boot-guest: boot to poweroff took $(( (end - start) / 1000000 )) ms"
# At 00:05.0, the bus id the mediator's default device profile reports.
if grep -a -q -E '^PCI 0000:00:05.0 0x10de 0x2331 0x030200 driver=vgpu[[:space:]]*$' "$WORK/guest.log" \
   && grep -a -q 'VGPU-STUB bound: device protocol version' "$WORK/guest.log" \
   && grep -a -q '^RMMOD-OK' "$WORK/guest.log"; then
  echo "boot-guest: PASS: the guest sees the VGPU-STUB device (0000:00:05.0 10de:2331, class 030200), bound to vgpu.ko, unloads cleanly"
else
  echo "boot-guest: FAIL: VGPU-STUB device not seen; guest log:" >&2
  tail -40 "$WORK/guest.log" >&2
  echo "--- vgpu-stub log" >&2; cat "$WORK/stub.log" >&2
  exit 1
fi
