// out[r] = Σ_c x[r,c] in f32, x contiguous [R,C]. Short rows (C ≤ 1024) take one warp per row,
// long rows one block per row. Floor: bytes of x / ~3 TB/s (out is R elements).
#include "common.cuh"

template <typename TO, typename TI>
__device__ __forceinline__ void sum_rows_warp(TO* __restrict__ out, const TI* __restrict__ x, int R, int C) {
  const int lane = threadIdx.x & 31;
  const long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= R) return;
  const TI* row = x + r * C;
  float s = 0.f;
  for (int c = lane; c < C; c += 32) s += to_f32(row[c]);
  s = warp_sum(s);
  if (lane == 0) out[r] = from_f32<TO>(s);
}

template <typename TO, typename TI>
__device__ __forceinline__ void sum_rows_block(TO* __restrict__ out, const TI* __restrict__ x, int R, int C) {
  __shared__ float scratch[32];
  const long long r = blockIdx.x;
  const TI* row = x + r * C;
  float s = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += to_f32(row[c]);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[r] = from_f32<TO>(s);
}

#define MT_SUM_ROWS(TO, TI)                                                                                  \
  extern "C" __global__ void sum_rows_warp_##TO##_##TI(TO* out, const TI* x, int R, int C) { sum_rows_warp<TO, TI>(out, x, R, C); } \
  extern "C" __global__ void sum_rows_block_##TO##_##TI(TO* out, const TI* x, int R, int C) { sum_rows_block<TO, TI>(out, x, R, C); }
MT_FLOAT_TYPES2(MT_SUM_ROWS)
