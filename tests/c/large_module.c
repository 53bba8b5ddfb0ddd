// A module image far over one request's size limit: PTX of MIB MiB (argv[1], default 300) — a
// kernel and comment lines — loads through vgpu's libcuda.so.1, its kernel runs and writes
// 42, and the same connection goes on (a small module after it loads and runs too).
// Prints PASS.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef CUresult (*cuInit_t)(unsigned);
typedef CUresult (*cuDevicePrimaryCtxRetain_t)(void **, int);
typedef CUresult (*cuCtxSetCurrent_t)(void *);
typedef CUresult (*cuModuleLoadData_t)(void **, const void *);
typedef CUresult (*cuModuleGetFunction_t)(void **, void *, const char *);
typedef CUresult (*cuMemAlloc_v2_t)(unsigned long long *, size_t);
typedef CUresult (*cuLaunchKernel_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **);
typedef CUresult (*cuMemcpyDtoH_v2_t)(void *, unsigned long long, size_t);

#define LOAD(name) name##_t name = (name##_t)dlsym(lib, #name); \
  if (!name) { printf("FAIL: %s not exported\n", #name); return 1; }
#define CK(x) do { CUresult r_ = (x); if (r_) { printf("FAIL: %s = %d\n", #x, r_); return 1; } } while (0)

static const char *KERNEL =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .entry k(.param .u64 out, .param .u32 v)\n{\n\t.reg .b32 %r<2>;\n\t.reg .b64 %rd<2>;\n"
    "\tld.param.u64 %rd1, [out];\n\tld.param.u32 %r1, [v];\n\tst.global.u32 [%rd1], %r1;\n\tret;\n}\n";

static int run(cuModuleLoadData_t load, cuModuleGetFunction_t get, cuLaunchKernel_t launch, cuMemcpyDtoH_v2_t dtoh,
               unsigned long long out, const char *ptx, unsigned v) {
  void *mod, *fn;
  CK(load(&mod, ptx));
  CK(get(&fn, mod, "k"));
  void *args[] = {&out, &v};
  CK(launch(fn, 1, 1, 1, 1, 1, 1, 0, 0, args, 0));
  unsigned got = 0;
  CK(dtoh(&got, out, 4));
  if (got != v) { printf("FAIL: the kernel wrote %u, not %u\n", got, v); return 1; }
  return 0;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 300;
  void *lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) { printf("FAIL: %s\n", dlerror()); return 1; }
  LOAD(cuInit) LOAD(cuDevicePrimaryCtxRetain) LOAD(cuCtxSetCurrent) LOAD(cuModuleLoadData)
  LOAD(cuModuleGetFunction) LOAD(cuMemAlloc_v2) LOAD(cuLaunchKernel) LOAD(cuMemcpyDtoH_v2)
  void *ctx;
  CK(cuInit(0));
  CK(cuDevicePrimaryCtxRetain(&ctx, 0));
  CK(cuCtxSetCurrent(ctx));
  unsigned long long out;
  CK(cuMemAlloc_v2(&out, 4));

  size_t want = mib << 20, klen = strlen(KERNEL);
  char *big = malloc(want + 1);
  if (!big) { printf("FAIL: no memory\n"); return 1; }
  memcpy(big, KERNEL, klen);
  size_t at = klen;
  while (at + 128 <= want) {  // comment lines of 128 bytes
    memcpy(big + at, "// ", 3);
    memset(big + at + 3, 'x', 124);
    big[at + 127] = '\n';
    at += 128;
  }
  big[at] = 0;
  printf("module image: %zu bytes of PTX\n", at + 1);
  if (run(cuModuleLoadData, cuModuleGetFunction, cuLaunchKernel, cuMemcpyDtoH_v2, out, big, 42)) return 1;
  printf("the large module's kernel ran\n");
  if (run(cuModuleLoadData, cuModuleGetFunction, cuLaunchKernel, cuMemcpyDtoH_v2, out, KERNEL, 7)) return 1;
  printf("a small module after it ran\n");
  printf("PASS\n");
  return 0;
}
