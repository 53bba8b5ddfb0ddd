// Sharing between two processes (as torch.multiprocessing and PyTorch's expandable segments
// do): the parent exports a cudaMalloc allocation (cudaIpcGetMemHandle), an interprocess event
// and a VMM physical allocation as a POSIX file descriptor (cuMemExportToShareableHandle, the
// descriptor passed with SCM_RIGHTS); the child opens all three, checks the parent's data,
// changes it with kernels, and the parent sees the changes. Opening a handle twice gives the
// same pointer; closed memory is gone; handles that are not handles are refused. The VMM part
// runs where the device says it can export to file descriptors (attribute 103), and reports on
// standard error, so that standard output is the same either way.
#include "check.h"
#include <cuda.h>
#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

__global__ void fill(int *p, int n, int k) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = k * i + 1;
}

__global__ void add(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += v;
}

static const int N = 1 << 16;

struct Msg {
  cudaIpcMemHandle_t mem;
  cudaIpcEventHandle_t ev;
  size_t vmm_size;
};

// One message over the socket pair, with a descriptor attached or not.
static void send_msg(int s, const void *buf, size_t len, int fd) {
  struct iovec iov = {(void *)buf, len};
  char ctl[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr mh = {};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (fd >= 0) {
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof ctl;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  EXPECT(sendmsg(s, &mh, 0) == (ssize_t)len, "sendmsg");
}

static int recv_msg(int s, void *buf, size_t len) {
  struct iovec iov = {buf, len};
  char ctl[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr mh = {};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  EXPECT(recvmsg(s, &mh, MSG_WAITALL) == (ssize_t)len, "recvmsg");
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  int fd = -1;
  if (c && c->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

// The driver's VMM entry points (cudart has no wrappers), from the libcuda.so.1 cudart uses.
#define DRV(x) x = (decltype(&::x))dlsym(lib, #x); EXPECT(x != nullptr, "dlsym %s", #x);
#define CU(x) do { CUresult r_ = (x); EXPECT(r_ == CUDA_SUCCESS, "%s: %d", #x, (int)r_); } while (0)
struct Vmm {
  decltype(&::cuMemCreate) cuMemCreate;
  decltype(&::cuMemRelease) cuMemRelease;
  decltype(&::cuMemAddressReserve) cuMemAddressReserve;
  decltype(&::cuMemAddressFree) cuMemAddressFree;
  decltype(&::cuMemMap) cuMemMap;
  decltype(&::cuMemUnmap) cuMemUnmap;
  decltype(&::cuMemSetAccess) cuMemSetAccess;
  decltype(&::cuMemGetAllocationGranularity) cuMemGetAllocationGranularity;
  decltype(&::cuMemExportToShareableHandle) cuMemExportToShareableHandle;
  decltype(&::cuMemImportFromShareableHandle) cuMemImportFromShareableHandle;
  Vmm() {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    EXPECT(lib != nullptr, "libcuda.so.1 is loaded");
    DRV(cuMemCreate) DRV(cuMemRelease) DRV(cuMemAddressReserve) DRV(cuMemAddressFree) DRV(cuMemMap)
    DRV(cuMemUnmap) DRV(cuMemSetAccess) DRV(cuMemGetAllocationGranularity)
    DRV(cuMemExportToShareableHandle) DRV(cuMemImportFromShareableHandle)
  }
  // Maps `h` (`size` bytes) at a new address, readable and writable by device 0.
  CUdeviceptr map(CUmemGenericAllocationHandle h, size_t size) {
    CUdeviceptr va = 0;
    CU(cuMemAddressReserve(&va, size, 0, 0, 0));
    CU(cuMemMap(va, size, 0, h, 0));
    CUmemAccessDesc a = {};
    a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    a.location.id = 0;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CU(cuMemSetAccess(va, size, &a, 1));
    return va;
  }
  void unmap(CUdeviceptr va, size_t size) {
    CU(cuMemUnmap(va, size));
    CU(cuMemAddressFree(va, size));
  }
};

static void expect_values(const int *dev, int k, int plus, const char *what) {
  static int host[N];
  CK(cudaMemcpy(host, dev, sizeof host, cudaMemcpyDeviceToHost));
  for (int i = 0; i < N; i++) EXPECT(host[i] == k * i + 1 + plus, "%s[%d] = %d, not %d", what, i, host[i], k * i + 1 + plus);
}

static int child(int s) {
  Msg m;
  int fd = recv_msg(s, &m, sizeof m);
  EXPECT((fd >= 0) == (m.vmm_size > 0), "the descriptor arrived");
  int *p = nullptr, *again = nullptr;
  CK(cudaIpcOpenMemHandle((void **)&p, m.mem, cudaIpcMemLazyEnablePeerAccess));
  CK(cudaIpcOpenMemHandle((void **)&again, m.mem, cudaIpcMemLazyEnablePeerAccess));
  EXPECT(again == p, "opened twice: %p and %p", (void *)p, (void *)again);
  CK(cudaIpcCloseMemHandle(again));
  cudaEvent_t ev;
  CK(cudaIpcOpenEventHandle(&ev, m.ev));
  CK(cudaStreamWaitEvent(0, ev, 0));
  expect_values(p, 3, 0, "opened memory");
  add<<<N / 256, 256>>>(p, N, 1000);
  CK(cudaDeviceSynchronize());
  printf("child: opened the parent's memory and event\n");

  if (m.vmm_size > 0) {
    Vmm v;
    CUmemGenericAllocationHandle h;
    CU(v.cuMemImportFromShareableHandle(&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    close(fd);
    CUdeviceptr va = v.map(h, m.vmm_size);
    expect_values((int *)va, 7, 0, "imported physical memory");
    add<<<N / 256, 256>>>((int *)va, N, 5);
    CK(cudaDeviceSynchronize());
    v.unmap(va, m.vmm_size);
    CU(v.cuMemRelease(h));
    fprintf(stderr, "child: imported the parent's physical allocation from a file descriptor\n");
  }

  CK(cudaIpcCloseMemHandle(p));
  int x;
  EXPECT(cudaMemcpy(&x, p, sizeof x, cudaMemcpyDeviceToHost) != cudaSuccess, "closed memory is still readable");
  (void)cudaGetLastError();
  CK(cudaEventDestroy(ev));
  char done = 'd';
  send_msg(s, &done, 1, -1);
  return 0;
}

int main() {
  int sv[2];
  EXPECT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
  // Before any CUDA call: a process that forks after initializing CUDA cannot use it in the child.
  pid_t pid = fork();
  EXPECT(pid >= 0, "fork");
  if (pid == 0) {
    close(sv[0]);
    exit(child(sv[1]));
  }
  close(sv[1]);
  int s = sv[0];

  int *d;
  CK(cudaMalloc((void **)&d, N * sizeof(int)));
  fill<<<N / 256, 256>>>(d, N, 3);
  Msg m;
  CK(cudaIpcGetMemHandle(&m.mem, d));
  cudaIpcMemHandle_t same;
  CK(cudaIpcGetMemHandle(&same, d));
  EXPECT(memcmp(&same, &m.mem, sizeof same) == 0, "two handles for one allocation differ");
  cudaEvent_t ev, timed;
  CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming | cudaEventInterprocess));
  CK(cudaEventRecord(ev, 0));
  CK(cudaIpcGetEventHandle(&m.ev, ev));
  CK(cudaEventCreate(&timed));
  cudaIpcEventHandle_t bad_ev;
  EXPECT(cudaIpcGetEventHandle(&bad_ev, timed) != cudaSuccess, "an event without cudaEventInterprocess was exported");
  (void)cudaGetLastError();

  int posix_fd = 0;
  // CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED (cudart names no value for it).
  CK(cudaDeviceGetAttribute(&posix_fd, (cudaDeviceAttr)CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, 0));
  Vmm v;
  CUdeviceptr va = 0;
  CUmemGenericAllocationHandle h = 0;
  int fd = -1;
  m.vmm_size = 0;
  if (posix_fd) {
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  size_t gran = 0;
  CU(v.cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  m.vmm_size = (N * sizeof(int) + gran - 1) / gran * gran;
  CU(v.cuMemCreate(&h, m.vmm_size, &prop, 0));
  va = v.map(h, m.vmm_size);
  fill<<<N / 256, 256>>>((int *)va, N, 7);
  CK(cudaDeviceSynchronize());
  CU(v.cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
  EXPECT(fd >= 0, "a descriptor");
  }

  send_msg(s, &m, sizeof m, fd);
  if (fd >= 0) close(fd);
  char done;
  EXPECT(recv_msg(s, &done, 1) == -1 && done == 'd', "the child finished");
  int status = 0;
  EXPECT(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child exit status %d", status);

  expect_values(d, 3, 1000, "memory the child changed");
  if (posix_fd) {
    expect_values((int *)va, 7, 5, "physical memory the child changed");
    fprintf(stderr, "parent: sees the child's changes to its physical allocation\n");
  }
  printf("parent: sees the child's changes\n");

  // Bytes that are not a handle.
  cudaIpcMemHandle_t junk;
  memset(&junk, 0x5a, sizeof junk);
  int *q = nullptr;
  EXPECT(cudaIpcOpenMemHandle((void **)&q, junk, cudaIpcMemLazyEnablePeerAccess) != cudaSuccess, "a junk handle opened");
  (void)cudaGetLastError();

  if (posix_fd) {
    v.unmap(va, m.vmm_size);
    CU(v.cuMemRelease(h));
  }
  CK(cudaEventDestroy(ev));
  CK(cudaEventDestroy(timed));
  CK(cudaFree(d));
  printf("PASS\n");
  return 0;
}
