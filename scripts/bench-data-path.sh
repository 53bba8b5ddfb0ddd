#!/usr/bin/env bash
# The data path, side by side in one run: (a) the mediator in-process (no transport),
# (b) libcuda over the Unix socket, (c) libcuda in a QEMU guest over /dev/nvidia0 (TCG: the
# guest's CPU is emulated), (d) over the socket to a mediator running the cuda backend in
# loopback (its "driver" vgpu's own libcuda, talking to a sim mediator: the backend's own cost);
# (e) the device process's own hop to the mediator, over a socket and over shared rings.
# Null-call round trip, launch rates, copy bandwidth by size from
# pageable and pinned memory, each copy also as a ratio to this host's memcpy for the size.
#   usage: scripts/bench-data-path.sh [--no-guest] [--guest-max-mib N]
set -euo pipefail
cd "$(dirname "$0")/.."
GUEST=1 GUEST_MAX=16
while [ $# -gt 0 ]; do
  case "$1" in
    --no-guest) GUEST=0; shift ;;
    --guest-max-mib) GUEST_MAX=${2:?}; shift 2 ;;
    *) echo "usage: $0 [--no-guest] [--guest-max-mib N]" >&2; exit 2 ;;
  esac
done
bash scripts/setup.sh >/dev/null
cargo build --release --workspace --locked -q
OUT=$(mktemp -d)
trap 'kill $HOSTD $LOOP 2>/dev/null || true; rm -rf "$OUT"' EXIT
LOOP=
echo "(a) in-process ..." >&2
cargo bench -q -p vgpu-host --bench data_path 2>/dev/null | grep -E '^[a-z0-9_]+ [0-9.]+$' > "$OUT/a"
echo "(e) the device process's hop: socket and shared rings ..." >&2
cargo bench -q -p vgpu-host --bench rings 2>/dev/null | grep -E '^[a-z0-9_]+ [0-9.]+$' > "$OUT/e"
# The CUDA program, built by the test crate's helper (nvcc from the cached wheels).
BUILT=$(cargo test -q --release -p vgpu-tests --test cuda_programs -- --ignored build_data_path_program --nocapture 2>/dev/null)
EXE=$(echo "$BUILT" | sed -n 's/^DATA_PATH_EXE //p')
GUEST_EXE=$(echo "$BUILT" | sed -n 's/^DATA_PATH_GUEST_EXE //p')
LIBCUDA_DIR=$(echo "$BUILT" | sed -n 's/^LIBCUDA_DIR //p')
[ -x "$EXE" ] || { echo "could not build tests/cuda/data_path.cu" >&2; exit 1; }
[ -e "$LIBCUDA_DIR/libcuda.so.1" ] || { echo "no libcuda.so.1 in '$LIBCUDA_DIR'" >&2; exit 1; }
LIBS="$LIBCUDA_DIR:$(ls -d "${VGPU_CACHE:-$HOME/.cache/vgpu}"/cuda-wheels/cu12/nvidia/cuda_runtime/lib)"
echo "(b) socket ..." >&2
target/release/vgpu-hostd --socket "$OUT/hostd.sock" --sim-memory-mib 2048 2>/dev/null &
HOSTD=$!
for _ in $(seq 100); do [ -S "$OUT/hostd.sock" ] && break; sleep 0.05; done
LD_LIBRARY_PATH="$LIBS" VGPU_SOCKET="$OUT/hostd.sock" "$EXE" 256 | grep -E '^[a-z0-9_]+ [0-9.]+$' > "$OUT/b"
echo "(d) cuda backend in loopback ..." >&2
VGPU_SOCKET="$OUT/hostd.sock" target/release/vgpu-hostd --socket "$OUT/loop.sock" --backend cuda --cuda-driver "$PWD/target/release/libcuda.so" 2>/dev/null &
LOOP=$!
for _ in $(seq 100); do [ -S "$OUT/loop.sock" ] && break; sleep 0.05; done
LD_LIBRARY_PATH="$LIBS" VGPU_SOCKET="$OUT/loop.sock" "$EXE" 256 | grep -E '^[a-z0-9_]+ [0-9.]+$' > "$OUT/d"
# The guest has the machine to itself: with these two mediators left running beside it, its run
# took over boot-guest.sh's 600 s (2 cores) and its column stopped after 16 KiB; alone, 160 s.
kill $HOSTD $LOOP 2>/dev/null || true
wait $HOSTD $LOOP 2>/dev/null || true
HOSTD= LOOP=
: > "$OUT/c"
if [ "$GUEST" = 1 ]; then
  echo "(c) guest ..." >&2
  mkdir -p "$OUT/payload/cu12"
  cp "$GUEST_EXE" "$OUT/payload/cu12/"
  cp "$(ls -d "${VGPU_CACHE:-$HOME/.cache/vgpu}"/cuda-wheels/cu12/nvidia/cuda_runtime/lib)/libcudart.so.12" "$OUT/payload/cu12/"
  printf '/opt/vgpu/cu12/data_path %s\n' "$GUEST_MAX" > "$OUT/payload/run.sh"
  bash qemu/harness/boot-guest.sh --payload "$OUT/payload" --run run.sh 2>/dev/null | grep -E '^[a-z0-9_]+ [0-9.]+$' > "$OUT/c" || true
