#!/usr/bin/env bash
# The check to run on a machine with an NVIDIA GPU and NVIDIA's driver: bash scripts/gpu-check.sh [OUT_DIR]
#
# Parts (each time-boxed; a summary table at the end, every figure in OUT_DIR):
#   1. ptx-conformance: the sim's PTX conformance corpus (host/tests/conformance) run natively
#      through NVIDIA's libcuda.so.1. Writes OUT_DIR/conformance-golden.json: copy it to
#      host/tests/conformance/golden/<sm>.json and commit it, and from then on CI checks the sim
#      against this GPU on every case (`cargo test -p vgpu-host --test conformance`). Also says
#      where the GPU and the ISA reference disagree (a reference to correct, or a GPU quirk).
# Needs python3 only (no network, no Rust). Without a GPU it says so and exits 0, reporting
# nothing as passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-out}
mkdir -p "$out"

lib=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ { print $NF; exit }')
if [ -z "$lib" ] || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU with NVIDIA's driver on this machine; nothing was checked"
  exit 0
fi
if grep -qa VGPU_SOCKET "$lib"; then
  echo "gpu-check: $lib is vgpu's own libcuda, not NVIDIA's; nothing was checked" >&2
  exit 0
fi
nvidia-smi -L | tee "$out/gpus.txt"

declare -A result
status=0
run_part() { # NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  cat "$out/$name.txt"
  case $rc in
    0) result[$name]="pass ($((SECONDS - t0)) s)" ;;
    124) result[$name]="TIMEOUT after ${secs} s"; status=1 ;;
    *) result[$name]="FAIL (exit $rc, $((SECONDS - t0)) s): see $out/$name.txt"; status=1 ;;
  esac
}

run_part ptx-conformance 300 python3 host/tests/conformance/run_driver.py --driver "$lib" --out "$out/conformance-golden.json"

echo
echo "gpu-check summary ($(head -1 "$out/gpus.txt"))"
for part in ptx-conformance; do
  printf '  %-18s %s\n' "$part" "${result[$part]}"
done
exit $status
