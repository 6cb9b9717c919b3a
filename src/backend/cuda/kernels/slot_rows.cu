// The MoE's combine without atomics (Backend.sumSlotRows, sumSlotRowsBackward; ops/expert_rows.ts).
//
// sum_slot_rows: out[n] = Σ over token n's k slots with a row r = row_of_slot[n·k+j] ≥ 0 of
// w[r]·rows[r]. One block per token. Its first warp reads the k rows (lane j, slot j), ranks them
// by row index with k shuffles and leaves them in shared memory in increasing order; then each
// thread owns 8-element columns of the output row and adds the picked rows' columns in that
// order, in f32 (fused multiply-adds), storing once. The same order on every run (deterministic)
// and the order of the scatter-add over sorted rows it replaces (so the CPU reference is bit for
// bit the old composition). Unweighted (w = null) it is the dispatch's backward: dx[n] = Σ dxs[r].
//
// sum_slot_rows_bwd: one block per row m of token t: drows[m] = w[m]·dout[t] and
// dweights[m] = Σ_d dout[t,d]·rows[m,d] (f32 fused multiply-adds per thread, then a block sum):
// dout's row is read once for both.
//
// Rows whose width is a multiple of 8 (and 16-byte aligned bases) move in 16-byte accesses; any
// other width takes an element loop. A row index ≥ M in row_of_slot is skipped; a token outside
// [0,N) in token_of_row gives NaN outputs (as gather_rows.cu).
//
// Floors at the bench shape (N = 8192 tokens, k = 6, M = 49152 rows, D = 2048, bf16; ~3 TB/s):
//   sum_slot_rows:     M·D·2 read + N·D·2 written (+ 0.4 MB of row indices and weights)
//                      = 201 + 34 MB = 235 MB ≈ 0.08 ms, one launch. The path it replaces: an
//                      f32 [N,D] fill (67 MB), the atomic scatter-add reading 201 MB and updating
//                      the f32 rows (≥ 134 MB), the copy to bf16 (101 MB): ≈ 0.50 GB in three
//                      launches; scatter_add_rows.cu measured 0.79 ms at twice this M, so ~0.4 ms
//                      for its scatter here and ~0.47 ms in all.
//   sum_slot_rows_bwd: dout's rows M·D·2 (a token's row once per slot) + rows M·D·2 read, drows
//                      M·D·2 written = 604 MB ≈ 0.20 ms, one launch. The path it replaces: a
//                      weighted gather (403 MB), then per block of 8192 rows a gather, an f32
//                      product and a row sum (1.6 GB, part of it in L2): 1.0 to 2.0 GB in 19
//                      launches.
// Prediction per MoE layer at ~80% of the floor: forward 0.47 → ~0.10 ms (the combine), backward
// 0.47 → ~0.10 ms (the dispatch's backward) and 0.4–0.7 → ~0.25 ms (the combine's backward):
// ~0.35 ms saved forward and ~0.5–0.8 ms backward, ~1 ms and ~1.5–2.4 ms over 3 layers (bench
// train --profile's "router + dispatch": 3.1 ms forward, 5.5 ms backward before).
#include "common.cuh"

// -D define from ops/slot_rows.ts (SLOT_ROWS_DEFINES): SLOT_MAX_K, the most slots a token may
// have; one warp ranks them, so at most 32.
#if !defined(SLOT_MAX_K)
#error "SLOT_MAX_K is set by ops/slot_rows.ts (SLOT_ROWS_DEFINES)"
#endif
static_assert(SLOT_MAX_K >= 1 && SLOT_MAX_K <= 32, "one warp ranks a token's slots");

