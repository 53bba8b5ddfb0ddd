// Works until something fails, for fault tests: each iteration uploads data, runs a kernel,
// downloads and checks the result, and prints "ITER n". On any CUDA error it prints
// "ERROR <name>" and exits with status 3 (a hang is what the tests look for not to happen).
// With the argument "big", each iteration moves 32 MiB each way (to be killed mid-transfer).
#include "check.h"
#include <cstring>
#include <unistd.h>
#include <vector>

__global__ void inc(int *d, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) d[i] += 1;
}

#define OR_FAIL(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  printf("ERROR %s at %s\n", cudaGetErrorName(e_), #x); fflush(stdout); exit(3); } } while (0)

int main(int argc, char **argv) {
  bool big = argc > 1 && strcmp(argv[1], "big") == 0;
  const int n = big ? (32 << 20) / 4 : 4096;
  std::vector<int> h(n), back(n);
  int *d;
  OR_FAIL(cudaMalloc(&d, n * sizeof(int)));
  for (long iter = 1; iter <= 1000000; iter++) {
    for (int i = 0; i < n; i++) h[i] = i ^ (int)iter;
    OR_FAIL(cudaMemcpy(d, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    if (!big) {
      inc<<<(n + 255) / 256, 256>>>(d, n);
      OR_FAIL(cudaGetLastError());
    }
    OR_FAIL(cudaMemcpy(back.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) {
      EXPECT(back[i] == (h[i] + (big ? 0 : 1)), "iteration %ld: element %d is %d", iter, i, back[i]);
    }
    printf("ITER %ld\n", iter);
    fflush(stdout);
    if (!big) usleep(20000);
  }
  printf("PASS\n");
  return 0;
}
