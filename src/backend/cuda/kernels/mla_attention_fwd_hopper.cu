// MLA attention forward for Hopper (sm_90a): FlashAttention-3 style on warpgroup MMA (wgmma).
// Same function and arguments as mla_attention_fwd in mla_attention_fwd.cu (the mma.sync
// fallback), so the host can launch either:
//
//   o[b,s,h,:] = Σ_j softmax_j(scale·(q_nope·k_nope + q_pe·k_pe[b,j])) · v[b,j,h,:]
//   lse[b,h,s] = natural log of that softmax's denominator (scaled scores)
//
// Launch: grid (H, ceil(S/128), B), 384 threads, HOP_SMEM_BYTES of dynamic shared memory.
// Heads vary fastest and blockIdx.y counts query tiles from the last one down, so the longest
// causal tiles of every head start first and the short ones fill the tail.
//
// Roles (warpgroups of 128 threads):
//   WG0, producer: copies the block's 128×192 Q tile once, then 128-key K (128×192) and V
//     (128×128) tiles into a two-stage ring with cp.async, writing each 16-byte piece at its
//     128-byte-swizzled place (the layout wgmma's descriptors read), and signals "full"
//     mbarriers; it keeps few registers (setmaxnreg.dec) so the consumers can have more.
//   WG1, WG2, consumers: 64 query rows each. Per key tile: S = Q·Kᵀ as 12 wgmma m64n128k16
//     (K dim 192 = 128 from the nope block + 64 from the rope block; both operands from shared
//     memory), online softmax on the f32 accumulators in registers, P packed to bf16 registers
//     as the A operand of O += P·V (8 wgmma m64n128k16, V from shared memory, N-major), then
//     an "empty" arrival that gives the stage back to the producer.
// Key tiles run from the last (the causal diagonal, or the partial tile past S) to the first,
// so only the first tile a block processes needs a mask.
//
// Shared-memory operand layout (bf16, 128-byte swizzle): an operand of R rows and 64·c columns
// is c column blocks of R rows × 128 bytes; 16-byte piece p of row r sits at piece p ^ (r % 8)
// of that row. Every block starts 1024-byte aligned (the swizzle repeats every 8 rows =
// 1024 bytes and wgmma applies it to absolute shared addresses).
//   K-major operand (Q, K: rows = M or N, 64 contiguous K values per block row): descriptor
//     start = block + 32·(k16 step within the block), stride byte offset (next 8 rows) 1024.
//   N-major operand (V: rows = keys = the K dim, 64 contiguous dv values per block row):
//     transposed B; leading byte offset = next 64-column block, stride byte offset (next 8
//     keys) 1024; each 16-key step advances the start by 16 rows = 2048 bytes.
// Why cp.async and not TMA: kernel arguments reach the kernel as 8-byte slots (module.ts), so a
// 128-byte CUtensorMap cannot be a __grid_constant__ parameter yet. cp.async writes go through
// the generic proxy, so the producer waits for its own copies, fences them into the async proxy
// (fence.proxy.async) and only then arrives on the stage's full barrier.
#include "mla_attention_common.cuh"

namespace mla {
constexpr int HOP_BM = 128;                 // query rows per block (2 consumer warpgroups × 64)
constexpr int HOP_BN = 128;                 // key rows per tile
constexpr int HOP_STAGES = 2;               // K/V ring depth
constexpr int HOP_THREADS = 384;            // producer + 2 consumer warpgroups
constexpr int HOP_Q_BYTES = HOP_BM * D_QK * 2;   // 49152
constexpr int HOP_K_BYTES = HOP_BN * D_QK * 2;   // 49152
constexpr int HOP_V_BYTES = HOP_BN * D_V * 2;    // 32768
constexpr int HOP_Q_BLOCK = HOP_BM * 128;        // bytes of one 64-column block of Q
constexpr int HOP_K_BLOCK = HOP_BN * 128;        // … of K and of V
constexpr int HOP_BAR_OFFSET = HOP_Q_BYTES + HOP_STAGES * (HOP_K_BYTES + HOP_V_BYTES);
// q_full, then per stage: K full, V full, K empty, V empty. K and V have their own barriers
// because a K stage frees after its S GEMM, well before its V stage frees after P·V.
constexpr int HOP_NUM_BARS = 1 + 4 * HOP_STAGES;
// +1024: the dynamic shared window is only guaranteed 16-byte aligned; the kernel rounds up.
constexpr int HOP_SMEM_BYTES = HOP_BAR_OFFSET + HOP_NUM_BARS * 8 + 1024;
// The host (mla_attention.ts, bench/attention_harness.py) repeats this number.
static_assert(HOP_SMEM_BYTES == 214088, "update the host's shared-memory size");
static_assert(HOP_SMEM_BYTES <= 232448, "over the 227 KB a Hopper block may use");
constexpr int HOP_PRODUCER_REGS = 40;
constexpr int HOP_CONSUMER_REGS = 232;  // 128·40 + 256·232 = 64512 ≤ 65536
}  // namespace mla

