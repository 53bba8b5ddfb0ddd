// Data path figures through libcuda (not a test; prints `key value` lines): the round trip of a
// call that does nothing on the device, launch rates of an empty kernel (each waited for, and
// queued then waited for once), copy bandwidth by size from pageable and pinned memory, and
// this machine's own memcpy for the same sizes. scripts/bench-data-path.sh runs it over the
// socket and in a guest, next to the in-process figures (host/benches/data_path.rs).
// usage: data_path [MAX_MIB]  (largest copy, default 256)
#include "check.h"
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

__global__ void empty() {}

static double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The floor of each path, what a null call cannot beat: over the socket, a bare Unix-socket
// ping-pong of a message header (24 bytes) with a thread that echoes it; in a guest, a channel
// descriptor that asks the device for nothing (an empty SEND: doorbell, completion, no
// mediator). The channel's layout and ioctls are vgpu's driver interface, uapi/src/channel.rs.
static double socket_floor_us(int n) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return -1;
  std::thread echo([&] {
    char b[24];
    for (int i = 0; i < n; i++) {
      size_t got = 0;
      while (got < sizeof b) { ssize_t r = read(sv[1], b + got, sizeof b - got); if (r <= 0) return; got += r; }
      if (write(sv[1], b, sizeof b) != (ssize_t)sizeof b) return;
    }
  });
  char m[24] = {0};
  double t0 = seconds();
  for (int i = 0; i < n; i++) {
    if (write(sv[0], m, sizeof m) != (ssize_t)sizeof m) break;
    size_t got = 0;
    while (got < sizeof m) { ssize_t r = read(sv[0], m + got, sizeof m - got); if (r <= 0) break; got += r; }
  }
  double us = (seconds() - t0) * 1e6 / n;
  echo.join();
  close(sv[0]);
  close(sv[1]);
  return us;
}

struct ChannelInfo { uint64_t area_size, staging_offset, staging_size; uint32_t sq_entries, cq_entries, channel, reserved; };
struct WaitArgs { uint32_t seen, timeout_ms; };
#define VGPU_IOC(dir, nr, size) (((unsigned long)(dir) << 30) | ((unsigned long)(size) << 16) | ('V' << 8) | (nr))
static const unsigned long IOCTL_CHANNEL_OPEN = VGPU_IOC(2, 0x41, sizeof(ChannelInfo));
static const unsigned long IOCTL_DOORBELL = VGPU_IOC(0, 0x42, 0);
static const unsigned long IOCTL_WAIT = VGPU_IOC(1, 0x43, sizeof(WaitArgs));
enum { SQ_TAIL = 0x000, CQ_TAIL = 0x080, CQ_HEAD = 0x0c0, POLLING = 0x0e0, SQ_RING = 0x100, SQ_ENTRIES = 32, OP_SEND = 1 };

static double channel_floor_us(int n) {
  int fd = open("/dev/nvidia0", O_RDWR);
  if (fd < 0) return -1;
  ChannelInfo info;
  if (ioctl(fd, IOCTL_CHANNEL_OPEN, &info)) { close(fd); return -1; }
  char *a = (char *)mmap(nullptr, info.area_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (a == MAP_FAILED) { close(fd); return -1; }
  auto word = [&](int off) { return (volatile uint32_t *)(a + off); };
  uint32_t tail = *word(SQ_TAIL), head = *word(CQ_HEAD);
  double t0 = seconds();
  for (int i = 0; i < n; i++) {
    uint64_t d[4] = {OP_SEND, (uint64_t)i, info.staging_offset, 0};  // op, flags = 0; tag; offset; len 0
    memcpy(a + SQ_RING + (tail % SQ_ENTRIES) * 32, d, sizeof d);
    tail++;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    *word(SQ_TAIL) = tail;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (*word(POLLING) != 1) ioctl(fd, IOCTL_DOORBELL, 0);
    for (int spins = 0; *word(CQ_TAIL) == head; spins++) {
      if (spins >= 200) { WaitArgs w = {head, 1000}; ioctl(fd, IOCTL_WAIT, &w); }
    }
    head++;
    *word(CQ_HEAD) = head;
  }
  double us = (seconds() - t0) * 1e6 / n;
  munmap(a, info.area_size);
  close(fd);
  return us;
}

int main(int argc, char **argv) {
  size_t max = (argc > 1 ? (size_t)atoll(argv[1]) : 256) << 20;
  CK(cudaFree(0));
  size_t f, t;
  int n = 2000;
  double t0 = seconds();
  for (int i = 0; i < n; i++) CK(cudaMemGetInfo(&f, &t));
  printf("null_call_us %.3f\n", (seconds() - t0) * 1e6 / n);
  // In a guest (the node exists) the channel's floor, else the socket's.
  double floor = access("/dev/nvidia0", F_OK) == 0 ? channel_floor_us(n) : socket_floor_us(20000);
  if (floor > 0) printf("floor_null_call_us %.3f\n", floor);

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
