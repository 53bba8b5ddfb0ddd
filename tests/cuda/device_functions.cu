// Device functions nvcc does not inline: a warp reduction with __shfl_xor_sync and a block
// barrier inside called functions, recursion, and printf from a callee; checked against the CPU.
#include "check.h"
#include <vector>

__device__ __noinline__ int warp_all_sum(int v) {
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Every thread gets its block's sum: warp sums, then the warps' through shared memory.
__device__ __noinline__ int block_all_sum(int v) {
  __shared__ int warp_sums[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_all_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = warp_all_sum(lane < nwarps ? warp_sums[lane] : 0);
  __syncthreads();
  return v;
}

__device__ __noinline__ long long collatz_steps(long long n) { return n == 1 ? 0 : 1 + collatz_steps(n % 2 ? 3 * n + 1 : n / 2); }

__device__ __noinline__ void report(int block, int sum) { printf("block %d sums to %d\n", block, sum); }

__global__ void kernel(const int *in, int *sums, long long *steps, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int s = block_all_sum(i < n ? in[i] : 0);
  if (threadIdx.x == 0) sums[blockIdx.x] = s;
  if (threadIdx.x == 5 && blockIdx.x < 2) report(blockIdx.x, s);
  if (i < n) steps[i] = collatz_steps(i % 20 + 1);  // at most 21 frames deep
}

int main() {
  const int n = 1000, threads = 128, blocks = (n + threads - 1) / threads;
  std::vector<int> h(n), sums(blocks);
  std::vector<long long> steps(n);
  for (int i = 0; i < n; i++) h[i] = (i * 37) % 101 - 50;
  int *in, *d_sums;
  long long *d_steps;
  CK(cudaMalloc(&in, n * sizeof(int)));
  CK(cudaMalloc(&d_sums, blocks * sizeof(int)));
  CK(cudaMalloc(&d_steps, n * sizeof(long long)));
  CK(cudaMemcpy(in, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
  kernel<<<blocks, threads>>>(in, d_sums, d_steps, n);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(sums.data(), d_sums, blocks * sizeof(int), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(steps.data(), d_steps, n * sizeof(long long), cudaMemcpyDeviceToHost));
  for (int b = 0; b < blocks; b++) {
    int want = 0;
    for (int i = b * threads; i < n && i < (b + 1) * threads; i++) want += h[i];
    EXPECT(sums[b] == want, "block %d: %d, want %d", b, sums[b], want);
  }
  for (int i = 0; i < n; i++) {
    long long x = i % 20 + 1, want = 0;
    while (x != 1) { x = x % 2 ? 3 * x + 1 : x / 2; want++; }
    EXPECT(steps[i] == want, "steps[%d] = %lld, want %lld", i, steps[i], want);
  }
  printf("PASS\n");
  return 0;
}
