// MLA attention backward for Hopper (sm_90a): the dK/dV(/dQ) kernel in the style of
// FlashAttention-3's backward, on warpgroup MMA (wgmma). It replaces mla_attention_bwd_dkdv
// (mla_attention_bwd.cu, mma.sync) and keeps its arguments (except that the six inputs
// q_nope, q_pe, k_nope, k_pe, v, dout arrive as TMA tensor maps), its scratch layouts and its
// neighbours: mla_attention_bwd_preprocess (D = rowsum(dO∘O), zeroed f32 accumulators) runs
// before it and mla_attention_bwd_finish (dq_accum → bf16 dq, dk_pe summed over heads) after it.
// With P = exp(scale·Q·Kᵀ − lse) (recomputed), D from preprocess:
//   dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P∘(dP − D),  dK = scale·dSᵀ·Q,  dQ(unscaled) = dS·K
//
// q, dout, o have Sq positions and k, v Skv (Sq ≠ Skv only without the causal mask: a ring
// attention block); the tensor maps of q, dout and dq_accum span Sq, those of k, v Skv.
// Ring slots (ring attention in one launch; see the forward kernel's header): k/v, dk_nope, dv
// and dk_pe's f32 parts hold ring_n slots of B batch rows (slot-major), grid y runs over every
// slot's key tiles (key_tile below), and each tile walks the query tiles that see it; ring_n = 1:
// no ring.
// Launch: grid (H, ceil(Skv/128) + the later slots' key tiles, B), 384 threads, HB_SMEM_BYTES of dynamic shared memory
// (-D defines from ops/mla_attention.ts, MLA_HOP_BWD_DEFINES; the launcher uses the same).
// Heads vary fastest and blockIdx.y is the key tile, so under a causal mask the longest key
// tiles (the first, which see every later query) of every head start first.
// Arguments as mla_attention_bwd_dkdv, plus dq_accum's tensor map last: dq_accum null skips dQ
// (deterministic mode, where mla_attention_bwd_dq computes it); otherwise dQ is added through
// the map and the pointer only says that it is; dkpe_per_head 0 adds dk_pe into dkpe_f32 [B,Skv,64] with
// atomics, 1 stores this head's part into dkpe_f32 [B,Skv,H,64].
//
// Tiles: one block per (128-key tile, head, batch); it walks the query tiles of 64 rows that
// can see its keys (under the causal mask: from the tile holding its first key to the end).
// Why 128 keys and 64 queries: dQ leaves the block as f32 adds of 64×192 per (key tile,
// query tile) step, so the bytes of adds per FLOP halve with each doubling of the key tile
// (128 keys: 48 KB per 13.6 MFLOP, as FA3's 32 KB per 10.5 at d=128); the query tile is the N
// dim of the two recompute GEMMs and the K dim of dV/dK, and 64 is what the registers allow.
//
// Roles (warpgroups of 128 threads):
//   WG0, producer (setmaxnreg 24; only its warp 0 works): lane 0 issues TMA bulk tensor copies
//     (one per 64-column block) of K (128×192: k_nope of this head | k_pe shared by all heads)
//     and V (128×128) once, then per query step of Q (64×192: q_nope | q_pe) and dO (64×128)
//     into a 2-stage ring; the copy engine writes them 128-byte swizzled (the layout the wgmma
//     descriptors read: the destinations are 1024-byte aligned) and zero-fills rows past S.
//     The warp's 32 lanes load lse·log2(e) and D (64 floats each, 2 + 2 per lane, ordinary
//     loads/stores: a [B,H,S] f32 row's stride need not be the 16-byte multiple TMA needs;
//     +inf lse past S makes P exactly 0 there).
//   WG1, WG2, consumers (setmaxnreg 240): each owns 64 of the 128 keys, for every step:
//     Sᵀ  = K_w·Qᵀ     12 × wgmma m64n64k16 SS          (recompute, K dim 192)
//     dPᵀ = V_w·dOᵀ     8 × wgmma m64n64k16 SS
//     Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e), masked (key > query, key ≥ S) branch-free;
//     dSᵀ = Pᵀ∘(dPᵀ − D) (Pᵀ as rounded to bf16), both packed to bf16 registers, which are
//     exactly the A fragments of the next two products (the C layout of m64n64 rows = keys):
//     dV_w += Pᵀ·dO     4 × wgmma m64n128k16 RS (dO MN-major)
//     dK_w += dSᵀ·Q     4 × (m64n128k16 + m64n64k16) RS (q_nope block | q_pe block)
//     dSᵀ is also stored to shared memory (bf16, [key][query], swizzled: a conflict-free
//     st.shared.b32 per pair; buffer i%2). Step i's dQ belongs to consumer i%2, which computes
//     it during step i+1, after its own dV/dK GEMMs (the last step's at once), when the other
//     consumer's half has long been stored: neither consumer waits for the other's current
//     step. dQ = dS·K (64 queries × 192, K dim 128 keys; A = dSᵀ MN-major, B = K MN-major) in
//     three 64-column GEMMs (wgmma m64n64k16 SS), each next one running while the previous
//     one's results leave (see dq_step). Staging: each warp writes its 16 rows × 64 columns
//     into its own 4 KB box (f32, 128-byte swizzled) and its lane 0 issues one TMA bulk
//     reduce-add of that box into dq_accum (cp.reduce.async.bulk.tensor; 18th argument:
//     dq_accum's 5-D tensor map, boxes of 64 columns × 16 queries), waiting only for the copy
//     engine to have read the box's previous contents: no barrier beyond the warp. A warp's
//     reduce-adds are serialised at a near-constant cost per add, whatever its size up to a
//     few KB, so the box size sets the owner's staging time.
//   The consumers finish with dV, dK·scale (bf16) and the dk_pe part (f32).
//
// Registers per consumer thread (setmaxnreg 240; 128·24 + 256·240 = 64512 ≤ 65536):
//   dV_w 64×128 f32 = 64, dK_w 64×192 f32 = 96: 160 live for the whole kernel;
//   per step, one GEMM in flight at a time: Sᵀ 32 → Pᵀ 16 bf16; dPᵀ 32 → dSᵀ 16 bf16; the
//   dV/dK GEMMs read those 32; then the dQ accumulators, 32 (one 64-column block at a time).
//   Peak ≈ 160 + 32 + addresses. ptxas (nvcc 13.0): no spill, no C7512 (168
//   registers: the launch bound; setmaxnreg moves them, and an .inc waits until .decs freed
//   as many, so the two must balance). No slack: HGMMA accumulators are whole aligned register
//   blocks, so two GEMMs' accumulators in flight (two 64-column dQ blocks, or Sᵀ and dPᵀ) do
//   not fit without spilling; the wgmma descriptors are made opaque (desc_base), or the
//   compiler hoists every k-step's 64-bit descriptor out of the step loop and spills them.
// Shared memory (bytes, every tile 1024-aligned):
//   K 49152 | V 32768 | Q 2 × 24576 | dO 2 × 16384 | dSᵀ 2 × 16384 | dQ staging 2 × 4 × 4096 |
//   lse, D 2 × 512 | 5 mbarriers | 16 (the producer's key/query origin) | +1008 alignment
//   slack = 231464
//   (1 block per SM).
//   dSᵀ has two buffers (step i: i%2); a step's dQ runs one step late. Named barriers of the
//   two consumers (256): "dSᵀ full" b — the non-owner of step i bar.arrives after storing its
//   half, the owner bar.syncs before the dQ GEMMs; "dSᵀ read" b — the owner bar.arrives once
//   its dQ GEMMs completed (if step i+2 exists), and the non-owner of step i bar.syncs on it
//   before storing its half of step i+2 (the owner rewrites its own half only after its own
//   GEMMs completed).
// Barriers: kv_full (count 1: lane 0's arrive.expect_tx of the K/V bytes), full[2] (count 32:
//   the producer warp's lanes, each after its lse/D stores; lane 0 first adds the Q/dO bytes
//   (mbarrier.expect_tx) and issues their copies, so a phase completes only once every lane
//   stored and every byte landed), empty[2] (256 consumer arrivals, after the wgmma that last reads
//   the stage — dV/dK — completed; all 32 producer lanes wait on it before refilling the
//   stage, as each rewrites its lse/D part); the named barriers above. The producer never waits on a full barrier and issues a step completely before
//   it blocks on the next empty barrier, so no cycle can form; the copy engine's writes are
//   made visible to the consumers' wgmmas by the full barrier's completion itself (no proxy
//   fence, unlike the cp.async producer this replaced). bench/attention_bwd_protocol_model.py
//   checks this protocol on random interleavings.
//
// Floor (TARGETS.md: bwd FLOPs = 2.5 × b·h·s²·320, causal; / 790 TFLOP/s), b=1 h=16:
//   s=2048 0.068 ms, 4096 0.272, 8192 1.087, 16384 4.35, 32768 17.4 ms.
// This kernel computes 1664 FLOPs per (query, key) pair (Sᵀ 384, dPᵀ 256, dV 256, dK 384,
// dQ 384) = 1.04 × the convention's 1600, plus 6% (s=2048) … 0.2% (32768) of masked waste.
// Measured speeds, the per-phase clock profile and the alternatives tried for each choice
// above: bench/attention_notes.md ("Hopper backward: what its header recorded"). Build
// switches (profiling builds): bench/attention_notes.md, "Build switches".
//
// One file of ~650 lines, over the 500-line guide: the producer/consumer protocol (ring stages,
// mbarrier phases, the named barriers of the one-step-late dQ) is one unit that must be read
// and changed together, and the helpers here exist only for it.
#include "mla_attention_hopper.cuh"

