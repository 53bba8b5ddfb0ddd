// Stream-ordered allocation and memory pools (cudaMallocAsync, cudaFreeAsync, cudaMemPool*),
// checked by what CUDA documents: the device says it supports pools; memory from
// cudaMallocAsync works in kernels on its stream; the pool's used/reserved counters follow the
// allocations (used >= what was asked while held, 0 once freed; reserved >= used; high
// watermarks >= current); the release threshold round-trips; with threshold 0, a
// synchronization returns unused memory to the device; a pool of one's own allocates, and
// trimming it to 0 after its blocks are freed leaves nothing reserved; the same holds with the
// default pool after cudaDeviceSetMemPool back; small blocks are carved from what the pool
// reserved (a second one reserves nothing more, each counts in use as asked), may be freed
// with cudaFree, and get no IPC handle. Prints only what holds on any GPU, then PASS.
#include "check.h"
#include <vector>

__global__ void fill(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v + i;
}

__global__ void add(const int *a, int *b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) b[i] += a[i];
}

static unsigned long long attr(cudaMemPool_t pool, cudaMemPoolAttr a) {
  unsigned long long v = 0;
  CK(cudaMemPoolGetAttribute(pool, a, &v));
  return v;
}

int main() {
  int supported = 0;
  CK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
  EXPECT(supported == 1, "memory pools supported: %d", supported);
  printf("memory pools supported\n");

  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cudaMemPool_t pool, current;
  CK(cudaDeviceGetDefaultMemPool(&pool, 0));
  CK(cudaDeviceGetMemPool(&current, 0));
  EXPECT(pool == current, "the current pool is the default one");
  unsigned long long zero = 0;
  CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &zero));

  const int n = 1 << 18;  // 1 MiB of ints
  int *a, *b;
  CK(cudaMallocAsync(&a, n * sizeof(int), s));
  CK(cudaMallocAsync(&b, n * sizeof(int), s));
  unsigned long long used = attr(pool, cudaMemPoolAttrUsedMemCurrent);
  unsigned long long reserved = attr(pool, cudaMemPoolAttrReservedMemCurrent);
  EXPECT(used >= 2ull * n * sizeof(int), "used %llu while holding two 1 MiB blocks", used);
  EXPECT(reserved >= used, "reserved %llu < used %llu", reserved, used);
  fill<<<(n + 255) / 256, 256, 0, s>>>(a, n, 1);
  fill<<<(n + 255) / 256, 256, 0, s>>>(b, n, 1000);
  add<<<(n + 255) / 256, 256, 0, s>>>(a, b, n);
  std::vector<int> h(n);
  CK(cudaMemcpyAsync(h.data(), b, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  CK(cudaFreeAsync(a, s));
  CK(cudaFreeAsync(b, s));
  CK(cudaStreamSynchronize(s));
  for (int i = 0; i < n; i++) EXPECT(h[i] == 1001 + 2 * i, "element %d is %d", i, h[i]);
  printf("kernels on stream-ordered memory: right\n");

  // Freed in stream order and synchronized, with a release threshold of 0: nothing left.
  EXPECT(attr(pool, cudaMemPoolAttrUsedMemCurrent) == 0, "used after free");
  CK(cudaDeviceSynchronize());
  EXPECT(attr(pool, cudaMemPoolAttrReservedMemCurrent) == 0, "reserved %llu after synchronizing with threshold 0", attr(pool, cudaMemPoolAttrReservedMemCurrent));
  EXPECT(attr(pool, cudaMemPoolAttrUsedMemHigh) >= used, "used high watermark");
  EXPECT(attr(pool, cudaMemPoolAttrReservedMemHigh) >= reserved, "reserved high watermark");
  CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  EXPECT(attr(pool, cudaMemPoolAttrUsedMemHigh) == 0, "used high watermark reset");
  unsigned long long big = 64ull << 20, back = 0;
  CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &big));
  CK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &back));
  EXPECT(back == big, "release threshold %llu", back);
  printf("default pool counters and threshold: right\n");

  // Small blocks share the memory the pool reserved, as CuPy's pool tests count it.
  CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &zero));
  CK(cudaDeviceSynchronize());
  char *p1, *p2;
  CK(cudaMallocAsync(&p1, 1024, s));
  unsigned long long r1 = attr(pool, cudaMemPoolAttrReservedMemCurrent);
  CK(cudaMallocAsync(&p2, 2048, s));
  EXPECT(attr(pool, cudaMemPoolAttrReservedMemCurrent) == r1, "a second small block reserved more: %llu after %llu", attr(pool, cudaMemPoolAttrReservedMemCurrent), r1);
  EXPECT(attr(pool, cudaMemPoolAttrUsedMemCurrent) == 3072, "used %llu holding 1024 and 2048 bytes", attr(pool, cudaMemPoolAttrUsedMemCurrent));
  CK(cudaMemsetAsync(p2, 1, 2048, s));
  CK(cudaMemsetAsync(p1, 2, 1024, s));
  std::vector<char> back2(2048);
  CK(cudaMemcpyAsync(back2.data(), p2, 2048, cudaMemcpyDeviceToHost, s));
  CK(cudaStreamSynchronize(s));
  for (int i = 0; i < 2048; i++) EXPECT(back2[i] == 1, "byte %d of the second block is %d: the blocks overlap", i, back2[i]);
  cudaIpcMemHandle_t ih;
  EXPECT(cudaIpcGetMemHandle(&ih, p1) != cudaSuccess, "an IPC handle for stream-ordered memory");
  (void)cudaGetLastError();
  CK(cudaFreeAsync(p1, s));
  CK(cudaFree(p2));  // allowed for stream-ordered memory; it synchronizes
  EXPECT(attr(pool, cudaMemPoolAttrUsedMemCurrent) == 0, "used %llu after freeing both", attr(pool, cudaMemPoolAttrUsedMemCurrent));
  CK(cudaDeviceSynchronize());
  EXPECT(attr(pool, cudaMemPoolAttrReservedMemCurrent) == 0, "reserved %llu after freeing both", attr(pool, cudaMemPoolAttrReservedMemCurrent));
  printf("small blocks share the pool's memory: right\n");

  // A pool of our own, made the device's current one.
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 0;
  cudaMemPool_t mine;
  CK(cudaMemPoolCreate(&mine, &props));
  CK(cudaDeviceSetMemPool(0, mine));
  CK(cudaDeviceGetMemPool(&current, 0));
  EXPECT(current == mine, "the current pool is ours");
  int *c;
  CK(cudaMallocAsync(&c, n * sizeof(int), s));
  EXPECT(attr(mine, cudaMemPoolAttrUsedMemCurrent) >= (unsigned long long)n * sizeof(int), "our pool's use");
  fill<<<(n + 255) / 256, 256, 0, s>>>(c, n, 7);
  CK(cudaMemcpyAsync(h.data(), c, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  CK(cudaFreeAsync(c, s));
  CK(cudaStreamSynchronize(s));
  EXPECT(h[12345] == 7 + 12345, "element 12345 is %d", h[12345]);
  CK(cudaMemPoolTrimTo(mine, 0));
  EXPECT(attr(mine, cudaMemPoolAttrReservedMemCurrent) == 0, "reserved after trimming to 0");
  CK(cudaDeviceSetMemPool(0, pool));
  CK(cudaMemPoolDestroy(mine));
  // From the default pool again, through cudaMallocFromPoolAsync.
  int *d;
  CK(cudaMallocFromPoolAsync(&d, 4096, pool, s));
  CK(cudaMemsetAsync(d, 0, 4096, s));
  CK(cudaFreeAsync(d, s));
  CK(cudaStreamSynchronize(s));
  CK(cudaStreamDestroy(s));
  printf("a pool of our own: right\n");
  printf("PASS\n");
  return 0;
}
