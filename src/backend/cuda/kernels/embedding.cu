// Embedding lookup: out[n] = weight[ids[n]] (ids i32 [N], weight [V,D], out [N,D]); an id outside
// [0, V) yields a NaN row so that a bad id shows up in the loss instead of reading stray memory.
// Backward: dweight (f32 [V,D]) += dout rows scattered by ids, with f32 atomicAdd (repeated ids
// collide; order of the additions is not deterministic). A bf16 dweight (the lean recipe's
// gradient) cannot take atomic adds with one rounding, so its rows are summed in an f32 workspace
// of one row per position, each id's sum in the row of its first use (embedding_first_use), and
// embedding_bwd_store_bf16 adds each sum to its row's stored value and rounds once: N·D·4 bytes of
// workspace (67 MB at 8192 tokens) instead of an f32 gradient of V·D (840 MB at V = 102400).
// Floors (N=8192, D=2048): forward reads and writes N·D elements: 67 MB bf16 ≈ 22 µs; backward
// reads dout and read-modify-writes N·D f32 of dweight: ≈ 100 MB ≈ 35 µs.
// The gradient norm's squares (autograd/grad_squares.ts): when the backward wrote a gradient that
// was zero, only the rows ids name can be nonzero, so Σ g² over the whole [V,D] gradient is Σ over
// those rows, each once: embedding_first_use marks each id's first position, and
// embedding_row_squares sums that position's row (one block a row, fixed order; the partials are
// added in position order by sum_squares_multi_final). It reads at most N·D·4 bytes (67 MB at the
// bench's 8192 tokens, ≈ 25 µs) where the norm's pass would read the whole gradient (840 MB at
// V = 102400, ≈ 0.28 ms on an H100).
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

// ws[first[ids[n]]] += dout[n] (ws f32 [N,D], zeroed; one row per first use of an id).
template <typename TD>
__device__ __forceinline__ void embedding_bwd_compact(float* ws, const int* __restrict__ ids, const int* __restrict__ first,
                                                      const TD* __restrict__ dout, long long total, int D, int V) {
  MT_GRID_STRIDE(i, total) {
    const long long n = i / D;
    const int d = (int)(i - n * D);
    const int id = ids[n];
    if (id >= 0 && id < V) atomicAdd(ws + (long long)first[id] * D + d, to_f32(dout[i]));
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
#define MT_EMBEDDING_BWD_COMPACT(TD)                                                                             \
  extern "C" __global__ void embedding_bwd_compact_##TD(float* ws, const int* ids, const int* first, const TD* dout, \
                                                        long long total, int D, int V) {                          \
    embedding_bwd_compact<TD>(ws, ids, first, dout, total, D, V);                                                 \
  }
MT_FLOAT_TYPES2(MT_EMBEDDING_FWD)
MT_FLOAT_TYPES1(MT_EMBEDDING_BWD)
MT_FLOAT_TYPES1(MT_EMBEDDING_BWD_COMPACT)

// first[id] = the smallest n with ids[n] = id (first is filled with INT_MAX beforehand).
extern "C" __global__ void embedding_first_use(int* first, const int* __restrict__ ids, int N, int V) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int id = ids[n];
  if (id >= 0 && id < V) atomicMin(first + id, n);
}

// Where n is the first use of its id (one block per n): dweight[id] = bf16(dweight[id] + ws[n]),
// rounded once; partials[n] = Σ_d of the stored row's squares when partials is not null (else 0 / unwritten).
extern "C" __global__ void embedding_bwd_store_bf16(bf16* dweight, const float* __restrict__ ws, const int* __restrict__ ids,
                                                    const int* __restrict__ first, float* partials, int D, int V) {
  __shared__ float scratch[32];
  const int n = blockIdx.x;
  const int id = ids[n];
  float s = 0.f;
  if (id >= 0 && id < V && first[id] == n) {
    bf16* row = dweight + (long long)id * D;
    const float* sum = ws + (long long)n * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      const bf16 stored = from_f32<bf16>(__fadd_rn(to_f32(row[d]), sum[d]));
      row[d] = stored;
      const float g = to_f32(stored);
      s = __fmaf_rn(g, g, s);
    }
  }
  if (partials == nullptr) return;  // uniform over the block
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partials[n] = s;
}

// partials[n] = Σ_d dweight[ids[n], d]² where n is the first use of its id, else 0 (one block per n).
extern "C" __global__ void embedding_row_squares(float* partials, const float* __restrict__ dweight, const int* __restrict__ ids,
                                                 const int* __restrict__ first, int D, int V) {
  __shared__ float scratch[32];
  const int n = blockIdx.x;
  const int id = ids[n];
  float s = 0.f;
  if (id >= 0 && id < V && first[id] == n) {
    const float* row = dweight + (long long)id * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) s = __fmaf_rn(row[d], row[d], s);
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partials[n] = s;
}
