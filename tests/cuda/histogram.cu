// A 256-bin histogram of 1 MiB of bytes: per-block histograms in shared memory with shared
// atomics, merged into the global one with global atomics; and the same total counted by a
// block reduction that ends with __shfl_down_sync.
#include "check.h"
#include <vector>

__global__ void histogram(const unsigned char *data, int n, unsigned *bins) {
  __shared__ unsigned local[256];
  for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    atomicAdd(&local[data[i]], 1u);
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += blockDim.x)
    if (local[b]) atomicAdd(&bins[b], local[b]);
}

// Sum of all bins: shared-memory tree down to a warp, then shuffles.
__global__ void sum_bins(const unsigned *bins, unsigned long long *total) {
  __shared__ unsigned s[256];
  unsigned v = bins[threadIdx.x];
  s[threadIdx.x] = v;
  __syncthreads();
  for (int half = 128; half >= 32; half /= 2) {
    if (threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x < 32) {
    v = s[threadIdx.x];
    for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
    if (threadIdx.x == 0) *total = v;
  }
}

int main() {
  const int n = 1 << 20;
  std::vector<unsigned char> h(n);
  unsigned seed = 12345;
  for (int i = 0; i < n; i++) { seed = seed * 1103515245u + 12345u; h[i] = (seed >> 16) & 0xff; }
  std::vector<unsigned> want(256, 0), got(256);
  for (int i = 0; i < n; i++) want[h[i]]++;
  unsigned char *data;
  unsigned *bins;
  unsigned long long *total, got_total = 0;
  CK(cudaMalloc(&data, n));
  CK(cudaMalloc(&bins, 256 * sizeof(unsigned)));
  CK(cudaMalloc(&total, sizeof(unsigned long long)));
  CK(cudaMemcpy(data, h.data(), n, cudaMemcpyHostToDevice));
  CK(cudaMemset(bins, 0, 256 * sizeof(unsigned)));
  histogram<<<32, 256>>>(data, n, bins);
  CK(cudaGetLastError());
  sum_bins<<<1, 256>>>(bins, total);
  CK(cudaGetLastError());
  CK(cudaMemcpy(got.data(), bins, 256 * sizeof(unsigned), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(&got_total, total, sizeof(got_total), cudaMemcpyDeviceToHost));
  for (int b = 0; b < 256; b++) EXPECT(got[b] == want[b], "bin %d: %u, want %u", b, got[b], want[b]);
  EXPECT(got_total == (unsigned long long)n, "total %llu, want %d", got_total, n);
  printf("PASS\n");
  return 0;
}
