#!/usr/bin/env bash
# Boots the vgpu guest under QEMU 11 (TCG) with the VGPU-STUB device served by vgpu-stub, and
# checks that the guest sees it: PCI 10de:2331, class 0x030200, MSI-X capable.
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

# initramfs: busybox and an init that reports what PCI devices the guest found.
mkdir -p "$WORK/root/bin" "$WORK/root/proc" "$WORK/root/sys" "$WORK/root/dev"
cp /bin/busybox "$WORK/root/bin/busybox"
cat > "$WORK/root/init" <<'EOI'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for d in /sys/bus/pci/devices/*; do
  echo "PCI $(basename $d) $(cat $d/vendor) $(cat $d/device) $(cat $d/class) msix=$(ls $d/msi_irqs 2>/dev/null | wc -l)"
done
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
grep -a -E '^(PCI|GUEST-DONE)' "$WORK/guest.log" || true
echo "boot-guest: boot to poweroff took $(( (end - start) / 1000000 )) ms"
# At 00:05.0, the bus id the mediator's default device profile reports.
if grep -a -q -E '^PCI 0000:00:05.0 0x10de 0x2331 0x030200' "$WORK/guest.log"; then
  echo "boot-guest: PASS: the guest sees the VGPU-STUB device (0000:00:05.0 10de:2331, class 030200)"
else
  echo "boot-guest: FAIL: VGPU-STUB device not seen; guest log:" >&2
  tail -40 "$WORK/guest.log" >&2
  echo "--- vgpu-stub log" >&2; cat "$WORK/stub.log" >&2
  exit 1
fi
