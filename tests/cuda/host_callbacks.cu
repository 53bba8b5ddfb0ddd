// Host functions in stream order (cudaLaunchHostFunc, cudaStreamAddCallback, host nodes of a
// captured graph), checked by what CUDA documents: a host function runs after all work before
// it in its stream has finished, and work after it starts only once it has returned; callbacks
// run in the order they were added and are told the stream's status. Expected values are
// computed here on the CPU. Prints PASS.
#include "check.h"
#include <vector>

__global__ void fill(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v * i;
}

__global__ void add_from(int *p, const int *q, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += q[i];
}

struct Step {
  const int *from;  // pinned: what the copy before the host function brought back
  int *to;          // pinned: what the copy after the host function takes to the device
  int n, v;
  long long sum;    // what the host function found
  int runs;
};

// Reads the result of the work before it, and writes what the work after it uses.
static void CUDART_CB host_step(void *arg) {
  Step *s = (Step *)arg;
  long long sum = 0;
  for (int i = 0; i < s->n; i++) sum += s->from[i];
  s->sum = sum;
  for (int i = 0; i < s->n; i++) s->to[i] = s->v + i;
  s->runs++;
}

static std::vector<int> order;
static void CUDART_CB record(cudaStream_t, cudaError_t status, void *arg) {
  order.push_back(status == cudaSuccess ? (int)(size_t)arg : -1);
}

int main() {
  const int n = 1 << 16;
  int *d, *e, *from, *to;
  CK(cudaMalloc(&d, n * sizeof(int)));
  CK(cudaMalloc(&e, n * sizeof(int)));
  CK(cudaMallocHost(&from, n * sizeof(int)));
  CK(cudaMallocHost(&to, n * sizeof(int)));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  long long want_sum = 0;
  for (int i = 0; i < n; i++) want_sum += 3LL * i;

  // kernel -> copy back -> host function (sees the copy) -> copy its output in -> kernel.
  Step st = {from, to, n, 1000, 0, 0};
  fill<<<n / 256, 256, 0, s>>>(d, n, 3);
  CK(cudaMemcpyAsync(from, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  CK(cudaLaunchHostFunc(s, host_step, &st));
  CK(cudaMemcpyAsync(e, to, n * sizeof(int), cudaMemcpyHostToDevice, s));
  add_from<<<n / 256, 256, 0, s>>>(d, e, n);
  std::vector<int> out(n);
  CK(cudaMemcpyAsync(out.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  CK(cudaStreamSynchronize(s));
  EXPECT(st.runs == 1 && st.sum == want_sum, "host function ran %d times, saw sum %lld, want %lld", st.runs, st.sum, want_sum);
  for (int i = 0; i < n; i++) EXPECT(out[i] == 3 * i + 1000 + i, "out[%d] = %d", i, out[i]);
  printf("cudaLaunchHostFunc: after the work before it, before the work after it\n");

  // Callbacks, on a stream and on the legacy default stream, in order, with the stream's status.
  for (int k = 0; k < 8; k++) {
    fill<<<n / 256, 256, 0, s>>>(d, n, k);
    CK(cudaStreamAddCallback(s, record, (void *)(size_t)k, 0));
  }
  CK(cudaStreamAddCallback(0, record, (void *)(size_t)8, 0));
  CK(cudaDeviceSynchronize());
  EXPECT(order.size() == 9, "%zu callbacks ran", order.size());
  for (int k = 0; k < 9; k++) EXPECT(order[k] == k, "callback %d was %d", k, order[k]);
  EXPECT(cudaStreamAddCallback(s, record, nullptr, 1) == cudaErrorInvalidValue, "flags 1 accepted");
  printf("cudaStreamAddCallback: in order, status success\n");

  // A host function captured into a graph runs at each launch, between the nodes around it.
  st.runs = 0;
  st.v = 7;
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  fill<<<n / 256, 256, 0, s>>>(d, n, 3);
  CK(cudaMemcpyAsync(from, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  CK(cudaLaunchHostFunc(s, host_step, &st));
  CK(cudaMemcpyAsync(e, to, n * sizeof(int), cudaMemcpyHostToDevice, s));
  add_from<<<n / 256, 256, 0, s>>>(d, e, n);
  CK(cudaStreamEndCapture(s, &g));
  EXPECT(st.runs == 0, "the host function ran during capture");
  size_t nodes = 0;
  CK(cudaGraphGetNodes(g, nullptr, &nodes));
  EXPECT(nodes == 5, "%zu nodes captured", nodes);
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int round = 0; round < 3; round++) {
    st.sum = 0;
    CK(cudaGraphLaunch(ge, s));
    CK(cudaMemcpyAsync(out.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    EXPECT(st.sum == want_sum, "round %d: the host node saw sum %lld", round, st.sum);
    for (int i = 0; i < n; i++) EXPECT(out[i] == 3 * i + 7 + i, "round %d: out[%d] = %d", round, i, out[i]);
  }
  EXPECT(st.runs == 3, "the host node ran %d times in 3 launches", st.runs);
  printf("host node of a captured graph: at each launch, in order\n");

  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  CK(cudaStreamDestroy(s));
  CK(cudaFreeHost(from));
  CK(cudaFreeHost(to));
  CK(cudaFree(d));
  CK(cudaFree(e));
  printf("PASS\n");
  return 0;
}
