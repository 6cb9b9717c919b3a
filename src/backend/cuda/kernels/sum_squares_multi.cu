// Σ x² over every tensor of a list (the device table of multi_tensor.cuh, one address per
// entry), deterministically: sum_squares_multi_<T> leaves one f32 partial per block (block b
// sums chunks b, b + gridDim.x, … in a fixed thread order), and sum_squares_multi_final adds
// the partials in a fixed order into out[0] with one block. No float atomics, so the same
// inputs give the same bits on every run (on one GPU model: the grid follows its SM count).
// Floor: bytes of the list / ~3 TB/s (2.255B f32 gradients: 9 GB ≈ 3.0 ms on an H100).
#include "common.cuh"
#include "multi_tensor.cuh"

template <typename T>
__device__ __forceinline__ void sum_squares_multi_body(const MtEntry* __restrict__ entries, const int* __restrict__ chunk_entry,
                                                       int num_chunks, float* __restrict__ partials) {
  __shared__ float scratch[32];
  float s = 0.f;
  for (int c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const MtChunk k = mt_chunk(entries, chunk_entry, c);
    const T* __restrict__ x = reinterpret_cast<const T*>(k.e->ptr[0]) + k.start;
    int done = 0;
    if (k.e->flags & MT_FLAG_VEC16) {
      const int groups = k.len / 4;
      for (int j = threadIdx.x; j < groups; j += blockDim.x) {
        float v[4];
        load4(x + 4 * j, v);
#pragma unroll
        for (int e = 0; e < 4; ++e) s = fmaf(v[e], v[e], s);
      }
      done = groups * 4;
    }
    for (int i = done + threadIdx.x; i < k.len; i += blockDim.x) {
      const float v = to_f32(x[i]);
      s = fmaf(v, v, s);
    }
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

#define MT_SUM_SQUARES_MULTI(T)                                                                                   \
  extern "C" __global__ void sum_squares_multi_##T(const MtEntry* entries, const int* chunk_entry, int num_chunks, \
                                                   float* partials) {                                             \
    sum_squares_multi_body<T>(entries, chunk_entry, num_chunks, partials);                                       \
  }
MT_FLOAT_TYPES1(MT_SUM_SQUARES_MULTI)

/**
 * out[0] = Σ partials[0..count), one block, each thread a fixed strided share (i, i + blockDim,
 * …, added in that order), then block_sum. The loads of 8 consecutive terms of a thread's share
 * are issued before any is added: one add per load chained on its load cost ~40 µs for the tma
 * weight product's ~49K partials (96 L2 round trips a thread, measured on an H100 as 9 launches
 * of 0.35 ms in all); the additions keep their order, so the sum's bits do not change.
 */
extern "C" __global__ void sum_squares_multi_final(float* out, const float* partials, int count) {
  __shared__ float scratch[32];
  constexpr int AHEAD = 8;
  float s = 0.f;
  int i = threadIdx.x;
  for (; i + (AHEAD - 1) * static_cast<int>(blockDim.x) < count; i += AHEAD * blockDim.x) {
    float v[AHEAD];
#pragma unroll
    for (int k = 0; k < AHEAD; ++k) v[k] = partials[i + k * blockDim.x];
#pragma unroll
    for (int k = 0; k < AHEAD; ++k) s += v[k];
  }
  for (; i < count; i += blockDim.x) s += partials[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = s;
}
