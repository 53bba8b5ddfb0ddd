// Long runs of asynchronous work keep stream order: 2000 launches in a row, each folding its
// index into a running value (a launch lost, repeated or run out of order changes every value
// after it), with asynchronous copies of that value into pinned memory and a few synchronous
// ones into pageable memory between them. Every copy must hold the value the host computes for
// that point. Transports batch asynchronous requests and read their replies later (the guest's
// sends a batch while the one before it still runs), so this crosses many batch boundaries at
// odd offsets. Then a launch that faults, queued behind hundreds of good ones: the next
// synchronization reports cudaErrorIllegalAddress, and so does every later call, as CUDA's
// sticky errors do.
#include "check.h"
#include <vector>

__global__ void fold(unsigned *acc, unsigned i) { acc[0] = acc[0] * 1664525u + i; }

int main() {
  const int n = 2000, every = 37, sync_every = 501;
  unsigned *d, *snap;
  CK(cudaMalloc(&d, sizeof(unsigned)));
  CK(cudaMemset(d, 0, sizeof(unsigned)));
  CK(cudaMallocHost(&snap, (n / every + 1) * sizeof(unsigned)));
  std::vector<unsigned> want;
  unsigned v = 0;
  for (int i = 0; i < n; i++) {
    fold<<<1, 1>>>(d, i);
    v = v * 1664525u + i;
    if (i % every == 0) {
      CK(cudaMemcpyAsync(snap + want.size(), d, sizeof(unsigned), cudaMemcpyDeviceToHost, 0));
      want.push_back(v);
    }
    if (i % sync_every == 0) {
      unsigned now = 0;
      CK(cudaMemcpy(&now, d, sizeof(unsigned), cudaMemcpyDeviceToHost));
      EXPECT(now == v, "after launch %d the value is %u, the host computed %u", i, now, v);
    }
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  for (size_t k = 0; k < want.size(); k++)
    EXPECT(snap[k] == want[k], "snapshot %zu (after launch %zu): %u, the host computed %u", k, k * every, snap[k], want[k]);
  unsigned last = 0;
  CK(cudaMemcpy(&last, d, sizeof(unsigned), cudaMemcpyDeviceToHost));
  EXPECT(last == v, "final value %u, the host computed %u", last, v);
  printf("%d launches and %zu copies in order\n", n, want.size());

  // A fault behind 300 good launches, then more launches: the error is sticky.
  for (int i = 0; i < 300; i++) fold<<<1, 1>>>(d, i);
  fold<<<1, 1>>>((unsigned *)0x10, 0);
  for (int i = 0; i < 100; i++) fold<<<1, 1>>>(d, i);
  cudaError_t at_sync = cudaDeviceSynchronize();
  cudaError_t after = cudaMemcpy(&last, d, sizeof(unsigned), cudaMemcpyDeviceToHost);
  printf("faulting launch -> synchronize %d, a later copy %d\n", (int)at_sync, (int)after);
  EXPECT(at_sync == cudaErrorIllegalAddress, "synchronize after a faulting launch: %d", (int)at_sync);
  EXPECT(after == cudaErrorIllegalAddress, "a copy after the fault: %d", (int)after);
  printf("PASS\n");
  return 0;
}
