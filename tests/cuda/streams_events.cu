// Streams and events: work queued on two streams with a cross-stream dependency through an
// event; async copies; event timing and queries.
#include "check.h"
#include <vector>

__global__ void scale_add(float *x, float s, float add, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] * s + add;
}

int main() {
  const int n = 1 << 14;
  std::vector<float> h(n), out1(n), out2(n);
  for (int i = 0; i < n; i++) h[i] = (float)(i % 100);
  float *d1, *d2;
  CK(cudaMalloc(&d1, n * sizeof(float)));
  CK(cudaMalloc(&d2, n * sizeof(float)));
  cudaStream_t s1, s2;
  CK(cudaStreamCreate(&s1));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  cudaEvent_t start, copied, taken, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&copied));
  CK(cudaEventCreateWithFlags(&taken, cudaEventDisableTiming));
  CK(cudaEventCreate(&stop));

  CK(cudaEventRecord(start, s1));
  CK(cudaMemcpyAsync(d1, h.data(), n * sizeof(float), cudaMemcpyHostToDevice, s1));
  scale_add<<<(n + 127) / 128, 128, 0, s1>>>(d1, 2.0f, 1.0f, n);   // x*2+1
  CK(cudaEventRecord(copied, s1));
  // s2 must see s1's result: wait on the event, then copy d1 -> d2 and transform again.
  CK(cudaStreamWaitEvent(s2, copied, 0));
  CK(cudaMemcpyAsync(d2, d1, n * sizeof(float), cudaMemcpyDeviceToDevice, s2));
  CK(cudaEventRecord(taken, s2));
  scale_add<<<(n + 255) / 256, 256, 0, s2>>>(d2, -1.0f, 0.5f, n);  // -(x*2+1)+0.5
  // s1 may change d1 only once s2 has copied it.
  CK(cudaStreamWaitEvent(s1, taken, 0));
  scale_add<<<(n + 127) / 128, 128, 0, s1>>>(d1, 1.0f, 10.0f, n);  // x*2+1+10
  CK(cudaEventRecord(stop, s2));
  CK(cudaMemcpyAsync(out2.data(), d2, n * sizeof(float), cudaMemcpyDeviceToHost, s2));
  CK(cudaStreamSynchronize(s2));
  CK(cudaMemcpyAsync(out1.data(), d1, n * sizeof(float), cudaMemcpyDeviceToHost, s1));
  CK(cudaStreamSynchronize(s1));
  CK(cudaEventSynchronize(stop));
  EXPECT(cudaEventQuery(stop) == cudaSuccess, "stop event not complete after synchronize");
  EXPECT(cudaStreamQuery(s1) == cudaSuccess, "stream 1 busy after synchronize");

  for (int i = 0; i < n; i++) {
    float x = h[i] * 2.0f + 1.0f;
    EXPECT(out2[i] == -x + 0.5f, "out2[%d] = %f, want %f", i, out2[i], -x + 0.5f);
    EXPECT(out1[i] == x + 10.0f, "out1[%d] = %f, want %f", i, out1[i], x + 10.0f);
  }
  float ms = -1;
  CK(cudaEventElapsedTime(&ms, start, stop));
  EXPECT(ms >= 0.0f && ms < 60000.0f, "elapsed %f ms", ms);
  printf("elapsed %.3f ms\n", ms);

  cudaEvent_t untimed;
  CK(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming));
  CK(cudaEventRecord(untimed, s1));
  EXPECT(cudaEventElapsedTime(&ms, start, untimed) != cudaSuccess, "timing an untimed event succeeded");
  (void)cudaGetLastError();

  CK(cudaEventDestroy(start)); CK(cudaEventDestroy(copied)); CK(cudaEventDestroy(taken)); CK(cudaEventDestroy(stop)); CK(cudaEventDestroy(untimed));
  // Records are queued, but a destroyed event is refused by the call itself.
  cudaError_t dead = cudaEventRecord(untimed, s1);
  EXPECT(dead == cudaErrorInvalidResourceHandle, "recording a destroyed event: %d", (int)dead);
  (void)cudaGetLastError();
  // Flags and priorities are what the streams were created with; priorities are clamped into
  // the device's range (cudaDeviceGetStreamPriorityRange), as CUDA documents.
  int least = 1, greatest = 1;
  CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  EXPECT(least == 0 && greatest < 0, "priority range %d..%d", least, greatest);
  unsigned f1 = 9, f2 = 9, f0 = 9;
  CK(cudaStreamGetFlags(s1, &f1));
  CK(cudaStreamGetFlags(s2, &f2));
  CK(cudaStreamGetFlags(0, &f0));
  EXPECT(f1 == cudaStreamDefault && f2 == cudaStreamNonBlocking && f0 == cudaStreamDefault, "flags %u %u %u", f1, f2, f0);
  cudaStream_t hi, beyond;
  CK(cudaStreamCreateWithPriority(&hi, cudaStreamNonBlocking, greatest));
  CK(cudaStreamCreateWithPriority(&beyond, cudaStreamDefault, greatest - 10));
  int p_hi = 1, p_beyond = 1, p1 = 1;
  CK(cudaStreamGetPriority(hi, &p_hi));
  CK(cudaStreamGetPriority(beyond, &p_beyond));
  CK(cudaStreamGetPriority(s1, &p1));
  EXPECT(p_hi == greatest && p_beyond == greatest && p1 == 0, "priorities %d %d %d", p_hi, p_beyond, p1);
  CK(cudaStreamDestroy(hi));
  CK(cudaStreamDestroy(beyond));
  printf("stream flags and priorities: as created, clamped into %d..%d\n", least, greatest);
  CK(cudaStreamDestroy(s1)); CK(cudaStreamDestroy(s2));
  CK(cudaFree(d1)); CK(cudaFree(d2));
  printf("PASS\n");
  return 0;
}
