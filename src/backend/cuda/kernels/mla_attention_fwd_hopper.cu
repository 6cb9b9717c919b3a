// MLA attention forward for Hopper (sm_90a): FlashAttention-3 style on warpgroup MMA (wgmma).
// Same function and arguments as mla_attention_fwd in mla_attention_fwd.cu (the mma.sync
// fallback; q has Sq positions, k/v Skv, Sq ≠ Skv only without the causal mask), then the batch
// B and the work counter (the grid no longer carries B), so the host fills both alike:
//
//   o[b,s,h,:] = Σ_j softmax_j(scale·(q_nope·k_nope + q_pe·k_pe[b,j])) · v[b,j,h,:]
//   lse[b,h,s] = natural log of that softmax's denominator (scaled scores)
//
// Launch: a 1-D grid of G ≤ n_items CTAs, 384 threads, HOP_SMEM_BYTES of dynamic shared memory
// (-D defines from ops/mla_attention.ts, MLA_HOP_FWD_DEFINES; the launcher uses the same). A work
// item is one 128-row query tile of one (head, batch): n_items = H · ceil(Sq/128) · B, numbered
// as the one-CTA-per-tile grid (H, tiles, B) was: heads fastest, then query tiles from the last
// one down, then batches, so the longest causal tiles of every head come first and the short
// ones fill the tail.
// The CTAs are persistent: CTA x runs item x, then claims items G, G+1, … from a counter in
// device memory until none is left (its producer claims once it has issued the current item's
// last loads). The host launches G = min(n_items, SMs), so the next item's Q/K/V copies overlap
// the current item's last GEMMs and its epilogue (a short launch otherwise leaves those loads
// and stores exposed); G = n_items is one CTA per item, with no claims. Claims in index order
// balance the CTAs as the hardware's in-order dispatch of one CTA per item does. A static order
// does not: causal items' lengths fall with the query tile and jump back up at each batch, so a
// fixed assignment (a snake over rounds of G, say) gives some CTAs ~1.6× the average number of
// key tiles (counted for B=4, S=2048, H=16 on 132 SMs).
// The counter is never reset: a launch with G < n_items claims exactly n_items times (each of
// the n_items − G items past the first ones once, and one failed claim per CTA), so the host
// passes the counter's value at the launch's start (work_base) and claim c of the launch reads
// work_base + c (mod 2^32). Launches that share a counter must run one after another (they do:
// the context has one compute stream).
//
// Roles (warpgroups of 128 threads):
//   WG0, producer: one thread issues TMA bulk tensor copies (cp.async.bulk.tensor) of each
//     item's 128×192 Q tile, and of 128-key K (128×192) and V (128×128) tiles into a two-stage
//     ring that runs on across items; the copy engine writes them 128-byte swizzled (the layout
//     wgmma's descriptors read) and completes each on its stage's "full" mbarrier by byte count.
//     The warpgroup keeps few registers (setmaxnreg.dec) so the consumers can have more.
//   WG1, WG2, consumers: 64 query rows each. Per key tile: S = Q·Kᵀ as 12 wgmma m64n128k16
//     (K dim 192 = 128 from the nope block + 64 from the rope block; both operands from shared
//     memory), online softmax on the f32 accumulators in registers, P packed to bf16 registers
//     as the A operand of O += P·V (8 wgmma m64n128k16, V from shared memory, N-major), then
//     an "empty" arrival that gives the stage back to the producer. After an item's last S GEMM
//     they give Q back (q_empty); then the epilogue writes O and lse from the registers.
// Key tiles run from the last (the causal diagonal, or the partial tile past Skv) to the first,
// so only the first tile of an item needs a mask.
//
// Barriers (mbarriers in shared memory): q_full (1 arrival + Q's bytes) and q_empty (256
// consumer arrivals), used once per item: item k of a CTA waits phase k of each, parity k & 1.
// With Q, q_full publishes the item's index (a shared-memory slot the producer writes before
// arriving); after the CTA's last item it completes once more with the index −1: no more work.
// Per ring stage: K full, V full (1 arrival + bytes), K empty, V empty (256). A CTA's n-th K/V
// tile overall (counting across items) uses stage n % 2 and phase n / 2 of its barriers.
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
// Tensor maps (encoded by the host, src/backend/cuda/ops/mla_attention.ts; passed by value):
//   q_nope: dims (128, H, Sq, B), k_nope, v: (128, H, Skv, B), box (64, 1, 128, 1): one 64-column
//   block of 128 rows of one head per copy; q_pe: (64, H, Sq, B), same box; k_pe: (64, Skv, B),
//   box (64, 128, 1). Rows past Sq / Skv lie outside the map's extent and arrive as zeros.
//
// Ring slots (ring attention in one launch, parallel/ring_attention.ts; ring_n = 1 otherwise):
// q holds the rank's Sq = 2c zigzag tokens (chunks rank and 2n−1−rank, c = ring_split, a
// multiple of 128) and k/v hold n slots of B batch rows of Skv = 2c tokens each, slot-major (the
// maps' batch coordinate is slot·B + b). Slot 0 is the rank's own k/v under the causal mask (exact
// over the 2c local tokens, which are in increasing global order); slot j ≥ 1 holds the k/v of
// rank src = (rank − j) mod n: if src < rank every query sees the slot's first c keys (chunk src);
// if src > rank only the queries of the second chunk (rows ≥ c) see all 2c. So an item walks
// slot 0's tiles as without a ring, then its tiles of each later slot, all unmasked, and one
// online softmax covers the whole ring: no partial outputs to merge. The ring's items have the
// same count and mean length as the whole sequence's (s/128 query tiles a head, ~s/256 key tiles
// each), which is what lets short ring blocks run as fast as the whole-sequence kernel.
#include "mla_attention_hopper.cuh"

