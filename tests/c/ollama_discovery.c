// Ollama's native GPU discovery, step by step: dlopen the system libcuda.so.1 and
// libnvidia-ml.so.1 by soname (no paths, no preload) and ask what Ollama asks. Every answer is
// checked; prints PASS only if the virtual GPU looks like the H100 the mediator serves.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
#define LOAD(lib, name) name##_t name = (name##_t)dlsym(lib, #name); \
  if (!name) { printf("FAIL: %s not exported\n", #name); return 1; }
#define EXPECT(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

typedef CUresult (*cuInit_t)(unsigned);
typedef CUresult (*cuDriverGetVersion_t)(int *);
typedef CUresult (*cuDeviceGetCount_t)(int *);
typedef CUresult (*cuDeviceGet_t)(int *, int);
typedef CUresult (*cuDeviceGetAttribute_t)(int *, int, int);
typedef CUresult (*cuDeviceGetName_t)(char *, int, int);
typedef CUresult (*cuDeviceTotalMem_v2_t)(size_t *, int);
typedef CUresult (*cuDeviceGetPCIBusId_t)(char *, int, int);
typedef CUresult (*cuDeviceGetUuid_t)(unsigned char *, int);
typedef CUresult (*cuCtxCreate_v3_t)(void **, void *, int, unsigned, int);
typedef CUresult (*cuMemGetInfo_v2_t)(size_t *, size_t *);
typedef CUresult (*cuCtxDestroy_t)(void *);
typedef int (*nvmlInit_v2_t)(void);
typedef int (*nvmlSystemGetDriverVersion_t)(char *, unsigned);
typedef int (*nvmlShutdown_t)(void);

int main(int argc, char **argv) {
  // The device memory to expect, in MiB (a VM's memory quota); default: the H100's 80 GiB.
  size_t want_mem = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) << 20 : 80ull << 30;
  void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
  EXPECT(cuda, "dlopen libcuda.so.1: %s", dlerror());
  LOAD(cuda, cuInit) LOAD(cuda, cuDriverGetVersion) LOAD(cuda, cuDeviceGetCount) LOAD(cuda, cuDeviceGet)
  LOAD(cuda, cuDeviceGetAttribute) LOAD(cuda, cuDeviceGetName) LOAD(cuda, cuDeviceTotalMem_v2)
  LOAD(cuda, cuDeviceGetPCIBusId) LOAD(cuda, cuDeviceGetUuid)
  LOAD(cuda, cuCtxCreate_v3) LOAD(cuda, cuMemGetInfo_v2) LOAD(cuda, cuCtxDestroy)
  EXPECT(cuInit(0) == 0, "cuInit");
  int ver = 0, count = 0, dev = -1, major = 0, minor = 0, integrated = -1;
  EXPECT(cuDriverGetVersion(&ver) == 0 && ver >= 12000, "cuDriverGetVersion %d", ver);
  EXPECT(cuDeviceGetCount(&count) == 0 && count == 1, "cuDeviceGetCount %d", count);
  EXPECT(cuDeviceGet(&dev, 0) == 0 && dev == 0, "cuDeviceGet");
  EXPECT(cuDeviceGetAttribute(&major, 75, dev) == 0 && major == 9, "compute capability major %d", major);
  EXPECT(cuDeviceGetAttribute(&minor, 76, dev) == 0 && minor == 0, "compute capability minor %d", minor);
  EXPECT(cuDeviceGetAttribute(&integrated, 18, dev) == 0 && integrated == 0, "integrated %d", integrated);
  char name[256] = {0}, bus[64] = {0};
  EXPECT(cuDeviceGetName(name, sizeof(name), dev) == 0 && strcmp(name, "NVIDIA H100 80GB HBM3") == 0, "name '%s'", name);
  size_t mem = 0;
  EXPECT(cuDeviceTotalMem_v2(&mem, dev) == 0 && mem == want_mem, "total memory %zu, want %zu", mem, want_mem);
  EXPECT(cuDeviceGetPCIBusId(bus, sizeof(bus), dev) == 0 && strcmp(bus, "0000:00:05.0") == 0, "bus id '%s'", bus);
  unsigned char uuid[16];
  EXPECT(cuDeviceGetUuid(uuid, dev) == 0, "cuDeviceGetUuid");
  // Free memory as Ollama reads it: a context of its own, cuMemGetInfo_v2, destroy.
  void *ctx = NULL;
  size_t free_mem = 0, total_mem = 0;
  EXPECT(cuCtxCreate_v3(&ctx, NULL, 0, 0, dev) == 0 && ctx, "cuCtxCreate_v3");
  EXPECT(cuMemGetInfo_v2(&free_mem, &total_mem) == 0 && total_mem == mem && free_mem > 0 && free_mem <= total_mem,
         "cuMemGetInfo_v2 free %zu total %zu", free_mem, total_mem);
  EXPECT(cuCtxDestroy(ctx) == 0, "cuCtxDestroy");
  EXPECT(cuDeviceGetName(name, 4, dev) == 0 && strcmp(name, "NVI") == 0, "truncated name '%s'", name);
  EXPECT(cuDeviceGetAttribute(&major, 75, 7) == 101, "bad ordinal is CUDA_ERROR_INVALID_DEVICE");

  void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
  EXPECT(nvml, "dlopen libnvidia-ml.so.1: %s", dlerror());
  LOAD(nvml, nvmlInit_v2) LOAD(nvml, nvmlSystemGetDriverVersion) LOAD(nvml, nvmlShutdown)
  char drv[80] = {0};
  EXPECT(nvmlInit_v2() == 0, "nvmlInit_v2");
  EXPECT(nvmlSystemGetDriverVersion(drv, sizeof(drv)) == 0, "nvmlSystemGetDriverVersion");
  int drv_major = 0;
  sscanf(drv, "%d", &drv_major);
  EXPECT(drv_major >= 550, "driver version %s (Ollama needs >= 550)", drv);
  EXPECT(nvmlShutdown() == 0, "nvmlShutdown");
  printf("cuda %d, %d device: %s, cc %d.%d, %zu MiB, %s; driver %s; free %zu MiB\n", ver, count, "NVIDIA H100 80GB HBM3", major, minor, mem >> 20, bus, drv, free_mem >> 20);
  printf("PASS\n");
  return 0;
}
