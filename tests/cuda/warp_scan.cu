// Inclusive prefix sum of 100000 ints: warp-shuffle scans within each block (the warps'
// totals through shared memory), then the blocks' totals added by a second kernel.
#include "check.h"
#include <vector>

__global__ void block_scan(const int *in, int *out, int *block_totals, int n) {
  __shared__ int warp_totals[32];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  int v = i < n ? in[i] : 0;
  for (int d = 1; d < 32; d *= 2) {
    int up = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += up;
  }
  if (lane == 31) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int t = lane < blockDim.x / 32 ? warp_totals[lane] : 0;
    for (int d = 1; d < 32; d *= 2) {
      int up = __shfl_up_sync(0xffffffffu, t, d);
      if (lane >= d) t += up;
    }
    warp_totals[lane] = t;
  }
  __syncthreads();
  if (warp > 0) v += warp_totals[warp - 1];
  if (i < n) out[i] = v;
  if (threadIdx.x == blockDim.x - 1) block_totals[blockIdx.x] = v;
}

__global__ void add_offsets(int *out, const int *block_totals, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int offset = 0;
  for (int b = 0; b < blockIdx.x; b++) offset += block_totals[b];
  if (i < n) out[i] += offset;
}

int main() {
  const int n = 100000, threads = 512, blocks = (n + threads - 1) / threads;
  std::vector<int> h(n), got(n);
  for (int i = 0; i < n; i++) h[i] = (i * 7919) % 201 - 100;
  int *in, *out, *totals;
  CK(cudaMalloc(&in, n * sizeof(int)));
  CK(cudaMalloc(&out, n * sizeof(int)));
  CK(cudaMalloc(&totals, blocks * sizeof(int)));
  CK(cudaMemcpy(in, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
  block_scan<<<blocks, threads>>>(in, out, totals, n);
  CK(cudaGetLastError());
  add_offsets<<<blocks, threads>>>(out, totals, n);
  CK(cudaGetLastError());
  CK(cudaMemcpy(got.data(), out, n * sizeof(int), cudaMemcpyDeviceToHost));
  long long acc = 0;
  for (int i = 0; i < n; i++) {
    acc += h[i];
    EXPECT(got[i] == acc, "out[%d] = %d, want %lld", i, got[i], acc);
  }
  printf("PASS\n");
  return 0;
}
