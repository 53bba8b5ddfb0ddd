// Device-side malloc/free, new/delete and virtual functions (calls through function pointers),
// checked against values computed on the CPU. As CUDA documents: memory a kernel allocates
// stays valid across launches until a kernel frees it; malloc returns NULL when the heap
// (cudaLimitMallocHeapSize, 8 MiB by default) has no room; freed memory can be allocated
// again. Prints PASS.
#include "check.h"

struct Shape {
  __device__ virtual float area() const = 0;
  __device__ virtual ~Shape() {}
};
struct Square : Shape {
  float s;
  __device__ Square(float s) : s(s) {}
  __device__ float area() const override { return s * s; }
};
struct Triangle : Shape {
  float b, h;
  __device__ Triangle(float b, float h) : b(b), h(h) {}
  __device__ float area() const override { return 0.5f * b * h; }
};

typedef int (*binop)(int, int);
__device__ __noinline__ int add(int a, int b) { return a + b; }
__device__ __noinline__ int mul(int a, int b) { return a * b; }
__device__ binop table[2] = {add, mul};  // function addresses in a variable's initializer

// Each thread allocates (i % 7 + 1) ints and fills them; the pointers outlive the launch.
__global__ void make(int **out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int len = i % 7 + 1;
  int *p = (int *)malloc(len * sizeof(int));
  if (p)
    for (int k = 0; k < len; k++) p[k] = i * 10 + k;
  out[i] = p;
}

__global__ void sum_and_free(int **in, long long *sums, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  long long s = 0;
  for (int k = 0; k < i % 7 + 1; k++) s += in[i][k];
  sums[i] = s;
  free(in[i]);
}

__global__ void shapes(float *areas, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  Shape *s = (i & 1) ? (Shape *)new Square((float)i) : (Shape *)new Triangle((float)i, 3.0f);
  areas[i] = s ? s->area() : -1.0f;
  delete s;
}

__global__ void ops(const int *a, int *out, int n, int which) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  binop f = which < 0 ? table[i & 1] : (which ? mul : add);
  out[i] = f(a[i], 3);
}

// More than the heap holds: some allocations fail with NULL; all of them are freed.
__global__ void exhaust(unsigned long long *got, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  void *p = malloc(1 << 20);
  got[i] = p != nullptr;
  __syncthreads();
  free(p);
}

int main() {
  const int n = 1000;
  int **ptrs;
  long long *sums;
  CK(cudaMalloc(&ptrs, n * sizeof(int *)));
  CK(cudaMalloc(&sums, n * sizeof(long long)));
  for (int round = 0; round < 3; round++) {  // the freed memory is used again
    make<<<(n + 127) / 128, 128>>>(ptrs, n);
    CK(cudaGetLastError());
    sum_and_free<<<(n + 127) / 128, 128>>>(ptrs, sums, n);
    CK(cudaGetLastError());
    static long long h[n];
    CK(cudaMemcpy(h, sums, sizeof(h), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) {
      long long want = 0;
      for (int k = 0; k < i % 7 + 1; k++) want += i * 10 + k;
      EXPECT(h[i] == want, "round %d: sum[%d] = %lld, want %lld", round, i, h[i], want);
    }
  }
  printf("malloc/free: %d blocks, 3 rounds\n", n);

  float *areas;
  CK(cudaMalloc(&areas, n * sizeof(float)));
  shapes<<<(n + 127) / 128, 128>>>(areas, n);
  static float ha[n];
  CK(cudaMemcpy(ha, areas, sizeof(ha), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; i++) {
    float want = (i & 1) ? (float)i * (float)i : 0.5f * (float)i * 3.0f;
    EXPECT(ha[i] == want, "area[%d] = %g, want %g", i, ha[i], want);
  }
  printf("virtual functions: %d objects\n", n);

  int *a, *out;
  static int hin[n], hout[n];
  for (int i = 0; i < n; i++) hin[i] = i - 500;
  CK(cudaMalloc(&a, sizeof(hin)));
  CK(cudaMalloc(&out, sizeof(hout)));
  CK(cudaMemcpy(a, hin, sizeof(hin), cudaMemcpyHostToDevice));
  for (int which = -1; which <= 1; which++) {
    ops<<<(n + 127) / 128, 128>>>(a, out, n, which);
    CK(cudaMemcpy(hout, out, sizeof(hout), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) {
      bool m = which < 0 ? (i & 1) : which;
      int want = m ? hin[i] * 3 : hin[i] + 3;
      EXPECT(hout[i] == want, "which %d: out[%d] = %d, want %d", which, i, hout[i], want);
    }
  }
  printf("function pointers: ok\n");

  const int m = 64;  // 64 MiB asked of an 8 MiB heap
  unsigned long long *got;
  static unsigned long long hg[m];
  CK(cudaMalloc(&got, sizeof(hg)));
  exhaust<<<1, m>>>(got, m);
  CK(cudaMemcpy(hg, got, sizeof(hg), cudaMemcpyDeviceToHost));
  int ok = 0;
  for (int i = 0; i < m; i++) ok += (int)hg[i];
  EXPECT(ok > 0 && ok < m, "%d of %d 1 MiB allocations succeeded", ok, m);
  exhaust<<<1, m>>>(got, m);  // everything was freed: as many fit again
  CK(cudaMemcpy(hg, got, sizeof(hg), cudaMemcpyDeviceToHost));
  int again = 0;
  for (int i = 0; i < m; i++) again += (int)hg[i];
  EXPECT(again == ok, "%d fit the first time, %d the second", ok, again);
  printf("heap exhaustion: NULL past the heap\n");
  printf("PASS\n");
  return 0;
}
