// Managed memory (cudaMallocManaged) and mapped page-locked memory (cudaHostAlloc with
// cudaHostAllocMapped, cudaHostGetDevicePointer), checked by what CUDA documents for a device
// without concurrent managed access: one pointer serves host and kernels; what the host wrote
// before a launch is what the kernel reads; what a kernel wrote is on the host after a
// synchronization; copies and memsets to and from managed memory see the host's latest writes;
// the host's writes to one page while a kernel writes another survive the synchronization;
// pointer attributes say "managed"; a kernel reads and writes mapped host memory through its
// device pointer. Expected values are computed here on the CPU. Prints PASS.
#include "check.h"
#include <cstring>
#include <vector>

__global__ void scale_add(int *p, int n, int mul, int add) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = p[i] * mul + add;
}

// Writes only the first `n` ints: the host may change what lies after them meanwhile.
__global__ void fill(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v + i;
}

int main() {
  int managed = 0, concurrent = -1, map_host = 0;
  CK(cudaDeviceGetAttribute(&managed, cudaDevAttrManagedMemory, 0));
  CK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, 0));
  CK(cudaDeviceGetAttribute(&map_host, cudaDevAttrCanMapHostMemory, 0));
  EXPECT(managed == 1 && map_host == 1, "managed %d, can map host memory %d", managed, map_host);
  printf("managed memory supported\n");

  // 3 MiB + 100 ints: several pages, a partial last page.
  const int n = 3 * 262144 + 100;
  int *m;
  CK(cudaMallocManaged(&m, n * sizeof(int)));
  for (int i = 0; i < n; i++) m[i] = i;  // host writes through the same pointer
  scale_add<<<(n + 255) / 256, 256>>>(m, n, 3, 7);
  CK(cudaDeviceSynchronize());
  for (int i = 0; i < n; i++) EXPECT(m[i] == 3 * i + 7, "m[%d] = %d after the kernel", i, m[i]);
  printf("host writes, kernel reads and writes, host reads: right\n");

  // Host changes one element only; the kernel must see it (and all the others as they were).
  m[12345] = -1;
  scale_add<<<(n + 255) / 256, 256>>>(m, n, 2, 0);
  CK(cudaStreamSynchronize(0));
  for (int i = 0; i < n; i++) {
    int want = i == 12345 ? -2 : 2 * (3 * i + 7);
    EXPECT(m[i] == want, "m[%d] = %d, want %d", i, m[i], want);
  }
  printf("a single host write before a launch: right\n");

  // The kernel writes the first 1024 ints (page 0) while the host writes an int on a later
  // page; after the synchronization both writes are there.
  fill<<<4, 256>>>(m, 1024, 500);
  m[200000] = 4242;
  CK(cudaDeviceSynchronize());
  for (int i = 0; i < 1024; i++) EXPECT(m[i] == 500 + i, "m[%d] = %d after fill", i, m[i]);
  EXPECT(m[200000] == 4242, "the host's write during the kernel was lost: %d", m[200000]);
  EXPECT(m[1024] == 2 * (3 * 1024 + 7), "m[1024] = %d", m[1024]);
  printf("host and kernel writing different pages at once: both kept\n");

  // Copies and memsets with managed memory on either side.
  std::vector<int> h(n);
  m[7] = 77;
  CK(cudaMemcpy(h.data(), m, n * sizeof(int), cudaMemcpyDefault));
  EXPECT(h[7] == 77 && h[200000] == 4242 && h[n - 1] == 2 * (3 * (n - 1) + 7), "copy from managed: %d %d %d", h[7], h[200000], h[n - 1]);
  for (int i = 0; i < n; i++) h[i] = -i;
  CK(cudaMemcpy(m, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
  EXPECT(m[5] == -5 && m[n - 1] == -(n - 1), "copy into managed: %d %d", m[5], m[n - 1]);
  CK(cudaMemset(m + 10, 0xff, 4 * sizeof(int)));
  CK(cudaDeviceSynchronize());
  EXPECT(m[9] == -9 && m[10] == -1 && m[13] == -1 && m[14] == -14, "memset of managed: %d %d %d %d", m[9], m[10], m[13], m[14]);
  int *d;
  CK(cudaMalloc(&d, n * sizeof(int)));
  CK(cudaMemcpy(d, m, n * sizeof(int), cudaMemcpyDeviceToDevice));
  scale_add<<<(n + 255) / 256, 256>>>(d, n, 1, 1);
  CK(cudaMemcpy(m, d, n * sizeof(int), cudaMemcpyDeviceToDevice));
  CK(cudaDeviceSynchronize());
  EXPECT(m[3] == -2 && m[11] == 0 && m[n - 1] == -(n - 1) + 1, "device copies to and from managed: %d %d %d", m[3], m[11], m[n - 1]);
  printf("copies and memsets with managed memory: right\n");

  cudaPointerAttributes pa;
  CK(cudaPointerGetAttributes(&pa, m + 1000));
  EXPECT(pa.type == cudaMemoryTypeManaged, "pointer type %d", (int)pa.type);
  EXPECT(pa.devicePointer == (void *)(m + 1000) && pa.hostPointer == (void *)(m + 1000), "pointers %p %p", pa.devicePointer, pa.hostPointer);
  CK(cudaPointerGetAttributes(&pa, d));
  EXPECT(pa.type == cudaMemoryTypeDevice, "cudaMalloc pointer type %d", (int)pa.type);
  printf("pointer attributes: right\n");

#if CUDART_VERSION >= 13000  // locations instead of device ordinals
  cudaMemLocation dev0 = {cudaMemLocationTypeDevice, 0};
  CK(cudaMemPrefetchAsync(m, n * sizeof(int), dev0, 0, 0));
  CK(cudaMemAdvise(m, n * sizeof(int), cudaMemAdviseSetReadMostly, dev0));
  cudaMemLocation nowhere = {cudaMemLocationTypeDevice, 100000000};
  EXPECT(cudaMemPrefetchAsync(m, n * sizeof(int), nowhere, 0, 0) == cudaErrorInvalidDevice, "prefetch to a device that does not exist");
#else
  CK(cudaMemPrefetchAsync(m, n * sizeof(int), 0, 0));
  CK(cudaMemAdvise(m, n * sizeof(int), cudaMemAdviseSetReadMostly, 0));
  EXPECT(cudaMemPrefetchAsync(m, n * sizeof(int), 100000000, 0) == cudaErrorInvalidDevice, "prefetch to a device that does not exist");
  EXPECT(cudaMemAdvise(m, n * sizeof(int), cudaMemAdviseSetPreferredLocation, 100000000) == cudaErrorInvalidDevice, "advice naming a device that does not exist");
#endif
  (void)cudaGetLastError();
  CK(cudaStreamAttachMemAsync(0, m, 0, cudaMemAttachGlobal));
  CK(cudaDeviceSynchronize());
  EXPECT(m[3] == -2, "m[3] = %d after prefetch and advice", m[3]);
  printf("prefetch, advice, attach: accepted, data kept\n");
  CK(cudaFree(m));
  CK(cudaFree(d));

  // A second managed allocation after freeing the first works the same.
  float *f;
  CK(cudaMallocManaged(&f, 1000 * sizeof(float), cudaMemAttachHost));
  for (int i = 0; i < 1000; i++) f[i] = 0.5f * i;
  CK(cudaStreamAttachMemAsync(0, f, 0, cudaMemAttachGlobal));
  scale_add<<<4, 256>>>((int *)f, 0, 1, 1);  // n = 0: touches nothing
  CK(cudaDeviceSynchronize());
  EXPECT(f[999] == 499.5f, "f[999] = %f", f[999]);
  CK(cudaFree(f));
  printf("a second managed allocation: right\n");

  // Mapped page-locked memory: the kernel works on host memory through its device pointer.
  const int k = 50000;
  int *hp, *dp;
  CK(cudaHostAlloc(&hp, k * sizeof(int), cudaHostAllocMapped));
  for (int i = 0; i < k; i++) hp[i] = 2 * i;
  CK(cudaHostGetDevicePointer(&dp, hp, 0));
  scale_add<<<(k + 255) / 256, 256>>>(dp, k, 5, -1);
  CK(cudaDeviceSynchronize());
  for (int i = 0; i < k; i++) EXPECT(hp[i] == 10 * i - 1, "hp[%d] = %d", i, hp[i]);
  int *dp2;
  CK(cudaHostGetDevicePointer(&dp2, hp + 100, 0));
  EXPECT(dp2 == dp + 100, "the device pointer of hp + 100 is %p, not dp + 100 = %p", dp2, dp + 100);
  hp[100] = 1;
  scale_add<<<1, 1>>>(dp2, 1, 1, 1);
  CK(cudaDeviceSynchronize());
  EXPECT(hp[100] == 2 && hp[101] == 1009, "hp[100] = %d, hp[101] = %d", hp[100], hp[101]);
  CK(cudaFreeHost(hp));
  printf("mapped host memory through its device pointer: right\n");

  // Registered (cudaHostRegister) memory, mapped.
  std::vector<int> reg(8192 + 1024);  // not page-aligned in general
  for (int i = 0; i < (int)reg.size(); i++) reg[i] = i;
  CK(cudaHostRegister(reg.data(), reg.size() * sizeof(int), cudaHostRegisterMapped));
  int *rp;
  CK(cudaHostGetDevicePointer(&rp, reg.data(), 0));
  scale_add<<<(reg.size() + 255) / 256, 256>>>(rp, (int)reg.size(), -1, 0);
  CK(cudaDeviceSynchronize());
  for (int i = 0; i < (int)reg.size(); i++) EXPECT(reg[i] == -i, "reg[%d] = %d", i, reg[i]);
  CK(cudaHostUnregister(reg.data()));
  printf("mapped registered memory: right\n");

  printf("PASS\n");
  return 0;
}
