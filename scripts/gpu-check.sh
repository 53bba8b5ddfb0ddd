#!/usr/bin/env bash
# The check to run on a machine with an NVIDIA GPU and NVIDIA's driver (no Rust, no network
# needed there): build the bundle here first (bash scripts/gpu-bundle.sh), carry the repository
# with target/gpu-bundle, then there:
#     bash scripts/gpu-check.sh [OUT_DIR]
# Each part runs the same work natively (NVIDIA's libcuda.so.1) and on vgpu (vgpu's libcuda.so.1
# -> socket -> vgpu-hostd --backend cuda, which runs it in a worker process on the same GPU) and
# compares. Parts (each time-boxed; a summary table at the end, every figure in OUT_DIR):
#   ptx-conformance  the sim's PTX conformance corpus (host/tests/conformance) run natively.
#                    Writes OUT_DIR/conformance-golden.json: copy it to
#                    host/tests/conformance/golden/<sm>.json and commit it; from then on CI
#                    checks the sim against this GPU on every case.
#   programs         tests/cuda/*.cu built with nvcc for sm_90: identical output both ways.
#   data-path        tests/cuda/data_path.cu both ways: null call, launch rates, copy bandwidth
#                    4 KiB..1 GiB pageable and pinned; vgpu as % of native (data-path.json).
#   isolation        tests/gpu/isolation.py on vgpu: a second guest process reading the first
#                    one's device address never sees its bytes; the first is unharmed.
#   torch            tests/gpu/torch_check.py both ways: matmul 4096^3 (cuBLAS, TFLOP/s), conv2d,
#                    softmax, 20 training steps of a small CNN (losses within 1e-5), a greedy
#                    64-token decode of a random-init GPT-2 (identical tokens; tokens/s ratio,
#                    the headline figure). Needs PyTorch with CUDA (and transformers).
#   cupy             tests/cupy_exactness.py (CuPy against NumPy) both ways, if CuPy imports.
# Still to come (issue 17): numba-cuda, shares of three weighted tenants.
#
#     bash scripts/gpu-check.sh --rehearse [OUT_DIR]
# runs the same script on a machine without a GPU: "native" is then vgpu's libcuda on a sim
# mediator, and "vgpu" the cuda backend in loopback in front of it. It proves the script, not a
# GPU; its figures say nothing about one. Without a GPU and without --rehearse the script says
# so and exits 0, reporting nothing as passed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
rehearse=0
if [ "${1:-}" = --rehearse ]; then
  rehearse=1
  shift
fi
out=${1:-gpu-check-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bundle=$(cd "${VGPU_BUNDLE:-target/gpu-bundle}" 2>/dev/null && pwd) || bundle=
cache=${VGPU_CACHE:-$HOME/.cache/vgpu}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT

declare -A result
parts=()
status=0
run_part() { # NAME SECONDS COMMAND... (a command or a function of this script)
  local name=$1 secs=$2; shift 2
  parts+=("$name")
  local t0=$SECONDS
  echo "== $name"
  if declare -F "$1" >/dev/null; then
    # timeout runs programs, not functions: the function runs in a bash that has this
    # script's variables and functions.
    { declare -p native_env vgpu_env nvcc arch python max_mib out work rehearse 2>/dev/null; declare -f; } > "$work/part-env.sh"
    timeout "$secs" bash -c 'source "$0"; "$@"' "$work/part-env.sh" "$@" > "$out/$name.txt" 2>&1
  else
    timeout "$secs" "$@" > "$out/$name.txt" 2>&1
  fi
  local rc=$?
  cat "$out/$name.txt"
  case $rc in
    0) result[$name]="pass ($((SECONDS - t0)) s)" ;;
    124) result[$name]="TIMEOUT after ${secs} s"; status=1 ;;
    *) result[$name]="FAIL (exit $rc, $((SECONDS - t0)) s): see $out/$name.txt"; status=1 ;;
  esac
}
skip_part() { # NAME WHY
  parts+=("$1")
  result[$1]="skipped: $2"
}

