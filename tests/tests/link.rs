//! The driver's linker (cuLink*) as numba-cuda and others use it when nvJitLink is absent: two
//! PTX modules, a kernel in one calling a device function defined in the other, linked into
//! one image that cuModuleLoadData loads and whose kernel computes what the CPU does; a link
//! that mixes SASS with PTX fails with CUDA_ERROR_NOT_SUPPORTED and says why in the caller's
//! error log buffer. Driven through the Driver API with ctypes, on the sim.

use vgpu_tests::*;

#[test]
fn linked_ptx_modules_load_and_run() {
    let m = Mediator::start();
    let dir = TempDir::new("link");
    let script = dir.0.join("link.py");
    std::fs::write(&script, LINK_PY).unwrap();
    let out = std::process::Command::new("python3").arg(&script).env("LD_LIBRARY_PATH", libcuda_dir()).env("VGPU_SOCKET", &m.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["linked", "results right", "mixed link: 801 vgpu's linker joins PTX modules, or hands on a single fatbin or cubin; it cannot link SASS (cubin) objects together or with PTX"],
        "{}",
        describe(&out)
    );
}

const LINK_PY: &str = r#"
import ctypes
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r != 0: raise SystemExit(f"{what}: CUresult {r}")
kernel = b"""
.version 7.0
.target sm_50
.address_size 64
.extern .func (.param .b32 r) twice (.param .b32 x);
.visible .entry apply(.param .u64 p, .param .u32 n) {
  .reg .u32 %r<6>; .reg .u64 %rd<4>; .reg .pred %q;
  ld.param.u64 %rd1, [p];
  ld.param.u32 %r1, [n];
  mov.u32 %r2, %tid.x;
  setp.ge.u32 %q, %r2, %r1;
  @%q bra DONE;
  mul.wide.u32 %rd2, %r2, 4;
  add.u64 %rd3, %rd1, %rd2;
  ld.global.u32 %r3, [%rd3];
  { .param .b32 a; .param .b32 ret;
    st.param.b32 [a], %r3;
    call.uni (ret), twice, (a);
    ld.param.b32 %r4, [ret]; }
  st.global.u32 [%rd3], %r4;
DONE:
  ret;
}
"""
library = b"""
.version 7.8
.target sm_50
.address_size 64
.visible .func (.param .b32 r) twice (.param .b32 x) {
  .reg .u32 %v<3>;
  ld.param.b32 %v1, [x];
  mad.lo.u32 %v2, %v1, 2, 1;
  st.param.b32 [r], %v2;
  ret;
}
"""
ok(cu.cuInit(0), "cuInit")
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "retain")
ok(cu.cuCtxSetCurrent(ctx), "current")
state = ctypes.c_void_p()
ok(cu.cuLinkCreate_v2(0, None, None, ctypes.byref(state)), "cuLinkCreate")
ok(cu.cuLinkAddData_v2(state, 1, kernel, len(kernel), b"kernel.ptx", 0, None, None), "add kernel")
ok(cu.cuLinkAddData_v2(state, 1, library, len(library), b"library.ptx", 0, None, None), "add library")
image, size = ctypes.c_void_p(), ctypes.c_size_t()
ok(cu.cuLinkComplete(state, ctypes.byref(image), ctypes.byref(size)), "cuLinkComplete")
mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuModuleLoadData(ctypes.byref(mod), image), "load the linked image")
ok(cu.cuLinkDestroy(state), "cuLinkDestroy")
print("linked")
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"apply"), "function")
n = 200
host = (ctypes.c_uint32 * n)(*range(n))
p = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(4 * n)), "alloc")
ok(cu.cuMemcpyHtoD_v2(p, host, ctypes.c_size_t(4 * n)), "to device")
a, nn = ctypes.c_uint64(p.value), ctypes.c_uint32(n)
params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(a), ctypes.c_void_p), ctypes.cast(ctypes.byref(nn), ctypes.c_void_p))
ok(cu.cuLaunchKernel(fn, 1, 1, 1, 256, 1, 1, 0, None, params, None), "launch")
ok(cu.cuMemcpyDtoH_v2(host, p, ctypes.c_size_t(4 * n)), "back")
assert list(host) == [2 * i + 1 for i in range(n)], list(host)[:8]
print("results right")
# A cubin (an ELF header is enough to be one) with PTX: refused, and the error log says why.
err = ctypes.create_string_buffer(512)
opts = (ctypes.c_uint32 * 2)(5, 6)
vals = (ctypes.c_void_p * 2)(ctypes.cast(err, ctypes.c_void_p), ctypes.c_void_p(512))
state = ctypes.c_void_p()
ok(cu.cuLinkCreate_v2(2, opts, vals, ctypes.byref(state)), "cuLinkCreate")
elf = b"\x7fELF" + bytes(60)
ok(cu.cuLinkAddData_v2(state, 0, elf, len(elf), b"sass.cubin", 0, None, None), "add cubin")
ok(cu.cuLinkAddData_v2(state, 1, kernel, len(kernel), b"kernel.ptx", 0, None, None), "add kernel")
r = cu.cuLinkComplete(state, ctypes.byref(image), ctypes.byref(size))
print("mixed link:", r, err.value.decode())
ok(cu.cuLinkDestroy(state), "cuLinkDestroy")
"#;
