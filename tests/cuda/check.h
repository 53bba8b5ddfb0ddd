// Shared by the test programs: every CUDA call is checked; a program prints PASS and exits 0
// only if all its results match values computed on the CPU.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  fprintf(stderr, "%s:%d: %s failed: %d (%s)\n", __FILE__, __LINE__, #x, (int)e_, cudaGetErrorString(e_)); \
  exit(1); } } while (0)

#define EXPECT(cond, ...) do { if (!(cond)) { fprintf(stderr, "%s:%d: expectation failed: %s: ", __FILE__, __LINE__, #cond); \
  fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); exit(2); } } while (0)
