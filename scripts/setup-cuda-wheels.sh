#!/usr/bin/env bash
# Installs NVIDIA's user-space pieces the tests drive (from PyPI, no GPU needed): cudart 12.9 and
# 13.0 (the real runtime our libcuda must satisfy), nvcc 13.0, pynvml (nvidia-ml-py, a real
# NVML client), CuPy with NVRTC, numba-cuda, llama.cpp and PyTorch. Idempotent; everything lives in a cache outside the repo ($VGPU_CACHE, default
# ~/.cache/vgpu), one folder per component with its own completion stamp.
set -euo pipefail
CACHE="${VGPU_CACHE:-$HOME/.cache/vgpu}"

# install NAME STAMP PIP-ARGS...: pip --target into $CACHE/NAME unless already complete.
install() {
  local name=$1 stamp=$2; shift 2
  local dest="$CACHE/$name"
  if [ -f "$dest/.complete-$stamp" ]; then echo "setup: $name cached in $dest"; return; fi
  echo "setup: installing $name into $dest"
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest.tmp" "$@"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
  touch "$dest/.complete-$stamp"
}

# cu12 runtime and the 13.0 toolchain go into separate prefixes: both ship nvidia/cu*/lib.
install cuda-wheels/cu12 v1 nvidia-cuda-runtime-cu12==12.9.79
install cuda-wheels/cu13 v1 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvcc==13.0.88 \
  nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
install py v1 nvidia-ml-py==13.615.71
# CuPy, a real framework on top of cudart 12 (with NVRTC, which compiles its kernels on the CPU),
# in a virtual environment of its own as users install it (it finds NVRTC and the CUDA headers
# through its site-packages).
venv=$CACHE/cupy-venv
if [ -f "$venv/.complete-v1" ]; then echo "setup: CuPy cached in $venv"; else
  echo "setup: installing CuPy 14.2 into $venv"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check cupy-cuda12x==14.2.0 numpy==2.4.6 \
    cuda-pathfinder==1.9.0 nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79
  touch "$venv/.complete-v1"
fi
# cuRAND for CuPy's random module (its generators ship PTX, which the sim runs); CuPy's own
# tests draw their inputs from it.
if [ -f "$venv/.curand-v1" ]; then echo "setup: cuRAND cached in $venv"; else
  echo "setup: installing cuRAND 10.3 into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check nvidia-curand-cu12==10.3.10.19
  touch "$venv/.curand-v1"
fi
# cuFFT 11.4 (CUDA 12.9) for CuPy's FFTs (cupy.fft, scipy.fft, ndimage) and tests/cufft_check.py.
if [ -f "$venv/.cufft-v1" ]; then echo "setup: cuFFT cached in $venv"; else
  echo "setup: installing cuFFT 11.4 into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check nvidia-cufft-cu12==11.4.1.4
  touch "$venv/.cufft-v1"
fi
# The rest of what 'cupy-cuda12x[ctk]' installs: cuBLAS, cuSOLVER and cuSPARSE 12 (they ship PTX
# for some kernels, which the sim runs; cuBLAS picks SASS-only GEMM kernels for most shapes, which
# fail with a cuBLAS error here and run on a GPU). CuPy's suite needs them to collect its BLAS and
# sparse tests.
if [ -f "$venv/.ctk-v1" ]; then echo "setup: CuPy's CUDA 12 math libraries cached in $venv"; else
  echo "setup: installing cuBLAS, cuSOLVER and cuSPARSE 12 into $venv (about 1 GB)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'cupy-cuda12x[ctk]==14.2.0' cuda-toolkit==12.9.2.0 \
    nvidia-cublas-cu12==12.9.2.10 nvidia-cusolver-cu12==11.7.5.82 nvidia-cusparse-cu12==12.5.10.65 numpy==2.4.6
  touch "$venv/.ctk-v1"
fi
# CuPy's own test suite (tests/tests/cupy_suite.rs): the tests from CuPy's sdist, and pytest.
if [ -f "$CACHE/cupy-tests-14.2.0/.complete-v1" ]; then echo "setup: CuPy's tests cached in $CACHE/cupy-tests-14.2.0"; else
  echo "setup: fetching CuPy 14.2.0's tests (its sdist) and pytest"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pytest==9.2.0 pytest-xdist==3.8.0 pytest-timeout==2.4.0
  tmp=$(mktemp -d)
  "$venv/bin/python" "$(dirname "$0")/fetch-sdist.py" cupy 14.2.0 "$tmp/cupy.tar.gz"
  tar -xzf "$tmp/cupy.tar.gz" -C "$tmp" cupy-14.2.0/tests
  rm -rf "$CACHE/cupy-tests-14.2.0" && mv "$tmp/cupy-14.2.0/tests" "$CACHE/cupy-tests-14.2.0" && rm -rf "$tmp"
  touch "$CACHE/cupy-tests-14.2.0/.complete-v1"
fi
# CuPy for CUDA 13 as users install it ('cupy-cuda13x[ctk]': NVIDIA's CUDA 13.5 libraries from PyPI,
# cuBLAS 13 among them, whose PTX the sim runs), for the second run of CuPy's own suite
# (tests/tests/cupy_suite.rs) with the same tests as above. About 2 GB installed.
venv=$CACHE/cupy13-venv
if [ -f "$venv/.complete-v1" ]; then echo "setup: CuPy for CUDA 13 cached in $venv"; else
  echo "setup: installing CuPy 14.2 for CUDA 13 with its CUDA libraries into $venv (2 GB installed)"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'cupy-cuda13x[ctk]==14.2.0' numpy==2.4.6 \
    cuda-pathfinder==1.9.1 cuda-toolkit==13.5.0 nvidia-cublas==13.10.0.20 nvidia-cuda-nvrtc==13.5.37 \
    nvidia-cuda-runtime==13.5.37 nvidia-cufft==12.5.0.14 nvidia-curand==10.4.5.25 nvidia-cusolver==12.4.1.2 \
    nvidia-cusparse==12.9.4.2 nvidia-nvjitlink==13.5.37 pytest==9.2.0 pytest-xdist==3.8.0 pytest-timeout==2.4.0
  touch "$venv/.complete-v1"
