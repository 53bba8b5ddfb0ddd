#!/usr/bin/env bash
# Boots the stock Debian trixie guest (debian-image.sh: Debian's own kernel 7.3, systemd, udev)
# under QEMU 11 (TCG) with the VGPU-STUB device served by vgpu-stub and a vgpu-hostd mediator
# (sim backend) behind it, and runs a payload script as root once the system is up. Nothing of
# vgpu is in the image: the script installs what it tests (e.g. vgpu's .debs from the payload).
#
#   usage: qemu/harness/boot-debian.sh --payload DIR --run SCRIPT [--timeout SECONDS]
#     --payload DIR   a second disk, mounted at /opt/vgpu in the guest (harness.conf is added)
#     --run SCRIPT    a script in DIR, run with sh by a systemd unit after boot; its output is
#                     printed between `RUN-BEGIN SCRIPT` and `RUN-END rc=N secs=S`
#     --timeout S     bound on the whole boot (default 1200)
#   (after `cargo build --release --workspace`)
# Exit 0 only if the script ran to its end with status 0 and the guest kernel reported no
# warning or oops.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAYLOAD="" RUN="" TIMEOUT=1200 QUOTA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) PAYLOAD=${2:?--payload DIR}; shift 2 ;;
    --run) RUN=${2:?--run SCRIPT}; shift 2 ;;
    --timeout) TIMEOUT=${2:?--timeout SECONDS}; shift 2 ;;
    *) echo "boot-debian: unknown argument $1 (usage: boot-debian.sh --payload DIR --run SCRIPT [--timeout S])" >&2; exit 2 ;;
  esac
done
[ -d "$PAYLOAD" ] && [ -f "$PAYLOAD/$RUN" ] || { echo "boot-debian: --payload DIR and --run SCRIPT (a file in DIR) are needed" >&2; exit 2; }

IMG=$(bash "$HERE/debian-image.sh")
QEMU=$(bash "$HERE/setup-qemu-sysroot.sh")
REL="$ROOT/target/release"
STUB="$REL/vgpu-stub"
HOSTD="$REL/vgpu-hostd"
for f in "$STUB" "$HOSTD"; do
  [ -e "$f" ] || { echo "boot-debian: $f missing: build first (cargo build --release --workspace)" >&2; exit 1; }
done
WORK=$(mktemp -d)
STUB_PID=""
trap '[ -z "$STUB_PID" ] || kill $STUB_PID 2>/dev/null || true; [ ! -e "$WORK/hostd.pid" ] || kill "$(cat "$WORK/hostd.pid")" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The payload disk: the payload, the harness's settings (written into DIR), room for what the
# script writes.
printf "RUN='%s'\n" "$RUN" > "$PAYLOAD/harness.conf"
size_mib=$(( $(du -sm "$PAYLOAD" | cut -f1) * 5 / 4 + 64 ))
mke2fs -q -t ext4 -L vgpupayload -d "$PAYLOAD" "$WORK/payload.img" "${size_mib}M"

. "$HERE/host-side.sh"
start_host_side boot-debian

start=$(date +%s)
qrc=0
# The root disk is the cached image, opened with snapshot=on: the guest's writes go to a
# temporary overlay, so every boot starts from the same stock system.
timeout "$TIMEOUT" "$QEMU" -accel tcg -cpu max -m 3072 -smp 2 -nographic -no-reboot \
  -object memory-backend-memfd,id=mem,size=3072M,share=on -machine q35,memory-backend=mem \
  -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
  -append "root=/dev/vda ro console=ttyS0 quiet loglevel=3 panic=-1 systemd.show_status=false" \
  -drive "file=$IMG/disk.img,if=virtio,format=raw,snapshot=on" \
  -drive "file=$WORK/payload.img,if=virtio,format=raw" -nic none \
  -device "{\"driver\":\"vfio-user-pci\",\"addr\":\"0x5\",\"socket\":{\"path\":\"$WORK/vgpu.sock\",\"type\":\"unix\"}}" \
  > "$WORK/guest.raw" 2>&1 || qrc=$?
echo "boot-debian: boot to poweroff took $(( $(date +%s) - start )) s"
tr -d '\r' < "$WORK/guest.raw" > "$WORK/guest.log"

fail() {
  echo "boot-debian: FAIL: $*; serial console (tail):" >&2
  tail -80 "$WORK/guest.log" >&2
  echo "--- vgpu-stub log (tail)" >&2; tail -20 "$WORK/stub.log" >&2
  echo "--- vgpu-hostd log (tail)" >&2; tail -20 "$WORK/hostd.log" >&2
  exit 1
}
[ "$qrc" != 124 ] || fail "QEMU timed out after $TIMEOUT s"
# The script's output as the guest wrote it to the payload disk (the console may interleave
# kernel messages).
debugfs -R "cat /out.log" "$WORK/payload.img" > "$WORK/out.log" 2>/dev/null || true
[ -s "$WORK/out.log" ] || fail "the guest never ran $RUN (no out.log on the payload disk)"
cat "$WORK/out.log"
grep -q '^KPROBLEM ' "$WORK/out.log" && fail "the guest kernel reported a problem"
end_line=$(grep -a '^RUN-END ' "$WORK/out.log" || true)
[ -n "$end_line" ] || fail "$RUN did not finish"
echo "boot-debian: $end_line"
case "$end_line" in "RUN-END rc=0 "*) ;; *) fail "$RUN failed ($end_line)" ;; esac