template <typename TO, typename TR>
__device__ __forceinline__ void sum_slot_rows(TO* __restrict__ out, const TR* __restrict__ rows, const int* __restrict__ row_of_slot,
                                              const float* __restrict__ weights, int M, int D, int k) {
  __shared__ int picked[SLOT_MAX_K];
  __shared__ float scale[SLOT_MAX_K];
  __shared__ int picked_count;
  const long long n = blockIdx.x;
  if (threadIdx.x < 32) {  // blockDim.x ≥ 32: the launcher's geometry
    const int lane = threadIdx.x;
    int r = lane < k ? row_of_slot[n * k + lane] : -1;
    if (r >= M) r = -1;
    // Rank among the valid rows; equal rows (not produced by a permutation) keep slot order.
    int rank = 0;
    for (int j = 0; j < k; ++j) {
      const int rj = __shfl_sync(0xffffffffu, r, j);
      rank += rj >= 0 && (rj < r || (rj == r && j < lane));
    }
    const unsigned valid = __ballot_sync(0xffffffffu, r >= 0);
    if (r >= 0) {
      picked[rank] = r;
      scale[rank] = weights == nullptr ? 1.f : weights[r];
    }
    if (lane == 0) picked_count = __popc(valid);
  }
  __syncthreads();
  const int c = picked_count;
  TO* o = out + n * D;
  if ((D & 7) == 0 && aligned16(out) && aligned16(rows)) {  // every row then starts 16-byte aligned
    for (int d8 = threadIdx.x; d8 < D / 8; d8 += blockDim.x) {
      float acc[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = 0.f;
#pragma unroll 3
      for (int j = 0; j < c; ++j) {
        float v[8];
        load8(rows + (long long)picked[j] * D + 8 * d8, v);
        const float w = scale[j];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = fmaf(w, v[i], acc[i]);
      }
      store8(o + 8 * d8, acc);
    }
    return;
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < c; ++j) acc = fmaf(scale[j], to_f32(rows[(long long)picked[j] * D + d]), acc);
    o[d] = from_f32<TO>(acc);
  }
}

template <typename TD, typename TG, typename TR>
__device__ __forceinline__ void sum_slot_rows_bwd(TD* __restrict__ drows, float* __restrict__ dweights, const TG* __restrict__ dout,
                                                  const TR* __restrict__ rows, const int* __restrict__ token_of_row,
                                                  const float* __restrict__ weights, int N, int D) {
  __shared__ float scratch[32];
  const long long m = blockIdx.x;
  const int t = token_of_row[m];
  if (t < 0 || t >= N) {
    if (drows != nullptr) for (int d = threadIdx.x; d < D; d += blockDim.x) drows[m * D + d] = from_f32<TD>(MT_NAN);
    if (dweights != nullptr && threadIdx.x == 0) dweights[m] = MT_NAN;
    return;
  }
  const float w = weights == nullptr ? 1.f : weights[m];
  const TG* g = dout + (long long)t * D;
  float dot = 0.f;
  if ((D & 7) == 0 && aligned16(dout) && (drows == nullptr || aligned16(drows)) && (dweights == nullptr || aligned16(rows))) {
    for (int d8 = threadIdx.x; d8 < D / 8; d8 += blockDim.x) {
      float gv[8];
      load8(g + 8 * d8, gv);
      if (drows != nullptr) {
        float v[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = w * gv[i];
        store8(drows + m * D + 8 * d8, v);
      }
      if (dweights != nullptr) {
        float yv[8];
        load8(rows + m * D + 8 * d8, yv);
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(gv[i], yv[i], dot);
      }
    }
  } else {
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      const float gd = to_f32(g[d]);
      if (drows != nullptr) drows[m * D + d] = from_f32<TD>(w * gd);
      if (dweights != nullptr) dot = fmaf(gd, to_f32(rows[m * D + d]), dot);
    }
  }
  if (dweights != nullptr) {  // the same for every thread of the block, so block_sum's barriers are safe
    dot = block_sum(dot, scratch);
    if (threadIdx.x == 0) dweights[m] = dot;
  }
}

#define MT_SUM_SLOT_ROWS(TO, TR)                                                                                      \
  extern "C" __global__ void sum_slot_rows_##TO##_##TR(TO* out, const TR* rows, const int* row_of_slot, const float* weights, \
                                                       int M, int D, int k) {                                         \
    sum_slot_rows<TO, TR>(out, rows, row_of_slot, weights, M, D, k);                                                  \
  }
MT_FLOAT_TYPES2(MT_SUM_SLOT_ROWS)

#define MT_SUM_SLOT_ROWS_BWD(TD, TG, TR)                                                                                   \
  extern "C" __global__ void sum_slot_rows_bwd_##TD##_##TG##_##TR(TD* drows, float* dweights, const TG* dout, const TR* rows, \
                                                                  const int* token_of_row, const float* weights, int N, int D) { \
    sum_slot_rows_bwd<TD, TG, TR>(drows, dweights, dout, rows, token_of_row, weights, N, D);                               \
  }
MT_FLOAT_TYPES3(MT_SUM_SLOT_ROWS_BWD)
