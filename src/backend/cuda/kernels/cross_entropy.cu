// Softmax cross-entropy over a large vocabulary, f32 statistics. One block per row; each thread
// keeps an online (max, sum) pair over its share of the row, read with 16-byte loads (8 bf16 or
// 4 f32) between a scalar head and tail that align the row; the pairs are merged across the block.
// Forward: lse[n] = log Σ_v exp(x[n,v]); loss[n] = lse[n] − x[n,label[n]], 0 where label < 0
// (lse is still written), NaN where label ≥ V.
// Backward: dlogits[n] = dloss[0]·scale·(softmax(x[n]) − onehot(label[n])), 0 for ignored rows;
// dlogits may be the logits buffer itself (each element is read before it is written).
// Forward with gradient (cross_entropy_with_grad): both in one block per row, for a loss whose
// upstream gradient is applied later (ops/linear_cross_entropy.ts with kept logits): the forward's
// statistics pass, then the backward's pass with dloss = 1, over the same row. The row's aligned
// body is kept in dynamic shared memory by the first pass (V·2 bytes: 200 KiB at V = 102400 in
// bf16, within Hopper's 227 KiB) so the second reads it from there, not from HBM again; when it
// does not fit (f32 logits at that V) the launcher passes 0 bytes and the second pass reads the
// row again. Same operations in the same order as the two kernels: the same bits.
// Floors (N=8192, V=102400, bf16): forward reads 1.68 GB ≈ 0.56 ms; backward reads and writes
// 3.36 GB ≈ 1.12 ms; forward with gradient reads and writes 3.36 GB ≈ 1.12 ms, where the two
// kernels move 5.04 GB. __expf (ex2.approx) keeps the exponentials off the critical path.
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

// One 16-byte vector of the row into a thread's (max, sum): its max first, then its exponentials.
template <int N>
__device__ __forceinline__ void ce_add_vector(MaxSum& st, const float* v) {
  float m = st.m;
#pragma unroll
  for (int i = 0; i < N; ++i) m = fmaxf(m, v[i]);
  float s = st.s * __expf(st.m - m);
#pragma unroll
  for (int i = 0; i < N; ++i) s += __expf(v[i] - m);
  st = MaxSum{m, s};
}

// The forward's statistics of row n (loss[n], lse[n]); returns lse[n] to every thread. cache:
// where the row's aligned body goes (its vector b at cache + b·N), or null.
template <typename TL>
__device__ __forceinline__ float ce_fwd(float* __restrict__ loss, float* __restrict__ lse, const TL* logits,
                                        const int* __restrict__ labels, int V, TL* cache) {
  __shared__ MaxSum warpStats[32];
  __shared__ float rowLse;
  constexpr int N = Vec16<TL>::N;
  const long long n = blockIdx.x;
  const TL* row = logits + n * V;
  MaxSum st{-MT_FLT_MAX, 0.f};
  const int head = head_to_align16(row, V);
  const int body = (V - head) / N;
  for (int c = threadIdx.x; c < head; c += blockDim.x) add_one(st, to_f32(row[c]));
  // AHEAD vectors a thread are loaded before any is added (in the same order as one at a time,
  // so the same bits): with the row cache the kernel runs one block per SM, and one load in flight
  // per thread left pass 1 at about half of HBM's bandwidth (cross_entropy_with_grad measured
  // 1.81 ms on an H100 at N = 8192, V = 102400, against the two kernels' 1.69; with four ahead
  // 1.48 ms, 2026-12-08, against the 1.12 ms floor).
  constexpr int AHEAD = 4;
  const TL* body0 = row + head;
  int b = threadIdx.x;
  for (; b + (AHEAD - 1) * (int)blockDim.x < body; b += AHEAD * blockDim.x) {
    uint4 raw[AHEAD];
#pragma unroll
    for (int u = 0; u < AHEAD; ++u) raw[u] = *reinterpret_cast<const uint4*>(body0 + (b + u * blockDim.x) * N);
#pragma unroll
    for (int u = 0; u < AHEAD; ++u) {
      TL* at = cache ? cache + (b + u * blockDim.x) * N : nullptr;
      if (at) *reinterpret_cast<uint4*>(at) = raw[u];
      float v[N];
      load16(reinterpret_cast<const TL*>(&raw[u]), v);
      ce_add_vector<N>(st, v);
    }
  }
  for (; b < body; b += blockDim.x) {
    float v[N];
    const uint4 raw = *reinterpret_cast<const uint4*>(body0 + b * N);
    if (cache) *reinterpret_cast<uint4*>(cache + b * N) = raw;
    load16(reinterpret_cast<const TL*>(&raw), v);
    ce_add_vector<N>(st, v);
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
      rowLse = l;
    }
  }
  __syncthreads();
  return rowLse;
}

