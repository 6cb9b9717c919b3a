// RMSNorm, statistics in f32. Forward: y = x·rstd·w, rstd[r] = 1/sqrt(mean(x[r]²) + eps).
// Backward: dx = rstd·(w·dy − x·rstd²·mean(dy·w·x)) (overwritten) and dw += Σ_r dy·x·rstd.
//
// Register path (D % 8 == 0, 16-byte aligned rows, D ≤ 8·VPT·blockDim): each thread holds up to
// VPT vectors of 8 elements of its row in registers, so a row is read from memory once, and small
// blocks (D/32 threads) let many rows be in flight per SM. Otherwise a generic path walks the row
// with a block stride and re-reads it from L1/L2.
//
// Backward: a persistent grid of G blocks takes rows blockIdx.x, +G, ...; each thread owns the
// same columns in every row, so its dw partial stays in registers (register path) or in its own
// slots of shared memory (generic path): no atomics. Partials [G,D] go to a workspace, and
// rms_norm_dw_reduce sums them over G in a fixed order (deterministic) and adds to dw.
//
// Floors (R=16384, D=2048, bf16): forward reads x and writes y: 134 MB / 3 TB/s ≈ 45 µs;
// backward reads dy, x and writes dx: 201 MB ≈ 67 µs (+ G·D·4 bytes of partials written and read).
#include "common.cuh"

// -D defines from ops/rms_norm.ts (RMS_NORM_DEFINES), whose launch geometry follows them:
// RMS_VPT, vectors of 8 per thread on the register path; RMS_BWD_THREADS, the backward's block
// size limit. The backward keeps ~160 registers a thread (dy, x, w and the dw partial of its
// columns), so its blocks are at most 256 threads (65536 registers per block); the register path
// then covers D ≤ 8·4·256 = 8192 and wider rows take the generic path.
#if !defined(RMS_VPT) || !defined(RMS_BWD_THREADS)
#error "RMS_VPT and RMS_BWD_THREADS are set by ops/rms_norm.ts (RMS_NORM_DEFINES)"
#endif

template <typename T, typename TW>
__device__ __forceinline__ bool rms_register_path(const T* x, const T* y, const TW* w, int D) {
  return (D & 7) == 0 && aligned16(x) && aligned16(y) && aligned16(w) && D / 8 <= RMS_VPT * (int)blockDim.x;
}

