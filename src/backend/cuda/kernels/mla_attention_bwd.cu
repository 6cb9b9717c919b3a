// MLA attention backward, FlashAttention-2 style on mma.sync (sm_80 and later). Layouts as in
// mla_attention_fwd.cu (q, dout, o: Sq positions; k, v: Skv; Sq ≠ Skv only without the causal
// mask); every gradient has its input's layout, and dk_pe [B,Skv,1,64] is summed over heads. With P = softmax(scale·Q·Kᵀ) (recomputed from lse) and D = rowsum(dO∘O):
//   dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P∘(dP − D),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q
//
// Kernels, in launch order:
//   mla_attention_bwd_preprocess  D, and zeroes the f32 accumulators the next kernel adds into
//   mla_attention_bwd_dkdv        one block per (64-key tile, head, batch): dK, dV in registers
//                                 over all query tiles; dQ added into an f32 buffer with
//                                 atomics (fast mode) or skipped (deterministic mode)
//   mla_attention_bwd_dq          deterministic mode only: one block per (64-query tile, head,
//                                 batch) recomputes dS and accumulates dQ in registers
//   mla_attention_bwd_finish      f32 dQ → bf16 dq_nope/dq_pe (fast mode); dk_pe summed over
//                                 heads → bf16 (atomics in fast mode, per-head rows added in a
//                                 fixed order in deterministic mode)
#include "mla_attention_common.cuh"

// The launch shapes: -D defines from ops/mla_attention.ts (MLA_BWD_DEFINES), which launches
// with them: MLA_BWD_THREADS (dkdv, dq), MLA_BWD_PRE_THREADS (preprocess: one warp per row),
// MLA_BWD_FINISH_THREADS, and the dynamic shared memory of dkdv and dq, MLA_BWD_DKDV_SMEM and
// MLA_BWD_DQ_SMEM, which must equal the layouts below.
#if !defined(MLA_BWD_THREADS) || !defined(MLA_BWD_PRE_THREADS) || !defined(MLA_BWD_FINISH_THREADS) || \
    !defined(MLA_BWD_DKDV_SMEM) || !defined(MLA_BWD_DQ_SMEM)
#error "MLA_BWD_THREADS, _PRE_THREADS, _FINISH_THREADS, _DKDV_SMEM and _DQ_SMEM are set by ops/mla_attention.ts (MLA_BWD_DEFINES)"
#endif

namespace mla {
constexpr int BWD_THREADS = MLA_BWD_THREADS;
// Warp w of dkdv and dq owns rows 16·(w%4) of a tile and half w/4 of the columns.
static_assert(BWD_THREADS == 8 * 32 && TILE == 4 * 16, "eight warps: four 16-row slices of a 64-row tile × two column halves");
// dkdv: K, V, two Q tiles, two dO tiles, Pᵀ, dSᵀ (bf16), then lse·log2(e) and D for two tiles.
constexpr int DKDV_SMEM_BYTES =
    (3 * TILE * QK_STRIDE + 3 * TILE * V_STRIDE + 2 * TILE * P_STRIDE) * 2 + 4 * TILE * 4;
// dq: Q, dO, two K tiles, two V tiles, dS.
constexpr int DQ_SMEM_BYTES = (3 * TILE * QK_STRIDE + 3 * TILE * V_STRIDE + TILE * P_STRIDE) * 2;
// Both fit the 163 KB an sm_80 block may opt into.
static_assert(DKDV_SMEM_BYTES == MLA_BWD_DKDV_SMEM && DQ_SMEM_BYTES == MLA_BWD_DQ_SMEM,
              "MLA_BWD_DKDV_SMEM / MLA_BWD_DQ_SMEM (the launches' shared memory) must match these layouts");

__device__ __forceinline__ void red_add_f32x2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}
}  // namespace mla

using namespace mla;

