// A library the way cuFFT 12 ships its kernels: the same kernel as an sm_90 cubin with no PTX
// (host/tests/data/vadd_cubin_only.fatbin) and, elsewhere in the same binary, as PTX
// (vadd_plain.fatbin; both nvcc output of one vectorAdd source). On the sim, which runs PTX,
// loading the cubin-only image from this program's memory runs the PTX of the same kernel, and
// the kernel adds correctly; the same image copied to the heap (in no library) still fails with
// CUDA_ERROR_NO_BINARY_FOR_GPU. Also checks what cuFFT needs around it: the module's functions
// listed (cuModuleGetFunctionCount/EnumerateFunctions, and the tools table 6e163fbe's slot 7) and
// CU_POINTER_ATTRIBUTE_BUFFER_ID. Prints PASS.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The two images, 16-byte aligned in .rodata, as a library holds its fatbins (the assembler
// finds the files through -Wa,-I; see build_c_program).
__asm__(".section .rodata\n"
        ".balign 16\nvadd_sass:\n.incbin \"vadd_cubin_only.fatbin\"\nvadd_sass_end:\n"
        ".balign 16\nvadd_ptx:\n.incbin \"vadd_plain.fatbin\"\n"
        ".previous\n");
extern const unsigned char vadd_sass[], vadd_sass_end[];

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
#define LOAD(name) CUresult (*name)() = (CUresult (*)())dlsym(lib, #name); \
  if (!name) { printf("FAIL: %s not exported\n", #name); return 1; }
#define CK(x) do { CUresult r_ = (x); if (r_) { printf("FAIL: %s = %d (line %d)\n", #x, r_, __LINE__); return 1; } } while (0)
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

static void *visited[4];
static int nvisited;
static void visit(void *user, void *function) {
  if (nvisited < 4) visited[nvisited] = function;
  nvisited++;
  *(void **)user = function;
}

int main(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) { printf("FAIL: %s\n", dlerror()); return 1; }
  LOAD(cuInit) LOAD(cuDevicePrimaryCtxRetain) LOAD(cuCtxSetCurrent) LOAD(cuModuleLoadData)
  LOAD(cuModuleGetFunction) LOAD(cuMemAlloc_v2) LOAD(cuMemFree_v2) LOAD(cuLaunchKernel)
  LOAD(cuMemcpyHtoD_v2) LOAD(cuMemcpyDtoH_v2) LOAD(cuCtxSynchronize) LOAD(cuModuleGetFunctionCount)
  LOAD(cuModuleEnumerateFunctions) LOAD(cuFuncGetName) LOAD(cuGetExportTable) LOAD(cuPointerGetAttribute)
  LOAD(cuModuleUnload) LOAD(cuLibraryGetKernelCount)
  void *ctx;
  CK(cuInit(0));
  CK(cuDevicePrimaryCtxRetain(&ctx, 0));
  CK(cuCtxSetCurrent(ctx));

  // The cubin-only image, in this program's memory: it runs (as the PTX twin) and adds.
  void *mod, *fn;
  CK(cuModuleLoadData(&mod, vadd_sass));
  CK(cuModuleGetFunction(&fn, mod, "_Z9vectorAddPKfS0_Pfi"));
  enum { N = 1000 };
  static float a[N], b[N], c[N];
  for (int i = 0; i < N; i++) { a[i] = (float)i * 0.5f; b[i] = 1000.0f - (float)i; }
  CUdeviceptr da, db, dc;
  CK(cuMemAlloc_v2(&da, sizeof a)); CK(cuMemAlloc_v2(&db, sizeof b)); CK(cuMemAlloc_v2(&dc, sizeof c));
  CK(cuMemcpyHtoD_v2(da, a, sizeof a)); CK(cuMemcpyHtoD_v2(db, b, sizeof b));
  int n = N;
  void *args[] = {&da, &db, &dc, &n};
  CK(cuLaunchKernel(fn, (N + 127) / 128, 1, 1, 128, 1, 1, 0, 0, args, 0));
  CK(cuCtxSynchronize());
  CK(cuMemcpyDtoH_v2(c, dc, sizeof c));
  for (int i = 0; i < N; i++) CHECK(c[i] == a[i] + b[i], "c[%d] = %g, not %g", i, c[i], a[i] + b[i]);
  printf("the sm_90-only image ran as its PTX twin: %d sums right\n", N);

  // Its functions, listed: by count and enumeration, and through the tools table cuFFT uses.
  unsigned count = 0;
  void *listed[2] = {0, 0};
  CK(cuModuleGetFunctionCount(&count, mod));
  CHECK(count == 1, "cuModuleGetFunctionCount = %u, not 1", count);
  CK(cuLibraryGetKernelCount(&count, mod));
  CHECK(count == 1, "cuLibraryGetKernelCount = %u, not 1", count);
  CK(cuModuleEnumerateFunctions(listed, 2, mod));
  CHECK(listed[0] == fn && listed[1] == 0, "enumerated %p %p, cuModuleGetFunction gave %p", listed[0], listed[1], fn);
  CHECK(cuModuleEnumerateFunctions(listed, 0, mod) == 1, "0 slots is CUDA_ERROR_INVALID_VALUE");
  const char *name = 0;
  CK(cuFuncGetName(&name, listed[0]));
  CHECK(name && strcmp(name, "_Z9vectorAddPKfS0_Pfi") == 0, "cuFuncGetName gave %s", name ? name : "NULL");
  static const unsigned char tools_module[16] = {0x6e, 0x16, 0x3f, 0xbe, 0xb9, 0x58, 0x44, 0x4d, 0x83, 0x5c, 0xe1, 0x82, 0xaf, 0xf1, 0x99, 0x1e};
  const size_t *table = 0;
  CK(cuGetExportTable(&table, tools_module));
  CHECK(table && table[0] >= 8 * sizeof(void *), "tools module table of %zu bytes: slot 7 missing", table ? table[0] : 0);
  int (*visit_functions)(void *, void *, void (*)(void *, void *), void *) = (int (*)(void *, void *, void (*)(void *, void *), void *))table[7];
  void *got = 0;
  CHECK(visit_functions(ctx, mod, visit, &got) == 1, "slot 7 failed");
  CHECK(nvisited == 1 && got == fn, "slot 7 visited %d function(s), last %p; want 1, %p", nvisited, got, fn);
  CHECK(visit_functions(ctx, (void *)0x7777, visit, &got) == 0 && nvisited == 1, "slot 7 on a module that does not exist");

  // The same image in the heap lies in no library: nothing to find, the sim cannot run it.
  size_t len = (size_t)(vadd_sass_end - vadd_sass);
  unsigned char *copy = malloc(len);
  memcpy(copy, vadd_sass, len);
  void *mod2 = 0;
  CUresult r = cuModuleLoadData(&mod2, copy);
  CHECK(r == 209, "the heap copy of a cubin-only image loaded with %d, not CUDA_ERROR_NO_BINARY_FOR_GPU (209)", r);
  free(copy);
  printf("the same image from the heap: CUDA_ERROR_NO_BINARY_FOR_GPU\n");

  // Buffer ids: one per allocation, the same for any address inside it, never reused.
  unsigned long long ida = 0, ida2 = 0, idb = 0, idc = 0, idd = 0;
  CK(cuPointerGetAttribute(&ida, 7, da));
  CK(cuPointerGetAttribute(&ida2, 7, da + 100));
  CK(cuPointerGetAttribute(&idb, 7, db));
  CK(cuPointerGetAttribute(&idc, 7, dc));
  CHECK(ida && ida == ida2 && ida != idb && idb != idc && ida != idc, "buffer ids %llu %llu %llu %llu", ida, ida2, idb, idc);
  CK(cuMemFree_v2(da));
  CUdeviceptr dd;
  CK(cuMemAlloc_v2(&dd, sizeof a));
  CK(cuPointerGetAttribute(&idd, 7, dd));
  CHECK(idd != ida && idd != idb && idd != idc, "a new allocation's buffer id %llu repeats one of %llu %llu %llu", idd, ida, idb, idc);
  CK(cuModuleUnload(mod));
  printf("PASS\n");
  return 0;
}
