// Backend.attentionMerge: a partial attention (o, lse) over some keys merged into the running
// one (acc_o f32 [B,c,H,Dv], acc_lse f32 [B,H,c]) over others, in place. One warp per (b, t, h)
// row: lane 0's log-sum-exp pair gives the two weights (every lane computes them: no exchange),
// each lane merges Dv/32 values; acc_lse is written after the warp has read it. The weights
// never exponentiate a positive number: lse' = max + log1p(e^−|Δ|), w = e^(lse − lse') ≤ 1.
// A side whose lse is −∞ (no keys) weighs 0.
// o [B,c,H,Dv] has rows of H·Dv contiguous values, o_batch_stride elements between batches;
// lse [B,H,c] has c contiguous values per (b, h), lse_row_stride elements between them.
// Floor: per row 4 B read + 4 B written for acc_o, 2 (bf16) or 4 B read for o: at B·c·H·Dv =
// 4M values (c = 2048, H = 16), ~40 MB ≈ 13 µs at 3 TB/s.
#include "common.cuh"

namespace {

template <typename T>
__device__ __forceinline__ void merge_row(float* __restrict__ acc_o, float* __restrict__ acc_lse, const T* __restrict__ o,
                                          const float* __restrict__ lse, int B, int c, int H, int Dv,
                                          long long o_batch_stride, long long lse_row_stride) {
  const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= (long long)B * c * H) return;
  const int lane = threadIdx.x & 31;
  const int h = (int)(row % H);
  const long long bt = row / H;
  const int t = (int)(bt % c);
  const int b = (int)(bt / c);
  const long long li = ((long long)b * H + h) * c + t;
  const float la = acc_lse[li], lb = lse[((long long)b * H + h) * lse_row_stride + t];
  float wa, wb, next;
  if (la == -MT_INF) { wa = 0.f; wb = 1.f; next = lb; }
  else if (lb == -MT_INF) { wa = 1.f; wb = 0.f; next = la; }
  else {
    next = fmaxf(la, lb) + log1pf(expf(-fabsf(la - lb)));
    wa = expf(la - next);
    wb = expf(lb - next);
  }
  float* a = acc_o + row * Dv;
  const T* x = o + (long long)b * o_batch_stride + ((long long)t * H + h) * Dv;
  for (int d = lane; d < Dv; d += 32) a[d] = a[d] * wa + to_f32(x[d]) * wb;
  // Every lane has read acc_lse (above) before lane 0 replaces it.
  __syncwarp();
  if (lane == 0) acc_lse[li] = next;
}
}  // namespace

extern "C" __global__ void attention_merge_bf16(float* __restrict__ acc_o, float* __restrict__ acc_lse, const bf16* __restrict__ o, const float* lse, int B, int c, int H,
                                                int Dv, long long o_batch_stride, long long lse_row_stride) {
  merge_row(acc_o, acc_lse, o, lse, B, c, H, Dv, o_batch_stride, lse_row_stride);
}

extern "C" __global__ void attention_merge_f32(float* acc_o, float* acc_lse, const float* o, const float* lse, int B, int c, int H,
                                               int Dv, long long o_batch_stride, long long lse_row_stride) {
  merge_row(acc_o, acc_lse, o, lse, B, c, H, Dv, o_batch_stride, lse_row_stride);
}
