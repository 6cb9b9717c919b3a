// MLA attention forward, FlashAttention-2 style on mma.sync (sm_80 and later; the portable
// path and the reference for faster Hopper kernels).
//
//   o[b,s,h,:] = Σ_j softmax_j(scale·(q_nope·k_nope + q_pe·k_pe[b,j])) · v[b,j,h,:]
//   lse[b,h,s] = natural log of that softmax's denominator (scaled scores)
//
// Layouts (elements, all contiguous): q_nope, k_nope [B,S,H,128]; q_pe [B,S,H,64]; k_pe
// [B,S,1,64] shared by every head; v, o [B,S,H,128] bf16; lse [B,H,S] f32. The 192-wide q and
// k are assembled in shared memory from their two parts, so no concatenated copy exists.
//
// One block of 4 warps per (64-query tile, head, batch); each warp owns 16 query rows and runs
// the online softmax over 64-key tiles, K/V double-buffered through cp.async. Causal blocks are
// launched longest first (the last query tile has the most key tiles).
#include "mla_attention_common.cuh"

namespace mla {
constexpr int FWD_WARPS = 4;
constexpr int FWD_THREADS = FWD_WARPS * 32;
// Shared memory: Q tile, then two K tiles, then two V tiles.
constexpr int FWD_SMEM_BYTES = (TILE * QK_STRIDE + 2 * TILE * QK_STRIDE + 2 * TILE * V_STRIDE) * 2;
// The host (mla_attention.ts, bench/attention_harness.py) repeats this size.
static_assert(FWD_SMEM_BYTES == 111616, "update the host's shared-memory size");
}  // namespace mla

using namespace mla;