// 1: the consumer warpgroups alternate their GEMMs and overlap tile i's softmax with tile
// i-1's P·V (FlashAttention-3's ping-pong and intra-warpgroup overlap); 0: one tile at a time.
#ifndef MLA_HOP_PINGPONG
#define MLA_HOP_PINGPONG 1
#endif

using namespace mla;

namespace {

// ---- mbarrier (shared::cta) ----
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity) {
  u32 done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  return done != 0;
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// ---- wgmma ----
// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63).
__device__ __forceinline__ unsigned long long wgmma_desc(u32 addr, u32 lead_bytes, u32 stride_bytes) {
  return static_cast<unsigned long long>((addr & 0x3FFFF) >> 4) |
         (static_cast<unsigned long long>(lead_bytes >> 4) << 16) |
         (static_cast<unsigned long long>(stride_bytes >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }

#define MLA_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define MLA_D64 MLA_D8(0), MLA_D8(8), MLA_D8(16), MLA_D8(24), MLA_D8(32), MLA_D8(40), MLA_D8(48), MLA_D8(56)
#define MLA_D64_REGS                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "             \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "    \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "    \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (64×128 f32, this warpgroup) = (accumulate ? d : 0) + A·B, A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_ss_m64n128k16(float* d, unsigned long long a_desc, unsigned long long b_desc,
                                                    int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " MLA_D64_REGS
      ", %64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : MLA_D64
      : "l"(a_desc), "l"(b_desc), "r"(accumulate));
}

// d += A·B, A (64×16 bf16) from registers in the mma.sync m16n8k16 A-fragment layout per warp,
// B N-major in shared memory (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs_m64n128k16_tb(float* d, const u32* a, unsigned long long b_desc) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " MLA_D64_REGS
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : MLA_D64
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}

// Byte offset of 16-byte piece `piece` (0..ncols/8-1) of row `row` in a block-major swizzled
// operand whose blocks hold `rows` rows.
__device__ __forceinline__ u32 swizzled(int row, int piece, int rows) {
  return (piece >> 3) * rows * 128 + row * 128 + (((piece & 7) ^ (row & 7)) << 4);
}

// Producer copies (128 threads). Rows at or past rows_left are zero-filled.
// A 192-wide operand: 16 pieces per row from `nope` (row stride nope_stride elements), then 8
// from `pe`; consecutive threads take consecutive pieces of a row (coalesced reads).
template <int ROWS>
__device__ __forceinline__ void copy_qk(u32 dst, const bf16_t* nope, long long nope_stride, const bf16_t* pe,
                                        long long pe_stride, int rows_left, int tid) {
  #pragma unroll 4
  for (int i = 0; i < ROWS * 16 / 128; i++) {
    const int c = tid + i * 128, r = c >> 4, p = c & 15;
    const bool valid = r < rows_left;
    cp_async16(dst + swizzled(r, p, ROWS), nope + (valid ? r : 0) * nope_stride + p * 8, valid);
  }
  #pragma unroll 4
  for (int i = 0; i < ROWS * 8 / 128; i++) {
    const int c = tid + i * 128, r = c >> 3, p = c & 7;
    const bool valid = r < rows_left;
    cp_async16(dst + swizzled(r, 16 + p, ROWS), pe + (valid ? r : 0) * pe_stride + p * 8, valid);
  }
}
__device__ __forceinline__ void copy_v(u32 dst, const bf16_t* src, long long stride, int rows_left, int tid) {
  #pragma unroll 4
  for (int i = 0; i < HOP_BN * 16 / 128; i++) {
    const int c = tid + i * 128, r = c >> 4, p = c & 15;
    const bool valid = r < rows_left;
    cp_async16(dst + swizzled(r, p, HOP_BN), src + (valid ? r : 0) * stride + p * 8, valid);
  }
}


