// Errors are reported, not hidden, and do not poison later work: an out-of-range launch
// configuration, an impossible allocation, a bad free; then a good launch still works.
#include "check.h"

__global__ void wild(int *p) { p[1 << 28] = 1; }  // far outside the allocation

__global__ void fill(int *p, int v, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v + i;
}

int main() {
  int *d;
  CK(cudaMalloc(&d, 1024 * sizeof(int)));

  fill<<<1, 2048>>>(d, 1, 1024);  // more than 1024 threads per block
  cudaError_t e = cudaGetLastError();
  printf("oversized block -> %d (%s)\n", (int)e, cudaGetErrorString(e));
  EXPECT(e == cudaErrorInvalidConfiguration || e == cudaErrorInvalidValue, "got %d", (int)e);

  fill<<<dim3(1, 70000), 32>>>(d, 1, 1024);  // grid.y above 65535
  e = cudaGetLastError();
  printf("oversized grid -> %d (%s)\n", (int)e, cudaGetErrorString(e));
  EXPECT(e == cudaErrorInvalidConfiguration || e == cudaErrorInvalidValue, "got %d", (int)e);

  void *huge = nullptr;
  e = cudaMalloc(&huge, (size_t)1 << 50);  // 1 PiB
  printf("1 PiB allocation -> %d (%s)\n", (int)e, cudaGetErrorString(e));
  EXPECT(e == cudaErrorMemoryAllocation, "got %d", (int)e);
  (void)cudaGetLastError();

  e = cudaFree((void *)0x1234);
  printf("bad free -> %d (%s)\n", (int)e, cudaGetErrorString(e));
  EXPECT(e != cudaSuccess, "freeing a wild pointer succeeded");
  (void)cudaGetLastError();

  fill<<<4, 256>>>(d, 100, 1024);
  CK(cudaGetLastError());
  int h[1024];
  CK(cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost));
  for (int i = 0; i < 1024; i++) EXPECT(h[i] == 100 + i, "h[%d] = %d", i, h[i]);

  // Last (on a GPU the context is unusable after it): a kernel that faults. The launch is
  // asynchronous, so the fault comes from the next synchronizing call (a transport that runs
  // launches synchronously reports it from the launch).
  wild<<<1, 1>>>(d);
  cudaError_t at_launch = cudaGetLastError();
  cudaError_t at_sync = cudaDeviceSynchronize();
  printf("faulting kernel -> launch %d, synchronize %d\n", (int)at_launch, (int)at_sync);
  EXPECT(at_launch == cudaErrorIllegalAddress || at_sync == cudaErrorIllegalAddress, "launch %s, synchronize %s",
         cudaGetErrorName(at_launch), cudaGetErrorName(at_sync));
  printf("PASS\n");
  return 0;
}