extern "C" __global__ void __launch_bounds__(FWD_THREADS, 2)
mla_attention_fwd(const bf16_t* __restrict__ q_nope, const bf16_t* __restrict__ q_pe,
                  const bf16_t* __restrict__ k_nope, const bf16_t* __restrict__ k_pe,
                  const bf16_t* __restrict__ v, bf16_t* __restrict__ o, float* __restrict__ lse,
                  int S, int H, float scale, int causal) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sK = sQ + TILE * QK_STRIDE;          // [2][TILE][QK_STRIDE]
  bf16_t* sV = sK + 2 * TILE * QK_STRIDE;      // [2][TILE][V_STRIDE]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int num_tiles = (S + TILE - 1) / TILE;
  const int m_tile = num_tiles - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = m_tile * TILE;

  const long long HS = static_cast<long long>(H);
  const long long row_bsh0 = static_cast<long long>(b) * S * H + h;  // (b, s=0, h) row index
  const bf16_t* qn = q_nope + row_bsh0 * D_NOPE;
  const bf16_t* qp = q_pe + row_bsh0 * D_ROPE;
  const bf16_t* kn = k_nope + row_bsh0 * D_NOPE;
  const bf16_t* kp = k_pe + static_cast<long long>(b) * S * D_ROPE;
  const bf16_t* vv = v + row_bsh0 * D_V;

  const int n_tiles = causal ? m_tile + 1 : num_tiles;

  load_tile_qk<FWD_THREADS>(sQ, qn + q0 * HS * D_NOPE, HS * D_NOPE, qp + q0 * HS * D_ROPE, HS * D_ROPE, S - q0, tid);
  load_tile_qk<FWD_THREADS>(sK, kn, HS * D_NOPE, kp, D_ROPE, S, tid);
  load_tile_v<FWD_THREADS>(sV, vv, HS * D_V, S, tid);
  cp_async_commit();

  const float scale_log2 = scale * LOG2E;
  float acc_o[D_V / 8][4];
  #pragma unroll
  for (int j = 0; j < D_V / 8; j++) acc_o[j][0] = acc_o[j][1] = acc_o[j][2] = acc_o[j][3] = 0.f;
  float row_max[2] = {-inf_f32(), -inf_f32()};  // raw (unscaled) score maxima of rows g, g+8
  float row_sum[2] = {0.f, 0.f};              // this thread's partial sums; quad-reduced at the end
  const int row_in_tile = warp * 16 + g;

  for (int n = 0; n < n_tiles; n++) {
    const int buf = n & 1;
    if (n + 1 < n_tiles) {
      const int k0 = (n + 1) * TILE;
      load_tile_qk<FWD_THREADS>(sK + (buf ^ 1) * TILE * QK_STRIDE, kn + k0 * HS * D_NOPE, HS * D_NOPE,
                                kp + static_cast<long long>(k0) * D_ROPE, D_ROPE, S - k0, tid);
      load_tile_v<FWD_THREADS>(sV + (buf ^ 1) * TILE * V_STRIDE, vv + k0 * HS * D_V, HS * D_V, S - k0, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16_t* tK = sK + buf * TILE * QK_STRIDE;
    const bf16_t* tV = sV + buf * TILE * V_STRIDE;

    // S = Q·Kᵀ for this warp's 16 rows × 64 keys.
    float acc_s[TILE / 8][4];
    #pragma unroll
    for (int j = 0; j < TILE / 8; j++) acc_s[j][0] = acc_s[j][1] = acc_s[j][2] = acc_s[j][3] = 0.f;
    #pragma unroll
    for (int kk = 0; kk < D_QK / 16; kk++) {
      u32 a[4];
      load_a(a, sQ, QK_STRIDE, warp * 16, kk * 16, lane);
      #pragma unroll
      for (int j = 0; j < TILE / 16; j++) {
        u32 bf[4];
        load_b_nk(bf, tK, QK_STRIDE, j * 16, kk * 16, lane);
        mma16816(acc_s[2 * j], a, bf[0], bf[1]);
        mma16816(acc_s[2 * j + 1], a, bf[2], bf[3]);
      }
    }

    // Masks: future keys (causal, diagonal tile only) and keys past the end (last tile only).
    const int k0 = n * TILE;
    if ((causal && n == m_tile) || k0 + TILE > S) {
      #pragma unroll
      for (int j = 0; j < TILE / 8; j++)
        #pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = k0 + j * 8 + 2 * t + (e & 1);
          const int query = q0 + row_in_tile + (e >> 1) * 8;
          if (key >= S || (causal && key > query)) acc_s[j][e] = -inf_f32();
        }
    }

    // Online softmax: new running max, rescale what was accumulated, exponentiate.
    #pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = row_max[r];
      #pragma unroll
      for (int j = 0; j < TILE / 8; j++) mx = fmaxf(mx, fmaxf(acc_s[j][2 * r], acc_s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row that has seen only masked keys keeps max −inf; offset by 0 so exp2 gives 0, not NaN.
      const float offset = mx == -inf_f32() ? 0.f : mx * scale_log2;
      const float alpha = fast_exp2(row_max[r] * scale_log2 - offset);
      row_max[r] = mx;
      float sum = 0.f;
      #pragma unroll
      for (int j = 0; j < TILE / 8; j++) {
        acc_s[j][2 * r] = fast_exp2(acc_s[j][2 * r] * scale_log2 - offset);
        acc_s[j][2 * r + 1] = fast_exp2(acc_s[j][2 * r + 1] * scale_log2 - offset);
        sum += acc_s[j][2 * r] + acc_s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha + sum;
      #pragma unroll
      for (int j = 0; j < D_V / 8; j++) {
        acc_o[j][2 * r] *= alpha;
        acc_o[j][2 * r + 1] *= alpha;
      }
    }

    // O += P·V, P fed from registers as bf16 A fragments.
    #pragma unroll
    for (int kk = 0; kk < TILE / 16; kk++) {
      u32 a[4];
      a[0] = pack_bf16x2(acc_s[2 * kk][0], acc_s[2 * kk][1]);
      a[1] = pack_bf16x2(acc_s[2 * kk][2], acc_s[2 * kk][3]);
      a[2] = pack_bf16x2(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]);
      a[3] = pack_bf16x2(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3]);
      #pragma unroll
      for (int j = 0; j < D_V / 16; j++) {
        u32 bf[4];
        load_b_kn(bf, tV, V_STRIDE, kk * 16, j * 16, lane);
        mma16816(acc_o[2 * j], a, bf[0], bf[1]);
        mma16816(acc_o[2 * j + 1], a, bf[2], bf[3]);
      }
    }
    __syncthreads();  // the next iteration's cp.async overwrites the buffer just read
  }

  // Epilogue: normalise, stage the warp's 16×128 bf16 rows in its own (finished) rows of sQ,
  // then write them out as 16-byte pieces.
  float inv[2];
  #pragma unroll
  for (int r = 0; r < 2; r++) {
    float s = row_sum[r];
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    inv[r] = s > 0.f ? 1.f / s : 0.f;
    const int query = q0 + row_in_tile + r * 8;
    if (t == 0 && query < S)
      lse[(static_cast<long long>(b) * H + h) * S + query] = s > 0.f ? row_max[r] * scale + logf(s) : -inf_f32();
  }
  bf16_t* sO = sQ + warp * 16 * QK_STRIDE;
  #pragma unroll
  for (int j = 0; j < D_V / 8; j++) {
    const int col = j * 8 + 2 * t;
    *reinterpret_cast<u32*>(sO + g * QK_STRIDE + col) = pack_bf16x2(acc_o[j][0] * inv[0], acc_o[j][1] * inv[0]);
    *reinterpret_cast<u32*>(sO + (g + 8) * QK_STRIDE + col) = pack_bf16x2(acc_o[j][2] * inv[1], acc_o[j][3] * inv[1]);
  }
  __syncwarp();
  bf16_t* og = o + (row_bsh0 + (q0 + warp * 16) * HS) * D_V;
  #pragma unroll
  for (int i = 0; i < 16 * (D_V / 8) / 32; i++) {
    const int c = lane + i * 32;
    const int r = c / (D_V / 8), ch = c % (D_V / 8);
    if (q0 + warp * 16 + r < S)
      *reinterpret_cast<uint4*>(og + r * HS * D_V + ch * 8) = *reinterpret_cast<const uint4*>(sO + r * QK_STRIDE + ch * 8);
  }
}
