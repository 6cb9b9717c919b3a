// Rotary embedding in DeepSeek's layout. x [B,S,H,D] holds interleaved pairs (x[2j], x[2j+1]);
// the output is de-interleaved: out[j] = x[2j]·cos − x[2j+1]·sin, out[j+D/2] = x[2j+1]·cos + x[2j]·sin,
// cos/sin [S, D/2] f32. The backward is the adjoint (transpose of the rotation, re-interleaved).
// One thread per pair. Floor: (bytes of x + out) / ~3 TB/s (the tables stay in L2).
#include "common.cuh"

template <typename TO, typename TI>
__device__ __forceinline__ void rope_fwd(TO* __restrict__ out, const TI* __restrict__ x, const float* __restrict__ cosT,
                                         const float* __restrict__ sinT, long long pairs, int S, int H, int half) {
  MT_GRID_STRIDE(i, pairs) {
    const long long n = i / half;  // row (b,s,h)
    const int j = (int)(i - n * half);
    const int s = (int)((n / H) % S);
    const float c = cosT[(long long)s * half + j], sn = sinT[(long long)s * half + j];
    const float x0 = to_f32(x[n * 2 * half + 2 * j]), x1 = to_f32(x[n * 2 * half + 2 * j + 1]);
    out[n * 2 * half + j] = from_f32<TO>(x0 * c - x1 * sn);
    out[n * 2 * half + j + half] = from_f32<TO>(x1 * c + x0 * sn);
  }
}

template <typename TO, typename TI>
__device__ __forceinline__ void rope_bwd(TO* __restrict__ dx, const TI* __restrict__ dout, const float* __restrict__ cosT,
                                         const float* __restrict__ sinT, long long pairs, int S, int H, int half) {
  MT_GRID_STRIDE(i, pairs) {
    const long long n = i / half;
    const int j = (int)(i - n * half);
    const int s = (int)((n / H) % S);
    const float c = cosT[(long long)s * half + j], sn = sinT[(long long)s * half + j];
    const float a = to_f32(dout[n * 2 * half + j]), b = to_f32(dout[n * 2 * half + j + half]);
    dx[n * 2 * half + 2 * j] = from_f32<TO>(a * c + b * sn);
    dx[n * 2 * half + 2 * j + 1] = from_f32<TO>(b * c - a * sn);
  }
}

#define MT_ROPE(TO, TI)                                                                                        \
  extern "C" __global__ void rope_fwd_##TO##_##TI(TO* out, const TI* x, const float* cosT, const float* sinT,    \
                                                  long long pairs, int S, int H, int half) {                   \
    rope_fwd<TO, TI>(out, x, cosT, sinT, pairs, S, H, half);                                                   \
  }                                                                                                            \
  extern "C" __global__ void rope_bwd_##TO##_##TI(TO* dx, const TI* dout, const float* cosT, const float* sinT,  \
                                                  long long pairs, int S, int H, int half) {                   \
    rope_bwd<TO, TI>(dx, dout, cosT, sinT, pairs, S, H, half);                                                 \
  }
MT_FLOAT_TYPES2(MT_ROPE)
