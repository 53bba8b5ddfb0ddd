// CUDA's sticky errors and cudaDeviceReset, as CUDA documents them: a kernel that faults (an
// illegal address, a failed device-side assert) leaves the context unusable, every later call
// returning the same error, until cudaDeviceReset, which "explicitly destroys and cleans up all
// resources associated with the current device in the current process"; after it the device
// works again. Launch-configuration errors are not sticky (launch_errors.cu). Prints PASS.
#include "check.h"
#include <cassert>

__global__ void fill(int *p, int v, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v + i;
}

__device__ int counter = 5;  // a module variable with an initializer
__global__ void bump() { counter += 1; }

__global__ void wild(int *p) { p[1 << 28] = 1; }  // far outside the allocation

__global__ void all_positive(const int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) assert(p[i] >= 0);
}

// The device works: a kernel's results come back right.
static void works(const char *when) {
  const int n = 4096;
  int *d;
  CK(cudaMalloc(&d, n * sizeof(int)));
  fill<<<n / 256, 256>>>(d, 7, n);
  CK(cudaGetLastError());
  static int h[n];
  CK(cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; i++) EXPECT(h[i] == 7 + i, "%s: h[%d] = %d", when, i, h[i]);
  CK(cudaFree(d));
  printf("%s: works\n", when);
}

// After a fault: the same error from every call that needs the context, then a reset.
static void sticky(cudaError_t want, const char *what) {
  cudaError_t at_sync = cudaDeviceSynchronize();
  EXPECT(at_sync == want, "%s: synchronize gave %s", what, cudaGetErrorName(at_sync));
  void *p = nullptr;
  cudaError_t again = cudaMalloc(&p, 4096);
  EXPECT(again == want, "%s: cudaMalloc after it gave %s", what, cudaGetErrorName(again));
  int h = 0;
  static int *probe;
  again = cudaMemcpy(&h, probe, sizeof(h), cudaMemcpyDeviceToHost);
  EXPECT(again == want, "%s: cudaMemcpy after it gave %s", what, cudaGetErrorName(again));
  again = cudaDeviceSynchronize();
  EXPECT(again == want, "%s: a second synchronize gave %s", what, cudaGetErrorName(again));
  printf("%s: %s, sticky\n", what, cudaGetErrorName(want));
  CK(cudaDeviceReset());
  (void)cudaGetLastError();
}

int main() {
  works("first");

  // Module variables start again from their initializers after a reset (the module is the
  // new context's).
  int c = 0;
  bump<<<1, 1>>>();
  CK(cudaMemcpyFromSymbol(&c, counter, sizeof(c)));
  EXPECT(c == 6, "counter %d after one bump", c);
  CK(cudaDeviceReset());
  CK(cudaMemcpyFromSymbol(&c, counter, sizeof(c)));
  EXPECT(c == 5, "counter %d after the reset", c);
  bump<<<1, 1>>>();
  CK(cudaMemcpyFromSymbol(&c, counter, sizeof(c)));
  EXPECT(c == 6, "counter %d after a bump after the reset", c);
  printf("module variables start again from their initializers\n");

  // A reset frees what the process held: 256 MiB come back.
  size_t free0, free1, free2, total;
  int *big;
  CK(cudaMalloc(&big, 256 << 20));
  CK(cudaMemGetInfo(&free0, &total));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  CK(cudaDeviceReset());
  CK(cudaMemGetInfo(&free1, &total));
  EXPECT(free1 >= free0 + (255 << 20), "free %zu before the reset, %zu after", free0, free1);
  printf("reset frees the device memory\n");
  works("after a reset");

  // An illegal address.
  int *d;
  CK(cudaMalloc(&d, 1024 * sizeof(int)));
  wild<<<1, 1>>>(d);
  sticky(cudaErrorIllegalAddress, "illegal address");
  works("after the illegal address and a reset");

  // A device-side assert.
  const int n = 1024;
  static int h[n];
  for (int i = 0; i < n; i++) h[i] = i == 700 ? -1 : i;
  CK(cudaMalloc(&d, n * sizeof(int)));
  CK(cudaMemcpy(d, h, sizeof(h), cudaMemcpyHostToDevice));
  all_positive<<<n / 256, 256>>>(d, n);
  sticky(cudaErrorAssert, "device-side assert");
  works("after the assert and a reset");

  // Nothing leaked across the resets: the free memory is what it was after the first.
  CK(cudaMemGetInfo(&free2, &total));
  EXPECT(free2 == free1, "free %zu after the first reset, %zu now", free1, free2);
  printf("PASS\n");
  return 0;
}