#if !defined(MLA_HOP_BWD_THREADS) || !defined(MLA_HOP_BWD_KEYS) || !defined(MLA_HOP_BWD_QUERIES) || \
    !defined(MLA_HOP_BWD_DQ_ROWS) || !defined(MLA_HOP_BWD_SMEM)
#error "MLA_HOP_BWD_THREADS, _KEYS, _QUERIES, _DQ_ROWS and _SMEM are set by ops/mla_attention.ts (MLA_HOP_BWD_DEFINES)"
#endif

namespace mla {
constexpr int HB_BN = MLA_HOP_BWD_KEYS;          // keys per block (2 consumer warpgroups × 64)
constexpr int HB_BM = MLA_HOP_BWD_QUERIES;       // queries per step
constexpr int HB_STAGES = 2;                     // Q/dO/lse/D ring depth
constexpr int HB_THREADS = MLA_HOP_BWD_THREADS;  // producer + 2 consumer warpgroups
static_assert(HB_THREADS == 3 * 128 && HB_BN == 2 * 64 && HB_BM == 64,
              "a producer and two consumer warpgroups of 64 keys; a step's queries are the N of wgmma m64n64");
constexpr int HB_K_BYTES = HB_BN * D_QK * 2;     // 49152
constexpr int HB_V_BYTES = HB_BN * D_V * 2;      // 32768
constexpr int HB_Q_BYTES = HB_BM * D_QK * 2;     // 24576
constexpr int HB_DO_BYTES = HB_BM * D_V * 2;     // 16384
constexpr int HB_DS_BYTES = HB_BN * HB_BM * 2;   // 16384: dSᵀ [128 keys][64 queries]
constexpr int HB_K_BLOCK = HB_BN * 128;          // one 64-column block of K or V
constexpr int HB_Q_BLOCK = HB_BM * 128;          // one 64-column block of Q or dO
constexpr int HB_K_OFF = 0;
constexpr int HB_V_OFF = HB_K_OFF + HB_K_BYTES;
constexpr int HB_Q_OFF = HB_V_OFF + HB_V_BYTES;
constexpr int HB_DO_OFF = HB_Q_OFF + HB_STAGES * HB_Q_BYTES;
constexpr int HB_DS_OFF = HB_DO_OFF + HB_STAGES * HB_DO_BYTES;
// dSᵀ buffers: step i uses buffer i % 2; a step's dQ runs one step late (see the header), so the
// non-owner of step i-2's dQ waits for it to be read before storing its half of step i.
constexpr int HB_DS_BUFS = 2;
// dQ staging, one per consumer: four 16-query × 64-column f32 boxes (one per warp, 4 KB each;
// 32 lines of 128 bytes, 128-byte swizzled): what one bulk reduce-add copies out of.
static_assert(MLA_HOP_BWD_DQ_ROWS == 16, "a box holds one warp's 16 rows of the m64 accumulators");
constexpr int HB_DQ_BOX = MLA_HOP_BWD_DQ_ROWS * 64 * 4;  // 4096, one warp's box
constexpr int HB_DQ_BOX_BYTES = 4 * HB_DQ_BOX;        // 16384, one consumer's four
constexpr int HB_DQ_OFF = HB_DS_OFF + HB_DS_BUFS * HB_DS_BYTES;
constexpr int HB_LSE_OFF = HB_DQ_OFF + 2 * HB_DQ_BOX_BYTES;   // [stage][64] lse·log2e, then [stage][64] D
constexpr int HB_BAR_OFF = HB_LSE_OFF + 2 * HB_STAGES * HB_BM * 4;
constexpr int HB_NUM_BARS = 1 + 2 * HB_STAGES;   // kv_full, full[stage], empty[stage]
constexpr int HB_ORIGIN_OFF = HB_BAR_OFF + HB_NUM_BARS * 8;  // k0, first query row: for the producer (16 bytes)
// +1008: the dynamic shared window is only guaranteed 16-byte aligned; the kernel rounds it up
// to 1024, skipping at most 1008 bytes.
constexpr int HB_SMEM_BYTES = HB_ORIGIN_OFF + 16 + 1008;
static_assert(HB_SMEM_BYTES == MLA_HOP_BWD_SMEM, "MLA_HOP_BWD_SMEM (the launch's shared memory) must match this layout");
static_assert(HB_SMEM_BYTES <= 232448, "over the 227 KB a Hopper block may use");
static_assert(HB_V_OFF % 1024 == 0 && HB_Q_OFF % 1024 == 0 && HB_DO_OFF % 1024 == 0 && HB_DS_OFF % 1024 == 0 &&
              HB_DQ_OFF % 1024 == 0,
              "wgmma operands must start 1024-byte aligned");
// setmaxnreg only moves registers within the block's launch allocation (168 per thread, the
// __launch_bounds__ maximum for 384 threads): an .inc waits until .decs freed as many, forever
// if they never do. 128·24 + 256·240 = 384·168.
constexpr int HB_LAUNCH_REGS = 168;
constexpr int HB_PRODUCER_REGS = 24;
constexpr int HB_CONSUMER_REGS = 240;
static_assert(128 * HB_PRODUCER_REGS + 256 * HB_CONSUMER_REGS <= HB_THREADS * HB_LAUNCH_REGS,
              "setmaxnreg.inc would wait for registers no warpgroup gives up");
constexpr int HB_DSF_BAR = 4;          // named barriers 4, 5: dSᵀ buffer b holds both halves
constexpr int HB_DSE_BAR = 6;          // 6, 7: dSᵀ buffer b was read by its dQ GEMMs
static_assert(HB_DS_BUFS == 2, "one named barrier of each kind per dSᵀ buffer (ds_bar_sync)");
}  // namespace mla

