// out[0] (f32) += Σ x² over n contiguous elements: each block reduces its grid-stride share in
// f32 and adds one partial with atomicAdd (one atomic per block, so the order of a few hundred
// partials is the only non-determinism). Floor: bytes of x / ~3 TB/s.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void sum_squares_body(float* out, const T* __restrict__ x, long long n) {
  __shared__ float scratch[32];
  float s = 0.f;
  MT_GRID_STRIDE(i, n) { float v = to_f32(x[i]); s = fmaf(v, v, s); }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) atomicAdd(out, s);
}

#define MT_SUM_SQUARES(T) \
  extern "C" __global__ void sum_squares_##T(float* out, const T* x, long long n) { sum_squares_body<T>(out, x, n); }
MT_FLOAT_TYPES1(MT_SUM_SQUARES)
