// out[idx[m]] += (weights ? weights[m] : 1)·src[m] for src [M,D], idx i32 [M], out f32 [N,D]
// (MoE combine of expert outputs back to tokens). One block per source row, f32 atomic adds
// (red.global.add.v4.f32, four at a time, when rows are multiples of 8 and aligned): rows that
// share a destination collide only there, and the order of those additions is not deterministic. A bf16 destination is handled by the host: it widens out into an f32
// workspace, runs this kernel, and rounds back once, so bf16 sees one rounding as the contract
// asks. An index outside [0,N) is skipped.
// Floor: M·D·(bytes of src + 8 for the f32 read-modify-write) / ~3 TB/s, e.g. 98304 × 2048 bf16:
// 2 GB ≈ 0.67 ms (the atomics resolve in L2, so the real cost is closer to src bytes + out bytes).
#include "common.cuh"

template <typename TS, typename TW>
__device__ __forceinline__ void scatter_add_rows(float* out, const TS* __restrict__ src, const int* __restrict__ idx,
                                                 const TW* __restrict__ weights, int N, int D) {
  const long long m = blockIdx.x;
  const int dst = idx[m];
  if (dst < 0 || dst >= N) return;
  const float w = weights == nullptr ? 1.f : to_f32(weights[m]);
  const TS* sr = src + m * D;
  float* o = out + (long long)dst * D;
  if ((D & 7) == 0 && aligned16(out) && aligned16(src)) {  // 16-byte loads, two 4-wide reductions
    for (int d8 = threadIdx.x; d8 < D / 8; d8 += blockDim.x) {
      float v[8];
      load8(sr + 8 * d8, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] *= w;
      red_add_v4(o + 8 * d8, v);
      red_add_v4(o + 8 * d8 + 4, v + 4);
    }
    return;
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(o + d, w * to_f32(sr[d]));
}

#define MT_SCATTER(TS, TW)                                                                                        \
  extern "C" __global__ void scatter_add_rows_##TS##_##TW(float* out, const TS* src, const int* idx, const TW* weights, \
                                                          int N, int D) {                                         \
    scatter_add_rows<TS, TW>(out, src, idx, weights, N, D);                                                       \
  }
MT_FLOAT_TYPES2(MT_SCATTER)
