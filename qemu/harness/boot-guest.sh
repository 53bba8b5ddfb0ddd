#!/usr/bin/env bash
# Boots the vgpu guest under QEMU 11 (TCG) with the VGPU-STUB device served by vgpu-stub (and a
# vgpu-hostd mediator, sim backend, behind it), loads the guest driver (kmod/), and checks: the
# guest sees PCI 10de:2331 class 0x030200 at 00:05.0, vgpu.ko binds it (BAR0 magic, version,
# scratch self-test) and unloads cleanly.
#
# The initramfs holds busybox, the driver (built and installed by DKMS, loaded by modprobe), a
# glibc userland for dynamically linked programs (the host's loader and the libraries the
# payload and our libraries need; this host is Debian 12 like the guest userland), /sbin/ldconfig, and our libraries installed as a driver
# package would: /usr/lib/x86_64-linux-gnu/vgpu/{libcuda.so.1,libnvidia-ml.so.1} (+ .so links),
# found through /etc/ld.so.conf.d/vgpu.conf and ldconfig's cache only; vgpu-smi as
# /usr/bin/nvidia-smi when built.
#
#   usage: qemu/harness/boot-guest.sh [--payload DIR] [--run PATH] [--timeout SECONDS]
#                                     [--memory-quota-mib N]
#     --payload DIR   copied into the guest at /opt/vgpu
#     --run PATH      a script in the payload (relative to DIR, or /opt/vgpu/...), run with sh by
#                     init after modprobe and before modprobe -r; its output is printed between the
#                     lines `RUN-BEGIN <path>` and `RUN-END rc=<status> secs=<guest seconds>`
#     --timeout S     bound on the whole boot (default 300, 600 with --run)
#   (after `cargo build --release --workspace`)
# Builds/caches the kernel and the QEMU sysroot on first use (see build-kernel.sh,
# setup-qemu-sysroot.sh). Exit 0 only if the guest reported the device and, with --run, the
# script ran to its end with status 0.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAYLOAD="" RUN="" TIMEOUT="" QUOTA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) PAYLOAD=${2:?--payload DIR}; shift 2 ;;
    --run) RUN=${2:?--run PATH}; shift 2 ;;
    --timeout) TIMEOUT=${2:?--timeout SECONDS}; shift 2 ;;
    --memory-quota-mib) QUOTA=${2:?--memory-quota-mib N}; shift 2 ;;
    *) echo "boot-guest: unknown argument $1 (usage: boot-guest.sh [--payload DIR] [--run PATH] [--timeout S] [--memory-quota-mib N])" >&2; exit 2 ;;
  esac
