// Top-k of each row of x [N,E] f32 (router: E ≤ 256, k ≤ 16), descending, ties to the lower
// index. One warp per row: lane l holds x[l + 32t] for t < 8 in registers; each of the k rounds
// takes every lane's best remaining element, an arg-max across the warp (value, then lower index),
// and removes the winner. Cost ~k·(8 compares + 5 shuffle steps) per row; launch-bound at router
// sizes (16384 × 64 f32 = 4 MB read ≈ 1.4 µs at 3 TB/s).
#include "common.cuh"

// Values each lane keeps (E ≤ 32·TOPK_PER_LANE): a -D define from ops/topk.ts (TOPK_DEFINES),
// which refuses wider rows.
#ifndef TOPK_PER_LANE
#error "TOPK_PER_LANE is set by ops/topk.ts (TOPK_DEFINES)"
#endif
#define TOPK_NONE 0x7fffffff

__device__ __forceinline__ bool better(float va, int ia, float vb, int ib) {
  if (ia == TOPK_NONE) return false;
  if (ib == TOPK_NONE) return true;
  return va > vb || (va == vb && ia < ib);
}

extern "C" __global__ void topk_rows(float* __restrict__ values, int* __restrict__ indices, const float* __restrict__ x,
                                     int N, int E, int k) {
  const int lane = threadIdx.x & 31;
  const long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= N) return;
  const float* xr = x + r * E;
  float v[TOPK_PER_LANE];
#pragma unroll
  for (int t = 0; t < TOPK_PER_LANE; ++t) {
    const int c = lane + 32 * t;
    v[t] = c < E ? xr[c] : 0.f;
  }
  unsigned removed = 0;
  for (int j = 0; j < k; ++j) {
    float bv = 0.f;
    int bi = TOPK_NONE;
#pragma unroll
    for (int t = 0; t < TOPK_PER_LANE; ++t) {
      const int c = lane + 32 * t;
      if (c < E && !((removed >> t) & 1u) && better(v[t], c, bv, bi)) { bv = v[t]; bi = c; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if (bi != TOPK_NONE && (bi & 31) == lane) removed |= 1u << (bi >> 5);
    if (lane == 0) {
      values[r * k + j] = bv;
      indices[r * k + j] = bi;
    }
  }
}