template <typename T, typename TW>
__device__ __forceinline__ void rms_norm_fwd(T* __restrict__ y, float* __restrict__ rstd, const T* __restrict__ x,
                                             const TW* __restrict__ w, int D, float eps) {
  __shared__ float scratch[32];
  const long long r = blockIdx.x;
  const T* xr = x + r * D;
  T* yr = y + r * D;
  if (rms_register_path(x, y, w, D)) {
    const int D8 = D / 8;
    float v[RMS_VPT][8];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < RMS_VPT; ++k) {
      const int c8 = threadIdx.x + k * blockDim.x;
      if (c8 < D8) {
        load8(xr + 8 * c8, v[k]);
#pragma unroll
        for (int j = 0; j < 8; ++j) ss = fmaf(v[k][j], v[k][j], ss);
      }
    }
    ss = block_sum(ss, scratch);
    const float rs = 1.f / sqrtf(ss / (float)D + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
#pragma unroll
    for (int k = 0; k < RMS_VPT; ++k) {
      const int c8 = threadIdx.x + k * blockDim.x;
      if (c8 < D8) {
        float wv[8], o[8];
        load8(w + 8 * c8, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = v[k][j] * rs * wv[j];
        store8(yr + 8 * c8, o);
      }
    }
    return;
  }
  float ss = 0.f;
  for (int c = threadIdx.x; c < D; c += blockDim.x) { float v = to_f32(xr[c]); ss = fmaf(v, v, ss); }
  ss = block_sum(ss, scratch);
  const float rs = 1.f / sqrtf(ss / (float)D + eps);
  if (threadIdx.x == 0) rstd[r] = rs;
  for (int c = threadIdx.x; c < D; c += blockDim.x) yr[c] = from_f32<T>(to_f32(xr[c]) * rs * to_f32(w[c]));
}

template <typename T, typename TW>
__device__ __forceinline__ void rms_norm_bwd(T* dx, float* __restrict__ dw_partial, const T* dy, const T* __restrict__ x,
                                             const TW* __restrict__ w, const float* __restrict__ rstd, int R, int D) {
  extern __shared__ float dw_acc[];  // generic path: [D], column c owned by thread c % blockDim.x
  __shared__ float scratch[32];
  float* out = dw_partial + (long long)blockIdx.x * D;
  if (rms_register_path(x, dx, w, D) && aligned16(dy)) {
    const int D8 = D / 8;
    float wv[RMS_VPT][8], acc[RMS_VPT][8];
#pragma unroll
    for (int k = 0; k < RMS_VPT; ++k) {
      const int c8 = threadIdx.x + k * blockDim.x;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[k][j] = 0.f;
      if (c8 < D8) load8(w + 8 * c8, wv[k]);
    }
    for (long long r = blockIdx.x; r < R; r += gridDim.x) {
      const float rs = rstd[r];
      float g[RMS_VPT][8], xv[RMS_VPT][8];
      float dot = 0.f;
#pragma unroll
      for (int k = 0; k < RMS_VPT; ++k) {
        const int c8 = threadIdx.x + k * blockDim.x;
        if (c8 < D8) {
          load8(dy + r * D + 8 * c8, g[k]);
          load8(x + r * D + 8 * c8, xv[k]);
#pragma unroll
          for (int j = 0; j < 8; ++j) dot = fmaf(g[k][j] * wv[k][j], xv[k][j], dot);
        }
      }
      dot = block_sum(dot, scratch);
      const float kk = rs * rs * rs * dot / (float)D;
#pragma unroll
      for (int k = 0; k < RMS_VPT; ++k) {
        const int c8 = threadIdx.x + k * blockDim.x;
        if (c8 < D8) {
          float o[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            acc[k][j] = fmaf(g[k][j] * xv[k][j], rs, acc[k][j]);
            o[j] = rs * wv[k][j] * g[k][j] - xv[k][j] * kk;
          }
          store8(dx + r * D + 8 * c8, o);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < RMS_VPT; ++k) {
      const int c8 = threadIdx.x + k * blockDim.x;
      if (c8 < D8) store8(out + 8 * c8, acc[k]);  // D % 8 == 0 keeps each partial row 32-byte aligned
    }
    return;
  }
  for (int c = threadIdx.x; c < D; c += blockDim.x) dw_acc[c] = 0.f;
  for (long long r = blockIdx.x; r < R; r += gridDim.x) {
    const T* dyr = dy + r * D;
    const T* xr = x + r * D;
    T* dxr = dx + r * D;
    const float rs = rstd[r];
    float dot = 0.f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) dot = fmaf(to_f32(dyr[c]) * to_f32(w[c]), to_f32(xr[c]), dot);
    dot = block_sum(dot, scratch);
    const float k = rs * rs * rs * dot / (float)D;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      const float g = to_f32(dyr[c]), xv = to_f32(xr[c]);
      dw_acc[c] = fmaf(g * xv, rs, dw_acc[c]);
      dxr[c] = from_f32<T>(rs * to_f32(w[c]) * g - xv * k);
    }
  }
  for (int c = threadIdx.x; c < D; c += blockDim.x) out[c] = dw_acc[c];
}

/**
 * dw[c] += Σ_g partial[g,c]. Block (32 columns × 32 lanes over g): lane y sums g ≡ y (mod 32),
 * then lane 0 of each column adds the 32 sums in order, so the result does not depend on timing.
 */
extern "C" __global__ void rms_norm_dw_reduce(float* dw, const float* __restrict__ partial, int G, int D) {
  __shared__ float sums[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.f;
  if (c < D)
    for (int g = threadIdx.y; g < G; g += 32) s += partial[(long long)g * D + c];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float t = 0.f;
    for (int i = 0; i < 32; ++i) t += sums[i][threadIdx.x];
    dw[c] += t;
  }
}

#define MT_RMS_NORM(T, TW)                                                                                        \
  extern "C" __global__ void __launch_bounds__(1024) rms_norm_fwd_##T##_##TW(T* y, float* rstd, const T* x, const TW* w, int D, float eps) { \
    rms_norm_fwd<T, TW>(y, rstd, x, w, D, eps);                                                                   \
  }                                                                                                               \
  extern "C" __global__ void __launch_bounds__(RMS_BWD_THREADS) rms_norm_bwd_##T##_##TW(T* dx, float* dw_partial, const T* dy, const T* x, const TW* w, \
                                                     const float* rstd, int R, int D) {                           \
    rms_norm_bwd<T, TW>(dx, dw_partial, dy, x, w, rstd, R, D);                                                    \
  }
MT_FLOAT_TYPES2(MT_RMS_NORM)