// D[b,h,s] = Σ_d dO·O over the 128 value columns; one warp per (b,s,h) query row (rows =
// B·Sq·H). Also zeroes dq_accum [B,Sq,H,192] and the dkpe_count floats of dkpe_accum [B,Skv,64]
// (either may be null; the key positions need not match the query rows, so dkpe_accum is
// zeroed by a grid-stride loop over every thread of the launch).
extern "C" __global__ void __launch_bounds__(MLA_BWD_PRE_THREADS)
mla_attention_bwd_preprocess(const bf16_t* __restrict__ o, const bf16_t* __restrict__ dout, float* __restrict__ d_sum,
                             float* __restrict__ dq_accum, float* __restrict__ dkpe_accum, int rows, int Sq, int H,
                             long long dkpe_count) {
  const int lane = threadIdx.x & 31;
  if (dkpe_accum) {
    const long long threads = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < dkpe_count; i += threads) dkpe_accum[i] = 0.f;
  }
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int h = static_cast<int>(row % H);
  const long long bs = row / H;
  const int s = static_cast<int>(bs % Sq);
  const long long b = bs / Sq;
  const uint2 ov = *reinterpret_cast<const uint2*>(o + row * D_V + lane * 4);
  const uint2 dv = *reinterpret_cast<const uint2*>(dout + row * D_V + lane * 4);
  float acc = bf16_to_f32(ov.x & 0xffff) * bf16_to_f32(dv.x & 0xffff) + bf16_to_f32(ov.x >> 16) * bf16_to_f32(dv.x >> 16) +
              bf16_to_f32(ov.y & 0xffff) * bf16_to_f32(dv.y & 0xffff) + bf16_to_f32(ov.y >> 16) * bf16_to_f32(dv.y >> 16);
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) d_sum[(b * H + h) * Sq + s] = acc;
  if (dq_accum) {
    #pragma unroll
    for (int i = 0; i < D_QK / 32; i++) dq_accum[row * D_QK + lane + 32 * i] = 0.f;
  }
}

