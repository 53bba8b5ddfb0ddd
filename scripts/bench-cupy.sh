#!/usr/bin/env bash
# Wall time of CuPy's checks (tests/cupy_check.py: elementwise kernels, reductions, a RawKernel
# with shared memory, against NumPy) on vgpu's sim backend, with CuPy's own reductions and with
# its CUB ones (a 680,000-line PTX module), on each engine of the sim side by side in one run:
# compiled (the default), warp (the warp engine without compiled code) and thread (the
# per-thread interpreter). Each run is a new CuPy process on a mediator of its own:
#   bash scripts/bench-cupy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release --workspace --locked -q
cache=${VGPU_CACHE:-$HOME/.cache/vgpu}
py=$cache/cupy-venv/bin/python
[ -x "$py" ] || { echo "CuPy missing at $py: run scripts/setup-cuda-wheels.sh" >&2; exit 1; }
work=$(mktemp -d)
hostd=
trap 'kill $hostd 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/lib"
ln -s "$PWD/target/release/libcuda.so" "$work/lib/libcuda.so.1"

# Seconds one run of cupy_check.py takes on a mediator whose sim runs engine $1, with
# CUPY_ACCELERATORS=$2 (its output must end in PASS).
run() {
    rm -f "$work/h.sock"
    VGPU_SIM_ENGINE=$1 target/release/vgpu-hostd --socket "$work/h.sock" 2>"$work/hostd-$1.log" &
    hostd=$!
    while [ ! -S "$work/h.sock" ]; do sleep 0.1; done
    local start end
    start=$(date +%s.%N)
    LD_LIBRARY_PATH=$work/lib VGPU_SOCKET=$work/h.sock CUPY_COMPILE_WITH_PTX=1 CUPY_ACCELERATORS=$2 \
        CUPY_CACHE_DIR=$work/cupy-cache "$py" tests/cupy_check.py >"$work/out" 2>&1 || true
    end=$(date +%s.%N)
    kill $hostd 2>/dev/null; wait $hostd 2>/dev/null || true
    hostd=
    if ! grep -q '^PASS' "$work/out"; then
        echo "cupy_check.py failed on the $1 engine (CUPY_ACCELERATORS=$2):" >&2
        tail -5 "$work/out" >&2
        exit 1
    fi
    echo "$end - $start" | bc
}

# NVRTC's cache is filled once, so that every timed run compiles the same (nothing).
run compiled "" >/dev/null
run compiled cub >/dev/null
echo "tests/cupy_check.py on the sim, $(nproc) cores, wall seconds (CuPy's kernels already in its cache)"
printf "%-22s %10s %10s %10s %15s %15s\n" "reductions" compiled warp thread "warp/compiled" "thread/compiled"
for acc in "" cub; do
    label=${acc:-"CuPy's own"}
    c=$(run compiled "$acc")
    w=$(run warp "$acc")
    t=$(run thread "$acc")
    printf "%-22s %10.1f %10.1f %10.1f %15.2f %15.2f\n" "$label" "$c" "$w" "$t" "$(echo "$w / $c" | bc -l)" "$(echo "$t / $c" | bc -l)"
done
