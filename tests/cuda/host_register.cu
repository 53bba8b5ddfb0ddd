// cudaHostRegister: the application's own memory (page-aligned or not, read-only or not) made
// page-locked. Asynchronous copies from and to it, larger than one transfer chunk (8 MiB) and
// at offsets inside it, queued on two streams with kernels between them, give the right data
// and write nothing outside the range copied; overlapping registrations and unregistering
// memory that is not registered are errors; a mapped registration has a device pointer (what
// kernels do with it: managed_mapped.cu); after
// unregistering, the memory is ordinary pageable memory again; large pageable copies from a
// read-only file mapping work.
#include "check.h"
#include <cstdint>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

__global__ void add_one(const int *in, int *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] + 1;
}

int main() {
  const int n = 3 << 20;  // 12 MiB of ints: more than one 8 MiB chunk
  const size_t bytes = n * sizeof(int);
  // Source: page-aligned, registered read-only. Destination: from new[] (not page-aligned),
  // with guard words before and after the range the copies write.
  int *src = nullptr;
  EXPECT(posix_memalign((void **)&src, 4096, bytes) == 0, "posix_memalign");
  char *raw = new char[bytes + 3 * 4096 + 12];
  int *dst = (int *)(raw + 12);
  const int guard = 1024;  // ints before the copied range
  for (int i = 0; i < n + 2 * guard; i++) dst[i] = -7;
  CK(cudaHostRegister(src, bytes, cudaHostRegisterReadOnly));
  CK(cudaHostRegister(raw, bytes + 3 * 4096 + 12, cudaHostRegisterDefault));

  // Overlaps and unknown pointers.
  cudaError_t e = cudaHostRegister((char *)src + 4096, 4096, cudaHostRegisterDefault);
  EXPECT(e == cudaErrorHostMemoryAlreadyRegistered, "overlapping registration: %d", (int)e);
  (void)cudaGetLastError();
  e = cudaHostUnregister((char *)src + 4096);
  EXPECT(e == cudaErrorHostMemoryNotRegistered, "unregistering the middle of a range: %d", (int)e);
  (void)cudaGetLastError();
  // A mapped registration: its device pointer covers the range, offsets included.
  int *other = nullptr;
  EXPECT(posix_memalign((void **)&other, 4096, 8192) == 0, "posix_memalign");
  CK(cudaHostRegister(other, 8192, cudaHostRegisterMapped));
  int *dother = nullptr, *dmid = nullptr;
  CK(cudaHostGetDevicePointer(&dother, other, 0));
  CK(cudaHostGetDevicePointer(&dmid, other + 100, 0));
  EXPECT(dother != nullptr && dmid == dother + 100, "device pointers %p and %p", (void *)dother, (void *)dmid);
  CK(cudaHostUnregister(other));
  printf("mapped registration has a device pointer\n");
  // Memory that is not mapped at all.
  void *gone = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  munmap(gone, 8192);
  e = cudaHostRegister(gone, 8192, cudaHostRegisterDefault);
  EXPECT(e != cudaSuccess, "registering unmapped memory worked");
  (void)cudaGetLastError();

  int *d_in, *d_out;
  CK(cudaMalloc((void **)&d_in, bytes));
  CK(cudaMalloc((void **)&d_out, bytes));
  cudaStream_t s[2];
  for (auto &x : s) CK(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < n; i++) src[i] = i * 5 - round;
    const int half = n / 2;
    for (int k = 0; k < 2; k++) {
      int off = k * half;
      CK(cudaMemcpyAsync(d_in + off, src + off, half * sizeof(int), cudaMemcpyHostToDevice, s[k]));
      add_one<<<(half + 255) / 256, 256, 0, s[k]>>>(d_in + off, d_out + off, half);
      CK(cudaGetLastError());
      CK(cudaMemcpyAsync(dst + guard + off, d_out + off, half * sizeof(int), cudaMemcpyDeviceToHost, s[k]));
    }
    for (auto &x : s) CK(cudaStreamSynchronize(x));
    for (int i = 0; i < n; i++) EXPECT(dst[guard + i] == i * 5 - round + 1, "round %d element %d: %d", round, i, dst[guard + i]);
    for (int i = 0; i < guard; i++) {
      EXPECT(dst[i] == -7, "written before the range: %d at %d", dst[i], i);
      EXPECT(dst[guard + n + i] == -7, "written after the range: %d at %d", dst[guard + n + i], i);
    }
  }
  // Synchronous copies from and to registered memory, one of them unaligned and odd-sized.
  CK(cudaMemcpy((char *)d_in + 3, (char *)src + 5, 100001, cudaMemcpyHostToDevice));
  CK(cudaMemcpy((char *)dst + 1, (char *)d_in + 3, 100001, cudaMemcpyDeviceToHost));
  EXPECT(memcmp((char *)dst + 1, (char *)src + 5, 100001) == 0, "odd-sized synchronous copies differ");

  // Unregistered, the memory is ordinary memory again and copies still work.
  CK(cudaHostUnregister(raw));
  e = cudaHostUnregister(raw);
  EXPECT(e == cudaErrorHostMemoryNotRegistered, "second unregister: %d", (int)e);
  (void)cudaGetLastError();
  CK(cudaMemcpy(dst, d_out, 4096, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 1024; i++) EXPECT(dst[i] == i * 5 - 1 + 1, "after unregistering: %d", dst[i]);
  // The same memory may be registered again.
  CK(cudaHostRegister(raw, 65536, cudaHostRegisterPortable));
  CK(cudaMemcpyAsync(dst, d_in, 8192, cudaMemcpyDeviceToHost, s[0]));
  CK(cudaStreamSynchronize(s[0]));
  EXPECT(memcmp((char *)dst + 3, (char *)src + 5, 8000) == 0, "after registering again");
  CK(cudaHostUnregister(raw));
  CK(cudaHostUnregister(src));

  // Large pageable copies (which a guest's libcuda pins just for the copy): from a read-only
  // file mapping, as a model loader copies weights, and back into ordinary memory.
  const size_t fbytes = (2 << 20) + 4096 + 77;
  char path[] = "/tmp/vgpu-host-register-XXXXXX";
  int fd = mkstemp(path);
  EXPECT(fd >= 0, "mkstemp");
  unlink(path);
  for (size_t i = 0; i < fbytes; i++) ((char *)dst)[i] = (char)(i * 31 + 7);
  EXPECT(write(fd, dst, fbytes) == (ssize_t)fbytes, "write the file");
  const char *file = (const char *)mmap(nullptr, fbytes, PROT_READ, MAP_SHARED, fd, 0);
  EXPECT(file != MAP_FAILED, "mmap the file");
  memset(dst, 0, fbytes);
  CK(cudaMemcpy(d_out, file + 77, fbytes - 77, cudaMemcpyHostToDevice));
  CK(cudaMemcpy((char *)dst + 5, d_out, fbytes - 77, cudaMemcpyDeviceToHost));
  EXPECT(memcmp((char *)dst + 5, file + 77, fbytes - 77) == 0, "pageable copies of a file mapping differ");
  EXPECT(((char *)dst)[4] == 0 && ((char *)dst)[5 + fbytes - 77] == 0, "pageable copy wrote outside its range");
  munmap((void *)file, fbytes);
  close(fd);
  free(src);
  free(other);
  delete[] raw;
  printf("PASS\n");
  return 0;
}