// One block per (64-key tile n, head h, batch b). Warp w owns keys 16·(w%4).. of the tile for
// Sᵀ, dPᵀ, dV, dK (value / qk columns split in halves by w/4) and queries 16·(w%4).. for dQ.
// dq_accum null: dQ is left to mla_attention_bwd_dq. dkpe_per_head: 0 adds dk_pe into
// dkpe_f32 [B,Skv,64] with atomics; 1 stores this head's part into dkpe_f32 [B,Skv,H,64].
extern "C" __global__ void __launch_bounds__(BWD_THREADS, 1)
mla_attention_bwd_dkdv(const bf16_t* __restrict__ q_nope, const bf16_t* __restrict__ q_pe,
                       const bf16_t* __restrict__ k_nope, const bf16_t* __restrict__ k_pe,
                       const bf16_t* __restrict__ v, const bf16_t* __restrict__ dout,
                       const float* __restrict__ lse, const float* __restrict__ d_sum,
                       bf16_t* __restrict__ dk_nope, bf16_t* __restrict__ dv, float* __restrict__ dq_accum,
                       float* __restrict__ dkpe_f32, int Sq, int Skv, int H, float scale, int causal, int dkpe_per_head) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sV = sK + TILE * QK_STRIDE;
  bf16_t* sQ = sV + TILE * V_STRIDE;          // [2][TILE][QK_STRIDE]
  bf16_t* sdO = sQ + 2 * TILE * QK_STRIDE;    // [2][TILE][V_STRIDE]
  bf16_t* sPt = sdO + 2 * TILE * V_STRIDE;    // [key][query]
  bf16_t* sdSt = sPt + TILE * P_STRIDE;       // [key][query]
  float* sLse = reinterpret_cast<float*>(sdSt + TILE * P_STRIDE);  // [2][TILE], times log2(e)
  float* sD = sLse + 2 * TILE;                                     // [2][TILE]
  const u32 aK = smem_addr(sK), aV = smem_addr(sV), aQ = smem_addr(sQ), adO = smem_addr(sdO);
  const u32 aPt = smem_addr(sPt), adSt = smem_addr(sdSt);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int w4 = warp & 3, half = warp >> 2;
  const int num_tiles = (Sq + TILE - 1) / TILE;  // query tiles
  const int n = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int k0 = n * TILE;

  const long long HS = static_cast<long long>(H);
  const long long row_bsh0 = static_cast<long long>(b) * Sq * H + h;   // (b, s=0, h) query row
  const long long krow_bsh0 = static_cast<long long>(b) * Skv * H + h;  // (b, s=0, h) key row
  const bf16_t* qn = q_nope + row_bsh0 * D_NOPE;
  const bf16_t* qp = q_pe + row_bsh0 * D_ROPE;
  const bf16_t* dog = dout + row_bsh0 * D_V;
  const float* lse_bh = lse + (static_cast<long long>(b) * H + h) * Sq;
  const float* d_bh = d_sum + (static_cast<long long>(b) * H + h) * Sq;

  load_tile_qk<BWD_THREADS>(aK, k_nope + (krow_bsh0 + k0 * HS) * D_NOPE, HS * D_NOPE,
                            k_pe + (static_cast<long long>(b) * Skv + k0) * D_ROPE, D_ROPE, Skv - k0, tid);
  load_tile_v<BWD_THREADS>(aV, v + (krow_bsh0 + k0 * HS) * D_V, HS * D_V, Skv - k0, tid);

  const int m_begin = causal ? n : 0;
  auto load_query_tile = [&](int m, int buf) {
    const int q0 = m * TILE;
    load_tile_qk<BWD_THREADS>(aQ + buf * TILE * QK_STRIDE * 2, qn + q0 * HS * D_NOPE, HS * D_NOPE, qp + q0 * HS * D_ROPE,
                              HS * D_ROPE, Sq - q0, tid);
    load_tile_v<BWD_THREADS>(adO + buf * TILE * V_STRIDE * 2, dog + q0 * HS * D_V, HS * D_V, Sq - q0, tid);
    // Rows past the end get lse = +inf, so their P is exactly 0.
    if (tid < TILE) sLse[buf * TILE + tid] = q0 + tid < Sq ? lse_bh[q0 + tid] * LOG2E : inf_f32();
    else if (tid < 2 * TILE) sD[buf * TILE + tid - TILE] = q0 + tid - TILE < Sq ? d_bh[q0 + tid - TILE] : 0.f;
  };
  load_query_tile(m_begin, 0);
  cp_async_commit();

  const float scale_log2 = scale * LOG2E;
  float acc_dv[D_V / 2 / 8][4];   // keys 16·w4.., value columns 64·half..
  float acc_dk[D_QK / 2 / 8][4];  // keys 16·w4.., qk columns 96·half..
  #pragma unroll
  for (int j = 0; j < D_V / 16; j++) acc_dv[j][0] = acc_dv[j][1] = acc_dv[j][2] = acc_dv[j][3] = 0.f;
  #pragma unroll
  for (int j = 0; j < D_QK / 16; j++) acc_dk[j][0] = acc_dk[j][1] = acc_dk[j][2] = acc_dk[j][3] = 0.f;

  for (int m = m_begin; m < num_tiles; m++) {
    const int buf = (m - m_begin) & 1;
    if (m + 1 < num_tiles) {
      load_query_tile(m + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const u32 tQ = aQ + buf * TILE * QK_STRIDE * 2;
    const u32 tdO = adO + buf * TILE * V_STRIDE * 2;
    const float* tLse = sLse + buf * TILE;
    const float* tD = sD + buf * TILE;
    const int q0 = m * TILE;

    // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ: this warp's 16 keys × 32 queries.
    float acc_s[4][4], acc_dp[4][4];
    #pragma unroll
    for (int j = 0; j < 4; j++)
      #pragma unroll
      for (int e = 0; e < 4; e++) acc_s[j][e] = acc_dp[j][e] = 0.f;
    #pragma unroll
    for (int kk = 0; kk < D_QK / 16; kk++) {
      u32 a[4], bq[4], bq2[4];
      load_a(a, aK, QK_STRIDE, w4 * 16, kk * 16, lane);
      load_b_nk(bq, tQ, QK_STRIDE, half * 32, kk * 16, lane);
      load_b_nk(bq2, tQ, QK_STRIDE, half * 32 + 16, kk * 16, lane);
      mma16816(acc_s[0], a, bq[0], bq[1]);
      mma16816(acc_s[1], a, bq[2], bq[3]);
      mma16816(acc_s[2], a, bq2[0], bq2[1]);
      mma16816(acc_s[3], a, bq2[2], bq2[3]);
    }
    #pragma unroll
    for (int kk = 0; kk < D_V / 16; kk++) {
      u32 a[4], bo[4], bo2[4];
      load_a(a, aV, V_STRIDE, w4 * 16, kk * 16, lane);
      load_b_nk(bo, tdO, V_STRIDE, half * 32, kk * 16, lane);
      load_b_nk(bo2, tdO, V_STRIDE, half * 32 + 16, kk * 16, lane);
      mma16816(acc_dp[0], a, bo[0], bo[1]);
      mma16816(acc_dp[1], a, bo[2], bo[3]);
      mma16816(acc_dp[2], a, bo2[0], bo2[1]);
      mma16816(acc_dp[3], a, bo2[2], bo2[3]);
    }

    // Pᵀ and dSᵀ = Pᵀ∘(dPᵀ − D) to shared memory as bf16 [key][query].
    const bool need_mask = (causal && m == n) || k0 + TILE > Skv;
    #pragma unroll
    for (int j = 0; j < 4; j++)
      #pragma unroll
      for (int r = 0; r < 2; r++) {
        const int key_l = w4 * 16 + g + r * 8;
        const int q_l = half * 32 + j * 8 + 2 * t;
        float p0 = fast_exp2(acc_s[j][2 * r] * scale_log2 - tLse[q_l]);
        float p1 = fast_exp2(acc_s[j][2 * r + 1] * scale_log2 - tLse[q_l + 1]);
        if (need_mask) {
          const int key = k0 + key_l, query = q0 + q_l;
          if (key >= Skv || (causal && query < key)) p0 = 0.f;
          if (key >= Skv || (causal && query + 1 < key)) p1 = 0.f;
        }
        const float ds0 = p0 * (acc_dp[j][2 * r] - tD[q_l]);
        const float ds1 = p1 * (acc_dp[j][2 * r + 1] - tD[q_l + 1]);
        *reinterpret_cast<u32*>(sPt + key_l * P_STRIDE + q_l) = pack_bf16x2(p0, p1);
        *reinterpret_cast<u32*>(sdSt + key_l * P_STRIDE + q_l) = pack_bf16x2(ds0, ds1);
      }
    __syncthreads();

    // dV += Pᵀ·dO and dK += dSᵀ·Q over this tile's 64 queries.
    #pragma unroll
    for (int kk = 0; kk < TILE / 16; kk++) {
      u32 ap[4], ads[4];
      load_a(ap, aPt, P_STRIDE, w4 * 16, kk * 16, lane);
      load_a(ads, adSt, P_STRIDE, w4 * 16, kk * 16, lane);
      #pragma unroll
      for (int j = 0; j < D_V / 2 / 16; j++) {
        u32 bf[4];
        load_b_kn(bf, tdO, V_STRIDE, kk * 16, half * 64 + j * 16, lane);
        mma16816(acc_dv[2 * j], ap, bf[0], bf[1]);
        mma16816(acc_dv[2 * j + 1], ap, bf[2], bf[3]);
      }
      #pragma unroll
      for (int j = 0; j < D_QK / 2 / 16; j++) {
        u32 bf[4];
        load_b_kn(bf, tQ, QK_STRIDE, kk * 16, half * 96 + j * 16, lane);
        mma16816(acc_dk[2 * j], ads, bf[0], bf[1]);
        mma16816(acc_dk[2 * j + 1], ads, bf[2], bf[3]);
      }
    }

    // dQ (unscaled) = dS·K for queries 16·w4.., columns 96·half.., added into dq_accum.
    if (dq_accum) {
      float acc_dq[D_QK / 2 / 8][4];
      #pragma unroll
      for (int j = 0; j < D_QK / 16; j++) acc_dq[j][0] = acc_dq[j][1] = acc_dq[j][2] = acc_dq[j][3] = 0.f;
      #pragma unroll
      for (int kk = 0; kk < TILE / 16; kk++) {
        u32 a[4];
        load_a_t(a, adSt, P_STRIDE, w4 * 16, kk * 16, lane);
        #pragma unroll
        for (int j = 0; j < D_QK / 2 / 16; j++) {
          u32 bf[4];
          load_b_kn(bf, aK, QK_STRIDE, kk * 16, half * 96 + j * 16, lane);
          mma16816(acc_dq[2 * j], a, bf[0], bf[1]);
          mma16816(acc_dq[2 * j + 1], a, bf[2], bf[3]);
        }
      }
      #pragma unroll
      for (int r = 0; r < 2; r++) {
        const int query = q0 + w4 * 16 + g + r * 8;
        if (query < Sq) {
          float* dst = dq_accum + (row_bsh0 + query * HS) * D_QK + half * 96 + 2 * t;
          #pragma unroll
          for (int j = 0; j < D_QK / 2 / 8; j++) red_add_f32x2(dst + j * 8, acc_dq[j][2 * r], acc_dq[j][2 * r + 1]);
        }
      }
    }
    __syncthreads();  // the next iteration's loads overwrite the buffers just read
  }

  // Epilogue: dK (scaled) → dk_nope bf16 and the f32 dk_pe part; dV → bf16.
  #pragma unroll
  for (int r = 0; r < 2; r++) {
    const int key = k0 + w4 * 16 + g + r * 8;
    if (key >= Skv) continue;
    const long long row = krow_bsh0 + key * HS;
    #pragma unroll
    for (int j = 0; j < D_V / 2 / 8; j++)
      *reinterpret_cast<u32*>(dv + row * D_V + half * 64 + j * 8 + 2 * t) = pack_bf16x2(acc_dv[j][2 * r], acc_dv[j][2 * r + 1]);
    #pragma unroll
    for (int j = 0; j < D_QK / 2 / 8; j++) {
      const int col = half * 96 + j * 8 + 2 * t;
      const float x0 = acc_dk[j][2 * r] * scale, x1 = acc_dk[j][2 * r + 1] * scale;
      if (half * 96 + j * 8 < D_NOPE) {
        *reinterpret_cast<u32*>(dk_nope + row * D_NOPE + col) = pack_bf16x2(x0, x1);
      } else if (dkpe_per_head) {
        *reinterpret_cast<float2*>(dkpe_f32 + row * D_ROPE + col - D_NOPE) = make_float2(x0, x1);
      } else {
        red_add_f32x2(dkpe_f32 + (static_cast<long long>(b) * Skv + key) * D_ROPE + col - D_NOPE, x0, x1);
      }
    }
  }
}

// Deterministic dQ: one block per (64-query tile, head, batch), longest first. Warp w owns
// queries 16·(w%4).. and keys 32·(w/4).. of S and dP, and qk columns 96·(w/4).. of dQ.
extern "C" __global__ void __launch_bounds__(BWD_THREADS, 1)
mla_attention_bwd_dq(const bf16_t* __restrict__ q_nope, const bf16_t* __restrict__ q_pe,
                     const bf16_t* __restrict__ k_nope, const bf16_t* __restrict__ k_pe,
                     const bf16_t* __restrict__ v, const bf16_t* __restrict__ dout,
                     const float* __restrict__ lse, const float* __restrict__ d_sum,
                     bf16_t* __restrict__ dq_nope, bf16_t* __restrict__ dq_pe, int Sq, int Skv, int H, float scale, int causal) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sK = sQ + TILE * QK_STRIDE;         // [2][TILE][QK_STRIDE]
  bf16_t* sdO = sK + 2 * TILE * QK_STRIDE;
  bf16_t* sV = sdO + TILE * V_STRIDE;         // [2][TILE][V_STRIDE]
  bf16_t* sdS = sV + 2 * TILE * V_STRIDE;     // [query][key]
  const u32 aQ = smem_addr(sQ), aK = smem_addr(sK), adO = smem_addr(sdO), aV = smem_addr(sV), adS = smem_addr(sdS);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int w4 = warp & 3, half = warp >> 2;
  const int num_tiles = (Sq + TILE - 1) / TILE;  // query tiles
  const int m = num_tiles - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int q0 = m * TILE;

  const long long HS = static_cast<long long>(H);
  const long long row_bsh0 = static_cast<long long>(b) * Sq * H + h;   // (b, s=0, h) query row
  const long long krow_bsh0 = static_cast<long long>(b) * Skv * H + h;  // (b, s=0, h) key row
  const bf16_t* kn = k_nope + krow_bsh0 * D_NOPE;
  const bf16_t* kp = k_pe + static_cast<long long>(b) * Skv * D_ROPE;
  const bf16_t* vv = v + krow_bsh0 * D_V;

  load_tile_qk<BWD_THREADS>(aQ, q_nope + (row_bsh0 + q0 * HS) * D_NOPE, HS * D_NOPE,
                            q_pe + (row_bsh0 + q0 * HS) * D_ROPE, HS * D_ROPE, Sq - q0, tid);
  load_tile_v<BWD_THREADS>(adO, dout + (row_bsh0 + q0 * HS) * D_V, HS * D_V, Sq - q0, tid);
  load_tile_qk<BWD_THREADS>(aK, kn, HS * D_NOPE, kp, D_ROPE, Skv, tid);
  load_tile_v<BWD_THREADS>(aV, vv, HS * D_V, Skv, tid);
  cp_async_commit();

  float lse2[2], dsum[2];
  #pragma unroll
  for (int r = 0; r < 2; r++) {
    const int query = q0 + w4 * 16 + g + r * 8;
    const long long i = (static_cast<long long>(b) * H + h) * Sq + query;
    lse2[r] = query < Sq ? lse[i] * LOG2E : inf_f32();
    dsum[r] = query < Sq ? d_sum[i] : 0.f;
  }

  const float scale_log2 = scale * LOG2E;
  float acc_dq[D_QK / 2 / 8][4];
  #pragma unroll
  for (int j = 0; j < D_QK / 16; j++) acc_dq[j][0] = acc_dq[j][1] = acc_dq[j][2] = acc_dq[j][3] = 0.f;

  const int n_tiles = causal ? m + 1 : (Skv + TILE - 1) / TILE;
  for (int n = 0; n < n_tiles; n++) {
    const int buf = n & 1;
    if (n + 1 < n_tiles) {
      const int kn0 = (n + 1) * TILE;
      load_tile_qk<BWD_THREADS>(aK + (buf ^ 1) * TILE * QK_STRIDE * 2, kn + kn0 * HS * D_NOPE, HS * D_NOPE,
                                kp + static_cast<long long>(kn0) * D_ROPE, D_ROPE, Skv - kn0, tid);
      load_tile_v<BWD_THREADS>(aV + (buf ^ 1) * TILE * V_STRIDE * 2, vv + kn0 * HS * D_V, HS * D_V, Skv - kn0, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const u32 tK = aK + buf * TILE * QK_STRIDE * 2;
    const u32 tV = aV + buf * TILE * V_STRIDE * 2;
    const int k0 = n * TILE;

    float acc_s[4][4], acc_dp[4][4];
    #pragma unroll
    for (int j = 0; j < 4; j++)
      #pragma unroll
      for (int e = 0; e < 4; e++) acc_s[j][e] = acc_dp[j][e] = 0.f;
    #pragma unroll
    for (int kk = 0; kk < D_QK / 16; kk++) {
      u32 a[4], bk[4], bk2[4];
      load_a(a, aQ, QK_STRIDE, w4 * 16, kk * 16, lane);
      load_b_nk(bk, tK, QK_STRIDE, half * 32, kk * 16, lane);
      load_b_nk(bk2, tK, QK_STRIDE, half * 32 + 16, kk * 16, lane);
      mma16816(acc_s[0], a, bk[0], bk[1]);
      mma16816(acc_s[1], a, bk[2], bk[3]);
      mma16816(acc_s[2], a, bk2[0], bk2[1]);
      mma16816(acc_s[3], a, bk2[2], bk2[3]);
    }
    #pragma unroll
    for (int kk = 0; kk < D_V / 16; kk++) {
      u32 a[4], bv[4], bv2[4];
      load_a(a, adO, V_STRIDE, w4 * 16, kk * 16, lane);
      load_b_nk(bv, tV, V_STRIDE, half * 32, kk * 16, lane);
      load_b_nk(bv2, tV, V_STRIDE, half * 32 + 16, kk * 16, lane);
      mma16816(acc_dp[0], a, bv[0], bv[1]);
      mma16816(acc_dp[1], a, bv[2], bv[3]);
      mma16816(acc_dp[2], a, bv2[0], bv2[1]);
      mma16816(acc_dp[3], a, bv2[2], bv2[3]);
    }

    const bool need_mask = (causal && n == m) || k0 + TILE > Skv;
    #pragma unroll
    for (int j = 0; j < 4; j++)
      #pragma unroll
      for (int r = 0; r < 2; r++) {
        const int q_l = w4 * 16 + g + r * 8;
        const int key_l = half * 32 + j * 8 + 2 * t;
        float p0 = fast_exp2(acc_s[j][2 * r] * scale_log2 - lse2[r]);
        float p1 = fast_exp2(acc_s[j][2 * r + 1] * scale_log2 - lse2[r]);
        if (need_mask) {
          const int key = k0 + key_l, query = q0 + q_l;
          if (key >= Skv || (causal && query < key)) p0 = 0.f;
          if (key + 1 >= Skv || (causal && query < key + 1)) p1 = 0.f;
        }
        *reinterpret_cast<u32*>(sdS + q_l * P_STRIDE + key_l) =
            pack_bf16x2(p0 * (acc_dp[j][2 * r] - dsum[r]), p1 * (acc_dp[j][2 * r + 1] - dsum[r]));
      }
    __syncthreads();

    #pragma unroll
    for (int kk = 0; kk < TILE / 16; kk++) {
      u32 a[4];
      load_a(a, adS, P_STRIDE, w4 * 16, kk * 16, lane);
      #pragma unroll
      for (int j = 0; j < D_QK / 2 / 16; j++) {
        u32 bf[4];
        load_b_kn(bf, tK, QK_STRIDE, kk * 16, half * 96 + j * 16, lane);
        mma16816(acc_dq[2 * j], a, bf[0], bf[1]);
        mma16816(acc_dq[2 * j + 1], a, bf[2], bf[3]);
      }
    }
    __syncthreads();
  }

  #pragma unroll
  for (int r = 0; r < 2; r++) {
    const int query = q0 + w4 * 16 + g + r * 8;
    if (query >= Sq) continue;
    const long long row = row_bsh0 + query * HS;
    #pragma unroll
    for (int j = 0; j < D_QK / 2 / 8; j++) {
      const int col = half * 96 + j * 8 + 2 * t;
      const u32 x = pack_bf16x2(acc_dq[j][2 * r] * scale, acc_dq[j][2 * r + 1] * scale);
      if (half * 96 + j * 8 < D_NOPE) *reinterpret_cast<u32*>(dq_nope + row * D_NOPE + col) = x;
      else *reinterpret_cast<u32*>(dq_pe + row * D_ROPE + col - D_NOPE) = x;
    }
  }
}

// One block per flat position index bs (launched for the larger of B·Sq query and B·Skv key
// positions): for a query position, dq_accum (f32, unscaled; null in deterministic mode) →
// scaled bf16 dq_nope/dq_pe; for a key position, dk_pe = Σ_h of the f32 dk_pe parts → bf16.
extern "C" __global__ void __launch_bounds__(MLA_BWD_FINISH_THREADS)
mla_attention_bwd_finish(const float* __restrict__ dq_accum, bf16_t* __restrict__ dq_nope, bf16_t* __restrict__ dq_pe,
                         const float* __restrict__ dkpe_f32, bf16_t* __restrict__ dk_pe, int H, float scale,
                         int dkpe_per_head, int q_positions, int k_positions) {
  const long long bs = blockIdx.x;
  if (dq_accum && bs < q_positions) {
    for (int i = threadIdx.x; i < H * (D_QK / 2); i += blockDim.x) {
      const int h = i / (D_QK / 2), c = (i % (D_QK / 2)) * 2;
      const long long row = bs * H + h;
      const float2 x = *reinterpret_cast<const float2*>(dq_accum + row * D_QK + c);
      const u32 y = pack_bf16x2(x.x * scale, x.y * scale);
      if (c < D_NOPE) *reinterpret_cast<u32*>(dq_nope + row * D_NOPE + c) = y;
      else *reinterpret_cast<u32*>(dq_pe + row * D_ROPE + c - D_NOPE) = y;
    }
  }
  if (bs >= k_positions) return;
  for (int c = threadIdx.x; c < D_ROPE; c += blockDim.x) {
    float sum;
    if (dkpe_per_head) {
      sum = 0.f;
      for (int h = 0; h < H; h++) sum += dkpe_f32[(bs * H + h) * D_ROPE + c];
    } else {
      sum = dkpe_f32[bs * D_ROPE + c];
    }
    dk_pe[bs * D_ROPE + c] = static_cast<bf16_t>(pack_bf16x2(sum, 0.f) & 0xffff);
  }
}
