// Prints what CUDA says about device 0, in a form the tests compare with NVML's answers.
#include "check.h"

int main() {
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  char bus[32];
  CK(cudaDeviceGetPCIBusId(bus, sizeof(bus), 0));
  printf("name %s\n", p.name);
  printf("uuid GPU-");
  for (int i = 0; i < 16; i++) {
    printf("%02x", (unsigned char)p.uuid.bytes[i]);
    if (i == 3 || i == 5 || i == 7 || i == 9) printf("-");
  }
  printf("\npci %s\n", bus);
  printf("cc %d.%d\n", p.major, p.minor);
  printf("memory %zu\n", p.totalGlobalMem);
  int driver = 0;
  CK(cudaDriverGetVersion(&driver));
  printf("driver %d\n", driver);
  printf("PASS\n");
  return 0;
}
