// CUDA graphs as llama.cpp's ggml-cuda uses them: capture a stream's work (relaxed mode),
// instantiate, launch again and again with new inputs, update the instance from a new capture
// of the same shape (and see a changed shape refused), plus graphs built node by node, a capture
// forked to a second stream and joined back, the errors CUDA gives for work capture forbids, and
// user objects whose references graphs hold.
#include "check.h"
#include <atomic>
#include <dlfcn.h>
#include <unistd.h>
#include <string>
#include <vector>

__global__ void scale(const float *x, float *y, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i];
}

__global__ void add(const float *a, const float *b, float *c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

static const int N = 1000;

// Captures: upload h_in -> x, y = a*x, out = y + x, download out -> h_out.
static cudaGraph_t capture(cudaStream_t s, float *x, float *y, float *out, const float *h_in, float *h_out, float a, bool extra) {
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  cudaStreamCaptureStatus st;
  CK(cudaStreamIsCapturing(s, &st));
  EXPECT(st == cudaStreamCaptureStatusActive, "capture status %d", (int)st);
  CK(cudaMemcpyAsync(x, h_in, N * sizeof(float), cudaMemcpyHostToDevice, s));
  CK(cudaMemsetAsync(out, 0, N * sizeof(float), s));
  scale<<<(N + 255) / 256, 256, 0, s>>>(x, y, a, N);
  CK(cudaGetLastError());
  add<<<(N + 255) / 256, 256, 0, s>>>(y, x, out, N);
  if (extra) add<<<(N + 255) / 256, 256, 0, s>>>(out, x, out, N);
  CK(cudaMemcpyAsync(h_out, out, N * sizeof(float), cudaMemcpyDeviceToHost, s));
  cudaGraph_t g;
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaStreamIsCapturing(s, &st));
  EXPECT(st == cudaStreamCaptureStatusNone, "capture status after the end %d", (int)st);
  return g;
}

static void check(const float *h_in, const float *h_out, float a, int extra, const char *what) {
  for (int i = 0; i < N; i++) {
    float want = a * h_in[i] + h_in[i] + extra * h_in[i];
    EXPECT(h_out[i] == want, "%s: out[%d] = %f, want %f", what, i, h_out[i], want);
  }
}

static std::atomic<int> destroyed{0};
static void destroy(void *p) { destroyed += *(int *)p; }

static void wait_destroyed(int want, const char *what) {
  for (int i = 0; i < 200 && destroyed.load() != want; i++) usleep(5000);
  EXPECT(destroyed.load() == want, "%s: destructors ran for %d, want %d", what, destroyed.load(), want);
}

static void user_objects() {
  static int one = 1, ten = 10;
  cudaUserObject_t o = nullptr;
  EXPECT(cudaUserObjectCreate(&o, &one, destroy, 1, 0) == cudaErrorInvalidValue, "a user object without cudaUserObjectNoDestructorSync");
  EXPECT(cudaUserObjectCreate(&o, &one, destroy, 0, cudaUserObjectNoDestructorSync) == cudaErrorInvalidValue, "a user object with no reference");
  (void)cudaGetLastError();
  CK(cudaUserObjectCreate(&o, &one, destroy, 1, cudaUserObjectNoDestructorSync));
  cudaGraph_t g;
  CK(cudaGraphCreate(&g, 0));
  CK(cudaGraphRetainUserObject(g, o, 1, cudaGraphUserObjectMove));  // the application's reference moves to the graph
  cudaGraphNode_t empty;
  CK(cudaGraphAddEmptyNode(&empty, g, nullptr, 0));
  cudaGraphExec_t e;
  CK(cudaGraphInstantiate(&e, g, 0));
  CK(cudaGraphDestroy(g));
  usleep(20000);
  EXPECT(destroyed.load() == 0, "the destructor ran while an executable graph held the object (%d)", destroyed.load());
  CK(cudaGraphExecDestroy(e));
  wait_destroyed(1, "after the executable graph went");

  cudaUserObject_t o2 = nullptr;
  CK(cudaUserObjectCreate(&o2, &ten, destroy, 2, cudaUserObjectNoDestructorSync));
  CK(cudaGraphCreate(&g, 0));
  CK(cudaGraphRetainUserObject(g, o2, 3, 0));  // the graph's own three
  EXPECT(cudaGraphReleaseUserObject(g, o2, 4) == cudaErrorInvalidValue, "a graph released more than it holds");
  (void)cudaGetLastError();
  CK(cudaGraphReleaseUserObject(g, o2, 3));
  CK(cudaUserObjectRelease(o2, 1));
  CK(cudaUserObjectRetain(o2, 1));
  CK(cudaUserObjectRelease(o2, 1));
  usleep(20000);
  EXPECT(destroyed.load() == 1, "the destructor ran with a reference left (%d)", destroyed.load());
  CK(cudaUserObjectRelease(o2, 1));
  wait_destroyed(11, "after the last reference went");
  CK(cudaGraphDestroy(g));
}