fi
# numba-cuda as users install it ('numba-cuda[cu12]': NVVM, NVRTC, cudart from PyPI) with what
# its own test suite needs (tests/tests/numba.rs runs that suite). One change from the default
# install, the setting the sim needs: without nvJitLink, numba links with the driver's cuLink*,
# which keeps the PTX the sim runs (nvJitLink turns it into SASS for the GPU, which the sim
# cannot run: its kernels then fail with CUDA_ERROR_NO_BINARY_FOR_GPU).
venv=$CACHE/numba-venv
if [ -f "$venv/.complete-v1" ]; then echo "setup: numba-cuda cached in $venv"; else
  echo "setup: installing numba-cuda 0.30.4 and its test requirements into $venv"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'numba-cuda[cu12]==0.30.4' numba==0.68.1 \
    llvmlite==0.50.0 numpy==2.4.6 cuda-bindings==12.9.7 cuda-core==1.2.2 cuda-pathfinder==1.9.1 cuda-toolkit==12.9.2.0 \
    nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-cccl-cu12==12.9.27 \
    pytest==9.2.0 pytest-xdist==3.8.0 pytest-timeout==2.4.0 pytest-benchmark==5.3.1 filecheck==1.0.6 cffi==2.1.1 psutil==7.2.2 ml_dtypes==0.7.0
  "$venv/bin/python" -m pip uninstall --quiet --yes nvidia-nvjitlink-cu12
  touch "$venv/.complete-v1" "$venv/.cuda-bindings-12.9.7"
fi
# cuda-bindings 12.9.7, the last 12.9 release whose CUipcMemHandle still has the `reserved` bytes that
# numba-cuda 0.30.4 reads to share memory between processes (its driver.py and its IPC tests): from
# 12.9.8 the handle is opaque and numba's IPC fails with AttributeError, on NVIDIA's driver too.
if [ ! -f "$venv/.cuda-bindings-12.9.7" ]; then
  echo "setup: cuda-bindings 12.9.7 into $venv (numba-cuda's IPC needs CUipcMemHandle.reserved)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check cuda-bindings==12.9.7
  touch "$venv/.cuda-bindings-12.9.7"
fi
# numba-cuda's interop tests (the CUDA array interface, DLPack, bfloat16) take CuPy, with cuRAND for
# its random arrays: the same versions as CuPy's own venv above.
if [ -f "$venv/.cupy-v1" ]; then echo "setup: CuPy for numba-cuda's interop tests cached in $venv"; else
  echo "setup: installing CuPy 14.2 and cuRAND 10.3 into $venv (numba-cuda's interop tests)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check cupy-cuda12x==14.2.0 nvidia-curand-cu12==10.3.10.19
  touch "$venv/.cupy-v1"
fi
# PyTorch as users install it ('pip install torch': the CUDA 13 build, with cuBLAS, cuDNN, NCCL
# and the CUDA runtime from PyPI), for tests/torch_check.py. About 3 GB to fetch, 5.4 GB installed.
venv=$CACHE/torch-venv
if [ -f "$venv/.complete-v1" ]; then echo "setup: PyTorch cached in $venv"; else
  echo "setup: installing PyTorch 2.15.0 (CUDA build) into $venv (about 3 GB to download)"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.15.0 numpy==2.4.6
  touch "$venv/.complete-v1"
fi
# llama.cpp as users get it prebuilt with CUDA (cyllama-cuda12: ggml's CUDA backend with
# compute_75 PTX, linked against cudart and cuBLAS 12), with the gguf package to write test
# models; tests/llama_check.py compares it on vgpu with its own CPU backend.
venv=$CACHE/llama-venv
if [ -f "$venv/.complete-v1" ]; then echo "setup: llama.cpp (cyllama) cached in $venv"; else
  echo "setup: installing llama.cpp (cyllama-cuda12 0.2.18) with cuBLAS 12 into $venv (about 1.2 GB)"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check cyllama-cuda12==0.2.18 gguf==0.19.0 numpy==2.4.6 \
    nvidia-cublas-cu12==12.9.1.4 nvidia-cuda-runtime-cu12==12.9.79
  touch "$venv/.complete-v1"
fi
# The cudart matrix (tests/tests/cudart_matrix.rs): the newest release of every minor version of
# the runtime, 12.0 onwards, looked up on PyPI when the cache is made (a new release is tested
# on the next fresh run). About 6 MiB each.
matrix=$CACHE/cudart-matrix
if [ -f "$matrix/.complete-v1" ]; then echo "setup: cudart matrix cached in $matrix ($(ls "$matrix" | tr '\n' ' '))"; else
  for pkg in nvidia-cuda-runtime-cu12 nvidia-cuda-runtime; do
    versions=$(python3 -m pip index versions "$pkg" 2>/dev/null | sed -n 's/^Available versions: //p' | tr -d ' ' | tr ',' '\n')
    [ -n "$versions" ] || { echo "setup: cannot list the releases of $pkg on PyPI" >&2; exit 1; }
    for minor in $(echo "$versions" | cut -d. -f1,2 | sort -uV); do
      v=$(echo "$versions" | grep "^$minor\." | sort -V | tail -1)
      install "cudart-matrix/$v" v1 "$pkg==$v"
    done
  done
  touch "$matrix/.complete-v1"
fi
touch "$CACHE/cuda-wheels/.complete-v1"
