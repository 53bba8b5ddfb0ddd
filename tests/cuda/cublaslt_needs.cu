// What cuBLASLt asks of the driver before each gemm (../shared/recipes/cuda/FINDINGS.md): the
// calling thread's context from slot 2 of the tools-TLS table 42d85a81-..., then that context's
// id from slot 4 of the private export table 21318c60-..., as cuCtxGetId gives it.
// Without it cublasSgemm answers CUBLAS_STATUS_NOT_SUPPORTED before touching the GPU. cuBLAS 13
// also asks each call's stream for its green context (cuStreamGetGreenCtx): NULL for a stream of
// an ordinary context; an error there is CUBLAS_STATUS_INTERNAL_ERROR. cuBLASLt 13.10 fetches
// table 1734dc26-... before its first heuristic query and calls its slot 4 without checking that
// the table came back: a driver without it kills the process (a call through NULL). An error
// from slot 4 makes cuBLASLt go on without the data it asks for.
#include "check.h"
#include <cstdint>
#include <cstring>

typedef int (*get_export_table_t)(const void **, const unsigned char *);
typedef int (*ctx_get_id_t)(void *, unsigned long long *);
typedef int (*ctx_get_current_t)(void **);
typedef int (*stream_get_green_ctx_t)(cudaStream_t, void **);

template <typename T> static T entry(const char *name) {
  void *p = nullptr;
  cudaDriverEntryPointQueryResult q;
  CK(cudaGetDriverEntryPoint(name, &p, cudaEnableDefault, &q));
  EXPECT(p != nullptr && q == cudaDriverEntryPointSuccess, "%s not found", name);
  return (T)p;
}

int main() {
  CK(cudaFree(0));  // a current context
  auto get_table = entry<get_export_table_t>("cuGetExportTable");
  auto get_id = entry<ctx_get_id_t>("cuCtxGetId");
  auto get_current = entry<ctx_get_current_t>("cuCtxGetCurrent");
  const unsigned char uuid[16] = {0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2};
  const void *table = nullptr;
  EXPECT(get_table(&table, uuid) == 0 && table != nullptr, "no context-identity table");
  const uintptr_t *slots = (const uintptr_t *)table;
  EXPECT(slots[0] >= 5 * sizeof(void *), "table size %zu", (size_t)slots[0]);
  auto slot4 = (ctx_get_id_t)slots[4];
  void *ctx = nullptr;
  EXPECT(get_current(&ctx) == 0 && ctx != nullptr, "no current context");
  unsigned long long a = 0, b = 1, c = 2;
  EXPECT(slot4(ctx, &a) == 0, "slot 4 failed for the current context");
  EXPECT(get_id(ctx, &b) == 0, "cuCtxGetId failed");
  EXPECT(slot4(nullptr, &c) == 0, "slot 4 failed for NULL (the current context)");
  printf("context id via the table %llu, via cuCtxGetId %llu\n", a, b);
  EXPECT(a == b && c == b, "ids differ: %llu %llu %llu", a, b, c);

  // Where cuBLASLt gets that context: slot 2 of the tools-TLS table 42d85a81-..., the calling
  // thread's current context, written through its one argument.
  const unsigned char tls_uuid[16] = {0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec, 0xdc};
  const void *tls = nullptr;
  EXPECT(get_table(&tls, tls_uuid) == 0 && tls != nullptr, "no tools-TLS table");
  auto thread_ctx = (ctx_get_current_t)((const uintptr_t *)tls)[2];
  void *mine = (void *)0x5a5a;
  EXPECT(thread_ctx(&mine) == 0 && mine == ctx, "tools-TLS slot 2 gave %p, the current context is %p", mine, ctx);
  printf("the thread's context via the tools-TLS table: the current one\n");

  auto green_of = entry<stream_get_green_ctx_t>("cuStreamGetGreenCtx");
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  for (cudaStream_t each : {s, (cudaStream_t)nullptr, cudaStreamLegacy, cudaStreamPerThread}) {
    void *green = (void *)1;
    int r = green_of(each, &green);
    EXPECT(r == 0 && green == nullptr, "cuStreamGetGreenCtx(%p) = %d, green context %p", (void *)each, r, green);
  }
  CK(cudaStreamDestroy(s));
  void *green = nullptr;
  EXPECT(green_of((cudaStream_t)0x12345678, &green) == 400, "a stream that does not exist is CUDA_ERROR_INVALID_HANDLE");
  printf("green context of a stream: NULL (vgpu makes none)\n");

  const unsigned char lt_uuid[16] = {0x17, 0x34, 0xdc, 0x26, 0x80, 0x0d, 0x47, 0x45, 0x87, 0x26, 0xc0, 0xf1, 0xe7, 0xdd, 0x8b, 0xca};
  const void *lt = nullptr;
  EXPECT(get_table(&lt, lt_uuid) == 0 && lt != nullptr, "no table 1734dc26 (cuBLASLt 13 calls through it unchecked)");
  const uintptr_t *lt_slots = (const uintptr_t *)lt;
  EXPECT(lt_slots[0] >= 14 * sizeof(void *), "table 1734dc26 has %zu bytes; cuBLASLt calls slot 13", (size_t)lt_slots[0]);
  void *data = nullptr;
  size_t len = 0;
  int r = ((int (*)(void **, size_t *))lt_slots[4])(&data, &len);
  EXPECT(r != 0 && data == nullptr, "slot 4 of 1734dc26 = %d with data %p: vgpu has no data to give", r, data);
  printf("table 1734dc26: present, slot 4 answers %d (cuBLASLt goes on without its data)\n", r);
  printf("PASS\n");
  return 0;
}
