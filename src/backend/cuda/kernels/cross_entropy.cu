// Softmax cross-entropy over a large vocabulary, f32 statistics. One block per row; each thread
// keeps an online (max, sum) pair over its share of the row, read with 16-byte loads (8 bf16 or
// 4 f32) between a scalar head and tail that align the row; the pairs are merged across the block.
// Forward: lse[n] = log Σ_v exp(x[n,v]); loss[n] = lse[n] − x[n,label[n]], 0 where label < 0
// (lse is still written), NaN where label ≥ V.
// Backward: dlogits[n] = dloss[0]·scale·(softmax(x[n]) − onehot(label[n])), 0 for ignored rows;
// dlogits may be the logits buffer itself (each element is read before it is written).
// Floors (N=8192, V=102400, bf16): forward reads 1.68 GB ≈ 0.56 ms; backward reads and writes
// 3.36 GB ≈ 1.12 ms. __expf (ex2.approx) keeps the exponentials off the critical path.
#include "common.cuh"

// Threads per block (one block per row; also the launch bound): a -D define from
// ops/cross_entropy.ts (CROSS_ENTROPY_DEFINES), which launches with it.
#ifndef CE_THREADS
#error "CE_THREADS is set by ops/cross_entropy.ts (CROSS_ENTROPY_DEFINES)"
#endif

struct MaxSum { float m, s; };

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  return MaxSum{m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

__device__ __forceinline__ void add_one(MaxSum& st, float x) {
  if (x > st.m) { st.s = st.s * __expf(st.m - x) + 1.f; st.m = x; }
  else st.s += __expf(x - st.m);
}

template <typename TL>
__device__ __forceinline__ void ce_fwd(float* __restrict__ loss, float* __restrict__ lse, const TL* __restrict__ logits,
                                       const int* __restrict__ labels, int V) {
  __shared__ MaxSum warpStats[32];
  constexpr int N = Vec16<TL>::N;
  const long long n = blockIdx.x;
  const TL* row = logits + n * V;
  MaxSum st{-MT_FLT_MAX, 0.f};
  const int head = head_to_align16(row, V);
  const int body = (V - head) / N;
  for (int c = threadIdx.x; c < head; c += blockDim.x) add_one(st, to_f32(row[c]));
  for (int b = threadIdx.x; b < body; b += blockDim.x) {
    float v[N];
    load16(row + head + b * N, v);
    float m = st.m;
#pragma unroll
    for (int i = 0; i < N; ++i) m = fmaxf(m, v[i]);
    float s = st.s * __expf(st.m - m);
#pragma unroll
    for (int i = 0; i < N; ++i) s += __expf(v[i] - m);
    st = MaxSum{m, s};
  }
  for (int c = head + body * N + threadIdx.x; c < V; c += blockDim.x) add_one(st, to_f32(row[c]));
  // Merge: warps by shuffles, then the first warp over the warps' results.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = merge(st, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) warpStats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < warps ? warpStats[lane] : MaxSum{-MT_FLT_MAX, 0.f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      MaxSum other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
      st = merge(st, other);
    }
    if (lane == 0) {
      const float l = st.m + logf(st.s);
      const int label = labels[n];
      lse[n] = l;
      loss[n] = label < 0 ? 0.f : (label >= V ? MT_NAN : l - to_f32(row[label]));
    }
  }
}

template <typename A, typename B> struct SameType { static constexpr bool value = false; };
template <typename A> struct SameType<A, A> { static constexpr bool value = true; };

template <typename TO, typename TL>
__device__ __forceinline__ void ce_bwd(TO* dlogits, const TL* logits, const int* __restrict__ labels, const float* __restrict__ lse,
                                       const float* __restrict__ dloss, float scale, int V) {
  const long long n = blockIdx.x;
  const TL* row = logits + n * V;
  TO* out = dlogits + n * V;
  const int label = labels[n];
  if (label < 0) {
    for (int c = threadIdx.x; c < V; c += blockDim.x) out[c] = from_f32<TO>(0.f);
    return;
  }
  const float g = dloss[0] * scale, l = lse[n];
  int head = V, body = 0;
  constexpr int N = Vec16<TL>::N;
  if (SameType<TO, TL>::value) {
    head = head_to_align16(row, V);
    if (head_to_align16(out, V) != head) head = V;  // different alignment: scalar path throughout
    body = (V - head) / N;
  }
  for (int c = threadIdx.x; c < head; c += blockDim.x)
    out[c] = from_f32<TO>(g * (__expf(to_f32(row[c]) - l) - (c == label ? 1.f : 0.f)));
  if (SameType<TO, TL>::value) {
    for (int b = threadIdx.x; b < body; b += blockDim.x) {
      const int c0 = head + b * N;
      float v[N];
      load16(row + c0, v);
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = g * (__expf(v[i] - l) - (c0 + i == label ? 1.f : 0.f));
      store16(reinterpret_cast<TL*>(out) + c0, v);
    }
  }
  for (int c = head + body * N + threadIdx.x; c < V; c += blockDim.x)
    out[c] = from_f32<TO>(g * (__expf(to_f32(row[c]) - l) - (c == label ? 1.f : 0.f)));
}

#define MT_CE_FWD(TL)                                                                                               \
  extern "C" __global__ void __launch_bounds__(CE_THREADS) cross_entropy_fwd_##TL(float* loss, float* lse,          \
                                                                                  const TL* logits, const int* labels, int V) { \
    ce_fwd<TL>(loss, lse, logits, labels, V);                                                                       \
  }
#define MT_CE_BWD(TO, TL)                                                                                           \
  extern "C" __global__ void __launch_bounds__(CE_THREADS) cross_entropy_bwd_##TO##_##TL(                           \
      TO* dlogits, const TL* logits, const int* labels, const float* lse, const float* dloss, float scale, int V) { \
    ce_bwd<TO, TL>(dlogits, logits, labels, lse, dloss, scale, V);                                                  \
  }
MT_FLOAT_TYPES1(MT_CE_FWD)
MT_FLOAT_TYPES2(MT_CE_BWD)