fi
awk -v A="$OUT/a" -v B="$OUT/b" -v C="$OUT/c" -v D="$OUT/d" '
  function load(f, arr,   line, p) { while ((getline line < f) > 0) { split(line, p, " "); arr[p[1]] = p[2]; if (!(p[1] in seen)) { seen[p[1]] = 1; order[++n] = p[1] } } }
  function cell(arr, k, ratio,   v) { if (!(k in arr)) return sprintf("%12s", "-"); v = arr[k]; if (ratio > 0) return sprintf("%7.2f (%3.0f%%)", v, 100 * v / ratio); return sprintf("%12s", v) }
  function human(s) { s = s + 0; return s >= 1048576 ? s / 1048576 " MiB" : s / 1024 " KiB" }
  BEGIN {
    load(A, a); load(B, b); load(C, c); load(D, d)
    printf "%-26s %14s %14s %14s %14s\n", "", "(a) in-process", "(b) socket", "(c) guest", "(d) loopback"
    for (i = 1; i <= n; i++) {
      k = order[i]
      if (k == "floor_null_call_us") continue
      if (k ~ /^memcpy_/) {
        size = substr(k, 8)
        printf "%-26s %14s %14s %14s %14s\n", "memcpy " human(size), "", cell(b, k, 0), cell(c, k, 0), ""
        continue
      }
      label = k; unit = ""; ref = 0
      if (match(k, /_[0-9]+$/)) {
        size = substr(k, RSTART + 1); base = substr(k, 1, RSTART - 1)
        label = sprintf("%s %s", base, human(size)); unit = "GB/s"; ref = b["memcpy_" size]
      }
      gref = (ref > 0 && ("memcpy_" size) in c) ? c["memcpy_" size] : ref
      printf "%-26s %14s %14s %14s %14s\n", label, cell(a, k, ref), cell(b, k, ref), cell(c, k, gref), cell(d, k, ref)
      # The floor of each path (a bare socket ping-pong; in the guest an empty channel descriptor).
      if (k == "null_call_us") { f = "floor_null_call_us"; printf "%-26s %14s %14s %14s %14s\n", "  its floor (us)", cell(a, f, 0), cell(b, f, 0), cell(c, f, 0), cell(d, f, 0) }
    }
    print "copies in GB/s; in parentheses: % of memcpy for the size, this host'"'"'s (measured in (b)) for (a), (b), (d), the guest'"'"'s own for (c)"
    print "null call in us; launches per second"
  }'
# How vgpu-stub's channels reach the mediator (uapi shm_ring.rs), on this host's threads.
awk '{ v[$1] = $2 } END {
  printf "\n(e) device process -> mediator, us per round trip  %12s %14s\n", "socket", "shared rings"
  printf "%-50s %12s %14s\n", "  null call (MemGetInfo)", v["socket_null_call_us"], v["ring_null_call_us"]
  printf "%-50s %12s %14s\n", "  its floor (a bare 24-byte ping-pong)", v["socket_floor_us"], v["ring_floor_us"]
}' "$OUT/e"
