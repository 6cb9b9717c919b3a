// Row softmax in f32 over the last dimension (the router: C = experts ≤ 256), one warp per row;
// the row is read three times, all but the first from L1. Backward: dx = y·(dy − Σ dy·y).
// Floor: (bytes in + bytes out) / ~3 TB/s; at router sizes (16384 × 64 f32 = 4 MB) launch-bound.
#include "common.cuh"

extern "C" __global__ void softmax_fwd(float* __restrict__ out, const float* __restrict__ x, int R, int C) {
  const int lane = threadIdx.x & 31;
  const long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= R) return;
  const float* xr = x + r * C;
  float* yr = out + r * C;
  float m = -MT_INF;
  for (int c = lane; c < C; c += 32) m = fmaxf(m, xr[c]);
  m = warp_max(m);
  float s = 0.f;
  for (int c = lane; c < C; c += 32) s += expf(xr[c] - m);
  s = warp_sum(s);
  const float inv = 1.f / s;
  for (int c = lane; c < C; c += 32) yr[c] = expf(xr[c] - m) * inv;
}

extern "C" __global__ void softmax_bwd(float* dx, const float* dy, const float* __restrict__ y, int R, int C) {
  const int lane = threadIdx.x & 31;
  const long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= R) return;
  const float* dyr = dy + r * C;
  const float* yr = y + r * C;
  float* dxr = dx + r * C;
  float dot = 0.f;
  for (int c = lane; c < C; c += 32) dot = fmaf(dyr[c], yr[c], dot);
  dot = warp_sum(dot);
  for (int c = lane; c < C; c += 32) dxr[c] = yr[c] * (dyr[c] - dot);
}