using namespace mla;
using namespace mla::hop;

namespace {

// Profiling switches, off unless a build sets them: what each does is in
// bench/attention_notes.md, "Build switches" (bench/attention_harness.py builds them).
#ifndef MLA_HB_PROFILE_NO_SOFTMAX
#define MLA_HB_PROFILE_NO_SOFTMAX 0
#endif
#ifndef MLA_HB_PROFILE_NO_LOADS
#define MLA_HB_PROFILE_NO_LOADS 0
#endif
#ifndef MLA_HB_PROFILE_NO_STAGING
#define MLA_HB_PROFILE_NO_STAGING 0
#endif
#ifndef MLA_HB_PROFILE_CLOCKS
#define MLA_HB_PROFILE_CLOCKS 0
#endif
// Consumer phases in step order (HB_DQ_GEMM and HB_DQ_STAGE split HB_DQ; HB_STEPS counts the
// consumers' steps in SM 0's producer row); the producer's two: waiting for a free stage, then
// issuing the copies and loading lse/D.
enum HbPhase {
  HB_WAIT_FULL, HB_GEMM_S, HB_SOFTMAX, HB_GEMM_DP, HB_DS, HB_GEMM_DVDK, HB_WAIT_DS, HB_DQ, HB_STEPS, HB_WAIT_DSE,
  HB_DQ_GEMM, HB_DQ_STAGE, HB_WAIT_EMPTY = 0, HB_PRODUCE = 1, HB_PHASES = 16
};
#if MLA_HB_PROFILE_CLOCKS
}  // namespace
// Unmangled, so the harness finds it by name.
extern "C" {
__device__ unsigned long long hb_clocks[144 * 3 * HB_PHASES];
}
namespace {
// Adds the cycles since `last` to phase `phase` of this SM's `role` row (0 producer, 1-2 the
// consumers) and restarts the count.
__device__ __forceinline__ void hb_clock(long long& last, int role, int phase) {
  const long long now = clock64();
  u32 sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  atomicAdd(&hb_clocks[(sm * 3 + role) * HB_PHASES + phase], static_cast<unsigned long long>(now - last));
  last = now;
}
#define HB_CLOCK(role, phase)                    \
  do {                                           \
    if (prof_on) hb_clock(prof_last, role, phase); \
  } while (0)
#else
#define HB_CLOCK(role, phase) \
  do {                        \
  } while (0)
#endif


__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Until this thread's bulk groups have finished reading shared memory (.read) or completed.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void st_shared_f32x2(u32 addr, float a, float b) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(a), "f"(b) : "memory");
}

