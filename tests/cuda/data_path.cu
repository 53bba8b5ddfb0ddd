// Data path figures through libcuda (not a test; prints `key value` lines): the round trip of a
// call that does nothing on the device, launch rates of an empty kernel (each waited for, and
// queued then waited for once), copy bandwidth by size from pageable and pinned memory, and
// this machine's own memcpy for the same sizes. scripts/bench-data-path.sh runs it over the
// socket and in a guest, next to the in-process figures (host/benches/data_path.rs).
// usage: data_path [MAX_MIB]  (largest copy, default 256)
#include "check.h"
#include <chrono>
#include <cstring>
#include <vector>

__global__ void empty() {}

static double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char **argv) {
  size_t max = (argc > 1 ? (size_t)atoll(argv[1]) : 256) << 20;
  CK(cudaFree(0));
  size_t f, t;
  int n = 2000;
  double t0 = seconds();
  for (int i = 0; i < n; i++) CK(cudaMemGetInfo(&f, &t));
  printf("null_call_us %.3f\n", (seconds() - t0) * 1e6 / n);

  empty<<<1, 1>>>();
  CK(cudaDeviceSynchronize());
  t0 = seconds();
  for (int i = 0; i < n; i++) {
    empty<<<1, 1>>>();
    CK(cudaStreamSynchronize(0));
  }
  printf("launch_sync_per_s %.0f\n", n / (seconds() - t0));
  n = 20000;
  t0 = seconds();
  for (int i = 0; i < n; i++) empty<<<1, 1>>>();
  CK(cudaDeviceSynchronize());
  printf("launch_async_per_s %.0f\n", n / (seconds() - t0));

  char *pageable = (char *)malloc(max), *back = (char *)malloc(max), *pinned, *d;
  EXPECT(pageable && back, "malloc");
  CK(cudaMallocHost((void **)&pinned, max));
  CK(cudaMalloc((void **)&d, max));
  memset(pageable, 0x5a, max);
  memset(pinned, 0x5a, max);
  memset(back, 0, max);
  for (size_t size = 4 << 10; size <= max; size *= 4) {
    int reps = (int)((256u << 20) / size);
    reps = reps < 3 ? 3 : reps > 2000 ? 2000 : reps;
    for (int kind = 0; kind < 2; kind++) {
      char *h = kind ? pinned : pageable;
      const char *name = kind ? "pinned" : "pageable";
      t0 = seconds();
      for (int r = 0; r < reps; r++) CK(cudaMemcpy(d, h, size, cudaMemcpyHostToDevice));
      printf("h2d_%s_%zu %.3f\n", name, size, (double)size * reps / (seconds() - t0) / 1e9);
      t0 = seconds();
      for (int r = 0; r < reps; r++) CK(cudaMemcpy(h, d, size, cudaMemcpyDeviceToHost));
      printf("d2h_%s_%zu %.3f\n", name, size, (double)size * reps / (seconds() - t0) / 1e9);
      EXPECT(h[size - 1] == 0x5a, "data");
    }
    t0 = seconds();
    for (int r = 0; r < reps; r++) {
      memcpy(back, pageable, size);
      __asm__ __volatile__("" : : "r"(back) : "memory");
    }
    printf("memcpy_%zu %.3f\n", size, (double)size * reps / (seconds() - t0) / 1e9);
  }

  // Managed memory held by the process: libcuda hashes it at each submission and brings back
  // what kernels may have written after each wait (driver/mirror.rs). Launch rates as above,
  // with 64 MiB of managed memory held, untouched and then written by the host each time.
  char *m;
  CK(cudaMallocManaged((void **)&m, 64 << 20));
  memset(m, 1, 64 << 20);
  n = 200;
  t0 = seconds();
  for (int i = 0; i < n; i++) {
    empty<<<1, 1>>>();
    CK(cudaStreamSynchronize(0));
  }
  printf("launch_sync_with_64MiB_managed_per_s %.0f\n", n / (seconds() - t0));
  t0 = seconds();
  for (int i = 0; i < n; i++) {
    m[(i * 4096) % (64 << 20)] = (char)i;
    empty<<<1, 1>>>();
    CK(cudaStreamSynchronize(0));
  }
  printf("launch_sync_with_64MiB_managed_a_page_written_per_s %.0f\n", n / (seconds() - t0));
  n = 2000;
  t0 = seconds();
  for (int i = 0; i < n; i++) empty<<<1, 1>>>();
  CK(cudaDeviceSynchronize());
  printf("launch_async_with_64MiB_managed_per_s %.0f\n", n / (seconds() - t0));
  CK(cudaFree(m));
  printf("PASS\n");
  return 0;
}
