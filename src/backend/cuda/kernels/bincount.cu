// counts[g,e] = #{m : idx[g,m] = e} for idx i32 [G,M], counts i32 [G,E] (zeroed by the host
// first). Grid (blocks per group, G); each block builds a shared-memory histogram of its share
// and adds its non-zero bins to counts with one atomic each. Values outside [0,E) are not
// counted. Floor: bytes of idx / ~3 TB/s; at MoE sizes (98304 slots) a few µs of launch.
#include "common.cuh"

extern "C" __global__ void bincount_rows(int* counts, const int* __restrict__ idx, int M, int E) {
  extern __shared__ int hist[];  // [E]
  const long long g = blockIdx.y;
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int* row = idx + g * M;
  for (int m = blockIdx.x * blockDim.x + threadIdx.x; m < M; m += gridDim.x * blockDim.x) {
    const int e = row[m];
    if (e >= 0 && e < E) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    if (hist[e] != 0) atomicAdd(&counts[g * E + e], hist[e]);
}
