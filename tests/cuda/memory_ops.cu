// Device-to-device copies, memsets of every width, unified-address copies (cudaMemcpyDefault),
// pinned host memory, and copies at offsets inside allocations.
#include "check.h"
#include <cstring>
#include <vector>
#include <cuda.h>

int main() {
  const size_t n = 1 << 20;  // 1 MiB
  std::vector<unsigned char> h(n), back(n);
  for (size_t i = 0; i < n; i++) h[i] = (unsigned char)(i * 31 + 7);
  unsigned char *a, *b;
  CK(cudaMalloc(&a, n));
  CK(cudaMalloc(&b, n));
  CK(cudaMemcpy(a, h.data(), n, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  CK(cudaMemcpy(back.data(), b, n, cudaMemcpyDeviceToHost));
  EXPECT(memcmp(back.data(), h.data(), n) == 0, "device-to-device copy differs");

  // A copy between offsets of the same allocation, then a memset of a middle range.
  CK(cudaMemcpy(b + 100, a + 5000, 4096, cudaMemcpyDeviceToDevice));
  CK(cudaMemset(b + 10000, 0x5a, 3000));
  CK(cudaMemcpy(back.data(), b, n, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; i++) {
    unsigned char want = h[i];
    if (i >= 100 && i < 100 + 4096) want = h[i - 100 + 5000];
    if (i >= 10000 && i < 13000) want = 0x5a;
    EXPECT(back[i] == want, "byte %zu = %d, want %d", i, back[i], want);
  }

  // 16- and 32-bit memsets through driver entry points looked up by the runtime.
  typedef CUresult (*memset16_t)(CUdeviceptr, unsigned short, size_t);
  typedef CUresult (*memset32_t)(CUdeviceptr, unsigned int, size_t);
  memset16_t memset16 = nullptr;
  memset32_t memset32 = nullptr;
  cudaDriverEntryPointQueryResult q;
  CK(cudaGetDriverEntryPointByVersion("cuMemsetD16", (void **)&memset16, 12000, cudaEnableDefault, &q));
  EXPECT(q == cudaDriverEntryPointSuccess && memset16, "cuMemsetD16 not found");
  CK(cudaGetDriverEntryPointByVersion("cuMemsetD32", (void **)&memset32, 12000, cudaEnableDefault, &q));
  EXPECT(q == cudaDriverEntryPointSuccess && memset32, "cuMemsetD32 not found");
  EXPECT(memset16((CUdeviceptr)a, 0xBEEF, 1000) == CUDA_SUCCESS, "cuMemsetD16 failed");
  EXPECT(memset32((CUdeviceptr)(a + 2000), 0xDEADBEEF, 1000) == CUDA_SUCCESS, "cuMemsetD32 failed");
  std::vector<unsigned short> h16(1000);
  std::vector<unsigned int> h32(1000);
  CK(cudaMemcpy(h16.data(), a, 2000, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(h32.data(), a + 2000, 4000, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 1000; i++) {
    EXPECT(h16[i] == 0xBEEF, "d16[%d] = %x", i, h16[i]);
    EXPECT(h32[i] == 0xDEADBEEFu, "d32[%d] = %x", i, h32[i]);
  }

  // Unified addressing: the runtime works out the direction.
  unsigned char *pinned;
  CK(cudaMallocHost(&pinned, n));
  for (size_t i = 0; i < n; i++) pinned[i] = (unsigned char)(255 - i % 251);
  CK(cudaMemcpy(a, pinned, n, cudaMemcpyDefault));
  memset(pinned, 0, n);
  CK(cudaMemcpy(pinned, a, n, cudaMemcpyDefault));
  for (size_t i = 0; i < n; i++) EXPECT(pinned[i] == (unsigned char)(255 - i % 251), "pinned[%zu] = %d", i, pinned[i]);
  cudaPointerAttributes attr;
  CK(cudaPointerGetAttributes(&attr, a));
  EXPECT(attr.type == cudaMemoryTypeDevice, "device pointer type %d", (int)attr.type);
  CK(cudaPointerGetAttributes(&attr, pinned));
  EXPECT(attr.type == cudaMemoryTypeHost, "pinned pointer type %d", (int)attr.type);
  CK(cudaFreeHost(pinned));

  size_t free_b = 0, total_b = 0;
  CK(cudaMemGetInfo(&free_b, &total_b));
  EXPECT(total_b > 0 && free_b <= total_b, "free %zu total %zu", free_b, total_b);
  CK(cudaFree(a)); CK(cudaFree(b));
  printf("PASS\n");
  return 0;
}
