// Kernels the PTX interpreter's unit tests run (compiled to kernels.ptx by nvcc 13:
//   nvcc -gencode arch=compute_90,code=compute_90 -ptx -O2 -o kernels.ptx kernels.cu).
#include <cstdint>

extern "C" __global__ void vadd(const float *a, const float *b, float *c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// Block-wide sum with shared memory and barriers: one partial sum per block.
extern "C" __global__ void block_sum(const int *in, int *out, int n) {
  __shared__ int s[256];
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? in[i] : 0;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Reverse within a block through dynamic shared memory.
extern "C" __global__ void reverse_dyn(int *d, int n) {
  extern __shared__ int tmp[];
  int t = threadIdx.x;
  if (t < n) tmp[t] = d[t];
  __syncthreads();
  if (t < n) d[t] = tmp[n - 1 - t];
}

extern "C" __global__ void histogram(const unsigned char *in, unsigned *bins, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    atomicAdd(&bins[in[i] % 16], 1u);
}

// Integer and float corner cases, one result per slot.
extern "C" __global__ void arith(const int *ia, const float *fa, long long *out) {
  int a = ia[0], b = ia[1];
  float x = fa[0], y = fa[1];
  unsigned ua = (unsigned)a;
  out[0] = a / b;
  out[1] = a % b;
  out[2] = (long long)a * b;
  out[3] = ua >> 3;
  out[4] = a >> 3;
  out[5] = __popc(ua);
  out[6] = __clz(ua);
  out[7] = (long long)(x * y + 1.0f);
  out[8] = __float_as_int(fmaf(x, y, 0.5f));
  out[9] = (long long)__float2int_rn(x / y);
  out[10] = (long long)(double)x * 1000;
  out[11] = min(a, b) + max(ua, 7u);
  out[12] = __brev(ua);
  out[13] = (short)(a & 0xffff);
  out[14] = __float_as_int(sqrtf(y));
  out[15] = (unsigned char)(a + 300);
}

__device__ int counter_g;
__constant__ int table_c[4] = {10, 20, 30, 40};

extern "C" __global__ void globals(int *out) {
  int t = threadIdx.x;
  out[t] = table_c[t % 4] + atomicAdd(&counter_g, 1) * 0;
}

extern "C" __global__ void local_array(int *out, int k) {
  int buf[32];
  for (int i = 0; i < 32; i++) buf[i] = i * k + threadIdx.x;
  out[threadIdx.x] = buf[(threadIdx.x * 7 + k) % 32];
}

extern "C" __global__ void oob(int *p) { p[1 << 24] = 1; }

extern "C" __global__ void spin(volatile int *flag) { while (*flag == 0) { } }

// Tiled matrix multiply C = A * B (n x n, row-major) with 16x16 shared-memory tiles.
extern "C" __global__ void matmul_tiled(const float *a, const float *b, float *c, int n) {
  __shared__ float ta[16][16], tb[16][16];
  int row = blockIdx.y * 16 + threadIdx.y, col = blockIdx.x * 16 + threadIdx.x;
  float acc = 0.0f;
  for (int t = 0; t < (n + 15) / 16; t++) {
    int ak = t * 16 + threadIdx.x, bk = t * 16 + threadIdx.y;
    ta[threadIdx.y][threadIdx.x] = (row < n && ak < n) ? a[row * n + ak] : 0.0f;
    tb[threadIdx.y][threadIdx.x] = (bk < n && col < n) ? b[bk * n + col] : 0.0f;
    __syncthreads();
    for (int k = 0; k < 16; k++) acc += ta[threadIdx.y][k] * tb[k][threadIdx.x];
    __syncthreads();
  }
  if (row < n && col < n) c[row * n + col] = acc;
}

// Warp shuffles: each mode over full and partial masks and sub-warp widths. out[i*32 + lane]
// for the i-th case; lanes >= active do not take part (they return at once).
extern "C" __global__ void shuffles(const int *in, int *out, int active) {
  int lane = threadIdx.x & 31;
  if (lane >= active) return;
  unsigned m = active == 32 ? 0xffffffffu : (1u << active) - 1;
  int v = in[threadIdx.x];
  out[0 * 32 + lane] = __shfl_up_sync(m, v, 3);
  out[1 * 32 + lane] = __shfl_down_sync(m, v, 5);
  out[2 * 32 + lane] = __shfl_xor_sync(m, v, 6);
  out[3 * 32 + lane] = __shfl_sync(m, v, (lane * 7) % active);
  out[4 * 32 + lane] = __shfl_up_sync(m, v, 1, 8);   // within groups of 8
  out[5 * 32 + lane] = __shfl_down_sync(m, v, 2, 16);
  out[6 * 32 + lane] = __shfl_sync(m, v, 3, 4);      // lane 3 of each group of 4
  out[7 * 32 + lane] = __shfl_xor_sync(m, v, 1, 2);
}

// Votes and ballots, and a warp-level reduction (redux.sync on sm_80+).
extern "C" __global__ void votes(const int *in, unsigned *out) {
  int lane = threadIdx.x & 31;
  int v = in[threadIdx.x];
  unsigned b = __ballot_sync(0xffffffffu, v > 0);
  int all = __all_sync(0xffffffffu, v > -100);
  int any = __any_sync(0xffffffffu, v == 7);
  unsigned sum = __reduce_add_sync(0xffffffffu, (unsigned)v);
  int mx = __reduce_max_sync(0xffffffffu, v);
  __syncwarp();
  if (lane == 0) {
    int w = threadIdx.x / 32;
    out[w * 5 + 0] = b;
    out[w * 5 + 1] = all;
    out[w * 5 + 2] = any;
    out[w * 5 + 3] = sum;
    out[w * 5 + 4] = (unsigned)mx;
  }
}

// Inclusive scan of a block with warp shuffles (Hillis-Steele in each warp, then the warps'
// totals through shared memory), as CUB's warp scans do.
extern "C" __global__ void warp_scan(const int *in, int *out, int n) {
  __shared__ int totals[32];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  int v = i < n ? in[i] : 0;
  for (int d = 1; d < 32; d *= 2) {
    int up = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += up;
  }
  if (lane == 31) totals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int t = lane < blockDim.x / 32 ? totals[lane] : 0;
    for (int d = 1; d < 32; d *= 2) {
      int up = __shfl_up_sync(0xffffffffu, t, d);
      if (lane >= d) t += up;
    }
    totals[lane] = t;
  }
  __syncthreads();
  if (warp > 0) v += totals[warp - 1];
  if (i < n) out[i] = v;
}

// Device printf with mixed argument types (nvcc: call vprintf with a packed local buffer).
#include <cstdio>
extern "C" __global__ void say(const char *name, float x) {
  int t = threadIdx.x;
  if (t < 3) printf("thread %d of %s: %5.2f %lld %c %x\n", t, name, x * t, (long long)t << 40, 'a' + t, 0xbeef + t);
}

// Device functions nvcc must not inline: `call` to a .func with arguments and a result,
// recursion, a pointer into the caller's local memory, the callee's own local array.
__device__ __noinline__ int twice(int v) { return 2 * v; }
__device__ __noinline__ int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
__device__ __noinline__ void fill(int *a, int n, int v) { for (int i = 0; i < n; i++) a[i] = v + i; }
__device__ __noinline__ float scaled_sum(const float *p, int n, float s) {
  float tmp[8];
  for (int i = 0; i < n && i < 8; i++) tmp[i] = p[i] * s;
  float t = 0;
  for (int i = n - 1; i >= 0; i--) t += tmp[i & 7];
  return t;
}
extern "C" __global__ void calls(int *out, float *fout) {
  int t = threadIdx.x;
  out[t * 3 + 0] = twice(t);
  out[t * 3 + 1] = fib(t % 12);
  volatile int arr[6];
  fill((int *)arr, 6, t);
  int sum = 0;
  for (int i = 0; i < 6; i++) sum += arr[i] * (i + 1);
  out[t * 3 + 2] = sum;
  volatile float v[8];
  for (int i = 0; i < 8; i++) v[i] = t + i;
  fout[t] = scaled_sum((const float *)v, 8, 0.5f);
}

// Packed half-precision arithmetic, written as the PTX cuda_fp16.h's __hadd2/__hmul2/__hfma2/
// __hneg2 emit (that header needs CCCL, which the test toolchain does not carry).
extern "C" __global__ void half2_ops(const unsigned *a, const unsigned *b, const unsigned *c, unsigned *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    unsigned r0, r1, r2, r3, t;
    asm("add.f16x2 %0, %1, %2;" : "=r"(r0) : "r"(a[i]), "r"(b[i]));
    asm("mul.f16x2 %0, %1, %2;" : "=r"(r1) : "r"(a[i]), "r"(b[i]));
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r2) : "r"(a[i]), "r"(b[i]), "r"(c[i]));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(t) : "r"(a[i]), "r"(c[i]));
    asm("neg.f16x2 %0, %1;" : "=r"(r3) : "r"(t));
    out[4 * i + 0] = r0;
    out[4 * i + 1] = r1;
    out[4 * i + 2] = r2;
    out[4 * i + 3] = r3;
  }
}
extern "C" __global__ void bf162_add(const unsigned *a, const unsigned *b, unsigned *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned r;
  if (i < n) {
    asm("add.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a[i]), "r"(b[i]));
    out[i] = r;
  }
}

// Warp collectives and a block barrier inside device functions nvcc must not inline: a block
// sum whose warp reduction (__shfl_down_sync) and __syncthreads run in called functions.
__device__ __noinline__ int warp_sum(int v) {
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
  return v;
}
__device__ __noinline__ int block_sum_in_func(int v, int *smem) {
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) / 32;
  v = threadIdx.x < nw ? smem[threadIdx.x] : 0;
  if (warp == 0) v = warp_sum(v);
  return v;
}
extern "C" __global__ void reduce_in_calls(const int *in, int *out, int n) {
  __shared__ int smem[32];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int v = block_sum_in_func(i < n ? in[i] : 0, smem);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// Block reduction in the kernel itself: shared-memory tree down to 64, then __shfl_down_sync.
extern "C" __global__ void shfl_down_reduce(const float *in, float *out, int n) {
  __shared__ float s[256];
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (int half = blockDim.x / 2; half >= 32; half /= 2) {
    if (t < half) s[t] += s[t + half];
    __syncthreads();
  }
  if (t < 32) {
    float v = s[t];
    for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
    if (t == 0) out[blockIdx.x] = v;
  }
}

// Source lanes past the width (CUDA: srcLane modulo width; PTX: b[4:0]) and the shuffle's
// in-range predicate (inline PTX, as CUB reads it).
extern "C" __global__ void shfl_wrap_and_pred(const int *in, int *out) {
  int lane = threadIdx.x & 31;
  int v = in[lane];
  out[0 * 32 + lane] = __shfl_sync(0xffffffffu, v, lane + 37);
  out[1 * 32 + lane] = __shfl_sync(0xffffffffu, v, lane + 9, 8);
  int r, p;
  asm volatile("{ .reg .pred q; shfl.sync.down.b32 %0|q, %2, 3, 0x1f, -1; selp.b32 %1, 1, 0, q; }" : "=r"(r), "=r"(p) : "r"(v));
  out[2 * 32 + lane] = r;
  out[3 * 32 + lane] = p;
  asm volatile("{ .reg .pred q; shfl.sync.up.b32 %0|q, %2, 2, 0x1800, -1; selp.b32 %1, 1, 0, q; }" : "=r"(r), "=r"(p) : "r"(v));
  out[4 * 32 + lane] = r;
  out[5 * 32 + lane] = p;
  out[6 * 32 + lane] = __activemask();
  // Two half-warps, each voting among itself at its own ballot.
  unsigned b = lane < 16 ? __ballot_sync(0x0000ffffu, v & 1) : __ballot_sync(0xffff0000u, v & 2);
  out[7 * 32 + lane] = b;
}

// printf with more conversions, lengths and flags.
extern "C" __global__ void say_more(const char *s, double d, float f, unsigned long long big, const int *ptr) {
  if (threadIdx.x == 1)
    printf("%i|%u|%X|%o|%-6s|%e|%g|%p|%lu|%llx|%08.3f|%+d|%5.1e|%-4c|%.3s|%#o|%%\n", -7, 4000000000u, 48879, 8, s, d, f, ptr,
           (unsigned long)big, big, f, 5, d, 'Z', s, 8);
}

// Shared memory of a kernel and of a device function it calls are distinct (ptxas adds the
// callee's to the kernel's), and dynamic shared memory is after both, in the callee as well.
extern __shared__ int dyn_i[];
__device__ __noinline__ int func_shared_and_dyn(int t) {
  __shared__ int own[64];
  own[t] = t * 3;
  dyn_i[t] = t * 5;
  __syncthreads();
  return own[63 - t] + dyn_i[(t + 1) % 64];
}
extern "C" __global__ void shared_layout(int *out) {
  __shared__ int mine[64];
  int t = threadIdx.x;
  mine[t] = 1000 + t;
  __syncthreads();
  int v = func_shared_and_dyn(t);
  __syncthreads();
  out[t] = v + mine[(t + 2) % 64];
}