#if !defined(MLA_HOP_FWD_THREADS) || !defined(MLA_HOP_FWD_ROWS) || !defined(MLA_HOP_FWD_KEYS) || !defined(MLA_HOP_FWD_SMEM)
#error "MLA_HOP_FWD_THREADS, _ROWS, _KEYS and _SMEM are set by ops/mla_attention.ts (MLA_HOP_FWD_DEFINES)"
#endif

namespace mla {
constexpr int HOP_BM = MLA_HOP_FWD_ROWS;    // query rows per block (2 consumer warpgroups × 64)
constexpr int HOP_BN = MLA_HOP_FWD_KEYS;    // key rows per tile (the K/V copies' box)
constexpr int HOP_STAGES = 2;               // K/V ring depth
constexpr int HOP_THREADS = MLA_HOP_FWD_THREADS;  // producer + 2 consumer warpgroups
static_assert(HOP_THREADS == 3 * 128 && HOP_BM == 2 * 64 && HOP_BN == 128,
              "a producer and two consumer warpgroups of 64 query rows; S tiles are wgmma m64n128");
constexpr int HOP_Q_BYTES = HOP_BM * D_QK * 2;   // 49152
constexpr int HOP_K_BYTES = HOP_BN * D_QK * 2;   // 49152
constexpr int HOP_V_BYTES = HOP_BN * D_V * 2;    // 32768
constexpr int HOP_Q_BLOCK = HOP_BM * 128;        // bytes of one 64-column block of Q
constexpr int HOP_K_BLOCK = HOP_BN * 128;        // … of K and of V
constexpr int HOP_BAR_OFFSET = HOP_Q_BYTES + HOP_STAGES * (HOP_K_BYTES + HOP_V_BYTES);
// q_full, q_empty, then per stage: K full, V full, K empty, V empty. K and V have their own
// barriers because a K stage frees after its S GEMM, well before its V stage frees after P·V.
constexpr int HOP_NUM_BARS = 2 + 4 * HOP_STAGES;
// The current item's index (int), after the barriers, in an 8-byte slot.
constexpr int HOP_ITEM_OFFSET = HOP_BAR_OFFSET + HOP_NUM_BARS * 8;
// +1024: the dynamic shared window is only guaranteed 16-byte aligned; the kernel rounds up.
constexpr int HOP_SMEM_BYTES = HOP_ITEM_OFFSET + 8 + 1024;
static_assert(HOP_SMEM_BYTES == MLA_HOP_FWD_SMEM, "MLA_HOP_FWD_SMEM (the launch's shared memory) must match this layout");
static_assert(HOP_SMEM_BYTES <= 232448, "over the 227 KB a Hopper block may use");
constexpr int HOP_PRODUCER_REGS = 40;
constexpr int HOP_CONSUMER_REGS = 232;  // 128·40 + 256·232 = 64512 ≤ 65536
}  // namespace mla

