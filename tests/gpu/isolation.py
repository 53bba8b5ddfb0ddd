"""Isolation between two processes on one GPU, through whatever libcuda.so.1 the loader finds
(NVIDIA's, or vgpu's talking to a mediator): an owner allocates device memory and fills it; a
reader process launches a kernel that reads the owner's address. The reader must never see the
owner's bytes: it gets CUDA_ERROR_ILLEGAL_ADDRESS (700) where nothing of its own is mapped there,
or reads its own memory where its own allocation has the same address (each process has its own
GPU address space, so addresses may coincide). The owner's data and context must be unharmed. Prints one JSON line; exit 0 when both hold.

    python3 isolation.py            # the check (runs the two roles as child processes)
"""
import ctypes, json, subprocess, sys

PTX = b"""
.version 7.0
.target sm_50
.address_size 64
.visible .entry peek(.param .u64 src, .param .u64 dst) {
  .reg .u64 %rd<4>; .reg .u32 %r<2>;
  ld.param.u64 %rd1, [src];
  ld.param.u64 %rd2, [dst];
  ld.global.u32 %r1, [%rd1];
  st.global.u32 [%rd2], %r1;
  ret;
}
"""

def driver():
    cu = ctypes.CDLL("libcuda.so.1")
    def ok(r, what):
        if r != 0:
            raise SystemExit(f"{what}: CUresult {r}")
    ok(cu.cuInit(0), "cuInit")
    dev, ctx, mod, fn = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    ok(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    ok(cu.cuModuleLoadData(ctypes.byref(mod), PTX), "cuModuleLoadData")
    ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"peek"), "cuModuleGetFunction")
    return cu, ok, fn

def launch(cu, fn, src, dst):
    a, b = ctypes.c_uint64(src), ctypes.c_uint64(dst)
    params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(a), ctypes.c_void_p), ctypes.cast(ctypes.byref(b), ctypes.c_void_p))
    r = cu.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, None, params, None)
    return r or cu.cuCtxSynchronize()

def owner():
    cu, ok, fn = driver()
    n = 1 << 20
    buf, out = ctypes.c_uint64(), ctypes.c_uint64()
    ok(cu.cuMemAlloc_v2(ctypes.byref(buf), ctypes.c_size_t(n)), "cuMemAlloc")
    ok(cu.cuMemAlloc_v2(ctypes.byref(out), ctypes.c_size_t(4)), "cuMemAlloc")
    ok(cu.cuMemsetD32_v2(buf, 0x5a5a5a5a, ctypes.c_size_t(n // 4)), "cuMemsetD32")
    ok(cu.cuCtxSynchronize(), "cuCtxSynchronize")
    print(buf.value, flush=True)
    sys.stdin.readline()  # the reader has run
    host = (ctypes.c_uint32 * (n // 4))()
    r = cu.cuMemcpyDtoH_v2(host, buf, ctypes.c_size_t(n))
    intact = r == 0 and all(v == 0x5a5a5a5a for v in host)
    k = launch(cu, fn, buf.value + 4096, out.value)
    word = ctypes.c_uint32()
    k = k or cu.cuMemcpyDtoH_v2(ctypes.byref(word), out, ctypes.c_size_t(4))
    print(json.dumps({"owner_data_intact": intact, "owner_kernel": k, "owner_kernel_read": word.value}), flush=True)

def reader(addr):
    cu, ok, fn = driver()
    out = ctypes.c_uint64()
    ok(cu.cuMemAlloc_v2(ctypes.byref(out), ctypes.c_size_t(4)), "cuMemAlloc")
    ok(cu.cuMemsetD32_v2(out, 0, ctypes.c_size_t(1)), "cuMemsetD32")
    r = launch(cu, fn, addr, out.value)
    word = ctypes.c_uint32()
    if r == 0:
        ok(cu.cuMemcpyDtoH_v2(ctypes.byref(word), out, ctypes.c_size_t(4)), "cuMemcpyDtoH")
    print(json.dumps({"reader_kernel": r, "reader_read": word.value}), flush=True)

def check():
    me = [sys.executable, __file__]
    o = subprocess.Popen(me + ["owner"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    addr = o.stdout.readline().strip()
    if not addr.isdigit():
        o.kill()
        raise SystemExit(f"owner failed: {addr!r}")
    rd = subprocess.run(me + ["reader", addr], stdout=subprocess.PIPE, text=True, timeout=120)
    o.stdin.write("done\n")
    o.stdin.flush()
    res = json.loads(o.stdout.readline())
    o.wait(timeout=60)
    res.update(json.loads(rd.stdout.strip().splitlines()[-1]))
    saw_nothing = res["reader_kernel"] == 700 or (res["reader_kernel"] == 0 and res["reader_read"] != 0x5a5a5a5a)
    res["pass"] = saw_nothing and res["owner_data_intact"] and res["owner_kernel"] == 0 and res["owner_kernel_read"] == 0x5a5a5a5a
    print(json.dumps(res))
    sys.exit(0 if res["pass"] else 1)

if __name__ == "__main__":
    {"owner": owner, "reader": lambda: reader(int(sys.argv[2]))}.get(sys.argv[1] if len(sys.argv) > 1 else "", check)()
