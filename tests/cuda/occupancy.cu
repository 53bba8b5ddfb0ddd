// The occupancy questions libraries ask before they pick a kernel (cuBLAS asks all of these in
// cublasCreate): resident blocks per multiprocessor, the dynamic shared memory a block may
// still use at a given occupancy, resident clusters, and function attributes for clusters.
#include "check.h"

__global__ void work(float *p) {
  extern __shared__ float s[];
  s[threadIdx.x] = p[threadIdx.x];
  __syncthreads();
  p[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

int main() {
  int n1 = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n1, work, 256, 0));
  EXPECT(n1 >= 1, "blocks per SM %d", n1);
  // The shared memory a block may use with 1, then 2 blocks per SM: that many blocks fit.
  for (int blocks = 1; blocks <= 2; blocks++) {
    size_t smem = 0;
    CK(cudaOccupancyAvailableDynamicSMemPerBlock(&smem, work, blocks, 256));
    int n = 0;
    CK(cudaFuncSetAttribute(work, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, work, 256, smem));
    printf("%d block(s) per SM: %zu bytes of dynamic shared memory each -> %d resident\n", blocks, smem, n);
    EXPECT(smem > 48 * 1024 / blocks && n >= blocks, "blocks %d: %zu bytes, %d resident", blocks, smem, n);
  }
  // Clusters: allowing non-portable sizes is accepted; resident one-block clusters are as many
  // as resident blocks; a larger cluster shape fits at most as often.
  CK(cudaFuncSetAttribute(work, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.multiProcessorCount * n1);
  cfg.blockDim = dim3(256);
  int c1 = 0, c2 = 0;
  CK(cudaOccupancyMaxActiveClusters(&c1, work, &cfg));
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = 2;
  at[0].val.clusterDim.y = 1;
  at[0].val.clusterDim.z = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  CK(cudaOccupancyMaxActiveClusters(&c2, work, &cfg));
  printf("resident clusters: %d of 1 block, %d of 2 blocks\n", c1, c2);
  EXPECT(c1 == p.multiProcessorCount * n1 && c2 <= c1 / 2, "clusters %d, %d", c1, c2);
  printf("PASS\n");
  return 0;
}