// ---- consumer steps (one warpgroup, 64 query rows; thread holds rows g and g+8 of its warp) ----
// Accumulator layout of wgmma m64n128 f32 per warp: d[4j+0..1] = row g, columns 8j+2t..+1;
// d[4j+2..3] = row g+8, same columns (g = lane/4, t = lane%4).

// acc_s = Q·Kᵀ: 64 rows × 128 keys, K dim 192 in 12 steps of 16 (4 per 64-column block).
__device__ __forceinline__ void gemm_s(float* acc_s, u32 sQ_wg, u32 tK) {
  wgmma_fence();
  #pragma unroll
  for (int kk = 0; kk < D_QK / 16; kk++) {
    const u32 off = (kk >> 2) * HOP_Q_BLOCK + (kk & 3) * 32;  // block, then k16 step within it
    const u32 koff = (kk >> 2) * HOP_K_BLOCK + (kk & 3) * 32;
    wgmma_ss_m64n128k16(acc_s, wgmma_desc(sQ_wg + off, 16, 1024), wgmma_desc(tK + koff, 16, 1024), kk > 0);
  }
}

// acc_o += P·V: keys are the K dim, 8 steps of 16 keys = 2048 bytes of V rows each.
__device__ __forceinline__ void gemm_pv(float* acc_o, const u32 (*p)[4], u32 tV) {
  wgmma_fence();
  #pragma unroll
  for (int kk = 0; kk < HOP_BN / 16; kk++) wgmma_rs_m64n128k16_tb(acc_o, p[kk], wgmma_desc(tV + kk * 2048, HOP_K_BLOCK, 1024));
}

// −inf for keys past S and, when causal, keys after the query.
__device__ __forceinline__ void mask_scores(float* acc_s, int k0, int row_g, int S, int causal, int t) {
  #pragma unroll
  for (int j = 0; j < 16; j++)
    #pragma unroll
    for (int e = 0; e < 4; e++) {
      const int key = k0 + j * 8 + 2 * t + (e & 1);
      const int query = row_g + (e >> 1) * 8;
      if (key >= S || (causal && key > query)) acc_s[j * 4 + e] = -inf_f32();
    }
}

