"""PyTorch's control path on vgpu (issue 20): the current CUDA wheel from PyPI, unmodified, on
vgpu's libcuda.so.1. Each check prints "TORCH-CHECK ok <name> <detail>" and the run ends with
PASS; any failure raises.

What the sim can run of PyTorch: its runtime calls (devices, memory, copies, streams, events,
graphs, sharing between processes), cuBLAS's PTX kernels and cuFFT's. PyTorch's own kernels are cubins
for sm_75..sm_120 with no PTX, so they need a GPU (the cuda backend); on the sim they must fail
with PyTorch's usual "no kernel image is available" error, never crash or hang.

References are independent of PyTorch's CUDA path: device facts from the driver itself (ctypes
on libcuda.so.1), numbers from PyTorch's CPU backend.
"""
import ctypes
import os
import subprocess
import sys

import torch


def ok(name, detail=""):
    print(f"TORCH-CHECK ok {name} {detail}", flush=True)


def driver_facts():
    """What the driver (vgpu's libcuda) says of device 0, asked directly."""
    cu = ctypes.CDLL("libcuda.so.1")
    assert cu.cuInit(0) == 0
    dev = ctypes.c_int()
    assert cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
    name = ctypes.create_string_buffer(256)
    assert cu.cuDeviceGetName(name, 256, dev) == 0
    total = ctypes.c_size_t()
    assert cu.cuDeviceTotalMem_v2(ctypes.byref(total), dev) == 0

    def attr(a):
        v = ctypes.c_int()
        assert cu.cuDeviceGetAttribute(ctypes.byref(v), a, dev) == 0
        return v.value

    # CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, COMPUTE_CAPABILITY_MAJOR / MINOR
    return name.value.decode(), total.value, attr(16), (attr(75), attr(76))


def check_device():
    assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
    assert torch.cuda.device_count() == 1
    p = torch.cuda.get_device_properties(0)
    name, total, sms, cc = driver_facts()
    got = (p.name, p.total_memory, p.multi_processor_count, (p.major, p.minor))
    assert got == (name, total, sms, cc), f"PyTorch says {got}, the driver {(name, total, sms, cc)}"
    ok("device", f"{p.name} cc {p.major}.{p.minor} {p.multi_processor_count} SMs {p.total_memory >> 20} MiB")


def check_memory():
    free0, total = torch.cuda.mem_get_info()
    assert total == torch.cuda.get_device_properties(0).total_memory, (free0, total)
    assert 0 < free0 <= total, (free0, total)
    x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    free1, _ = torch.cuda.mem_get_info()
    assert free0 - free1 >= 256 << 20, f"free memory went from {free0} to {free1} with 256 MiB allocated"
    del x
    torch.cuda.empty_cache()
    free2, _ = torch.cuda.mem_get_info()
    assert free2 >= free1 + (256 << 20), f"free memory {free2} after the cache was emptied (was {free1})"
    ok("mem_get_info", f"{free0 >> 20} MiB free of {total >> 20} MiB; 256 MiB allocated and given back")


def check_allocation():
    """The allocator PYTORCH_CUDA_ALLOC_CONF chose: many sizes, their bytes kept apart."""
    tensors = []
    for i, n in enumerate([1, 100, 4096, 1 << 20, 3 << 20, 17 << 20]):
        t = torch.empty(n, dtype=torch.int32, device="cuda")
        t.copy_(torch.arange(n, dtype=torch.int32) * 3 + i, non_blocking=False)
        tensors.append((t, i))
    for t, i in tensors:
        n = t.numel()
        assert torch.equal(t.cpu(), torch.arange(n, dtype=torch.int32) * 3 + i), f"tensor {i} of {n} changed"
    del tensors
    torch.cuda.synchronize()
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    ok(f"allocation[{conf or 'default'}]", f"{torch.cuda.memory_reserved() >> 20} MiB reserved")


def check_copies():
    a = torch.arange(1 << 20, dtype=torch.float32).pin_memory()
    assert a.is_pinned()
    d = a.to("cuda", non_blocking=True)
    b = torch.empty_like(a).pin_memory()
    b.copy_(d, non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(a, b)
    ok("pinned non-blocking copies", "4 MiB each way")


def check_streams_events():
    lo, hi = torch.cuda.Stream(priority=0), torch.cuda.Stream(priority=-1)
    assert (lo.priority, hi.priority) == (0, -1), (lo.priority, hi.priority)
    src = torch.arange(1 << 22, dtype=torch.float32).pin_memory()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(hi):
        start.record()
        d = src.to("cuda", non_blocking=True)
        e = torch.empty_like(d)
        e.copy_(d)
        end.record()
    lo.wait_event(end)
    with torch.cuda.stream(lo):
        back = e.to("cpu", non_blocking=True)
    lo.synchronize()
    assert torch.equal(back, src)
    ms = start.elapsed_time(end)
    assert ms > 0, ms
    assert end.query()
    ok("streams and events", f"priorities (0, -1), 16 MiB through two streams, elapsed {ms:.3f} ms")


def check_graph():
    a = torch.arange(1000.0).cuda()
    b = torch.empty_like(a)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            b.copy_(a)
    for k in range(3):
        new = torch.arange(1000.0) * (k + 2)
        a.copy_(new.cuda())
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(b.cpu(), new), f"replay {k}"
    ok("CUDA graph of copies", "3 replays")


def check_blas():
    """cuBLAS's own PTX kernels (cuBLASLt's small-size gemm) against the CPU. Larger sizes pick
    kernels cuBLAS ships only as sm_90 cubins: on the sim those fail cleanly."""
    torch.manual_seed(0)
    worst = 0.0
    for b, i, o in [(8, 32, 16), (3, 5, 7), (16, 64, 32), (2, 128, 10)]:
        lin = torch.nn.Linear(i, o)
        x = torch.randn(b, i)
        ref = lin(x)
        got = lin.cuda()(x.cuda()).cpu()
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), f"Linear({i},{o}) on {b}: {(got - ref).abs().max()}"
        worst = max(worst, (got - ref).abs().max().item())
    ok("nn.Linear (cuBLAS PTX)", f"4 shapes, largest difference from the CPU {worst:.2e}")