// Build switches (a variant and profiling builds; defaults below): what each does is in
// bench/attention_notes.md, "Build switches". MLA_HOP_PINGPONG 1 is the kernel the host runs:
// the consumer warpgroups alternate their GEMMs and overlap tile i's softmax with tile i-1's P·V.
#ifndef MLA_HOP_PINGPONG
#define MLA_HOP_PINGPONG 1
#endif
#ifndef MLA_HOP_PROFILE_NO_SOFTMAX
#define MLA_HOP_PROFILE_NO_SOFTMAX 0
#endif
#ifndef MLA_HOP_PROFILE_NO_LOADS
#define MLA_HOP_PROFILE_NO_LOADS 0
#endif

using namespace mla;
using namespace mla::hop;

namespace {

// Ring slots (header): n slots of k/v, slot j of the rank `rank`'s ring holding the k/v of rank
// (rank − j) mod n; split = c, the zigzag chunk (a multiple of 128). n = 1: no ring.
struct Ring {
  int n, rank, split;
};

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
    wgmma_ss_m64n128k16(acc_s, desc(sQ_wg + off, 16, 1024), desc(tK + koff, 16, 1024), kk > 0);
  }
}

// acc_o += P·V: keys are the K dim, 8 steps of 16 keys = 2048 bytes of V rows each.
__device__ __forceinline__ void gemm_pv(float* acc_o, const u32 (*p)[4], u32 tV) {
  wgmma_fence();
  #pragma unroll
  for (int kk = 0; kk < HOP_BN / 16; kk++) wgmma_rs_m64n128k16_tb(acc_o, p[kk], desc(tV + kk * 2048, HOP_K_BLOCK, 1024));
}

// −inf for keys past Skv and, when causal, keys after the query.
__device__ __forceinline__ void mask_scores(float* acc_s, int k0, int row_g, int Skv, int causal, int t) {
  #pragma unroll
  for (int j = 0; j < 16; j++)
    #pragma unroll
    for (int e = 0; e < 4; e++) {
      const int key = k0 + j * 8 + 2 * t + (e & 1);
      const int query = row_g + (e >> 1) * 8;
      if (key >= Skv || (causal && key > query)) acc_s[j * 4 + e] = -inf_f32();
    }
}