done
if [ -n "$RUN" ]; then
  [ -n "$PAYLOAD" ] || { echo "boot-guest: --run needs --payload" >&2; exit 2; }
  case "$RUN" in /opt/vgpu/*) ;; /*) echo "boot-guest: --run $RUN is not in the payload (/opt/vgpu)" >&2; exit 2 ;; *) RUN="/opt/vgpu/$RUN" ;; esac
  [ -f "$PAYLOAD/${RUN#/opt/vgpu/}" ] || { echo "boot-guest: --run: $PAYLOAD/${RUN#/opt/vgpu/} does not exist" >&2; exit 2; }
fi
[ -z "$PAYLOAD" ] || [ -d "$PAYLOAD" ] || { echo "boot-guest: --payload $PAYLOAD is not a directory" >&2; exit 2; }
TIMEOUT=${TIMEOUT:-$([ -n "$RUN" ] && echo 600 || echo 300)}

KDIR=$(bash "$HERE/build-kernel.sh")
QEMU=$(bash "$HERE/setup-qemu-sysroot.sh")
REL="$ROOT/target/release"
STUB="$REL/vgpu-stub"
HOSTD="$REL/vgpu-hostd"
ADMIN="$REL/vgpu-admin"
for f in "$STUB" "$HOSTD" "$ADMIN" "$REL/libcuda.so" "$REL/libnvidia_ml.so"; do
  [ -e "$f" ] || { echo "boot-guest: $f missing: build first (cargo build --release --workspace)" >&2; exit 1; }
done
WORK=$(mktemp -d)
STUB_PID="" HOSTCTL_PID=""
trap '[ -z "$HOSTCTL_PID" ] || kill $HOSTCTL_PID 2>/dev/null || true; [ -z "$STUB_PID" ] || kill $STUB_PID 2>/dev/null || true; [ ! -e "$WORK/hostd.pid" ] || kill "$(cat "$WORK/hostd.pid")" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The guest driver, built and installed by DKMS (dkms.conf) against the guest kernel tree, into
# the initramfs's /lib/modules/<release>/updates/dkms with modules.dep: the guest modprobes it.
mkdir -p "$WORK/root"
KO=$(bash "$HERE/dkms-install.sh" "$KDIR" "$WORK/root" 2>"$WORK/dkms.log") \
  || { echo "boot-guest: building the guest driver with DKMS failed:" >&2; cat "$WORK/dkms.log" >&2; exit 1; }
echo "boot-guest: DKMS built and installed ${KO#"$WORK/root"}"

# initramfs: busybox, the driver, a glibc userland, our libraries, the payload, and an init that
# reports what the guest found.
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,proc,sys,dev,tmp,run,etc/ld.so.conf.d,var/cache/ldconfig,opt/vgpu}
chmod 1777 "$R/tmp"
cp /bin/busybox "$R/bin/busybox"
! readelf -l /sbin/ldconfig | grep -q INTERP \
  || { echo "boot-guest: /sbin/ldconfig is not statically linked; the guest needs a static one" >&2; exit 1; }
cp /sbin/ldconfig "$R/sbin/ldconfig"
VLIB=/usr/lib/x86_64-linux-gnu/vgpu
mkdir -p "$R$VLIB"
strip --strip-debug -o "$R$VLIB/libcuda.so.1" "$REL/libcuda.so"
strip --strip-debug -o "$R$VLIB/libnvidia-ml.so.1" "$REL/libnvidia_ml.so"
ln -s libcuda.so.1 "$R$VLIB/libcuda.so"
ln -s libnvidia-ml.so.1 "$R$VLIB/libnvidia-ml.so"
[ ! -x "$REL/vgpu-smi" ] || strip --strip-debug -o "$R/usr/bin/nvidia-smi" "$REL/vgpu-smi"
echo "include /etc/ld.so.conf.d/*.conf" > "$R/etc/ld.so.conf"
printf '%s\n' /usr/local/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu > "$R/etc/ld.so.conf.d/x86_64-linux-gnu.conf"
echo "$VLIB" > "$R/etc/ld.so.conf.d/vgpu.conf"
[ -z "$PAYLOAD" ] || cp -a "$PAYLOAD/." "$R/opt/vgpu/"

# The system libraries every dynamic ELF file in the image needs, at the paths the host's
# loader resolves them to (the guest has real /lib, /lib64 directories rather than usrmerge
# links). Libraries the image itself provides (cudart next to a program, found through its
# $ORIGIN runpath; libcuda/libnvidia-ml, found through ldconfig's cache in the guest) are skipped.
declare -A SYSLIBS=()
MISSING=""
while IFS= read -r -d '' f; do
  [ "$(head -c 4 "$f" | tail -c 3)" = "ELF" ] || continue
  out=$(ldd "$f" 2>/dev/null) || continue # static or not loadable here
  while read -r a b c d; do
    if [ "$b" = "=>" ] && [ "$c $d" = "not found" ]; then
      case "$a" in libcuda.so.1|libnvidia-ml.so.1) ;; *) MISSING+=" ${f#"$R"}:$a" ;; esac
    elif [ "$b" = "=>" ]; then lib=$c
    else lib=$a
    fi
    case "${lib:-}" in "$R"/*) ;; /lib/*|/lib64/*|/usr/lib/*|/usr/lib64/*) SYSLIBS[$lib]=1 ;; esac
    lib=""
  done <<<"$out"
done < <(find "$R" -type f -print0)
[ -z "$MISSING" ] || echo "boot-guest: warning: libraries not found for:$MISSING" >&2
for lib in "${!SYSLIBS[@]}"; do
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done

cat > "$R/etc/vgpu-harness.conf" <<EOC
RUN='$RUN'
EOC
cat > "$R/init" <<'EOI'
#!/bin/busybox sh
echo # the firmware's last line has no newline
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /etc/vgpu-harness.conf
modprobe vgpu || echo "MODPROBE-FAILED"
sed -n "s/^\(.*vgpu\.ko\):.*/MODULE $(uname -r) \1/p" /lib/modules/$(uname -r)/modules.dep
for d in /sys/bus/pci/devices/*; do
  drv=$(basename "$(readlink $d/driver 2>/dev/null)" 2>/dev/null)
  echo "PCI $(basename $d) $(cat $d/vendor) $(cat $d/device) $(cat $d/class) driver=${drv:-none}"
done
# lspci -k: busybox's when it has one, else the same from sysfs.
if busybox --list | grep -qx lspci; then
  lspci -k | sed 's/^/LSPCI /'
else
  for d in /sys/bus/pci/devices/*; do
    s=$(basename $d); c=$(cat $d/class); c=${c#0x}; c=${c%??}
    v=$(cat $d/vendor); p=$(cat $d/device); sv=$(cat $d/subsystem_vendor); sp=$(cat $d/subsystem_device)
    echo "LSPCI ${s#0000:} Class $c: ${v#0x}:${p#0x} (rev $(cat $d/revision | sed 's/^0x//'))"
    echo "LSPCI 	Subsystem: ${sv#0x}:${sp#0x}"
    drv=$(basename "$(readlink $d/driver 2>/dev/null)" 2>/dev/null)
    [ -z "$drv" ] || echo "LSPCI 	Kernel driver in use: $drv"
  done
fi
dmesg | grep -a "VGPU-STUB" | sed 's/^/DMESG /'
ldconfig || echo "LDCONFIG-FAILED"
ldconfig -p | grep -E 'libcuda|libnvidia-ml' | sed 's/^[[:space:]]*/LDCONFIG /'
if [ -n "$RUN" ]; then
  kmsgs=$(dmesg | wc -l)
  read t0 _ < /proc/uptime
  echo "RUN-BEGIN $RUN"
  sh "$RUN" </dev/null 2>&1
  rc=$?
  read t1 _ < /proc/uptime
  echo "RUN-END rc=$rc secs=$(awk "BEGIN { print $t1 - $t0 }")"
  dmesg | tail -n +$((kmsgs + 1)) | sed 's/^/KMSG /'