def check_matmul():
    """torch.matmul through cuBLASLt (its default, cublasGemmEx, always picks a cubin kernel on
    an sm_90 device). Which kernel cuBLASLt's heuristic picks depends on what it tried before in
    the process, so this runs in a fresh one, in a fixed order."""
    torch.manual_seed(0)
    torch.backends.cuda.preferred_blas_library("cublaslt")
    worst = 0.0
    for m, k, n in [(4, 4, 4), (8, 32, 16)]:
        a, bm = torch.randn(m, k), torch.randn(k, n)
        got = (a.cuda() @ bm.cuda()).cpu()
        assert torch.allclose(got, a @ bm, rtol=1e-5, atol=1e-5), f"matmul {m}x{k}x{n}: {(got - a @ bm).abs().max()}"
        worst = max(worst, (got - a @ bm).abs().max().item())
    ok("torch.matmul (cuBLASLt PTX)", f"2 shapes, largest difference from the CPU {worst:.2e}")


def check_fft():
    """torch.fft through cuFFT (its kernels, or on the sim the PTX of the same kernels from
    libcufft: the sm_90 images are SASS only) against PyTorch's CPU FFT (pocketfft). Inputs are
    made on the CPU: PyTorch's own kernels (a strided copy, a scaling) would need a GPU."""
    torch.manual_seed(0)
    xc = torch.randn(4, 256, dtype=torch.complex64)
    xr = torch.randn(4, 256)
    half = torch.fft.rfft(xr)
    x3 = torch.randn(6, 10, 12, dtype=torch.complex128)
    cases = [
        ("fft", torch.fft.fft, xc, 1e-5),
        ("fft2", torch.fft.fft2, xc, 1e-5),
        ("ifft(norm=forward)", lambda t: torch.fft.ifft(t, norm="forward"), xc, 1e-5),
        ("rfft", torch.fft.rfft, xr, 1e-5),
        ("irfft(norm=forward)", lambda t: torch.fft.irfft(t, norm="forward"), half, 1e-5),
        ("fftn complex128", torch.fft.fftn, x3, 1e-12),
    ]
    worst = []
    for name, f, x, tol in cases:
        got, want = f(x.cuda()).cpu(), f(x)
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < tol, f"torch.fft {name}: relative error {err:.2e} (limit {tol:.0e})"
        worst.append(f"{name} {err:.1e}")
    ok("torch.fft (cuFFT)", "relative errors from the CPU: " + ", ".join(worst))


def check_cubin_only_kernel():
    try:
        (torch.ones(4, device="cuda") * 2).cpu()
    except Exception as e:  # torch.AcceleratorError (a RuntimeError)
        msg = str(e)
        assert "no kernel image is available for execution on the device" in msg, msg
        ok("cubin-only kernel", "fails with 'no kernel image is available for execution on the device'")
        return
    raise AssertionError("a PyTorch kernel that has only cubins ran on the sim")


def share_child(q, r):
    t = q.get()
    r.put(t.cpu().tolist())
    t.copy_((t.cpu() + 100).cuda())
    torch.cuda.synchronize()
    r.put("done")


def check_multiprocessing():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    x = torch.arange(16.0).cuda()
    q, r = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=share_child, args=(q, r))
    p.start()
    q.put(x)
    seen = r.get(timeout=300)
    assert seen == list(range(16)), seen
    assert r.get(timeout=300) == "done"
    p.join(timeout=120)
    assert p.exitcode == 0, p.exitcode
    assert torch.equal(x.cpu(), torch.arange(16.0) + 100), x.cpu()
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    ok(f"torch.multiprocessing[{conf or 'default'}]", "a child process read and changed a CUDA tensor")


def run_again(mode, conf=""):
    """This script again, in a fresh process (`mode`), with PYTORCH_CUDA_ALLOC_CONF=conf (read at
    start-up)."""
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=conf)
    out = subprocess.run([sys.executable, __file__, mode], env=env, capture_output=True, text=True, timeout=900)
    sys.stdout.write(out.stdout)
    assert out.returncode == 0 and "CHILD-PASS" in out.stdout, f"{mode} {conf}: exit {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"


def main():
    if sys.argv[1:] == ["--allocator"]:
        check_allocation()
        check_copies()
        if "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
            check_multiprocessing()
        print("CHILD-PASS")
        return
    if sys.argv[1:] == ["--matmul"]:
        check_matmul()
        print("CHILD-PASS")
        return
    # In a QEMU guest (--guest) under TCG each fresh PyTorch process costs minutes: there, the
    # fresh cuBLASLt process and the cudaMallocAsync one are left to the socket test.
    guest = sys.argv[1:] == ["--guest"]
    check_device()
    check_memory()
    check_allocation()
    check_copies()
    check_streams_events()
    check_graph()
    check_blas()
    check_fft()
    if not guest:
        run_again("--matmul")
    check_cubin_only_kernel()
    check_multiprocessing()
    run_again("--allocator", "expandable_segments:True")
    if not guest:
        run_again("--allocator", "backend:cudaMallocAsync")
    print("PASS")


if __name__ == "__main__":
    main()
