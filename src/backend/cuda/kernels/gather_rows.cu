// out[m] = (weights ? weights[m] : 1)·x[idx[m]] for x [N,D], idx i32 [M], out [M,D] (MoE dispatch
// of tokens to expert-ordered slots). One block per output row; an index outside [0,N) gives a NaN
// row. Rows of a multiple of 8 elements move in 16-byte accesses. Floor: M·D·(bytes of x + out) / ~3 TB/s, e.g. 98304 × 2048 bf16 in and out: 805 MB ≈ 0.27 ms.
// Narrow rows (D below a warp; the router's weights in expert order are D = 1) take
// gather_rows_narrow: one thread per element, the same arithmetic as the scalar path. One block of
// 32 threads per one-element row made the 49,152 rows of the bench's routing take ~35 µs a launch
// (6 launches, 0.21 ms a step on an H100, issue 16's kernel table) for 0.4 MB of data.
#include "common.cuh"

template <typename TO, typename TX, typename TW>
__device__ __forceinline__ void gather_rows(TO* __restrict__ out, const TX* __restrict__ x, const int* __restrict__ idx,
                                            const TW* __restrict__ weights, int N, int D) {
  const long long m = blockIdx.x;
  const int src = idx[m];
  TO* o = out + m * D;
  if (src < 0 || src >= N) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = from_f32<TO>(MT_NAN);
    return;
  }
  const TX* xr = x + (long long)src * D;
  if ((D & 7) == 0 && aligned16(out) && aligned16(x)) {  // every row then starts 16-byte aligned
    const float w = weights == nullptr ? 1.f : to_f32(weights[m]);
    for (int d8 = threadIdx.x; d8 < D / 8; d8 += blockDim.x) {
      float v[8];
      load8(xr + 8 * d8, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] *= w;
      store8(o + 8 * d8, v);
    }
    return;
  }
  if (weights == nullptr) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = Convert<TO, TX>::run(xr[d]);
  } else {
    const float w = to_f32(weights[m]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = from_f32<TO>(w * to_f32(xr[d]));
  }
}

template <typename TO, typename TX, typename TW>
__device__ __forceinline__ void gather_rows_narrow(TO* __restrict__ out, const TX* __restrict__ x, const int* __restrict__ idx,
                                                   const TW* __restrict__ weights, int N, int D, long long total) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const long long m = t / D;
  const int d = (int)(t - m * D), src = idx[m];
  if (src < 0 || src >= N) { out[t] = from_f32<TO>(MT_NAN); return; }
  const TX xv = x[(long long)src * D + d];
  out[t] = weights == nullptr ? Convert<TO, TX>::run(xv) : from_f32<TO>(to_f32(weights[m]) * to_f32(xv));
}

#define MT_GATHER(TO, TX, TW)                                                                                        \
  extern "C" __global__ void gather_rows_##TO##_##TX##_##TW(TO* out, const TX* x, const int* idx, const TW* weights, \
                                                            int N, int D) {                                          \
    gather_rows<TO, TX, TW>(out, x, idx, weights, N, D);                                                             \
  }
#define MT_GATHER_NARROW(TO, TX, TW)                                                                                 \
  extern "C" __global__ void gather_rows_narrow_##TO##_##TX##_##TW(TO* out, const TX* x, const int* idx, const TW* weights, \
                                                                   int N, int D, long long total) {                    \
    gather_rows_narrow<TO, TX, TW>(out, x, idx, weights, N, D, total);                                                 \
  }
MT_FLOAT_TYPES3(MT_GATHER)
MT_FLOAT_TYPES3(MT_GATHER_NARROW)
