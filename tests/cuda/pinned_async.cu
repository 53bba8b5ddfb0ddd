// Pinned host memory and asynchronous work: copies between pinned buffers (at offsets inside
// them) and the device, queued on two streams with kernels between them, give the right data
// after synchronizing; a pinned buffer freed and allocated again works; an asynchronous copy
// to a bad device address reports its error at the latest at the next synchronizing call.
#include "check.h"
#include <vector>

__global__ void twice(const int *in, int *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = 2 * in[i];
}

int main() {
  const int n = 1 << 20;
  int *h_in, *h_out, *d_in, *d_out;
  CK(cudaMallocHost((void **)&h_in, (n + 64) * sizeof(int)));
  CK(cudaHostAlloc((void **)&h_out, (n + 64) * sizeof(int), cudaHostAllocDefault));
  CK(cudaMalloc((void **)&d_in, n * sizeof(int)));
  CK(cudaMalloc((void **)&d_out, n * sizeof(int)));
  cudaStream_t s[2];
  for (auto &x : s) CK(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < n; i++) h_in[64 + i] = i * 3 + round;  // at an offset inside the buffer
    const int half = n / 2;
    for (int k = 0; k < 2; k++) {
      int off = k * half;
      CK(cudaMemcpyAsync(d_in + off, h_in + 64 + off, half * sizeof(int), cudaMemcpyHostToDevice, s[k]));
      twice<<<(half + 255) / 256, 256, 0, s[k]>>>(d_in + off, d_out + off, half);
      CK(cudaGetLastError());
      CK(cudaMemcpyAsync(h_out + 32 + off, d_out + off, half * sizeof(int), cudaMemcpyDeviceToHost, s[k]));
    }
    for (auto &x : s) CK(cudaStreamSynchronize(x));
    for (int i = 0; i < n; i++) EXPECT(h_out[32 + i] == 2 * (i * 3 + round), "round %d element %d: %d", round, i, h_out[32 + i]);
  }
  // Synchronous copies with pinned memory too.
  CK(cudaMemset(d_out, 0, n * sizeof(int)));
  CK(cudaMemcpy(h_out, d_out, 1000 * sizeof(int), cudaMemcpyDeviceToHost));
  for (int i = 0; i < 1000; i++) EXPECT(h_out[i] == 0, "memset then copy: %d", h_out[i]);
  // Freed and allocated again.
  CK(cudaFreeHost(h_in));
  CK(cudaMallocHost((void **)&h_in, 4096));
  for (int i = 0; i < 1024; i++) h_in[i] = -i;
  CK(cudaMemcpy(d_in, h_in, 4096, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(h_out, d_in, 4096, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 1024; i++) EXPECT(h_out[i] == -i, "after reallocation: %d", h_out[i]);
  // A bad destination: reported by the copy or, at the latest, by the next synchronization.
  cudaError_t at_call = cudaMemcpyAsync((void *)0x7fff00000000ull, h_in, 4096, cudaMemcpyHostToDevice, s[0]);
  cudaError_t at_sync = cudaStreamSynchronize(s[0]);
  printf("bad async copy -> call %d, synchronize %d\n", (int)at_call, (int)at_sync);
  EXPECT(at_call != cudaSuccess || at_sync != cudaSuccess, "a copy to a bad address succeeded");
  (void)cudaGetLastError();
  CK(cudaFreeHost(h_in));
  CK(cudaFreeHost(h_out));
  printf("PASS\n");
  return 0;
}