wait_socket() {
  for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "gpu-check: no socket $1; the mediator's log:" >&2
  cat "$work"/*.log >&2
  exit 1
}

if [ $rehearse = 0 ]; then
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
  native_env=()
  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
  # cubin for the GPU and PTX beside it, as applications ship.
  arch=(-gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90)
  python=python3
  max_mib=1024
else
  [ -n "$bundle" ] || { echo "gpu-check --rehearse: build the bundle first (bash scripts/gpu-bundle.sh)" >&2; exit 1; }
  echo "REHEARSAL: native = vgpu's libcuda on a sim mediator (no GPU); figures say nothing about a GPU" | tee "$out/gpus.txt"
  "$bundle/bin/vgpu-hostd" --backend sim --socket "$work/native.sock" --sim-memory-mib 3072 2> "$work/native.log" &
  pids+=($!)
  wait_socket "$work/native.sock"
  lib=$bundle/lib/libcuda.so.1
  native_env=(LD_LIBRARY_PATH="$bundle/lib" VGPU_SOCKET="$work/native.sock")
  nvcc=$cache/cuda-wheels/cu13/nvidia/cu13/bin/nvcc
  arch=(-gencode arch=compute_90,code=compute_90 -L "$cache/cuda-wheels/cu13/nvidia/cu13/lib")  # the sim runs PTX
  python=$cache/cupy-venv/bin/python
  max_mib=64
fi

run_part ptx-conformance 300 env "${native_env[@]}" python3 host/tests/conformance/run_driver.py --driver "$lib" --out "$out/conformance-golden.json"

if [ -z "$bundle" ] || [ ! -x "$bundle/bin/vgpu-hostd" ]; then
  for p in programs data-path isolation cupy; do skip_part $p "no bundle (bash scripts/gpu-bundle.sh where Rust is, carry target/gpu-bundle)"; done
else
  # vgpu: the cuda backend on the GPU (in a rehearsal: in loopback in front of the sim).
  env "${native_env[@]}" "$bundle/bin/vgpu-hostd" --backend cuda --cuda-driver "$lib" --socket "$work/vgpu.sock" 2> "$work/vgpu.log" &
  pids+=($!)
  wait_socket "$work/vgpu.sock"
  vgpu_env=(LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" VGPU_SOCKET="$work/vgpu.sock")

  if [ -x "$nvcc" ]; then
    mkdir -p "$work/bin"
    build() { "$nvcc" "${arch[@]}" -O2 -cudart static -o "$work/bin/$1" "tests/cuda/$1.cu"; }
    programs_part() {
      local failed=0 n=0
      for src in tests/cuda/*.cu; do
        local name; name=$(basename "$src" .cu)
        case $name in
          keep_working) continue ;;  # runs until killed (the fault tests' program)
        esac
        build "$name" || { echo "$name: nvcc failed"; failed=1; continue; }
        n=$((n + 1))
        # Standard output is compared (vgpu's libcuda logs to standard error).
        env "${native_env[@]}" "$work/bin/$name" > "$work/$name.native" 2> "$work/$name.native.err"; local a=$?
        env "${vgpu_env[@]}" "$work/bin/$name" > "$work/$name.vgpu" 2> "$work/$name.vgpu.err"; local b=$?
        if [ "$name" = data_path ]; then
          [ $a = 0 ] && [ $b = 0 ] && echo "$name: both exit 0" || { echo "$name: exit $a native, $b on vgpu"; failed=1; }
          continue
        fi
        if [ $a = $b ] && [ $a = 0 ] && diff <(grep -v -e elapsed -e ' ms' "$work/$name.native") <(grep -v -e elapsed -e ' ms' "$work/$name.vgpu") > "$work/$name.diff"; then
          echo "$name: identical"
        else
          echo "$name: DIFFERS (exit $a native, $b on vgpu)"; cat "$work/$name.diff" "$work/$name.native.err" "$work/$name.vgpu.err"; failed=1
        fi
      done
      echo "$n programs compared"
      return $failed
    }
    run_part programs 400 programs_part

    data_path_part() {
      build data_path || return 1
      env "${native_env[@]}" "$work/bin/data_path" "$max_mib" | grep -E '^[a-z0-9_]+ [0-9.]+$' > "$work/dp.native" || return 1
      env "${vgpu_env[@]}" "$work/bin/data_path" "$max_mib" | grep -E '^[a-z0-9_]+ [0-9.]+$' > "$work/dp.vgpu" || return 1
      # Ratios as % of native; for the null call (time) native/vgpu, for rates vgpu/native.
      join <(sort "$work/dp.native") <(sort "$work/dp.vgpu") | awk -v json="$out/data-path.json" '
        { r = ($1 ~ /_us$/) ? 100 * $2 / $3 : 100 * $3 / $2
          printf "%-28s %14s %14s %7.1f%%\n", $1, $2, $3, r
          s = s sprintf("%s\"%s\": {\"native\": %s, \"vgpu\": %s, \"percent_of_native\": %.1f}", (NR > 1 ? ", " : ""), $1, $2, $3, r) }
        END { print "{" s "}" > json }'
    }
    run_part data-path 300 data_path_part
  else
    skip_part programs "no nvcc"
    skip_part data-path "no nvcc"
  fi

  run_part isolation 120 env "${vgpu_env[@]}" python3 tests/gpu/isolation.py

  # PyTorch (its kernels are cubins: only a GPU runs them) and a transformers decode.
  if [ $rehearse = 0 ] && "$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    torch_part() {
      env "${native_env[@]}" "$python" tests/gpu/torch_check.py run "$out/torch-native.json" || { echo "natively: failed"; return 1; }
      env "${vgpu_env[@]}" "$python" tests/gpu/torch_check.py run "$out/torch-vgpu.json" || { echo "on vgpu: failed"; return 1; }
      "$python" tests/gpu/torch_check.py compare "$out/torch-native.json" "$out/torch-vgpu.json"
    }
    run_part torch 420 torch_part
  else
    skip_part torch "no PyTorch with a CUDA device here"
  fi

  if "$python" -c "import cupy" 2>/dev/null; then
    cupy_part() {
      local cupy_env=(CUPY_CACHE_DIR="$work/cupy-cache")
      [ $rehearse = 1 ] && cupy_env+=(CUPY_COMPILE_WITH_PTX=1)
      env "${native_env[@]}" "${cupy_env[@]}" "$python" tests/cupy_exactness.py > "$work/cupy.native" 2>&1 || { echo "natively:"; cat "$work/cupy.native"; return 1; }
      rm -rf "$work/cupy-cache"
      env "${vgpu_env[@]}" "${cupy_env[@]}" "$python" tests/cupy_exactness.py > "$work/cupy.vgpu" 2>&1 || { echo "on vgpu:"; cat "$work/cupy.vgpu"; return 1; }
      echo "native: $(tail -1 "$work/cupy.native"); vgpu: $(tail -1 "$work/cupy.vgpu")"
    }
    run_part cupy 300 cupy_part
  else
    skip_part cupy "CuPy does not import with $python"
  fi
fi

echo
echo "gpu-check summary ($(head -1 "$out/gpus.txt"))"
{
  printf '{"machine": "%s", "rehearsal": %s, "parts": {' "$(head -1 "$out/gpus.txt" | tr -d '"')" "$([ $rehearse = 1 ] && echo true || echo false)"
  sep=
  for part in "${parts[@]}"; do
    printf '  %-18s %s\n' "$part" "${result[$part]}" >&2
    printf '%s"%s": "%s"' "$sep" "$part" "${result[$part]}"
    sep=", "
  done
  printf '}}\n'
} 2>&1 > "$out/summary.json" | cat
exit $status
