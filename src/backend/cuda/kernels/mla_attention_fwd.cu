// MLA attention forward, FlashAttention-2 style on mma.sync (sm_80 and later; the portable
// path and the reference for faster Hopper kernels).
//
//   o[b,s,h,:] = Σ_j softmax_j(scale·(q_nope·k_nope + q_pe·k_pe[b,j])) · v[b,j,h,:]
//   lse[b,h,s] = natural log of that softmax's denominator (scaled scores)
//
// Layouts (elements, all contiguous): q_nope [B,Sq,H,128], q_pe [B,Sq,H,64]; k_nope [B,Skv,H,128],
// k_pe [B,Skv,1,64] shared by every head, v [B,Skv,H,128]; o [B,Sq,H,128] bf16; lse [B,H,Sq] f32.
// Sq ≠ Skv only without the causal mask (a ring attention block; the launcher checks). The
// 192-wide q and k are assembled in shared memory from their two parts, so no concatenated
// copy exists.
//
// One block of 4 warps per (query tile, head, batch); each warp owns MLA_FWD_MT × 16 query rows
// and runs the online softmax over key tiles of MLA_FWD_BN rows, K/V double-buffered through
// cp.async. Causal blocks are launched longest first (the last query tile has the most keys).
//
// Tile shape: two 16-row m-tiles per warp reuse every K/V fragment read from shared memory
// twice, which halves the shared-memory traffic per MMA (the limit of the one-m-tile shape:
// ~0.58 ldmatrix.x4 per MMA, against ~0.4 here); 32-key tiles keep the accumulators
// (2×64 for O, 2×16 for S) within the 255-register budget and two blocks fit per SM.
#include "mla_attention_common.cuh"

// The launch shape: -D defines from ops/mla_attention.ts (MLA_FWD_DEFINES), which launches
// with them; variant builds (bench/attention_harness.py) set MT, BN and LAZY_RESCALE otherwise.
//   MLA_FWD_THREADS        threads per block (warps of 16·MT query rows each)
//   MLA_FWD_MT             16-row m-tiles per warp
//   MLA_FWD_BN             key rows per tile
//   MLA_FWD_LAZY_RESCALE   1: skip rescaling O when no row of the warp has a new maximum
//   MLA_FWD_SMEM           dynamic shared memory of a launch; must equal FWD_SMEM_BYTES below
#if !defined(MLA_FWD_THREADS) || !defined(MLA_FWD_MT) || !defined(MLA_FWD_BN) || !defined(MLA_FWD_LAZY_RESCALE) || \
    !defined(MLA_FWD_SMEM)
#error "MLA_FWD_THREADS, _MT, _BN, _LAZY_RESCALE and _SMEM are set by ops/mla_attention.ts (MLA_FWD_DEFINES)"
#endif

namespace mla {
constexpr int FWD_THREADS = MLA_FWD_THREADS;
constexpr int FWD_WARPS = FWD_THREADS / 32;
constexpr int FWD_MT = MLA_FWD_MT;         // 16-row m-tiles per warp
constexpr int FWD_BM = FWD_WARPS * 16 * FWD_MT;  // query rows per block
constexpr int FWD_BN = MLA_FWD_BN;         // key rows per tile
// Shared memory: Q tile, then two K tiles, then two V tiles.
constexpr int FWD_SMEM_BYTES = (FWD_BM * QK_STRIDE + 2 * FWD_BN * QK_STRIDE + 2 * FWD_BN * V_STRIDE) * 2;
static_assert(FWD_THREADS % 32 == 0, "whole warps");
static_assert(FWD_SMEM_BYTES == MLA_FWD_SMEM, "MLA_FWD_SMEM (the launch's shared memory) must match this layout");
static_assert(FWD_BN % 16 == 0 && FWD_BN <= 64, "key tile: 16, 32, 48 or 64 rows");
}  // namespace mla

using namespace mla;

