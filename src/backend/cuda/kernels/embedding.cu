// Embedding lookup: out[n] = weight[ids[n]] (ids i32 [N], weight [V,D], out [N,D]); an id outside
// [0, V) yields a NaN row so that a bad id shows up in the loss instead of reading stray memory.
// Backward: dweight (f32 [V,D]) += dout rows scattered by ids, with f32 atomicAdd (repeated ids
// collide; order of the additions is not deterministic).
// Floors (N=8192, D=2048): forward reads and writes N·D elements: 67 MB bf16 ≈ 22 µs; backward
// reads dout and read-modify-writes N·D f32 of dweight: ≈ 100 MB ≈ 35 µs.
#include "common.cuh"

template <typename TO, typename TW>
__device__ __forceinline__ void embedding_fwd(TO* __restrict__ out, const int* __restrict__ ids, const TW* __restrict__ weight,
                                              long long total, int D, int V) {
  MT_GRID_STRIDE(i, total) {
    const long long n = i / D;
    const int d = (int)(i - n * D);
    const int id = ids[n];
    out[i] = (id >= 0 && id < V) ? Convert<TO, TW>::run(weight[(long long)id * D + d]) : from_f32<TO>(MT_NAN);
  }
}

template <typename TD>
__device__ __forceinline__ void embedding_bwd(float* dweight, const int* __restrict__ ids, const TD* __restrict__ dout,
                                              long long total, int D, int V) {
  MT_GRID_STRIDE(i, total) {
    const long long n = i / D;
    const int d = (int)(i - n * D);
    const int id = ids[n];
    if (id >= 0 && id < V) atomicAdd(dweight + (long long)id * D + d, to_f32(dout[i]));
  }
}

#define MT_EMBEDDING_FWD(TO, TW)                                                                                 \
  extern "C" __global__ void embedding_fwd_##TO##_##TW(TO* out, const int* ids, const TW* weight, long long total, \
                                                       int D, int V) {                                            \
    embedding_fwd<TO, TW>(out, ids, weight, total, D, V);                                                         \
  }
#define MT_EMBEDDING_BWD(TD)                                                                                     \
  extern "C" __global__ void embedding_bwd_##TD(float* dweight, const int* ids, const TD* dout, long long total,  \
                                                int D, int V) {                                                  \
    embedding_bwd<TD>(dweight, ids, dout, total, D, V);                                                          \
  }
MT_FLOAT_TYPES2(MT_EMBEDDING_FWD)
MT_FLOAT_TYPES1(MT_EMBEDDING_BWD)