__device__ __forceinline__ void red_add_v2(float* p, float a, float b) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
}

// Named barrier `ID + b` (b = 0, 1: the dSᵀ buffer) of 256 threads: wait, or only arrive
// (bar ids must be constants).
template <int ID>
__device__ __forceinline__ void ds_bar_sync(int b) {
  if (b == 0) asm volatile("bar.sync %0, 256;" ::"n"(ID) : "memory");
  else asm volatile("bar.sync %0, 256;" ::"n"(ID + 1) : "memory");
}
template <int ID>
__device__ __forceinline__ void ds_bar_arrive(int b) {
  if (b == 0) asm volatile("bar.arrive %0, 256;" ::"n"(ID) : "memory");
  else asm volatile("bar.arrive %0, 256;" ::"n"(ID + 1) : "memory");
}

__device__ __forceinline__ void st_shared_v2(u32 addr, int a, int b) {
  asm volatile("st.shared.v2.u32 [%0], {%1, %2};" ::"r"(addr), "r"(a), "r"(b) : "memory");
}
__device__ __forceinline__ int2 ld_shared_v2(u32 addr) {
  int2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
  return v;
}

__device__ __forceinline__ float2 unpack_bf16x2(u32 x) {
  return make_float2(__uint_as_float(x << 16), __uint_as_float(x & 0xffff0000u));
}

// Sᵀ (this consumer's 64 keys × 64 queries) = K_w·Qᵀ, K dim 192 in 12 steps of 16 (4 per block).
// Descriptor offsets are in 16-byte units (desc_base): K-major, a k16 step is 32 bytes within a
// 64-column block, a block is HB_K_BLOCK / HB_Q_BLOCK bytes.
__device__ __forceinline__ void gemm_st(float* acc, u32 sK_w, u32 tQ) {
  const unsigned long long da = desc_base(sK_w, 16, 1024), db = desc_base(tQ, 16, 1024);
  #pragma unroll
  for (int kk = 0; kk < D_QK / 16; kk++)
    wgmma_ss_m64n64k16<0, 0>(acc, da + (kk >> 2) * (HB_K_BLOCK >> 4) + (kk & 3) * 2,
                             db + (kk >> 2) * (HB_Q_BLOCK >> 4) + (kk & 3) * 2, kk > 0);
}
// dPᵀ = V_w·dOᵀ, K dim 128.
__device__ __forceinline__ void gemm_dpt(float* acc, u32 sV_w, u32 tdO) {
  const unsigned long long da = desc_base(sV_w, 16, 1024), db = desc_base(tdO, 16, 1024);
  #pragma unroll
  for (int kk = 0; kk < D_V / 16; kk++)
    wgmma_ss_m64n64k16<0, 0>(acc, da + (kk >> 2) * (HB_K_BLOCK >> 4) + (kk & 3) * 2,
                             db + (kk >> 2) * (HB_Q_BLOCK >> 4) + (kk & 3) * 2, kk > 0);
}
// dV_w += Pᵀ·dO and dK_w += dSᵀ·Q: K dim = the 64 queries (4 steps of 16 rows = 2048 bytes of
// the MN-major dO and Q tiles).
__device__ __forceinline__ void gemm_dv_dk(float* acc_dv, float* acc_dk, const u32 (*p)[4], const u32 (*ds)[4], u32 tQ,
                                           u32 tdO) {
  const unsigned long long ddo = desc_base(tdO, HB_Q_BLOCK, 1024), dq = desc_base(tQ, HB_Q_BLOCK, 1024);
  #pragma unroll
  for (int kk = 0; kk < HB_BM / 16; kk++) {
    wgmma_rs_m64n128k16_tb(acc_dv, p[kk], ddo + kk * 128);
    wgmma_rs_m64n128k16_tb(acc_dk, ds[kk], dq + kk * 128);
    wgmma_rs_m64n64k16_tb(acc_dk + 64, ds[kk], dq + ((2 * HB_Q_BLOCK) >> 4) + kk * 128);
  }
}
// Chunk c (64 columns) of dQ = dS·K: 64 queries × 64, K dim = the 128 keys (8 steps; MN-major
// operands, 2048 bytes per step).
__device__ __forceinline__ void gemm_dq(float* acc, u32 tdS, u32 sK, int c) {
  const unsigned long long da = desc_base(tdS, HB_DS_BYTES, 1024), db = desc_base(sK + c * HB_K_BLOCK, HB_K_BLOCK, 1024);
  #pragma unroll
  for (int kk = 0; kk < HB_BN / 16; kk++) wgmma_ss_m64n64k16<1, 1>(acc, da + kk * 128, db + kk * 128, kk > 0);
}

// dq_accum[c0 + 32·c1, h = c2, q = c3, b = c4] += the f32 box at smem (bulk async-group; the copy
// engine does the adds in L2, whole lines at a time). The map is 5-D (32 columns, 6 blocks of
// 32 columns, H, S, B; box 32 × 2 × 1 × 16 × 1) so that a 64-column box keeps 128-byte lines.
__device__ __forceinline__ void tma_reduce_add_5d(const TensorMap& m, u32 src, int c0, int c1, int c2, int c3, int c4) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.5d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5, %6}], [%1];"
      ::"l"(tmap_addr(m)), "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4) : "memory");
}

