// Device printf: a few threads of two blocks print mixed types; the host prints before and
// after. The test compares stdout line for line (CUDA prints device output by the next
// synchronization; here each block's lines are in thread order).
#include "check.h"

__global__ void hello(const char *who, double scale) {
  int t = threadIdx.x, b = blockIdx.x;
  if (t < 2) printf("block %d thread %d: hello %s, %.3f %lld 0x%04x\n", b, t, who, scale * (b * 2 + t), (long long)(b + 1) << 33, 0xab + t);
}

int main() {
  printf("host: before\n");
  char *who;
  const char name[] = "vgpu";
  CK(cudaMalloc(&who, sizeof(name)));
  CK(cudaMemcpy(who, name, sizeof(name), cudaMemcpyHostToDevice));
  hello<<<2, 32>>>(who, 0.25);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  printf("host: after\n");
  printf("PASS\n");
  return 0;
}
