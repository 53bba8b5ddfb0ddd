// llama.cpp's ggml-cuda backend, its CUDA calls in the order it makes them: device
// initialization (ggml_cuda_init: device count, the VMM attribute through the driver API,
// properties, the "Device 0: ..." line), backend creation (non-blocking stream), memory query,
// buffer allocation and clearing, tensor upload on the per-thread stream, pinned host memory,
// kernels that opt in to more dynamic shared memory, the compute graph captured and replayed
// (and updated on the second token), the download of the result, events across streams, and
// teardown. Results are checked against the CPU.
#include "check.h"
#include <dlfcn.h>
#include <cstring>
#include <vector>

typedef int (*cuDeviceGet_t)(int *, int);
typedef int (*cuDeviceGetAttribute_t)(int *, int, int);
static const int CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102;

// The driver API's VMM types and entry points, as ggml's VMM pool uses them.
struct MemLocation { int type, id; };
struct MemAllocationProp { int type, handleTypes; MemLocation location; void *win32; unsigned char flags[8]; };
struct MemAccessDesc { MemLocation location; int flags; };
typedef int (*cuMemGetAllocationGranularity_t)(size_t *, const MemAllocationProp *, int);
typedef int (*cuMemAddressReserve_t)(unsigned long long *, size_t, size_t, unsigned long long, unsigned long long);
typedef int (*cuMemCreate_t)(unsigned long long *, size_t, const MemAllocationProp *, unsigned long long);
typedef int (*cuMemMap_t)(unsigned long long, size_t, size_t, unsigned long long, unsigned long long);
typedef int (*cuMemRelease_t)(unsigned long long);
typedef int (*cuMemSetAccess_t)(unsigned long long, size_t, const MemAccessDesc *, size_t);
typedef int (*cuMemUnmap_t)(unsigned long long, size_t);
typedef int (*cuMemAddressFree_t)(unsigned long long, size_t);
#define SYM(name) name##_t name = (name##_t)dlsym(cuda, #name); EXPECT(name != nullptr, #name " missing")
#define CU(x) do { int r_ = (x); EXPECT(r_ == 0, #x " failed: %d", r_); } while (0)

// A matrix-vector product like ggml's mul_mat_vec: one warp per row, the row staged in dynamic
// shared memory, a warp-shuffle reduction.
__global__ void mul_mat_vec(const float *m, const float *v, float *out, int ncols) {
  extern __shared__ float row[];
  for (int c = threadIdx.x; c < ncols; c += blockDim.x) row[c] = m[(size_t)blockIdx.x * ncols + c];
  __syncthreads();
  float sum = 0.0f;
  for (int c = threadIdx.x; c < ncols; c += blockDim.x) sum += row[c] * v[c];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
  if (threadIdx.x == 0) out[blockIdx.x] = sum;
}

// rms_norm as ggml computes it (one warp per row).
__global__ void rms_norm(const float *x, float *y, int ncols, float eps) {
  const float *r = x + (size_t)blockIdx.x * ncols;
  float s = 0.0f;
  for (int c = threadIdx.x; c < ncols; c += 32) s += r[c] * r[c];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
  float scale = rsqrtf(s / ncols + eps);
  for (int c = threadIdx.x; c < ncols; c += 32) y[(size_t)blockIdx.x * ncols + c] = r[c] * scale;
}

