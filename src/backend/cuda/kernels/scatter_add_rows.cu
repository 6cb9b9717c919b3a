// out[idx[m]] += (weights ? weights[m] : 1)·src[m] for src [M,D], idx i32 [M], out f32 [N,D]
// (MoE combine of expert outputs back to tokens). One block per source row, f32 atomicAdd per
// element: rows that share a destination collide only there, and the order of those additions is
// not deterministic. A bf16 destination is handled by the host: it widens out into an f32
// workspace, runs this kernel, and rounds back once, so bf16 sees one rounding as the contract
// asks. An index outside [0,N) is skipped.
// Floor: (M·D·bytes of src + N·D·8 for out) / ~3 TB/s if the atomics resolve in L2; e.g.
// 98304 × 2048 bf16 into [16384, 2048] f32: 0.67 GB ≈ 0.22 ms. Measured on an H100 80GB HBM3:
// 0.79 ms with these scalar atomics; 16-byte loads with red.global.add.v4.f32 took 0.98 ms.
// The gap is the atomics. The MoE layer's own combine and its dispatch's backward do not come
// here: each token sums its k slots' rows through the inverse of expertOrder (slot_rows.cu,
// deterministic, no f32 workspace); this kernel serves the expert-parallel dispatcher and the
// top-k backward. Narrow rows (D below a warp: the router weights' gradient, D = 1) take
// scatter_add_rows_narrow, one thread per element (as gather_rows_narrow, gather_rows.cu).
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
  for (int d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(o + d, w * to_f32(sr[d]));
}

template <typename TS, typename TW>
__device__ __forceinline__ void scatter_add_rows_narrow(float* out, const TS* __restrict__ src, const int* __restrict__ idx,
                                                        const TW* __restrict__ weights, int N, int D, long long total) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const long long m = t / D;
  const int d = (int)(t - m * D), dst = idx[m];
  if (dst < 0 || dst >= N) return;
  const float w = weights == nullptr ? 1.f : to_f32(weights[m]);
  atomicAdd(out + (long long)dst * D + d, w * to_f32(src[t]));
}

#define MT_SCATTER(TS, TW)                                                                                        \
  extern "C" __global__ void scatter_add_rows_##TS##_##TW(float* out, const TS* src, const int* idx, const TW* weights, \
                                                          int N, int D) {                                         \
    scatter_add_rows<TS, TW>(out, src, idx, weights, N, D);                                                       \
  }
#define MT_SCATTER_NARROW(TS, TW)                                                                                 \
  extern "C" __global__ void scatter_add_rows_narrow_##TS##_##TW(float* out, const TS* src, const int* idx, const TW* weights, \
                                                                 int N, int D, long long total) {                   \
    scatter_add_rows_narrow<TS, TW>(out, src, idx, weights, N, D, total);                                           \
  }
MT_FLOAT_TYPES2(MT_SCATTER)
MT_FLOAT_TYPES2(MT_SCATTER_NARROW)
