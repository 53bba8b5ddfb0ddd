// Vector add over a size that is not a multiple of the block: the tail threads must do nothing.
#include "check.h"
#include <vector>

__global__ void vector_add(const float *a, const float *b, float *c, int n) {
  int i = blockDim.x * blockIdx.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

int main() {
  const int n = 50000;
  std::vector<float> a(n), b(n), c(n, -1.0f);
  for (int i = 0; i < n; i++) { a[i] = i * 0.5f; b[i] = 1000.0f - i; }
  int runtime = 0, driver = 0, count = 0;
  CK(cudaRuntimeGetVersion(&runtime));
  CK(cudaDriverGetVersion(&driver));
  CK(cudaGetDeviceCount(&count));
  EXPECT(count >= 1, "device count %d", count);
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("runtime %d driver %d device '%s' cc %d.%d SMs %d mem %zu MiB\n", runtime, driver, prop.name,
         prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem >> 20);
  float *da, *db, *dc;
  size_t bytes = n * sizeof(float);
  CK(cudaMalloc(&da, bytes)); CK(cudaMalloc(&db, bytes)); CK(cudaMalloc(&dc, bytes));
  CK(cudaMemcpy(da, a.data(), bytes, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(db, b.data(), bytes, cudaMemcpyHostToDevice));
  CK(cudaMemset(dc, 0xff, bytes));
  int threads = 256, blocks = (n + threads - 1) / threads;
  vector_add<<<blocks, threads>>>(da, db, dc, n - 7);  // the last 7 stay untouched
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(c.data(), dc, bytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; i++) {
    if (i < n - 7) EXPECT(c[i] == a[i] + b[i], "c[%d] = %f, want %f", i, c[i], a[i] + b[i]);
    else { unsigned u; memcpy(&u, &c[i], 4); EXPECT(u == 0xffffffffu, "c[%d] was written: %08x", i, u); }
  }
  CK(cudaFree(da)); CK(cudaFree(db)); CK(cudaFree(dc));
  printf("PASS\n");
  return 0;
}