int main() {
  // ggml_cuda_init
  int count = 0;
  CK(cudaGetDeviceCount(&count));
  EXPECT(count == 1, "%d devices", count);
  void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (!cuda) cuda = dlopen("libcuda.so.1", RTLD_NOW);
  EXPECT(cuda != nullptr, "libcuda.so.1 not loadable: %s", dlerror());
  cuDeviceGet_t cuDeviceGet = (cuDeviceGet_t)dlsym(cuda, "cuDeviceGet");
  cuDeviceGetAttribute_t cuDeviceGetAttribute = (cuDeviceGetAttribute_t)dlsym(cuda, "cuDeviceGetAttribute");
  EXPECT(cuDeviceGet && cuDeviceGetAttribute, "driver entry points missing");
  SYM(cuMemGetAllocationGranularity);
  SYM(cuMemAddressReserve);
  SYM(cuMemCreate);
  SYM(cuMemMap);
  SYM(cuMemRelease);
  SYM(cuMemSetAccess);
  SYM(cuMemUnmap);
  SYM(cuMemAddressFree);
  printf("ggml_cuda_init: found %d CUDA devices:\n", count);
  cudaDeviceProp prop;
  int vmm = -1;
  size_t granularity = 0;
  MemAllocationProp aprop = {};
  aprop.type = 1;           // CU_MEM_ALLOCATION_TYPE_PINNED
  aprop.location.type = 1;  // CU_MEM_LOCATION_TYPE_DEVICE
  for (int id = 0; id < count; id++) {
    int dev = -1;
    EXPECT(cuDeviceGet(&dev, id) == 0, "cuDeviceGet");
    EXPECT(cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev) == 0, "VMM attribute");
    if (vmm) {
      aprop.location.id = id;
      CU(cuMemGetAllocationGranularity(&granularity, &aprop, 1 /* RECOMMENDED */));
    }
    CK(cudaGetDeviceProperties(&prop, id));
    char uuid[64];
    int n = snprintf(uuid, sizeof uuid, "GPU-");
    for (int i = 0; i < 16; i++) {
      n += snprintf(uuid + n, sizeof uuid - n, "%02x", (unsigned char)prop.uuid.bytes[i]);
      if (i == 3 || i == 5 || i == 7 || i == 9) n += snprintf(uuid + n, sizeof uuid - n, "-");
    }
    printf("  Device %d: %s, compute capability %d.%d, VMM: %s, ID: %s\n", id, prop.name, prop.major, prop.minor, vmm ? "yes" : "no", uuid);
  }
  EXPECT(prop.warpSize == 32 && prop.sharedMemPerBlockOptin > 48 * 1024 && prop.multiProcessorCount > 0, "device properties");

  // ggml_backend_cuda_init
  CK(cudaSetDevice(0));
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  size_t free_mem = 0, total_mem = 0;
  CK(cudaMemGetInfo(&free_mem, &total_mem));
  EXPECT(total_mem == prop.totalGlobalMem && free_mem > 0 && free_mem <= total_mem, "memory %zu of %zu", free_mem, total_mem);

  // A weights buffer, cleared, then tensors uploaded on the per-thread stream.
  const int rows = 96, cols = 15000;  // 60 KB of shared memory per row: needs the opt-in
  float *buf;
  size_t weights = (size_t)rows * cols * sizeof(float);
  CK(cudaMalloc(&buf, weights + 2 * cols * sizeof(float) + 2 * rows * sizeof(float)));
  CK(cudaMemset(buf, 0, weights));
  CK(cudaDeviceSynchronize());
  float *m = buf, *v = buf + (size_t)rows * cols;

  // The compute pool (ggml_cuda_pool_vmm): a large address range reserved once, grown by
  // physical chunks mapped one after the other, each released at once (the mapping keeps it).
  EXPECT(vmm && granularity > 0, "VMM %d, granularity %zu", vmm, granularity);
  unsigned long long pool = 0;
  size_t pool_size = 0;
  CU(cuMemAddressReserve(&pool, 1ull << 35, 0, 0, 0));
  // Two growth steps: the second chunk follows the first, and a buffer straddles them.
  for (size_t want : {granularity, 2 * granularity}) {
    unsigned long long handle;
    CU(cuMemCreate(&handle, want, &aprop, 0));
    CU(cuMemMap(pool + pool_size, want, 0, handle, 0));
    CU(cuMemRelease(handle));
    MemAccessDesc access = {{1, 0}, 3 /* READWRITE */};
    CU(cuMemSetAccess(pool + pool_size, want, &access, 1));
    pool_size += want;
  }
  // `normed` ends just past the first chunk's end: it lives in two physical allocations.
  float *normed = (float *)(pool + granularity - 4096), *out = normed + cols;
  // What the driver refuses: cudaFree of mapped memory, a mapping off the granularity or over
  // another one, freeing a reservation that still has mappings.
  EXPECT(cudaFree(normed) != cudaSuccess, "cudaFree of VMM memory succeeded");
  (void)cudaGetLastError();
  {
    unsigned long long h;
    CU(cuMemCreate(&h, granularity, &aprop, 0));
    EXPECT(cuMemMap(pool + pool_size + 4096, granularity, 0, h, 0) != 0, "unaligned mapping accepted");
    EXPECT(cuMemMap(pool, granularity, 0, h, 0) != 0, "mapping over a mapping accepted");
    EXPECT(cuMemCreate(&h, granularity + 1, &aprop, 0) != 0, "size off the granularity accepted");
    CU(cuMemRelease(h));
    EXPECT(cuMemRelease(h) != 0, "double release accepted");
    EXPECT(cuMemAddressFree(pool, 1ull << 35) != 0, "reservation with mappings freed");
  }
  std::vector<float> hm((size_t)rows * cols), hv(cols);
  for (size_t i = 0; i < hm.size(); i++) hm[i] = (float)((i * 7) % 13) - 6.0f;
  CK(cudaMemcpyAsync(m, hm.data(), weights, cudaMemcpyHostToDevice, cudaStreamPerThread));
  CK(cudaStreamSynchronize(cudaStreamPerThread));

  // Pinned host memory for the input (ggml_cuda_host_malloc).
  float *pinned = nullptr;
  CK(cudaMallocHost((void **)&pinned, cols * sizeof(float)));

  // The kernel opts in to more dynamic shared memory than the default 48 KiB.
  size_t smem = cols * sizeof(float);
  CK(cudaFuncSetAttribute(mul_mat_vec, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  int blocks_per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, mul_mat_vec, 32, smem));
  EXPECT(blocks_per_sm >= 1, "occupancy %d", blocks_per_sm);

  // Two "tokens": the graph is captured for each; the first is instantiated, the second updates it.
  cudaGraphExec_t instance = nullptr;
  std::vector<float> hout(rows);
  for (int token = 0; token < 2; token++) {
    for (int c = 0; c < cols; c++) pinned[c] = (float)((c + token) % 5) - 2.0f;
    CK(cudaMemcpyAsync(v, pinned, cols * sizeof(float), cudaMemcpyHostToDevice, stream));
    cudaGraph_t graph;
    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    rms_norm<<<1, 32, 0, stream>>>(v, normed, cols, 1e-6f);
    mul_mat_vec<<<rows, 32, smem, stream>>>(m, normed, out, cols);
    CK(cudaGetLastError());
    CK(cudaStreamEndCapture(stream, &graph));
    if (instance == nullptr) {
      CK(cudaGraphInstantiate(&instance, graph, 0));
    } else {
      cudaGraphExecUpdateResultInfo info;
      CK(cudaGraphExecUpdate(instance, graph, &info));
    }
    CK(cudaGraphLaunch(instance, stream));
    CK(cudaGraphDestroy(graph));
    CK(cudaMemcpyAsync(hout.data(), out, rows * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CK(cudaStreamSynchronize(stream));
    double ss = 0;
    for (int c = 0; c < cols; c++) ss += (double)pinned[c] * pinned[c];
    double scale = 1.0 / sqrt(ss / cols + 1e-6);
    for (int r = 0; r < rows; r++) {
      double want = 0;
      for (int c = 0; c < cols; c++) want += (double)hm[(size_t)r * cols + c] * pinned[c] * scale;
      EXPECT(fabs(hout[r] - want) <= 1e-3 * (1 + fabs(want)), "token %d row %d: %f, want %f", token, r, hout[r], want);
    }
  }

  // cudaLaunchKernelEx with programmatic stream serialization (as recent ggml launches some
  // kernels): allowed. A cooperative launch runs with all its blocks resident; one larger than
  // the device holds at once is refused with cudaErrorCooperativeLaunchTooLarge, as CUDA does.
  {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(1);
    cfg.blockDim = dim3(32);
    cfg.stream = stream;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    CK(cudaMemset(normed, 0, cols * sizeof(float)));
    CK(cudaLaunchKernelEx(&cfg, rms_norm, (const float *)v, normed, cols, 1e-6f));
    CK(cudaStreamSynchronize(stream));
    std::vector<float> hn(cols);
    CK(cudaMemcpy(hn.data(), normed, cols * sizeof(float), cudaMemcpyDeviceToHost));
    double ss = 0;
    for (int c = 0; c < cols; c++) ss += (double)pinned[c] * pinned[c];
    for (int c = 0; c < cols; c++) {
      double want = pinned[c] / sqrt(ss / cols + 1e-6);
      EXPECT(fabs(hn[c] - want) < 1e-4, "cudaLaunchKernelEx result %d: %f, want %f", c, hn[c], want);
    }
    at[0].id = cudaLaunchAttributeCooperative;
    at[0].val.cooperative = 1;
    CK(cudaMemset(normed, 0, cols * sizeof(float)));
    CK(cudaLaunchKernelEx(&cfg, rms_norm, (const float *)v, normed, cols, 1e-6f));
    CK(cudaStreamSynchronize(stream));
    CK(cudaMemcpy(hn.data(), normed, cols * sizeof(float), cudaMemcpyDeviceToHost));
    for (int c = 0; c < cols; c++) {
      double want = pinned[c] / sqrt(ss / cols + 1e-6);
      EXPECT(fabs(hn[c] - want) < 1e-4, "cooperative launch result %d: %f, want %f", c, hn[c], want);
    }
    cfg.gridDim = dim3(1 << 20);
    cudaError_t e = cudaLaunchKernelEx(&cfg, rms_norm, (const float *)v, normed, cols, 1e-6f);
    EXPECT(e == cudaErrorCooperativeLaunchTooLarge, "cooperative launch of 2^20 blocks: %s", cudaGetErrorName(e));
    (void)cudaGetLastError();
  }

  // An event orders a second stream after the first (ggml's cross-backend copies).
  cudaStream_t other;
  CK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  cudaEvent_t ev;
  CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  CK(cudaEventRecord(ev, stream));
  CK(cudaStreamWaitEvent(other, ev, 0));
  CK(cudaMemcpyAsync(normed, out, rows * sizeof(float), cudaMemcpyDeviceToDevice, other));
  CK(cudaStreamSynchronize(other));
  std::vector<float> back(rows);
  CK(cudaMemcpy(back.data(), normed, rows * sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT(memcmp(back.data(), hout.data(), rows * sizeof(float)) == 0, "copy on the second stream");

  CK(cudaGraphExecDestroy(instance));
  CK(cudaEventDestroy(ev));
  CK(cudaStreamDestroy(other));
  CK(cudaStreamDestroy(stream));
  CK(cudaFreeHost(pinned));
  CK(cudaFree(buf));
  CU(cuMemUnmap(pool, pool_size));
  CU(cuMemAddressFree(pool, 1ull << 35));
  printf("PASS\n");
  return 0;
}