int main() {
  cudaStream_t s, s2;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  float *x, *y, *out;
  CK(cudaMalloc(&x, N * sizeof(float)));
  CK(cudaMalloc(&y, N * sizeof(float)));
  CK(cudaMalloc(&out, N * sizeof(float)));
  std::vector<float> h_in(N), h_out(N);

  // Capture records, it does not run: nothing is computed until the graph is launched.
  for (int i = 0; i < N; i++) h_in[i] = 1.0f;
  for (int i = 0; i < N; i++) h_out[i] = -7.0f;
  cudaGraph_t g = capture(s, x, y, out, h_in.data(), h_out.data(), 2.0f, false);
  EXPECT(h_out[0] == -7.0f, "the capture ran the work (%f)", h_out[0]);
  size_t nodes = 0;
  CK(cudaGraphGetNodes(g, nullptr, &nodes));
  EXPECT(nodes == 5, "%zu nodes captured, want 5", nodes);
  cudaGraphExec_t exec;
  CK(cudaGraphInstantiate(&exec, g, 0));

  // Launched again and again, it reads the inputs as they are at each launch.
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < N; i++) h_in[i] = (float)(i % 17) + round;
    CK(cudaGraphLaunch(exec, s));
    CK(cudaStreamSynchronize(s));
    check(h_in.data(), h_out.data(), 2.0f, 0, "launch");
  }

  // Updated from a new capture of the same shape (ggml's path): new parameters, same instance.
  cudaGraph_t g2 = capture(s, x, y, out, h_in.data(), h_out.data(), 3.0f, false);
  cudaGraphExecUpdateResultInfo info;
  CK(cudaGraphExecUpdate(exec, g2, &info));
  EXPECT(info.result == cudaGraphExecUpdateSuccess, "update result %d", (int)info.result);
  CK(cudaGraphLaunch(exec, s));
  CK(cudaStreamSynchronize(s));
  check(h_in.data(), h_out.data(), 3.0f, 0, "after update");
  // A capture with another shape cannot update it: the application instantiates anew.
  cudaGraph_t g3 = capture(s, x, y, out, h_in.data(), h_out.data(), 3.0f, true);
  cudaError_t e = cudaGraphExecUpdate(exec, g3, &info);
  EXPECT(e == cudaErrorGraphExecUpdateFailure && info.result == cudaGraphExecUpdateErrorTopologyChanged,
         "update with another shape: %s, result %d", cudaGetErrorName(e), (int)info.result);
  (void)cudaGetLastError();
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphInstantiate(&exec, g3, 0));
  CK(cudaGraphLaunch(exec, s));
  CK(cudaStreamSynchronize(s));
  check(h_in.data(), h_out.data(), 3.0f, 1, "new shape");

  // Built node by node: memset, then scale, then add; parameters read back and changed.
  cudaGraph_t gb;
  CK(cudaGraphCreate(&gb, 0));
  cudaGraphNode_t ms, k1, k2;
  cudaMemsetParams mp = {};
  mp.dst = out; mp.value = 0; mp.elementSize = 4; mp.width = N; mp.height = 1;
  CK(cudaGraphAddMemsetNode(&ms, gb, nullptr, 0, &mp));
  int n = N;
  float a = 5.0f;
  void *args1[] = {&x, &y, &a, &n};
  cudaKernelNodeParams kp = {};
  kp.func = (void *)scale; kp.gridDim = dim3((N + 255) / 256); kp.blockDim = dim3(256); kp.kernelParams = args1;
  CK(cudaGraphAddKernelNode(&k1, gb, &ms, 1, &kp));
  void *args2[] = {&y, &x, &out, &n};
  cudaKernelNodeParams kp2 = kp;
  kp2.func = (void *)add; kp2.kernelParams = args2;
  CK(cudaGraphAddKernelNode(&k2, gb, &k1, 1, &kp2));
  a = 100.0f;  // the node holds a copy of the parameters
  cudaKernelNodeParams got = {};
  CK(cudaGraphKernelNodeGetParams(k1, &got));
  EXPECT(got.func == (void *)scale && got.blockDim.x == 256 && *(float *)got.kernelParams[2] == 5.0f, "kernel node params read back");
  float a2 = 4.0f;
  void *args3[] = {&x, &y, &a2, &n};
  got.kernelParams = args3;
  CK(cudaGraphKernelNodeSetParams(k1, &got));
  cudaGraphExec_t eb;
  CK(cudaGraphInstantiate(&eb, gb, 0));
  CK(cudaMemcpy(x, h_in.data(), N * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaGraphLaunch(eb, s));
  CK(cudaMemcpyAsync(h_out.data(), out, N * sizeof(float), cudaMemcpyDeviceToHost, s));
  CK(cudaStreamSynchronize(s));
  check(h_in.data(), h_out.data(), 4.0f, 0, "built graph");

  // Fork and join: s2 joins the capture by waiting on an event recorded in it.
  cudaEvent_t fork, join;
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  scale<<<(N + 255) / 256, 256, 0, s>>>(x, y, 6.0f, N);
  CK(cudaEventRecord(fork, s));
  CK(cudaStreamWaitEvent(s2, fork, 0));
  cudaStreamCaptureStatus st2;
  CK(cudaStreamIsCapturing(s2, &st2));
  EXPECT(st2 == cudaStreamCaptureStatusActive, "the joined stream is not capturing (%d)", (int)st2);
  add<<<(N + 255) / 256, 256, 0, s2>>>(y, x, out, N);
  CK(cudaEventRecord(join, s2));
  CK(cudaStreamWaitEvent(s, join, 0));
  cudaGraph_t gf;
  CK(cudaStreamEndCapture(s, &gf));
  CK(cudaGraphGetNodes(gf, nullptr, &nodes));
  EXPECT(nodes == 2, "fork/join capture has %zu nodes", nodes);
  cudaGraphExec_t ef;
  CK(cudaGraphInstantiate(&ef, gf, 0));
  CK(cudaGraphLaunch(ef, s));
  CK(cudaMemcpy(h_out.data(), out, N * sizeof(float), cudaMemcpyDeviceToHost));
  check(h_in.data(), h_out.data(), 6.0f, 0, "fork/join");

  // What capture forbids: synchronizing the capturing stream invalidates the capture; the
  // legacy default stream cannot be captured.
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  e = cudaStreamSynchronize(s);
  EXPECT(e == cudaErrorStreamCaptureUnsupported, "synchronize while capturing: %s", cudaGetErrorName(e));
  cudaGraph_t bad = nullptr;
  e = cudaStreamEndCapture(s, &bad);
  EXPECT(e == cudaErrorStreamCaptureInvalidated && bad == nullptr, "end of an invalidated capture: %s", cudaGetErrorName(e));
  (void)cudaGetLastError();
  e = cudaStreamBeginCapture(0, cudaStreamCaptureModeRelaxed);
  EXPECT(e != cudaSuccess, "the legacy stream was captured");
  (void)cudaGetLastError();

  // A stream that joined a capture cannot end it (and trying invalidates the capture); a
  // capture whose joined stream's work was not joined back ends in cudaErrorStreamCaptureUnjoined.
  for (int unjoined = 0; unjoined < 2; unjoined++) {
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    CK(cudaEventRecord(fork, s));
    CK(cudaStreamWaitEvent(s2, fork, 0));
    add<<<(N + 255) / 256, 256, 0, s2>>>(y, x, out, N);
    cudaGraph_t none = nullptr;
    if (!unjoined) {
      e = cudaStreamEndCapture(s2, &none);
      EXPECT(e == cudaErrorStreamCaptureUnmatched, "end by a joined stream: %s", cudaGetErrorName(e));
    }
    e = cudaStreamEndCapture(s, &none);
    cudaError_t want = unjoined ? cudaErrorStreamCaptureUnjoined : cudaErrorStreamCaptureInvalidated;
    EXPECT(e == want && none == nullptr, "end with %s: %s", unjoined ? "unjoined work" : "an unmatched end before", cudaGetErrorName(e));
    (void)cudaGetLastError();
    CK(cudaStreamIsCapturing(s2, &st2));
    EXPECT(st2 == cudaStreamCaptureStatusNone, "the joined stream still captures (%d)", (int)st2);
  }

  // A blocking stream's capture: the legacy stream, which waits for it, cannot even be asked
  // whether it captures (cudaErrorStreamCaptureImplicit); the capture itself goes on.
  cudaStream_t blocking;
  CK(cudaStreamCreate(&blocking));
  CK(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeRelaxed));
  scale<<<(N + 255) / 256, 256, 0, blocking>>>(x, y, 3.0f, N);
  cudaStreamCaptureStatus lst;
  e = cudaStreamIsCapturing(cudaStreamLegacy, &lst);
  EXPECT(e == cudaErrorStreamCaptureImplicit, "the legacy stream asked during a blocking capture: %s", cudaGetErrorName(e));
  (void)cudaGetLastError();
  CK(cudaStreamIsCapturing(s, &lst));  // a non-blocking stream is not implicated
  cudaGraph_t gi;
  CK(cudaStreamEndCapture(blocking, &gi));
  CK(cudaStreamIsCapturing(cudaStreamLegacy, &lst));
  EXPECT(lst == cudaStreamCaptureStatusNone, "legacy stream status %d", (int)lst);

  // cudaGraphDebugDotPrint: the kernels by name, their launch shape only when verbose.
  const char *dot = "/tmp/vgpu-graphs-test.dot", *dotv = "/tmp/vgpu-graphs-test-verbose.dot";
  CK(cudaGraphDebugDotPrint(gf, dot, 0));
  CK(cudaGraphDebugDotPrint(gf, dotv, cudaGraphDebugDotFlagsVerbose));
  auto slurp = [](const char *path) {
    std::string t;
    FILE *f = fopen(path, "r");
    EXPECT(f != nullptr, "no %s", path);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) t.append(buf, n);
    fclose(f);
    remove(path);
    return t;
  };
  std::string plain = slurp(dot), verbose = slurp(dotv);
  EXPECT(plain.find("digraph") != std::string::npos && plain.find("scale") != std::string::npos && plain.find("add") != std::string::npos && plain.find("->") != std::string::npos, "DOT text:\n%s", plain.c_str());
  EXPECT(verbose != plain && verbose.find("scale") != std::string::npos && verbose.find("256") != std::string::npos, "verbose DOT text:\n%s", verbose.c_str());
  // cudaFuncGetName (cudart 12.3 and later; looked up so that older ones still run this).
  typedef cudaError_t (*FuncGetName)(const char **, const void *);
  if (FuncGetName get_name = (FuncGetName)dlsym(RTLD_DEFAULT, "cudaFuncGetName")) {
    const char *name = nullptr;
    CK(get_name(&name, (const void *)scale));
    EXPECT(name && std::string(name).find("scale") != std::string::npos, "cudaFuncGetName: %s", name ? name : "(null)");
  }

  for (cudaGraph_t gg : {g, g2, g3, gb, gf, gi}) CK(cudaGraphDestroy(gg));
  CK(cudaStreamDestroy(blocking));
  for (cudaGraphExec_t ee : {exec, eb, ef}) CK(cudaGraphExecDestroy(ee));

  // User objects: the destructor runs once, after the last reference (the application's, a
  // graph's, an executable graph's) goes, on a thread of the driver's.
  user_objects();
  printf("PASS\n");
  return 0;
}
