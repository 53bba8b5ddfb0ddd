// Fills device memory in 16 MiB allocations until CUDA refuses one, and prints what it saw:
// the memory reported before (totalGlobalMem, cudaMemGetInfo), how much it got, the error,
// and the free memory after freeing everything. A VM's memory quota must show in all of them.
#include "check.h"
#include <vector>

int main() {
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  size_t free0 = 0, total = 0;
  CK(cudaMemGetInfo(&free0, &total));
  printf("device_total %zu\nmeminfo_total %zu\nmeminfo_free %zu\n", p.totalGlobalMem, total, free0);
  const size_t chunk = 16 << 20;
  std::vector<void *> got;
  cudaError_t e = cudaSuccess;
  while (got.size() < 16384) {  // 256 GiB: more than any one GPU has
    void *d = nullptr;
    e = cudaMalloc(&d, chunk);
    if (e != cudaSuccess) break;
    got.push_back(d);
  }
  EXPECT(e == cudaErrorMemoryAllocation, "allocation ended with %s", cudaGetErrorName(e));
  (void)cudaGetLastError();  // the failed cudaMalloc is not sticky
  printf("allocated %zu\nerror %s\n", got.size() * chunk, cudaGetErrorName(e));
  for (void *d : got) CK(cudaFree(d));
  size_t free1 = 0;
  CK(cudaMemGetInfo(&free1, &total));
  printf("free_after %zu\n", free1);
  EXPECT(free1 == free0, "free memory %zu after freeing everything, %zu before", free1, free0);
  printf("PASS\n");
  return 0;
}