fi
modprobe -r vgpu && echo "RMMOD-OK"
dmesg | grep -a "VGPU-STUB unbound" | sed 's/^/DMESG /'
dmesg | grep -a -E -A25 '(WARNING: CPU|BUG: |Oops|UBSAN|KASAN|refcount_t:|kernel BUG)' | sed 's/^/KPROBLEM /'
echo "GUEST-DONE"
reboot -f
EOI
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.cpio.gz"
echo "boot-guest: initramfs $(( $(stat -c %s "$WORK/initramfs.cpio.gz") / 1024 )) KiB gzip'd ($(du -sk "$R" | cut -f1) KiB unpacked)"

# The mediator and the device in front of it (host-side.sh).
. "$HERE/host-side.sh"
start_host_side boot-guest
# Faults on request, for the tests: a line "HOSTCTL restart-mediator" from the guest kills
# vgpu-hostd (-9) and starts it again (same configuration and sockets); "HOSTCTL kill-vm" kills
# QEMU (-9), as a VM that crashes. Each is done once; what was done goes to hostctl.log.
hostctl() {
  local restarted=0 killed=0
  while [ ! -e "$WORK/qemu.exited" ]; do
    if [ $restarted = 0 ] && grep -a -q 'HOSTCTL restart-mediator' "$WORK/guest.raw" 2>/dev/null; then
      restarted=1
      kill -9 "$(cat "$WORK/hostd.pid")" 2>/dev/null || true
      sleep 0.2
      if start_hostd; then echo "restarted the mediator" >> "$WORK/hostctl.log"; else echo "the mediator did not come back" >> "$WORK/hostctl.log"; fi
    fi
    if [ $killed = 0 ] && grep -a -q 'HOSTCTL kill-vm' "$WORK/guest.raw" 2>/dev/null; then
      killed=1
      "$ADMIN" --socket "$WORK/admin.sock" vms 2>&1 | sed 's/^/HOST-ADMIN-BEFORE-KILL /' >> "$WORK/hostctl.log"
      kill -9 "$(cat "$WORK/qemu.pid")" 2>/dev/null || true
      echo "killed the VM" >> "$WORK/hostctl.log"
    fi
    sleep 0.1
  done
}
: > "$WORK/guest.raw"
hostctl &
HOSTCTL_PID=$!
start=$(date +%s%N)
qrc=0
timeout "$TIMEOUT" "$QEMU" -accel tcg -cpu max -m 512 -smp 1 -nographic -no-reboot -pidfile "$WORK/qemu.pid" \
  -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \
  -kernel "$KDIR/arch/x86/boot/bzImage" -initrd "$WORK/initramfs.cpio.gz" \
  -append "console=ttyS0 quiet panic=-1" -nic none \
  -device "{\"driver\":\"vfio-user-pci\",\"addr\":\"0x5\",\"socket\":{\"path\":\"$WORK/vgpu.sock\",\"type\":\"unix\"}}" \
  > "$WORK/guest.raw" 2>&1 || qrc=$?