// A warp's dQ staging box (stg + warp·4096, 16 queries × 64 columns): before storing, its lane 0
// waits until the copy engine has read the box's previous contents.
__device__ __forceinline__ void dq_box_wait() {
  if ((threadIdx.x & 31) == 0) bulk_wait_read();
  __syncwarp();
}
// 32 of the box's columns (half 0: its first 32, 1: the next), from acc16 as wgmma m64n64's
// first or second 16 accumulators hold them: thread (g, t) has rows g and g + 8 of the warp's
// 16, columns 8j + 2t and + 1. Row r's half h is 128-byte line 2r + h, its 16-byte units
// swizzled by line % 8: two wavefronts per 8-byte store, the least 256 bytes can take.
__device__ __forceinline__ void dq_box_store(const float* acc16, u32 stg, int warp, int half, int g, int t) {
  #pragma unroll
  for (int r = 0; r < 2; r++) {
    const int line = 2 * (g + 8 * r) + half;
    const u32 row = stg + warp * HB_DQ_BOX + line * 128 + (t & 1) * 8;
    #pragma unroll
    for (int j = 0; j < 4; j++)
      st_shared_f32x2(row + (((2 * j + (t >> 1)) ^ (line & 7)) << 4), acc16[4 * j + 2 * r], acc16[4 * j + 2 * r + 1]);
  }
}
// Its lane 0 issues the box's reduce-add into dq_accum (columns col..col+63 of queries q0 + 16·warp
// ..; queries past Sq lie outside the map: the copy engine skips them). No barrier beyond the
// warp. (Head and batch re-read from blockIdx, the warp from threadIdx: keeping them live here
// made the consumers spill.)
__device__ __forceinline__ void dq_box_issue(u32 stg, const TensorMap& tm_dq_accum, int col, int q0) {
  if (MLA_HB_PROFILE_NO_STAGING && q0 >= 0) return;
  fence_proxy_async();  // the copy engine reads what these generic stores wrote
  __syncwarp();
  if ((threadIdx.x & 31) == 0) {
    const int wq = (threadIdx.x >> 5) & 3;
    tma_reduce_add_5d(tm_dq_accum, stg + wq * HB_DQ_BOX, 0, col >> 5, blockIdx.x, q0 + wq * 16, blockIdx.z);
    bulk_commit();
  }
}

// One step's dQ = dS·K (dSᵀ buffer tdS, both consumers' halves; queries q0..q0+63) added to
// dq_accum: three 64-column GEMMs into the same 32 registers, each result stored into the warp's
// 4 KB box as soon as it completed (once the box's previous add was read), the next GEMM then
// running while the box's fence, reduce-add issue and read take their time. A warp's bulk
// reduce-adds are serialised at a near-constant cost each almost whatever their size up to a
// few KB (bench/tma_reduce_probe.cu), so three 4 KB boxes cost the owner's chain about half of
// what six 2 KB ones would.
__device__ __forceinline__ void dq_step(u32 tdS, u32 sK, u32 stg, int warp, int g, int t, const TensorMap& tm_dq_accum,
                                        int q0) {
  float x[32];
#if MLA_HB_PROFILE_CLOCKS  // split of the step into issuing + waiting for GEMMs and staging
  const bool prof_on = (threadIdx.x & 127) == 0;
  const int role = threadIdx.x >> 7;
  long long prof_last = clock64();
#endif
  #pragma unroll
  for (int c = 0; c < 3; c++) {  // columns [64c, 64c + 64)
    wgmma_fence();  // after the previous box's stores read these registers
    gemm_dq(x, tdS, sK, c);
    wgmma_commit();
    HB_CLOCK(role, HB_DQ_GEMM);
    if (c > 0) dq_box_issue(stg, tm_dq_accum, 64 * (c - 1), q0);  // the previous box, behind this GEMM
    HB_CLOCK(role, HB_DQ_STAGE);
    wgmma_wait<0>();
    HB_CLOCK(role, HB_DQ_GEMM);
    dq_box_wait();
    dq_box_store(x, stg, warp, 0, g, t);
    dq_box_store(x + 16, stg, warp, 1, g, t);
    HB_CLOCK(role, HB_DQ_STAGE);
  }
  dq_box_issue(stg, tm_dq_accum, 128, q0);
  HB_CLOCK(role, HB_DQ_STAGE);
}