// New running maxima, acc_s ← exp2 of the scaled, shifted scores, running sums; alpha is the
// factor the accumulated O of each row must be multiplied by.
__device__ __forceinline__ void online_softmax(float* acc_s, float* row_max, float* row_sum, float* alpha, float scale_log2) {
#if MLA_HOP_PROFILE_NO_SOFTMAX
  alpha[0] = alpha[1] = 1.f;
  row_max[0] = row_max[1] = 0.f;
  row_sum[0] = row_sum[1] = 1.f;
  return;
#endif
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

// ---- work items (the header's numbering and claims) ----
// One 128-row query tile of one (head, batch): its first query row, the key tiles of slot 0 (the
// k/v of the launch without a ring) and of all slots.
struct WorkItem {
  int h, b, q0, n0, n_tiles;
};

// Key tiles of ring slot j ≥ 1 that the query tile at q0 sees (header: "Ring slots"; a tile
// lies within one chunk, as c is a multiple of 128).
__device__ __forceinline__ int ring_slot_tiles(const Ring& R, int j, int q0) {
  const RingSlotView s = ring_slot_view(R.n, R.rank, R.split, j);
  return q0 >= s.first_query ? s.keys / HOP_BN : 0;
}

// Item `it` as the 3-D grid (x = h, y = query tile from the last, z = b) numbered it = x + H·(y + tiles·z).
__device__ __forceinline__ WorkItem work_item(int it, int H, int num_q_tiles, int Sq, int Skv, int causal, const Ring& R) {
  WorkItem w;
  w.h = it % H;
  const int rest = it / H;
  w.b = rest / num_q_tiles;
  w.q0 = (num_q_tiles - 1 - rest % num_q_tiles) * HOP_BM;
  w.n0 = causal ? (min(w.q0 + HOP_BM, Sq) + HOP_BN - 1) / HOP_BN : (Skv + HOP_BN - 1) / HOP_BN;
  w.n_tiles = w.n0;
  for (int j = 1; j < R.n; j++) w.n_tiles += ring_slot_tiles(R, j, w.q0);
  return w;
}

// Tile i of item w (the order the producer issues and the consumers take them): slot 0's from
// the last (the diagonal or the partial tile past Skv, which alone needs a mask) to the first,
// then each later slot's from its first. Returns the tile's first key; slot: its ring slot.
__device__ __forceinline__ int item_tile(const WorkItem& w, const Ring& R, int i, int& slot) {
  slot = 0;
  if (i < w.n0) return (w.n0 - 1 - i) * HOP_BN;
  i -= w.n0;
  for (slot = 1;; slot++) {
    const int t = ring_slot_tiles(R, slot, w.q0);
    if (i < t) return i * HOP_BN;
    i -= t;
  }
}

// The next item for this CTA, or -1 when none is left: the launch's c-th claim (c = counter −
// work_base, mod 2^32) gets item G + c. With one CTA per item there is nothing to claim.
__device__ __forceinline__ int claim_item(int n_items, unsigned* work_counter, unsigned work_base) {
  if (static_cast<int>(gridDim.x) >= n_items) return -1;
  const unsigned c = atomicAdd(work_counter, 1u) - work_base;
  const long long it = static_cast<long long>(gridDim.x) + c;
  return it < n_items ? static_cast<int>(it) : -1;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(HOP_THREADS, 1)
mla_attention_fwd_hopper(const __grid_constant__ TensorMap tm_q_nope, const __grid_constant__ TensorMap tm_q_pe,
                         const __grid_constant__ TensorMap tm_k_nope, const __grid_constant__ TensorMap tm_k_pe,
                         const __grid_constant__ TensorMap tm_v, bf16_t* __restrict__ o, float* __restrict__ lse,
                         int Sq, int Skv, int H, float scale, int causal, int B,
                         unsigned* __restrict__ work_counter, unsigned work_base, int ring_n, int ring_rank, int ring_split) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const u32 sQ = base;
  const u32 sK = sQ + HOP_Q_BYTES;                      // [stage] K tiles
  const u32 sV = sK + HOP_STAGES * HOP_K_BYTES;         // [stage] V tiles
  const u32 bars = base + HOP_BAR_OFFSET;
  const u32 bar_q = bars, bar_q_empty = bars + 8u;
  auto bar_full_k = [&](int s) { return bars + 8u * (2 + s); };
  auto bar_full_v = [&](int s) { return bars + 8u * (2 + HOP_STAGES + s); };
  auto bar_empty_k = [&](int s) { return bars + 8u * (2 + 2 * HOP_STAGES + s); };
  auto bar_empty_v = [&](int s) { return bars + 8u * (2 + 3 * HOP_STAGES + s); };
  // The item the consumers run next (written by the producer before it arrives on q_full).
  volatile int* item_slot = reinterpret_cast<volatile int*>(smem_raw + (base - smem_addr(smem_raw)) + HOP_ITEM_OFFSET);

  const int tid = threadIdx.x;
  const int wg = tid >> 7;  // 0 producer, 1..2 consumers
  const int num_q_tiles = (Sq + HOP_BM - 1) / HOP_BM;
  const int n_items = H * num_q_tiles * B;  // ≤ B·Sq·H < 2^31 (the host checks)
  const Ring ring{ring_n, ring_rank, ring_split};
  // A grid wider than the work: this CTA has no item (the whole CTA leaves before any barrier).
  if (static_cast<int>(blockIdx.x) >= n_items) return;

  if (tid == 0) {
    mbar_init(bar_q, 1);
    mbar_init(bar_q_empty, 256);
    for (int s = 0; s < HOP_STAGES; s++) {
      mbar_init(bar_full_k(s), 1);
      mbar_init(bar_full_v(s), 1);
      mbar_init(bar_empty_k(s), 256);
      mbar_init(bar_empty_v(s), 256);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  const long long HS = static_cast<long long>(H);

  if (wg == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(HOP_PRODUCER_REGS));
    // One thread issues every copy; a stage is refilled as soon as both consumer warpgroups have
    // arrived on its "empty" barrier (K after its S GEMM, V after its P·V GEMM), and Q as soon
    // as both have arrived on q_empty after the previous item's last S GEMM. The next item is
    // claimed right after the current one's last loads are issued: its claim's latency then
    // overlaps the consumers' last tiles, and the CTA that will be free first claims first.
    if (tid == 0) {
      tmap_prefetch(tm_q_nope);
      tmap_prefetch(tm_q_pe);
      tmap_prefetch(tm_k_nope);
      tmap_prefetch(tm_k_pe);
      tmap_prefetch(tm_v);
      u32 kv = 0;  // K/V tiles issued so far: tile kv uses stage kv % 2, phase kv / 2
      int it = blockIdx.x;  // this CTA's first item; the later ones are claimed
      for (int k = 0;; k++) {
        if (it < 0) {
          // No more work: q_full's next phase carries −1 in place of an item. After q_empty,
          // like a Q: the consumers have waited for the previous phase (k ≥ 1 here, as the
          // first item always exists) and read the previous index.
          mbar_wait(bar_q_empty, (k - 1) & 1);
          *item_slot = -1;
          mbar_arrive(bar_q);
          break;
        }
        const WorkItem w = work_item(it, H, num_q_tiles, Sq, Skv, causal, ring);
        for (int i = 0; i < w.n_tiles; i++, kv++) {
          const int s = kv % HOP_STAGES;
          const u32 parity = (kv / HOP_STAGES - 1) & 1;  // the phase in which tile kv - 2 freed the stage
          int slot;
          const int k0 = item_tile(w, ring, i, slot);
          const int kb = slot * B + w.b;  // the k/v maps' batch coordinate: slot-major
          const u32 tK = sK + s * HOP_K_BYTES, tV = sV + s * HOP_V_BYTES;
          const bool refill = kv >= HOP_STAGES;
          const bool copy = !(MLA_HOP_PROFILE_NO_LOADS && refill);  // else re-publish the stage as it is
          if (refill) mbar_wait(bar_empty_k(s), parity);
          if (copy) {
            mbar_arrive_expect_tx(bar_full_k(s), HOP_K_BYTES);
            tma_load_4d(tK, tm_k_nope, bar_full_k(s), 0, w.h, k0, kb);
            tma_load_4d(tK + HOP_K_BLOCK, tm_k_nope, bar_full_k(s), 64, w.h, k0, kb);
            tma_load_3d(tK + 2 * HOP_K_BLOCK, tm_k_pe, bar_full_k(s), 0, k0, kb);
          } else {
            mbar_arrive(bar_full_k(s));
          }
          // Q after the item's first K tile: that K stage was freed by the S GEMM of tile kv - 2,
          // a tile before the previous item's last S GEMM frees Q (q_empty), so K goes out first
          // and lands no later than Q; issued the other way round, K would queue behind Q's
          // 48 KB. The first S GEMM needs both; the first V is needed only later, so it goes last.
          if (i == 0) {
            if (k > 0) mbar_wait(bar_q_empty, (k - 1) & 1);
            *item_slot = it;  // published by the arrival on q_full below (release; the wait acquires)
            if (MLA_HOP_PROFILE_NO_LOADS && k > 0) {
              mbar_arrive(bar_q);
            } else {
              mbar_arrive_expect_tx(bar_q, HOP_Q_BYTES);
              tma_load_4d(sQ, tm_q_nope, bar_q, 0, w.h, w.q0, w.b);
              tma_load_4d(sQ + HOP_Q_BLOCK, tm_q_nope, bar_q, 64, w.h, w.q0, w.b);
              tma_load_4d(sQ + 2 * HOP_Q_BLOCK, tm_q_pe, bar_q, 0, w.h, w.q0, w.b);
            }
          }
          if (refill) mbar_wait(bar_empty_v(s), parity);
          if (copy) {
            mbar_arrive_expect_tx(bar_full_v(s), HOP_V_BYTES);
            tma_load_4d(tV, tm_v, bar_full_v(s), 0, w.h, k0, kb);
            tma_load_4d(tV + HOP_K_BLOCK, tm_v, bar_full_v(s), 64, w.h, k0, kb);
          } else {
            mbar_arrive(bar_full_v(s));
          }
        }
        it = claim_item(n_items, work_counter, work_base);
      }
    }
  } else {
    // ---------------- consumers ----------------
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(HOP_CONSUMER_REGS));
    const int ctid = tid - 128 * wg;          // 0..127 within the warpgroup
    const int warp = ctid >> 5, lane = ctid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int wg_row0 = (wg - 1) * 64;        // first query row of this warpgroup in the tile
    const float scale_log2 = scale * LOG2E;
    const u32 sQ_wg = sQ + wg_row0 * 128;

    float acc_o[64];
    float row_max[2];  // raw (unscaled) maxima of rows g, g+8
    float row_sum[2];  // this thread's partial sums (quad-reduced at the end)
    float acc_s[64];
    float alpha[2];
    u32 p[8][4];

#if MLA_HOP_PINGPONG
    // Ping-pong: the two consumer warpgroups take turns issuing their GEMMs (named barriers 1
    // and 2), so one's softmax runs while the other's wgmmas own the tensor cores. Within a
    // warpgroup, tile i's S GEMM and tile i-1's P·V GEMM are issued together; the softmax of
    // tile i overlaps that P·V. The turns run on across items as one sequence of the CTA's
    // tiles, so consumer 0 may start the next item (once its Q is in) while consumer 1 finishes
    // this one. Consumer 1 opens the first turn for consumer 0 once and hands over after every
    // tile; consumer 0 takes the turn after consumer 1's last tile when the CTA runs out of
    // work. Over the CTA's T tiles, barrier 1 sees T + 1 waits (consumer 0) and 1 + T arrivals
    // (consumer 1), barrier 2 T waits (consumer 1) and T arrivals (consumer 0): both end
    // balanced, and an item of one tile is a turn like any other. Strict alternation keeps at
    // most one generation of either barrier open.
    const int me = wg - 1, other = 2 - wg;
    if (me == 1) named_bar_arrive(1 + other, 256);
#endif
    u32 kv = 0;  // K/V tiles consumed so far, counted as the producer counts them
    for (int k = 0;; k++) {
      mbar_wait(bar_q, k & 1);
      const int it = *item_slot;  // read before this item's q_empty arrival, after which it may change
      if (it < 0) break;
      const WorkItem w = work_item(it, H, num_q_tiles, Sq, Skv, causal, ring);
      const int n_tiles = w.n_tiles;
      const int row_g = w.q0 + wg_row0 + warp * 16 + g;  // this thread's first query row (the other: +8)
      #pragma unroll
      for (int i = 0; i < 64; i++) acc_o[i] = 0.f;
      row_max[0] = row_max[1] = -inf_f32();
      row_sum[0] = row_sum[1] = 0.f;

#if MLA_HOP_PINGPONG
      const int s0 = kv % HOP_STAGES;
      mbar_wait(bar_full_k(s0), (kv / HOP_STAGES) & 1);
      named_bar_sync(1 + me, 256);
      gemm_s(acc_s, sQ_wg, sK + s0 * HOP_K_BYTES);
      wgmma_commit();
      named_bar_arrive(1 + other, 256);
      wgmma_wait<0>();
      mbar_arrive(bar_empty_k(s0));
      if (n_tiles == 1) mbar_arrive(bar_q_empty);  // Q read for the last time in this item
      // The first tile is slot 0's last: the only one that may hold future keys or keys past Skv.
      if (causal || w.n0 * HOP_BN > Skv) mask_scores(acc_s, (w.n0 - 1) * HOP_BN, row_g, Skv, causal, t);
      online_softmax(acc_s, row_max, row_sum, alpha, scale_log2);
      pack_a<HOP_BN>(p, acc_s);  // P as the A operand of P·V
      for (int i = 1; i < n_tiles; i++) {
        const u32 c = kv + i;  // this tile's number in the ring
        const int s = c % HOP_STAGES, prev = (c - 1) % HOP_STAGES;
        mbar_wait(bar_full_k(s), (c / HOP_STAGES) & 1);
        mbar_wait(bar_full_v(prev), ((c - 1) / HOP_STAGES) & 1);
        named_bar_sync(1 + me, 256);
        gemm_s(acc_s, sQ_wg, sK + s * HOP_K_BYTES);
        wgmma_commit();
        gemm_pv(acc_o, p, sV + prev * HOP_V_BYTES);
        wgmma_commit();
        named_bar_arrive(1 + other, 256);
        wgmma_wait<1>();  // S of tile i done; P·V of tile i-1 still running
        mbar_arrive(bar_empty_k(s));
        if (i == n_tiles - 1) mbar_arrive(bar_q_empty);  // Q read for the last time in this item
        online_softmax(acc_s, row_max, row_sum, alpha, scale_log2);
        wgmma_wait<0>();  // P·V done: the V stage and the P registers are free, O may be rescaled
        mbar_arrive(bar_empty_v(prev));
        rescale_o(acc_o, alpha);
        pack_a<HOP_BN>(p, acc_s);  // P as the A operand of P·V
      }
      const u32 c_last = kv + n_tiles - 1;
      mbar_wait(bar_full_v(c_last % HOP_STAGES), (c_last / HOP_STAGES) & 1);
      gemm_pv(acc_o, p, sV + (c_last % HOP_STAGES) * HOP_V_BYTES);
      wgmma_commit();
      wgmma_wait<0>();
      mbar_arrive(bar_empty_v(c_last % HOP_STAGES));  // the ring runs on into the next item
#else
      for (int i = 0; i < n_tiles; i++) {
        const u32 c = kv + i;  // this tile's number in the ring
        const int s = c % HOP_STAGES;
        const int k0 = (w.n0 - 1 - i) * HOP_BN;  // slot 0's tiles come first; only i = 0 uses it
        mbar_wait(bar_full_k(s), (c / HOP_STAGES) & 1);
        gemm_s(acc_s, sQ_wg, sK + s * HOP_K_BYTES);
        wgmma_commit();
        wgmma_wait<0>();
        mbar_arrive(bar_empty_k(s));
        if (i == n_tiles - 1) mbar_arrive(bar_q_empty);  // Q read for the last time in this item
        // Only the first tile processed can hold future keys (causal diagonal) or keys past Skv.
        if (i == 0 && (causal || k0 + HOP_BN > Skv)) mask_scores(acc_s, k0, row_g, Skv, causal, t);
        online_softmax(acc_s, row_max, row_sum, alpha, scale_log2);
        rescale_o(acc_o, alpha);
        pack_a<HOP_BN>(p, acc_s);  // P as the A operand of P·V
        mbar_wait(bar_full_v(s), (c / HOP_STAGES) & 1);
        gemm_pv(acc_o, p, sV + s * HOP_V_BYTES);
        wgmma_commit();
        wgmma_wait<0>();
        mbar_arrive(bar_empty_v(s));
      }
#endif
      kv += n_tiles;

      // Epilogue: normalise and write bf16 pairs straight from the accumulators.
      const long long row_bsh0 = static_cast<long long>(w.b) * Sq * H + w.h;  // (b, s=0, h) row index of o
      float inv[2];
      #pragma unroll
      for (int r = 0; r < 2; r++) {
        float sum = row_sum[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        inv[r] = sum > 0.f ? 1.f / sum : 0.f;
        const int query = row_g + r * 8;
        if (t == 0 && query < Sq)
          lse[(static_cast<long long>(w.b) * H + w.h) * Sq + query] = sum > 0.f ? row_max[r] * scale + logf(sum) : -inf_f32();
      }
      #pragma unroll
      for (int r = 0; r < 2; r++) {
        const int query = row_g + r * 8;
        if (query < Sq) {
          bf16_t* orow = o + (row_bsh0 + query * HS) * D_V + 2 * t;
          #pragma unroll
          for (int j = 0; j < 16; j++)
            *reinterpret_cast<u32*>(orow + j * 8) = pack_bf16x2(acc_o[j * 4 + 2 * r] * inv[r], acc_o[j * 4 + 2 * r + 1] * inv[r]);
        }
      }
    }
#if MLA_HOP_PINGPONG
    if (me == 0) named_bar_sync(1, 256);  // consumer 1's hand-over after the CTA's last tile
#endif
  }
}