// New running maxima, acc_s ← exp2 of the scaled, shifted scores, running sums; alpha is the
// factor the accumulated O of each row must be multiplied by.
__device__ __forceinline__ void online_softmax(float* acc_s, float* row_max, float* row_sum, float* alpha, float scale_log2) {
  #pragma unroll
  for (int r = 0; r < 2; r++) {
    float mx = row_max[r];
    #pragma unroll
    for (int j = 0; j < 16; j++) mx = fmaxf(mx, fmaxf(acc_s[j * 4 + 2 * r], acc_s[j * 4 + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // A row that has seen only masked keys keeps max −inf; offset 0 makes exp2 give 0, not NaN.
    const float offset = mx == -inf_f32() ? 0.f : mx * scale_log2;
    alpha[r] = fast_exp2(row_max[r] * scale_log2 - offset);
    row_max[r] = mx;
    float sum = 0.f;
    #pragma unroll
    for (int j = 0; j < 16; j++) {
      acc_s[j * 4 + 2 * r] = fast_exp2(acc_s[j * 4 + 2 * r] * scale_log2 - offset);
      acc_s[j * 4 + 2 * r + 1] = fast_exp2(acc_s[j * 4 + 2 * r + 1] * scale_log2 - offset);
      sum += acc_s[j * 4 + 2 * r] + acc_s[j * 4 + 2 * r + 1];
    }
    row_sum[r] = row_sum[r] * alpha[r] + sum;
  }
}

__device__ __forceinline__ void rescale_o(float* acc_o, const float* alpha) {
  #pragma unroll
  for (int j = 0; j < 16; j++) {
    acc_o[j * 4 + 0] *= alpha[0];
    acc_o[j * 4 + 1] *= alpha[0];
    acc_o[j * 4 + 2] *= alpha[1];
    acc_o[j * 4 + 3] *= alpha[1];
  }
}

// P as bf16 A fragments: the accumulators of 8-key chunks 2kk and 2kk+1 are exactly the A
// fragment (mma.sync m16n8k16 layout) of 16-key step kk.
__device__ __forceinline__ void pack_p(u32 (*p)[4], const float* acc_s) {
  #pragma unroll
  for (int kk = 0; kk < 8; kk++) {
    p[kk][0] = pack_bf16x2(acc_s[8 * kk + 0], acc_s[8 * kk + 1]);
    p[kk][1] = pack_bf16x2(acc_s[8 * kk + 2], acc_s[8 * kk + 3]);
    p[kk][2] = pack_bf16x2(acc_s[8 * kk + 4], acc_s[8 * kk + 5]);
    p[kk][3] = pack_bf16x2(acc_s[8 * kk + 6], acc_s[8 * kk + 7]);
  }
}

// Named barriers 1.. (0 is __syncthreads): sync waits for `count` threads, arrive does not wait.
__device__ __forceinline__ void named_bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}

}  // namespace

extern "C" __global__ void __launch_bounds__(HOP_THREADS, 1)
mla_attention_fwd_hopper(const bf16_t* __restrict__ q_nope, const bf16_t* __restrict__ q_pe,
                         const bf16_t* __restrict__ k_nope, const bf16_t* __restrict__ k_pe,
                         const bf16_t* __restrict__ v, bf16_t* __restrict__ o, float* __restrict__ lse,
                         int S, int H, float scale, int causal) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const u32 sQ = base;
  const u32 sK = sQ + HOP_Q_BYTES;                      // [stage] K tiles
  const u32 sV = sK + HOP_STAGES * HOP_K_BYTES;         // [stage] V tiles
  const u32 bars = base + HOP_BAR_OFFSET;
  const u32 bar_q = bars;
  auto bar_full_k = [&](int s) { return bars + 8u * (1 + s); };
  auto bar_full_v = [&](int s) { return bars + 8u * (1 + HOP_STAGES + s); };
  auto bar_empty_k = [&](int s) { return bars + 8u * (1 + 2 * HOP_STAGES + s); };
  auto bar_empty_v = [&](int s) { return bars + 8u * (1 + 3 * HOP_STAGES + s); };

  const int tid = threadIdx.x;
  const int wg = tid >> 7;  // 0 producer, 1..2 consumers
  const int h = blockIdx.x, b = blockIdx.z;
  const int num_q_tiles = (S + HOP_BM - 1) / HOP_BM;
  const int m_tile = num_q_tiles - 1 - static_cast<int>(blockIdx.y);
  const int q0 = m_tile * HOP_BM;
  const int num_k_tiles = (S + HOP_BN - 1) / HOP_BN;
  const int n_tiles = causal ? (min(q0 + HOP_BM, S) + HOP_BN - 1) / HOP_BN : num_k_tiles;

  if (tid == 0) {
    mbar_init(bar_q, 128);
    for (int s = 0; s < HOP_STAGES; s++) {
      mbar_init(bar_full_k(s), 128);
      mbar_init(bar_full_v(s), 128);
      mbar_init(bar_empty_k(s), 256);
      mbar_init(bar_empty_v(s), 256);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  const long long HS = static_cast<long long>(H);
  const long long row_bsh0 = static_cast<long long>(b) * S * H + h;  // (b, s=0, h) row index

  if (wg == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(HOP_PRODUCER_REGS));
    const bf16_t* kn = k_nope + row_bsh0 * D_NOPE;
    const bf16_t* kp = k_pe + static_cast<long long>(b) * S * D_ROPE;
    const bf16_t* vv = v + row_bsh0 * D_V;
    // Copy groups, in commit order: Q, then K_0, V_0, K_1, V_1, … (group 1 + 2i is K_i, 2 + 2i is
    // V_i). cp.async writes land in the generic proxy: a group is published (fence.proxy.async,
    // then an arrival on its full barrier) only once wait_group says it has landed. Before the
    // producer blocks on an empty barrier it publishes everything the consumers need to get
    // there: waiting for V stage i%2 needs consumer iteration i-1 (K_{i-1}, V_{i-2}), waiting
    // for K stage i%2 needs consumer iteration i-2 (K_{i-2}).
    int published = 0;
    auto publish_through = [&](int last_group) {
      if (published > last_group) return;
      fence_proxy_async();
      for (; published <= last_group; published++) {
        const int kv = (published - 1) >> 1, st = kv % HOP_STAGES;
        mbar_arrive(published == 0 ? bar_q : (published & 1) ? bar_full_k(st) : bar_full_v(st));
      }
    };
    copy_qk<HOP_BM>(sQ, q_nope + (row_bsh0 + q0 * HS) * D_NOPE, HS * D_NOPE, q_pe + (row_bsh0 + q0 * HS) * D_ROPE,
                    HS * D_ROPE, S - q0, tid);
    cp_async_commit();
    for (int i = 0; i < n_tiles; i++) {
      const int s = i % HOP_STAGES;
      const u32 parity = ((i / HOP_STAGES) - 1) & 1;
      const int k0 = (n_tiles - 1 - i) * HOP_BN;
      if (i >= HOP_STAGES) mbar_wait(bar_empty_k(s), parity);
      copy_qk<HOP_BN>(sK + s * HOP_K_BYTES, kn + k0 * HS * D_NOPE, HS * D_NOPE, kp + static_cast<long long>(k0) * D_ROPE,
                      D_ROPE, S - k0, tid);
      cp_async_commit();
      // In flight may stay: V_{i-1}, K_i; everything through K_{i-1} (group 2i-1) has landed.
      cp_async_wait<2>();
      publish_through(2 * i - 1);
      if (i >= HOP_STAGES) mbar_wait(bar_empty_v(s), parity);
      copy_v(sV + s * HOP_V_BYTES, vv + k0 * HS * D_V, HS * D_V, S - k0, tid);
      cp_async_commit();
    }
    cp_async_wait<0>();
    publish_through(2 * n_tiles);
  } else {
    // ---------------- consumers ----------------
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(HOP_CONSUMER_REGS));
    const int ctid = tid - 128 * wg;          // 0..127 within the warpgroup
    const int warp = ctid >> 5, lane = ctid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int wg_row0 = (wg - 1) * 64;        // first query row of this warpgroup in the tile
    const int row_g = q0 + wg_row0 + warp * 16 + g;  // this thread's first query row (the other: +8)
    const float scale_log2 = scale * LOG2E;

    float acc_o[64];
    #pragma unroll
    for (int i = 0; i < 64; i++) acc_o[i] = 0.f;
    float row_max[2] = {-inf_f32(), -inf_f32()};  // raw (unscaled) maxima of rows g, g+8
    float row_sum[2] = {0.f, 0.f};                // this thread's partial sums (quad-reduced at the end)
    float acc_s[64];
    float alpha[2];
    u32 p[8][4];

    const u32 sQ_wg = sQ + wg_row0 * 128;
    mbar_wait(bar_q, 0);

#if MLA_HOP_PINGPONG
    // Ping-pong: the two consumer warpgroups take turns issuing their GEMMs (named barriers 1
    // and 2), so one's softmax runs while the other's wgmmas own the tensor cores. Within a
    // warpgroup, tile i's S GEMM and tile i-1's P·V GEMM are issued together; the softmax of
    // tile i overlaps that P·V. Consumer 1 opens the first turn for consumer 0 and skips its last
    // hand-over, so every barrier ends with as many arrivals as waits.
    const int me = wg - 1, other = 2 - wg;
    if (me == 1) named_bar_arrive(1 + other, 256);
    mbar_wait(bar_full_k(0), 0);
    named_bar_sync(1 + me, 256);
    gemm_s(acc_s, sQ_wg, sK);
    wgmma_commit();
    if (!(me == 1 && n_tiles == 1)) named_bar_arrive(1 + other, 256);
    wgmma_wait<0>();
    mbar_arrive(bar_empty_k(0));
    if (causal || (n_tiles - 1) * HOP_BN + HOP_BN > S) mask_scores(acc_s, (n_tiles - 1) * HOP_BN, row_g, S, causal, t);
    online_softmax(acc_s, row_max, row_sum, alpha, scale_log2);
    pack_p(p, acc_s);
    for (int i = 1; i < n_tiles; i++) {
      const int s = i % HOP_STAGES, prev = (i - 1) % HOP_STAGES;
      mbar_wait(bar_full_k(s), (i / HOP_STAGES) & 1);
      mbar_wait(bar_full_v(prev), ((i - 1) / HOP_STAGES) & 1);
      named_bar_sync(1 + me, 256);
      gemm_s(acc_s, sQ_wg, sK + s * HOP_K_BYTES);
      wgmma_commit();
      gemm_pv(acc_o, p, sV + prev * HOP_V_BYTES);
      wgmma_commit();
      if (!(me == 1 && i == n_tiles - 1)) named_bar_arrive(1 + other, 256);
      wgmma_wait<1>();  // S of tile i done; P·V of tile i-1 still running
      mbar_arrive(bar_empty_k(s));
      online_softmax(acc_s, row_max, row_sum, alpha, scale_log2);
      wgmma_wait<0>();  // P·V done: the V stage and the P registers are free, O may be rescaled
      mbar_arrive(bar_empty_v(prev));
      rescale_o(acc_o, alpha);
      pack_p(p, acc_s);
    }
    mbar_wait(bar_full_v((n_tiles - 1) % HOP_STAGES), ((n_tiles - 1) / HOP_STAGES) & 1);
    gemm_pv(acc_o, p, sV + ((n_tiles - 1) % HOP_STAGES) * HOP_V_BYTES);
    wgmma_commit();
    wgmma_wait<0>();
#else
    for (int i = 0; i < n_tiles; i++) {
      const int s = i % HOP_STAGES;
      const int k0 = (n_tiles - 1 - i) * HOP_BN;
      mbar_wait(bar_full_k(s), (i / HOP_STAGES) & 1);
      gemm_s(acc_s, sQ_wg, sK + s * HOP_K_BYTES);
      wgmma_commit();
      wgmma_wait<0>();
      mbar_arrive(bar_empty_k(s));
      // Only the first tile processed can hold future keys (causal diagonal) or keys past S.
      if (i == 0 && (causal || k0 + HOP_BN > S)) mask_scores(acc_s, k0, row_g, S, causal, t);
      online_softmax(acc_s, row_max, row_sum, alpha, scale_log2);
      rescale_o(acc_o, alpha);
      pack_p(p, acc_s);
      mbar_wait(bar_full_v(s), (i / HOP_STAGES) & 1);
      gemm_pv(acc_o, p, sV + s * HOP_V_BYTES);
      wgmma_commit();
      wgmma_wait<0>();
      mbar_arrive(bar_empty_v(s));
    }
#endif

    // Epilogue: normalise and write bf16 pairs straight from the accumulators.
    float inv[2];
    #pragma unroll
    for (int r = 0; r < 2; r++) {
      float sum = row_sum[r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      inv[r] = sum > 0.f ? 1.f / sum : 0.f;
      const int query = row_g + r * 8;
      if (t == 0 && query < S)
        lse[(static_cast<long long>(b) * H + h) * S + query] = sum > 0.f ? row_max[r] * scale + logf(sum) : -inf_f32();
    }
    #pragma unroll
    for (int r = 0; r < 2; r++) {
      const int query = row_g + r * 8;
      if (query < S) {
        bf16_t* orow = o + (row_bsh0 + query * HS) * D_V + 2 * t;
        #pragma unroll
        for (int j = 0; j < 16; j++)
          *reinterpret_cast<u32*>(orow + j * 8) = pack_bf16x2(acc_o[j * 4 + 2 * r] * inv[r], acc_o[j * 4 + 2 * r + 1] * inv[r]);
      }
    }
  }
}
