# Sourced by boot-guest.sh and boot-debian.sh: the host side of one VM. vgpu-hostd configured
# as a host serving VMs is (one sim GPU, this guest a VM on it with its own socket and, if
# asked, memory quota; the admin socket), and vgpu-stub in front of it for QEMU's vfio-user-pci.
# Needs WORK, HOSTD, STUB and QUOTA (may be empty); sets STUB_PID; the mediator's pid is in
# $WORK/hostd.pid. QEMU attaches $WORK/vgpu.sock.
write_hostd_config() {
  {
    printf '[[gpu]]\nname = "gpu0"\nbackend = "sim"\n'
    printf '[[vm]]\nname = "guest"\ngpu = "gpu0"\nsocket = "%s"\n' "$WORK/hostd.sock"
    [ -z "$QUOTA" ] || printf 'memory_quota_mib = %s\n' "$QUOTA"
  } > "$WORK/hostd.toml"
}
start_hostd() {
  rm -f "$WORK/hostd.sock"
  VGPU_LOG=${VGPU_LOG:-debug} "$HOSTD" --config "$WORK/hostd.toml" --admin-socket "$WORK/admin.sock" >> "$WORK/hostd.log" 2>&1 &
  echo $! > "$WORK/hostd.pid"
  for _ in $(seq 200); do [ -S "$WORK/hostd.sock" ] && return 0; sleep 0.05; done
  return 1
}
start_host_side() { # $1: the caller's name, for messages
  write_hostd_config
  start_hostd || { echo "$1: vgpu-hostd did not create its socket; its log:" >&2; cat "$WORK/hostd.log" >&2; exit 1; }
  # VGPU_STUB_ARGS: more options for the device process (e.g. --no-shared-rings, to compare).
  echo "$1: vgpu-stub --mediator $WORK/hostd.sock ${VGPU_STUB_ARGS:-}"
  # shellcheck disable=SC2086 # split on purpose: a list of options
  "$STUB" --socket "$WORK/vgpu.sock" --mediator "$WORK/hostd.sock" ${VGPU_STUB_ARGS:-} 2> "$WORK/stub.log" &
  STUB_PID=$!
  for _ in $(seq 100); do [ -S "$WORK/vgpu.sock" ] && break; sleep 0.05; done
}