end=$(date +%s%N)
touch "$WORK/qemu.exited"
wait $HOSTCTL_PID 2>/dev/null || true
HOSTCTL_PID=""
[ ! -e "$WORK/hostctl.log" ] || sed 's/^/boot-guest: hostctl: /' "$WORK/hostctl.log"
tr -d '\r' < "$WORK/guest.raw" > "$WORK/guest.log"
# What the host's admin saw of this VM (the table, and as JSON on one line).
"$ADMIN" --socket "$WORK/admin.sock" vms 2>&1 | sed 's/^/HOST-ADMIN /' || true
echo "HOST-ADMIN-JSON $("$ADMIN" --socket "$WORK/admin.sock" --json vms 2>&1 | tr -d '\n' || true)"
if grep -q '^killed the VM' "$WORK/hostctl.log" 2>/dev/null; then
  # The VM was killed on request (a crash): the host must free everything it held, soon.
  t0=$(date +%s%N) freed=""
  for _ in $(seq 200); do
    j=$("$ADMIN" --socket "$WORK/admin.sock" --json vms 2>/dev/null || true)
    if echo "$j" | grep -q '"clients":0' && echo "$j" | grep -q '"memory_used":0'; then freed=1; break; fi
    sleep 0.1
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  "$ADMIN" --socket "$WORK/admin.sock" vms 2>&1 | sed 's/^/HOST-ADMIN-AFTER-KILL /' || true
  sed -n '/^RUN-BEGIN /,$p' "$WORK/guest.log" | grep -a -v '^HOSTCTL' || true
  [ -n "$freed" ] || { echo "boot-guest: FAIL: the killed VM's resources were not freed within 20 s" >&2; exit 1; }
  echo "boot-guest: VM killed on request; the mediator freed everything it held within $ms ms of QEMU's exit"
  exit 0
fi
grep -a -E '^(MODULE |PCI |LSPCI |DMESG |LDCONFIG |LDCONFIG-FAILED|RMMOD-OK|MODPROBE-FAILED|GUEST-DONE)' "$WORK/guest.log" || true
echo "boot-guest: boot to poweroff took $(( (end - start) / 1000000 )) ms"
[ "$qrc" != 124 ] || echo "boot-guest: QEMU timed out after $TIMEOUT s (guest log tail below)" >&2

fail() {
  echo "boot-guest: FAIL: $*; guest log (tail, without the run script's output, which is on stdout):" >&2
  sed '/^RUN-BEGIN /,/^RUN-END /d' "$WORK/guest.log" | tail -60 >&2
  echo "--- vgpu-stub log (tail)" >&2; tail -40 "$WORK/stub.log" >&2
  echo "--- vgpu-hostd log (tail)" >&2; tail -40 "$WORK/hostd.log" >&2
  exit 1
}
# A kernel warning, oops or sanitizer report during the run is a failure even if the checks passed.
# (init copies such dmesg lines to the console as KPROBLEM lines; quiet keeps warnings off it.)
if grep -a -q '^KPROBLEM ' "$WORK/guest.log"; then
  grep -a '^KPROBLEM ' "$WORK/guest.log" | head -80 >&2
  fail "the guest kernel reported a problem"
fi
# At 00:05.0, the bus id the mediator's default device profile reports.
if grep -a -q -E '^PCI 0000:00:05.0 0x10de 0x2331 0x030200 driver=vgpu[[:space:]]*$' "$WORK/guest.log" \
   && grep -a -q 'VGPU-STUB bound: device protocol version' "$WORK/guest.log" \
   && grep -a -q '^RMMOD-OK' "$WORK/guest.log"; then
  echo "boot-guest: PASS: the guest sees the VGPU-STUB device (0000:00:05.0 10de:2331, class 030200), bound to vgpu.ko, unloads cleanly"
else
  # The run's output is the likeliest explanation when it is there.
  sed -n '/^RUN-BEGIN /,/^RUN-END /p' "$WORK/guest.log"
  fail "VGPU-STUB device not seen, not bound, or not unloaded"
fi
if [ -n "$RUN" ]; then
  sed -n '/^RUN-BEGIN /,/^RUN-END /p' "$WORK/guest.log"
  grep -a '^KMSG ' "$WORK/guest.log" || true
  grep -a -q '^RUN-BEGIN ' "$WORK/guest.log" || fail "the guest never started $RUN"
  end_line=$(grep -a '^RUN-END ' "$WORK/guest.log" || true)
  [ -n "$end_line" ] || fail "$RUN did not finish (QEMU exit status $qrc)"
  echo "boot-guest: $end_line"
  case "$end_line" in "RUN-END rc=0 "*) ;; *) fail "$RUN failed ($end_line)" ;; esac
fi