template <typename A, typename B> struct SameType { static constexpr bool value = false; };
template <typename A> struct SameType<A, A> { static constexpr bool value = true; };

// The backward of row n with lse l and gradient factor g. cache: the row's aligned body as
// ce_fwd left it (read from there instead of the row), or null; only passed when out and the row
// share their alignment.
template <typename TO, typename TL>
__device__ __forceinline__ void ce_bwd_row(TO* dlogits, const TL* logits, int label, float l, float g, int V, const TL* cache) {
  const long long n = blockIdx.x;
  const TL* row = logits + n * V;
  TO* out = dlogits + n * V;
  if (label < 0) {
    for (int c = threadIdx.x; c < V; c += blockDim.x) out[c] = from_f32<TO>(0.f);
    return;
  }
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
      if (cache) load16(cache + b * N, v);
      else load16(row + c0, v);
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = g * (__expf(v[i] - l) - (c0 + i == label ? 1.f : 0.f));
      store16(reinterpret_cast<TL*>(out) + c0, v);
    }
  }
  for (int c = head + body * N + threadIdx.x; c < V; c += blockDim.x)
    out[c] = from_f32<TO>(g * (__expf(to_f32(row[c]) - l) - (c == label ? 1.f : 0.f)));
}

// The row's cache in dynamic shared memory (cache_bytes > 0: at least its aligned body).
template <typename TL>
__device__ __forceinline__ TL* ce_cache(int cache_bytes) {
  extern __shared__ __align__(16) unsigned char ce_shared[];
  return cache_bytes > 0 ? reinterpret_cast<TL*>(ce_shared) : nullptr;
}

#define MT_CE_FWD(TL)                                                                                               \
  extern "C" __global__ void __launch_bounds__(CE_THREADS) cross_entropy_fwd_##TL(float* loss, float* lse,          \
                                                                                  const TL* logits, const int* labels, int V) { \
    ce_fwd<TL>(loss, lse, logits, labels, V, nullptr);                                                              \
  }
#define MT_CE_BWD(TO, TL)                                                                                           \
  extern "C" __global__ void __launch_bounds__(CE_THREADS) cross_entropy_bwd_##TO##_##TL(                           \
      TO* dlogits, const TL* logits, const int* labels, const float* lse, const float* dloss, float scale, int V) { \
    const long long n = blockIdx.x;                                                                                 \
    ce_bwd_row<TO, TL>(dlogits, logits, labels[n], lse[n], dloss[0] * scale, V, nullptr);                           \
  }
// dlogits may be logits: every element is read (first pass) before the barrier in ce_fwd, and
// in the second pass each is read and then written by the same thread.
#define MT_CE_WITH_GRAD(TL)                                                                                         \
  extern "C" __global__ void __launch_bounds__(CE_THREADS) cross_entropy_with_grad_##TL(                            \
      float* loss, float* lse, TL* dlogits, const TL* logits, const int* labels, float scale, int V, int cache_bytes) { \
    TL* cache = ce_cache<TL>(cache_bytes);                                                                          \
    const float l = ce_fwd<TL>(loss, lse, logits, labels, V, cache);                                               \
    /* ce_bwd's factor with dloss = 1: 1·scale. */                                                                  \
    ce_bwd_row<TL, TL>(dlogits, logits, labels[blockIdx.x], l, 1.f * scale, V, cache);                              \
  }
MT_FLOAT_TYPES1(MT_CE_FWD)
MT_FLOAT_TYPES2(MT_CE_BWD)
MT_FLOAT_TYPES1(MT_CE_WITH_GRAD)