extern "C" __global__ void __launch_bounds__(FWD_THREADS, 2)
mla_attention_fwd(const bf16_t* __restrict__ q_nope, const bf16_t* __restrict__ q_pe,
                  const bf16_t* __restrict__ k_nope, const bf16_t* __restrict__ k_pe,
                  const bf16_t* __restrict__ v, bf16_t* __restrict__ o, float* __restrict__ lse,
                  int Sq, int Skv, int H, float scale, int causal) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sK = sQ + FWD_BM * QK_STRIDE;          // [2][FWD_BN][QK_STRIDE]
  bf16_t* sV = sK + 2 * FWD_BN * QK_STRIDE;      // [2][FWD_BN][V_STRIDE]
  const u32 aQ = smem_addr(sQ), aK = smem_addr(sK), aV = smem_addr(sV);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int num_q_tiles = (Sq + FWD_BM - 1) / FWD_BM;
  const int m_tile = num_q_tiles - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = m_tile * FWD_BM;

  const long long HS = static_cast<long long>(H);
  const long long row_bsh0 = static_cast<long long>(b) * Sq * H + h;  // (b, s=0, h) row index of q, o
  const long long krow_bsh0 = static_cast<long long>(b) * Skv * H + h;  // … of k, v
  const bf16_t* qn = q_nope + row_bsh0 * D_NOPE;
  const bf16_t* qp = q_pe + row_bsh0 * D_ROPE;
  const bf16_t* kn = k_nope + krow_bsh0 * D_NOPE;
  const bf16_t* kp = k_pe + static_cast<long long>(b) * Skv * D_ROPE;
  const bf16_t* vv = v + krow_bsh0 * D_V;

  const int num_k_tiles = (Skv + FWD_BN - 1) / FWD_BN;
  const int causal_tiles = (min(q0 + FWD_BM, Sq) + FWD_BN - 1) / FWD_BN;  // tiles holding a key ≤ the last query
  const int n_tiles = causal ? causal_tiles : num_k_tiles;

  load_tile_qk<FWD_THREADS, FWD_BM>(aQ, qn + q0 * HS * D_NOPE, HS * D_NOPE, qp + q0 * HS * D_ROPE, HS * D_ROPE, Sq - q0, tid);
  load_tile_qk<FWD_THREADS, FWD_BN>(aK, kn, HS * D_NOPE, kp, D_ROPE, Skv, tid);
  load_tile_v<FWD_THREADS, FWD_BN>(aV, vv, HS * D_V, Skv, tid);
  cp_async_commit();

  const float scale_log2 = scale * LOG2E;
  float acc_o[FWD_MT][D_V / 8][4];
  #pragma unroll
  for (int mt = 0; mt < FWD_MT; mt++)
    #pragma unroll
    for (int j = 0; j < D_V / 8; j++) acc_o[mt][j][0] = acc_o[mt][j][1] = acc_o[mt][j][2] = acc_o[mt][j][3] = 0.f;
  // Raw (unscaled) score maxima of rows g, g+8 of each m-tile; this thread's partial row sums
  // (quad-reduced at the end).
  float row_max[FWD_MT][2], row_sum[FWD_MT][2];
  #pragma unroll
  for (int mt = 0; mt < FWD_MT; mt++) {
    row_max[mt][0] = row_max[mt][1] = -inf_f32();
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  const int warp_row0 = warp * 16 * FWD_MT;  // first row of this warp within the query tile

  for (int n = 0; n < n_tiles; n++) {
    const int buf = n & 1;
    if (n + 1 < n_tiles) {
      const int k0 = (n + 1) * FWD_BN;
      load_tile_qk<FWD_THREADS, FWD_BN>(aK + (buf ^ 1) * FWD_BN * QK_STRIDE * 2, kn + k0 * HS * D_NOPE, HS * D_NOPE,
                                        kp + static_cast<long long>(k0) * D_ROPE, D_ROPE, Skv - k0, tid);
      load_tile_v<FWD_THREADS, FWD_BN>(aV + (buf ^ 1) * FWD_BN * V_STRIDE * 2, vv + k0 * HS * D_V, HS * D_V, Skv - k0, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const u32 tK = aK + buf * FWD_BN * QK_STRIDE * 2;
    const u32 tV = aV + buf * FWD_BN * V_STRIDE * 2;

    // S = Q·Kᵀ for this warp's rows × FWD_BN keys; each K fragment feeds every m-tile.
    float acc_s[FWD_MT][FWD_BN / 8][4];
    #pragma unroll
    for (int mt = 0; mt < FWD_MT; mt++)
      #pragma unroll
      for (int j = 0; j < FWD_BN / 8; j++) acc_s[mt][j][0] = acc_s[mt][j][1] = acc_s[mt][j][2] = acc_s[mt][j][3] = 0.f;
    #pragma unroll
    for (int kk = 0; kk < D_QK / 16; kk++) {
      u32 a[FWD_MT][4];
      #pragma unroll
      for (int mt = 0; mt < FWD_MT; mt++) load_a(a[mt], aQ, QK_STRIDE, warp_row0 + mt * 16, kk * 16, lane);
      #pragma unroll
      for (int j = 0; j < FWD_BN / 16; j++) {
        u32 bf[4];
        load_b_nk(bf, tK, QK_STRIDE, j * 16, kk * 16, lane);
        #pragma unroll
        for (int mt = 0; mt < FWD_MT; mt++) {
          mma16816(acc_s[mt][2 * j], a[mt], bf[0], bf[1]);
          mma16816(acc_s[mt][2 * j + 1], a[mt], bf[2], bf[3]);
        }
      }
    }

    // Masks: future keys (causal, tiles reaching past the block's first query) and keys past
    // the end (last tile only).
    const int k0 = n * FWD_BN;
    if ((causal && k0 + FWD_BN - 1 > q0 + warp_row0) || k0 + FWD_BN > Skv) {
      #pragma unroll
      for (int mt = 0; mt < FWD_MT; mt++)
        #pragma unroll
        for (int j = 0; j < FWD_BN / 8; j++)
          #pragma unroll
          for (int e = 0; e < 4; e++) {
            const int key = k0 + j * 8 + 2 * t + (e & 1);
            const int query = q0 + warp_row0 + mt * 16 + g + (e >> 1) * 8;
            if (key >= Skv || (causal && key > query)) acc_s[mt][j][e] = -inf_f32();
          }
    }

    // Online softmax: new running max, exponentiate, then rescale what was accumulated. Once
    // the maxima settle most tiles leave every row's max unchanged (alpha exactly 1), and the
    // warp skips the 64·MT multiplications of O per row pair (MLA_FWD_LAZY_RESCALE).
    float alpha[FWD_MT][2];
    #pragma unroll
    for (int mt = 0; mt < FWD_MT; mt++)
      #pragma unroll
      for (int r = 0; r < 2; r++) {
        float mx = row_max[mt][r];
        #pragma unroll
        for (int j = 0; j < FWD_BN / 8; j++) mx = fmaxf(mx, fmaxf(acc_s[mt][j][2 * r], acc_s[mt][j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row that has seen only masked keys keeps max −inf; offset by 0 so exp2 gives 0, not NaN.
        const float offset = mx == -inf_f32() ? 0.f : mx * scale_log2;
        alpha[mt][r] = mx == row_max[mt][r] ? 1.f : fast_exp2(row_max[mt][r] * scale_log2 - offset);
        row_max[mt][r] = mx;
        float sum = 0.f;
        #pragma unroll
        for (int j = 0; j < FWD_BN / 8; j++) {
          acc_s[mt][j][2 * r] = fast_exp2(acc_s[mt][j][2 * r] * scale_log2 - offset);
          acc_s[mt][j][2 * r + 1] = fast_exp2(acc_s[mt][j][2 * r + 1] * scale_log2 - offset);
          sum += acc_s[mt][j][2 * r] + acc_s[mt][j][2 * r + 1];
        }
        row_sum[mt][r] = row_sum[mt][r] * alpha[mt][r] + sum;
      }
    bool rescale = true;
#if MLA_FWD_LAZY_RESCALE
    bool changed = false;
    #pragma unroll
    for (int mt = 0; mt < FWD_MT; mt++) changed |= alpha[mt][0] != 1.f || alpha[mt][1] != 1.f;
    rescale = __any_sync(0xffffffffu, changed);
#endif
    if (rescale) {
      #pragma unroll
      for (int mt = 0; mt < FWD_MT; mt++)
        #pragma unroll
        for (int j = 0; j < D_V / 8; j++) {
          acc_o[mt][j][0] *= alpha[mt][0];
          acc_o[mt][j][1] *= alpha[mt][0];
          acc_o[mt][j][2] *= alpha[mt][1];
          acc_o[mt][j][3] *= alpha[mt][1];
        }
    }

    // O += P·V, P fed from registers as bf16 A fragments; each V fragment feeds every m-tile.
    #pragma unroll
    for (int kk = 0; kk < FWD_BN / 16; kk++) {
      u32 a[FWD_MT][4];
      #pragma unroll
      for (int mt = 0; mt < FWD_MT; mt++) {
        a[mt][0] = pack_bf16x2(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
        a[mt][1] = pack_bf16x2(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
        a[mt][2] = pack_bf16x2(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
        a[mt][3] = pack_bf16x2(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
      }
      #pragma unroll
      for (int j = 0; j < D_V / 16; j++) {
        u32 bf[4];
        load_b_kn(bf, tV, V_STRIDE, kk * 16, j * 16, lane);
        #pragma unroll
        for (int mt = 0; mt < FWD_MT; mt++) {
          mma16816(acc_o[mt][2 * j], a[mt], bf[0], bf[1]);
          mma16816(acc_o[mt][2 * j + 1], a[mt], bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's cp.async overwrites the buffer just read
  }

  // Epilogue: normalise, stage the warp's rows as bf16 in its own (finished) rows of sQ, then
  // write them out as 16-byte pieces.
  bf16_t* sO = sQ + warp_row0 * QK_STRIDE;
  #pragma unroll
  for (int mt = 0; mt < FWD_MT; mt++) {
    float inv[2];
    #pragma unroll
    for (int r = 0; r < 2; r++) {
      float s = row_sum[mt][r];
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      inv[r] = s > 0.f ? 1.f / s : 0.f;
      const int query = q0 + warp_row0 + mt * 16 + g + r * 8;
      if (t == 0 && query < Sq)
        lse[(static_cast<long long>(b) * H + h) * Sq + query] = s > 0.f ? row_max[mt][r] * scale + logf(s) : -inf_f32();
    }
    #pragma unroll
    for (int j = 0; j < D_V / 8; j++) {
      const int col = j * 8 + 2 * t;
      bf16_t* row = sO + (mt * 16 + g) * QK_STRIDE + col;
      *reinterpret_cast<u32*>(row) = pack_bf16x2(acc_o[mt][j][0] * inv[0], acc_o[mt][j][1] * inv[0]);
      *reinterpret_cast<u32*>(row + 8 * QK_STRIDE) = pack_bf16x2(acc_o[mt][j][2] * inv[1], acc_o[mt][j][3] * inv[1]);
    }
  }
  __syncwarp();
  bf16_t* og = o + (row_bsh0 + (q0 + warp_row0) * HS) * D_V;
  #pragma unroll
  for (int i = 0; i < 16 * FWD_MT * (D_V / 8) / 32; i++) {
    const int c = lane + i * 32;
    const int r = c / (D_V / 8), ch = c % (D_V / 8);
    if (q0 + warp_row0 + r < Sq)
      *reinterpret_cast<uint4*>(og + r * HS * D_V + ch * 8) = *reinterpret_cast<const uint4*>(sO + r * QK_STRIDE + ch * 8);
  }
}