// Key tile y of the launch (grid y): its ring slot, first key and first query tile. Slot 0
// (the launch without a ring: all of it) has ceil(Skv/128) tiles; ring slot j ≥ 1 the tiles of
// the keys some query sees, from the first query row that sees them (ring_slot_view), unmasked.
struct KeyTile {
  int slot, k0, m_begin;
};
__device__ __forceinline__ KeyTile key_tile(int y, int Skv, int causal, int ring_n, int ring_rank, int ring_split) {
  const int n0 = (Skv + HB_BN - 1) / HB_BN;
  if (y < n0) return {0, y * HB_BN, causal ? y * HB_BN / HB_BM : 0};  // causal: the query tile holding key k0
  y -= n0;
  for (int j = 1;; j++) {
    const RingSlotView s = ring_slot_view(ring_n, ring_rank, ring_split, j);
    if (y < s.keys / HB_BN) return {j, y * HB_BN, s.first_query / HB_BM};
    y -= s.keys / HB_BN;
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(HB_THREADS, 1)
mla_attention_bwd_dkdv_hopper(const __grid_constant__ TensorMap tm_q_nope, const __grid_constant__ TensorMap tm_q_pe,
                              const __grid_constant__ TensorMap tm_k_nope, const __grid_constant__ TensorMap tm_k_pe,
                              const __grid_constant__ TensorMap tm_v, const __grid_constant__ TensorMap tm_dout,
                              const float* __restrict__ lse, const float* __restrict__ d_sum,
                              bf16_t* __restrict__ dk_nope, bf16_t* __restrict__ dv, float* __restrict__ dq_accum,
                              float* __restrict__ dkpe_f32, int Sq, int Skv, int H, float scale, int causal, int dkpe_per_head,
                              const __grid_constant__ TensorMap tm_dq_accum, int ring_n, int ring_rank, int ring_split) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const u32 raw = smem_addr(smem_raw);
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 sK = base + HB_K_OFF, sV = base + HB_V_OFF, sQ = base + HB_Q_OFF, sdO = base + HB_DO_OFF;
  const u32 sdS = base + HB_DS_OFF, sdQ = base + HB_DQ_OFF;
  float* sLse = reinterpret_cast<float*>(smem_raw + (base - raw) + HB_LSE_OFF);  // [stage][64]
  float* sD = sLse + HB_STAGES * HB_BM;                                            // [stage][64]
  const u32 bar_kv = base + HB_BAR_OFF;
  auto bar_full = [&](int s) { return bar_kv + 8u * (1 + s); };
  auto bar_empty = [&](int s) { return bar_kv + 8u * (1 + HB_STAGES + s); };

  const int tid = threadIdx.x;
  // Warp-uniform to the compiler (a shuffle from lane 0), so values derived from it can live in
  // uniform registers, as wgmma descriptors must.
  const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);  // 0 producer, 1..2 consumers
  const int h = blockIdx.x, b = blockIdx.z;
  const KeyTile tile = key_tile(blockIdx.y, Skv, causal, ring_n, ring_rank, ring_split);
  const int k0 = tile.k0;
  const int kb = tile.slot * gridDim.z + b;     // the k/v side's batch coordinate: slot-major
  causal = causal && tile.slot == 0;            // later ring slots are unmasked
  const int num_q_tiles = (Sq + HB_BM - 1) / HB_BM;
  const int m_begin = tile.m_begin;
  const int n_steps = num_q_tiles - m_begin;    // ≥ 1: k0 < Skv, Skv = Sq when causal, and a ring's c < Sq

  if (tid == 0) {
    mbar_init(bar_kv, 1);
    for (int s = 0; s < HB_STAGES; s++) {
      mbar_init(bar_full(s), 32);
      mbar_init(bar_empty(s), 256);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    st_shared_v2(base + HB_ORIGIN_OFF, k0, m_begin * HB_BM);
  }
  __syncthreads();

  const long long HS = static_cast<long long>(H);
  const long long krow_bsh0 = static_cast<long long>(kb) * Skv * H + h;  // (kb, s=0, h) key row index

  if (wg == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(HB_PRODUCER_REGS));
    // Warp 0 alone: its lane 0 issues every TMA copy, and its 32 lanes load lse and D (which
    // TMA cannot copy: a [B,H,S] f32 row's stride S·4 bytes need not be a multiple of 16).
    // Warps 1-3 have nothing to do once their registers are given up.
    if (tid < 32) {
      const int lane = tid;
      // The key and query origins of the copies' coordinates, read back from shared memory
      // (tid 0 stored them) instead of reusing k0/m_begin: when a TMA coordinate is the very
      // value the consumers' loop also uses, ptxas (nvcc 13.0) made the consumers spill 16
      // bytes and serialise their wgmmas (C7512), presumably because the copy's operands must
      // sit in uniform registers and the shared value then occupies one in the consumers too.
      const int2 origin = ld_shared_v2(base + HB_ORIGIN_OFF);
      const int k0 = origin.x, q_first = origin.y;
      const float* lse_bh = lse + (static_cast<long long>(b) * H + h) * Sq;
      const float* d_bh = d_sum + (static_cast<long long>(b) * H + h) * Sq;
      if (lane == 0) {
        tmap_prefetch(tm_q_nope);
        tmap_prefetch(tm_q_pe);
        tmap_prefetch(tm_k_nope);
        tmap_prefetch(tm_k_pe);
        tmap_prefetch(tm_v);
        tmap_prefetch(tm_dout);
        // K = k_nope (two 64-column blocks) | k_pe, V = two blocks; keys past Skv arrive as zeros.
        mbar_arrive_expect_tx(bar_kv, HB_K_BYTES + HB_V_BYTES);
        tma_load_4d(sK, tm_k_nope, bar_kv, 0, h, k0, kb);
        tma_load_4d(sK + HB_K_BLOCK, tm_k_nope, bar_kv, 64, h, k0, kb);
        tma_load_3d(sK + 2 * HB_K_BLOCK, tm_k_pe, bar_kv, 0, k0, kb);
        tma_load_4d(sV, tm_v, bar_kv, 0, h, k0, kb);
        tma_load_4d(sV + HB_K_BLOCK, tm_v, bar_kv, 64, h, k0, kb);
      }
#if MLA_HB_PROFILE_CLOCKS
      const bool prof_on = lane == 0;
      long long prof_last = clock64();
#endif
      for (int i = 0; i < n_steps; i++) {
        const int s = i % HB_STAGES;
        const int q0 = q_first + i * HB_BM;
        // Stage s was last read at step i-2; its consumers arrive once their dV/dK GEMMs are
        // done. Every lane waits: each overwrites its part of lse/D.
        if (i >= HB_STAGES) mbar_wait(bar_empty(s), ((i / HB_STAGES) - 1) & 1);
        HB_CLOCK(0, HB_WAIT_EMPTY);
        // Lane 0 first announces the Q/dO bytes and issues their copies, so they are in flight
        // while the lanes load lse and D from device memory (which TMA cannot do, see above).
        if (MLA_HB_PROFILE_NO_LOADS && i >= HB_STAGES) {
          mbar_arrive(bar_full(s));
          continue;
        }
        if (lane == 0) {
          const u32 full = bar_full(s), tQ = sQ + s * HB_Q_BYTES, tdO = sdO + s * HB_DO_BYTES;
          mbar_expect_tx(full, HB_Q_BYTES + HB_DO_BYTES);
          tma_load_4d(tQ, tm_q_nope, full, 0, h, q0, b);
          tma_load_4d(tQ + HB_Q_BLOCK, tm_q_nope, full, 64, h, q0, b);
          tma_load_4d(tQ + 2 * HB_Q_BLOCK, tm_q_pe, full, 0, h, q0, b);
          tma_load_4d(tdO, tm_dout, full, 0, h, q0, b);
          tma_load_4d(tdO + HB_Q_BLOCK, tm_dout, full, 64, h, q0, b);
        }
        // Rows past the end: lse = +inf, so P (and with it dS) is exactly 0; D = 0.
        #pragma unroll
        for (int k = 0; k < 2; k++) {
          const int r = lane + 32 * k;
          sLse[s * HB_BM + r] = q0 + r < Sq ? lse_bh[q0 + r] * LOG2E : inf_f32();
          sD[s * HB_BM + r] = q0 + r < Sq ? d_bh[q0 + r] : 0.f;
        }
        // Each lane's arrival releases its own lse/D stores (the consumers read them with
        // ordinary loads after their wait on the same barrier). The phase completes only when
        // all 32 lanes arrived and every announced byte landed (the copy engine's writes are
        // then visible to the consumers' wgmmas without a proxy fence). The producer never
        // waits on a full barrier, so it cannot block the consumers' progress on the step it
        // waits for.
        mbar_arrive(bar_full(s));
        HB_CLOCK(0, HB_PRODUCE);
      }
    }
  } else {
    // ---------------- consumers ----------------
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(HB_CONSUMER_REGS));
    const int w = wg - 1;               // 0, 1: keys 64·w.. of the tile
    const int ctid = tid - 128 * wg;
    const int warp = ctid >> 5, lane = ctid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int key_l = w * 64 + warp * 16 + g;  // this thread's first key row in the tile (the other: +8)
    const float scale_log2 = scale * LOG2E;
    const u32 sK_w = sK + w * 64 * 128, sV_w = sV + w * 64 * 128;
    const bool with_dq = dq_accum != nullptr;

    float acc_dv[64], acc_dk[96];  // dK: [0, 64) the nope columns (m64n128 layout), [64, 96) pe (m64n64)
    #pragma unroll
    for (int i = 0; i < 64; i++) acc_dv[i] = 0.f;
    #pragma unroll
    for (int i = 0; i < 96; i++) acc_dk[i] = 0.f;

    mbar_wait(bar_kv, 0);
#if MLA_HB_PROFILE_CLOCKS
    const bool prof_on = ctid == 0;
    long long prof_last = clock64();
#endif
    for (int i = 0; i < n_steps; i++) {
      const int s = i % HB_STAGES;
      const int q0 = (m_begin + i) * HB_BM;
      const u32 tQ = sQ + s * HB_Q_BYTES, tdO = sdO + s * HB_DO_BYTES;
      const int ds_buf = i % HB_DS_BUFS;
      const u32 tdS = sdS + ds_buf * HB_DS_BYTES;
      const float* tLse = sLse + s * HB_BM;
      const float* tD = sD + s * HB_BM;
      mbar_wait(bar_full(s), (i / HB_STAGES) & 1);
      HB_CLOCK(wg, HB_WAIT_FULL);

      float acc_s[32], acc_dp[32];
      u32 p[4][4], ds[4][4];
      // One GEMM at a time: Sᵀ and dPᵀ in flight together would need 64 accumulator registers
      // next to the 160 of dK/dV, which spills at 232 (ptxas, see the header).
      wgmma_fence();
      gemm_st(acc_s, sK_w, tQ);
      wgmma_commit();
      wgmma_wait<0>();
      HB_CLOCK(wg, HB_GEMM_S);
      // Pᵀ: rows = keys key_l (+8), columns = queries 8j+2t (+1). Element (j, e) of row r is
      // masked iff 8j + e < thr[r]: key ≥ Skv masks the whole row, causal masks key > query, i.e.
      // 8j + e < key − q0 − 2t (a bound ≤ 0 off the diagonal, so no branch is needed).
      int thr[2];
      #pragma unroll
      for (int r = 0; r < 2; r++) {
        const int key = k0 + key_l + 8 * r;
        thr[r] = key >= Skv ? (1 << 30) : causal ? key - q0 - 2 * t : -(1 << 30);
      }
      #pragma unroll
      for (int j = 0; j < 8; j++) {
        const float2 l2 = *reinterpret_cast<const float2*>(tLse + 8 * j + 2 * t);
        #pragma unroll
        for (int r = 0; r < 2; r++) {
#if MLA_HB_PROFILE_NO_SOFTMAX
          const float p0 = acc_s[4 * j + 2 * r] * scale_log2 - l2.x;
          const float p1 = acc_s[4 * j + 2 * r + 1] * scale_log2 - l2.y;
#else
          const float p0 = fast_exp2(acc_s[4 * j + 2 * r] * scale_log2 - l2.x);
          const float p1 = fast_exp2(acc_s[4 * j + 2 * r + 1] * scale_log2 - l2.y);
#endif
          acc_s[4 * j + 2 * r] = 8 * j < thr[r] ? 0.f : p0;
          acc_s[4 * j + 2 * r + 1] = 8 * j + 1 < thr[r] ? 0.f : p1;
        }
      }
      pack_a<64>(p, acc_s);
      HB_CLOCK(wg, HB_SOFTMAX);
      wgmma_fence();
      gemm_dpt(acc_dp, sV_w, tdO);
      wgmma_commit();
      wgmma_wait<0>();
      HB_CLOCK(wg, HB_GEMM_DP);
      // dSᵀ = Pᵀ∘(dPᵀ − D), with Pᵀ as rounded for dV (its f32 registers are gone by now).
      #pragma unroll
      for (int j = 0; j < 8; j++) {
        const float2 d2 = *reinterpret_cast<const float2*>(tD + 8 * j + 2 * t);
        #pragma unroll
        for (int r = 0; r < 2; r++) {
          const float2 pf = unpack_bf16x2(p[j >> 1][(j & 1) * 2 + r]);
          acc_dp[4 * j + 2 * r] = pf.x * (acc_dp[4 * j + 2 * r] - d2.x);
          acc_dp[4 * j + 2 * r + 1] = pf.y * (acc_dp[4 * j + 2 * r + 1] - d2.y);
        }
      }
      pack_a<64>(ds, acc_dp);
      // Buffer ds_buf last held step i-3's dSᵀ, read by the dQ GEMMs of consumer (i-3) % 2: the
      // other consumer waits for their "read" signal before storing its half (that consumer
      // waited for its own GEMMs).
      if (with_dq && i >= HB_DS_BUFS && w != ((i - HB_DS_BUFS) & 1)) {
        HB_CLOCK(wg, HB_DS);
        ds_bar_sync<HB_DSE_BAR>(ds_buf);
        HB_CLOCK(wg, HB_WAIT_DSE);
      }
      if (with_dq) {
        // dSᵀ row key_l (+8), 4-byte pair at query 8j+2t: 16-byte piece j of a 128-byte row,
        // swizzled by row % 8 = g, so the warp's 32 stores hit 32 distinct banks.
        #pragma unroll
        for (int j = 0; j < 8; j++)
          #pragma unroll
          for (int r = 0; r < 2; r++)
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(tdS + (key_l + 8 * r) * 128 + ((j ^ g) << 4) + 4 * t),
                         "r"(ds[j >> 1][(j & 1) * 2 + r])
                         : "memory");
      }
      HB_CLOCK(wg, HB_DS);
      wgmma_fence();
      gemm_dv_dk(acc_dv, acc_dk, p, ds, tQ, tdO);
      wgmma_commit();
      // Before the "dSᵀ full" barrier (below): the dQ wgmmas read the dSᵀ stores. Issued behind
      // the dV/dK GEMMs (which do not read dSᵀ from shared memory), its wait for the stores
      // overlaps their execution.
      if (with_dq) fence_proxy_async();
      // Waiting here, before the dQ GEMMs, frees the 32 registers of Pᵀ and dSᵀ for them.
      wgmma_wait<0>();
      mbar_arrive(bar_empty(s));  // the stage (Q, dO, lse, D) is free
      HB_CLOCK(wg, HB_GEMM_DVDK);

      if (with_dq) {
        const u32 stg = sdQ + w * HB_DQ_BOX_BYTES;
        // Step i's dQ belongs to consumer i % 2; the other one publishes its half and goes on.
        if (w != (i & 1)) ds_bar_arrive<HB_DSF_BAR>(ds_buf);
        // Step i-1's dQ, one step late: its other half was stored during step i-1.
        if (i >= 1 && w == ((i - 1) & 1)) {
          const int prev = (i - 1) % HB_DS_BUFS;
          ds_bar_sync<HB_DSF_BAR>(prev);
          HB_CLOCK(wg, HB_WAIT_DS);
          dq_step(sdS + prev * HB_DS_BYTES, sK, stg, warp, g, t, tm_dq_accum, q0 - HB_BM);
          HB_CLOCK(wg, HB_DQ);
          // Its buffer is free for step i+2's halves (no signal when there is no such step, so
          // every arrival has a matching wait).
          if (i - 1 + HB_DS_BUFS < n_steps) ds_bar_arrive<HB_DSE_BAR>(prev);
        }
        // The last step's dQ has no next step to hide in.
        if (i == n_steps - 1 && w == (i & 1)) {
          ds_bar_sync<HB_DSF_BAR>(ds_buf);
          HB_CLOCK(wg, HB_WAIT_DS);
          dq_step(tdS, sK, stg, warp, g, t, tm_dq_accum, q0);
          HB_CLOCK(wg, HB_DQ);
        }
      }
#if MLA_HB_PROFILE_CLOCKS
      if (prof_on) atomicAdd(&hb_clocks[0 * HB_PHASES + HB_STEPS], 1ull);
#endif
    }
    // The reduce-adds must have completed before the block (and its shared memory) is gone and
    // before the next kernel (finish) reads dq_accum.
    if (lane == 0 && with_dq) bulk_wait();

    // Epilogue: dV → bf16; dK·scale → dk_nope bf16 and the f32 dk_pe part.
    #pragma unroll
    for (int r = 0; r < 2; r++) {
      const int key = k0 + key_l + 8 * r;
      if (key >= Skv) continue;
      const long long row = krow_bsh0 + key * HS;
      #pragma unroll
      for (int j = 0; j < 16; j++) {
        *reinterpret_cast<u32*>(dv + row * D_V + 8 * j + 2 * t) = pack_bf16x2(acc_dv[4 * j + 2 * r], acc_dv[4 * j + 2 * r + 1]);
        *reinterpret_cast<u32*>(dk_nope + row * D_NOPE + 8 * j + 2 * t) =
            pack_bf16x2(acc_dk[4 * j + 2 * r] * scale, acc_dk[4 * j + 2 * r + 1] * scale);
      }
      #pragma unroll
      for (int j = 0; j < 8; j++) {
        const float x0 = acc_dk[64 + 4 * j + 2 * r] * scale, x1 = acc_dk[64 + 4 * j + 2 * r + 1] * scale;
        if (dkpe_per_head) *reinterpret_cast<float2*>(dkpe_f32 + row * D_ROPE + 8 * j + 2 * t) = make_float2(x0, x1);
        else red_add_v2(dkpe_f32 + (static_cast<long long>(kb) * Skv + key) * D_ROPE + 8 * j + 2 * t, x0, x1);
      }
    }
  }
}
