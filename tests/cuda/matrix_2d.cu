// A 2-D kernel: blockIdx/threadIdx/blockDim/gridDim in x and y, partial blocks on both edges,
// and a grid-stride loop in y (the grid covers only part of the rows).
#include "check.h"
#include <vector>

__global__ void transform(const int *in, int *out, int width, int height) {
  int x = blockIdx.x * blockDim.x + threadIdx.x;
  for (int y = blockIdx.y * blockDim.y + threadIdx.y; y < height; y += gridDim.y * blockDim.y) {
    if (x < width) {
      int v = in[y * width + x];
      out[y * width + x] = v * 3 - x + 7 * y + (int)(threadIdx.x ^ threadIdx.y) - (int)(blockIdx.x % 3);
    }
  }
}

int main() {
  const int w = 203, h = 117;
  std::vector<int> in(w * h), out(w * h);
  for (int i = 0; i < w * h; i++) in[i] = (i * 7919) % 1000 - 500;
  int *din, *dout;
  CK(cudaMalloc(&din, w * h * sizeof(int)));
  CK(cudaMalloc(&dout, w * h * sizeof(int)));
  CK(cudaMemcpy(din, in.data(), w * h * sizeof(int), cudaMemcpyHostToDevice));
  dim3 block(16, 8);
  dim3 grid((w + block.x - 1) / block.x, 5);
  transform<<<grid, block>>>(din, dout, w, h);
  CK(cudaGetLastError());
  CK(cudaMemcpy(out.data(), dout, w * h * sizeof(int), cudaMemcpyDeviceToHost));
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      int tx = x % block.x, ty = y % block.y, bx = x / block.x;
      int want = in[y * w + x] * 3 - x + 7 * y + (tx ^ ty) - (bx % 3);
      EXPECT(out[y * w + x] == want, "out[%d][%d] = %d, want %d", y, x, out[y * w + x], want);
    }
  CK(cudaFree(din)); CK(cudaFree(dout));
  printf("PASS\n");
  return 0;
}
