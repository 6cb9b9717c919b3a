// Hopper (sm_90a) primitives for the MLA attention kernels (mla_attention_fwd_hopper.cu,
// mla_attention_bwd_hopper.cu): mbarriers, proxy fences, named barriers, TMA bulk tensor copies,
// and warpgroup MMA (wgmma) on 128-byte-swizzled shared-memory operands. Inline PTX only, no
// standard headers, so the text compiles under nvcc and NVRTC.
//
// Swizzled operand layout (bf16): an operand of R rows and 64·c columns is c column blocks of
// R rows × 128 bytes; 16-byte piece p of row r sits at piece p ^ (r % 8) of that row; every
// block starts 1024-byte aligned (wgmma applies the swizzle to absolute shared addresses).
//   K-major (rows = M or N, the K dim contiguous): descriptor start = block + 32·(k16 step in
//     the block), stride byte offset (next 8 rows) 1024.
//   MN-major (rows = the K dim, M or N contiguous; "transposed"): 64 M/N values per block row;
//     leading byte offset = next column block, stride byte offset (next 8 K rows) 1024; each
//     16-row K step advances the start by 2048 bytes.
#pragma once

#include "mla_attention_common.cuh"

namespace mla {
namespace hop {

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

// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async after its
// wait_group) before later async-proxy reads (wgmma operands) by any thread it synchronises with.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Named barriers 1.. (0 is __syncthreads): sync waits for `count` threads, arrive does not wait.
__device__ __forceinline__ void named_bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}

// ---- TMA (bulk tensor copies) ----
// A CUtensorMap as the driver encodes it (cuTensorMapEncodeTiled; src/backend/cuda/runtime/tensor_map.ts):
// 128 opaque bytes, 64-byte aligned. Kernels take it by value as a `const __grid_constant__`
// parameter, so the copy engine reads it from parameter space and the host needs no upload.
struct alignas(64) TensorMap {
  unsigned long long opaque[16];
};
__device__ __forceinline__ unsigned long long tmap_addr(const TensorMap& m) { return reinterpret_cast<unsigned long long>(&m); }
__device__ __forceinline__ void tmap_prefetch(const TensorMap& m) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(tmap_addr(m)) : "memory");
}
// One arrival plus `bytes` more expected on the barrier's current phase: the phase completes when
// the arrivals are in and the copies that name this barrier have written that many bytes.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// `bytes` more expected on the barrier's current phase, without an arrival (the issuing thread
// arrives later, e.g. after stores the same phase also publishes).
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// Box of the tensor at coordinates (c0 innermost, …) into shared memory at dst (1024-byte
// aligned for the 128-byte swizzle); completes `bytes of the box` on bar. Coordinates past the
// tensor's extent read as zeros (and still count as bytes).
__device__ __forceinline__ void tma_load_3d(u32 dst, const TensorMap& m, u32 bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];"
      ::"r"(dst), "l"(tmap_addr(m)), "r"(bar), "r"(c0), "r"(c1), "r"(c2) : "memory");
}
__device__ __forceinline__ void tma_load_4d(u32 dst, const TensorMap& m, u32 bar, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];"
      ::"r"(dst), "l"(tmap_addr(m)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3) : "memory");
}

// Byte offset of 16-byte piece `piece` of row `row` in a block-major swizzled operand whose
// column blocks hold `rows` rows.
__device__ __forceinline__ u32 swizzled(int row, int piece, int rows) {
  return (piece >> 3) * rows * 128 + row * 128 + (((piece & 7) ^ (row & 7)) << 4);
}

// ---- wgmma ----
// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63).
__device__ __forceinline__ unsigned long long desc(u32 addr, u32 lead_bytes, u32 stride_bytes) {
  return static_cast<unsigned long long>((addr & 0x3FFFF) >> 4) |
         (static_cast<unsigned long long>(lead_bytes >> 4) << 16) |
         (static_cast<unsigned long long>(stride_bytes >> 4) << 32) | (1ull << 62);
}
// desc(), opaque to the compiler: a GEMM adds its k-step offsets (bytes / 16) to this, next to
// each wgmma. With plain desc() values the compiler hoisted every step's descriptor of a
// loop-invariant operand out of the loop, 64 bits each, and spilled them.
__device__ __forceinline__ unsigned long long desc_base(u32 addr, u32 lead_bytes, u32 stride_bytes) {
  unsigned long long d = desc(addr, lead_bytes, stride_bytes);
  asm volatile("" : "+l"(d));
  return d;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }

#define MLA_HOP_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define MLA_HOP_D32 MLA_HOP_D8(0), MLA_HOP_D8(8), MLA_HOP_D8(16), MLA_HOP_D8(24)
#define MLA_HOP_D64 MLA_HOP_D32, MLA_HOP_D8(32), MLA_HOP_D8(40), MLA_HOP_D8(48), MLA_HOP_D8(56)
#define MLA_HOP_R32                                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define MLA_HOP_R64                                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// Accumulator layout of wgmma m64nN f32, per warp w of the warpgroup (g = lane/4, t = lane%4):
// d[4j+0..1] = row 16w+g, columns 8j+2t..+1; d[4j+2..3] = row 16w+g+8, same columns.

// d (64×64) = (accumulate ? d : 0) + A·B; A (64×16) and B (16×64) from shared memory, each
// K-major (TRANS = 0) or MN-major (TRANS = 1).
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_ss_m64n64k16(float* d, unsigned long long a_desc, unsigned long long b_desc,
                                                   int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " MLA_HOP_R32 ", %32, %33, p, 1, 1, %35, %36;\n"
      "}\n"
      : MLA_HOP_D32
      : "l"(a_desc), "l"(b_desc), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B));
}

// d (64×128) = (accumulate ? d : 0) + A·B; A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_ss_m64n128k16(float* d, unsigned long long a_desc, unsigned long long b_desc,
                                                    int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " MLA_HOP_R64 ", %64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : MLA_HOP_D64
      : "l"(a_desc), "l"(b_desc), "r"(accumulate));
}

// d += A·B, A (64×16 bf16) from registers in the mma.sync m16n8k16 A-fragment layout per warp
// (rows 16w.., four b32 registers), B MN-major ("transposed", N contiguous) in shared memory.
__device__ __forceinline__ void wgmma_rs_m64n64k16_tb(float* d, const u32* a, unsigned long long b_desc) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " MLA_HOP_R32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"
      "}\n"
      : MLA_HOP_D32
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}
__device__ __forceinline__ void wgmma_rs_m64n128k16_tb(float* d, const u32* a, unsigned long long b_desc) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " MLA_HOP_R64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : MLA_HOP_D64
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}

// An m64nN accumulator (N/2 f32 registers per thread) as bf16 A fragments of the next product,
// whose K dim is this one's N (N/16 k16 steps): the accumulators of 8-column chunks 2kk and
// 2kk+1 are exactly the A fragment (mma.sync m16n8k16 layout) of k16 step kk.
template <int N>
__device__ __forceinline__ void pack_a(u32 (*a)[4], const float* acc) {
  #pragma unroll
  for (int kk = 0; kk < N / 16; kk++) {
    a[kk][0] = pack_bf16x2(acc[8 * kk + 0], acc[8 * kk + 1]);
    a[kk][1] = pack_bf16x2(acc[8 * kk + 2], acc[8 * kk + 3]);
    a[kk][2] = pack_bf16x2(acc[8 * kk + 4], acc[8 * kk + 5]);
    a[kk][3] = pack_bf16x2(acc[8 * kk + 6], acc[8 * kk + 7]);
  }
}

// Ring slot j ≥ 1 of rank `rank` among n (ring attention in one launch; the forward kernel's
// header, "Ring slots"): it holds the k/v of rank src = (rank − j) mod n in local order (chunk
// src, then chunk 2n−1−src, c = split tokens each). A lower rank's first chunk precedes both of
// this rank's query chunks and its second follows both: every query sees its first c keys. A
// higher rank's two chunks both precede only this rank's second query chunk: queries from row c
// on see all 2c. Neither needs a mask. The one rule both kernels walk (by query tile, by key tile).
struct RingSlotView {
  int keys;        // keys some query sees: the first `keys` of the slot
  int first_query; // the first query row that sees them; every later row does too
};
__device__ __forceinline__ RingSlotView ring_slot_view(int n, int rank, int split, int j) {
  const int src = (rank - j + n) % n;
  return src < rank ? RingSlotView{split, 0} : RingSlotView{2 * split, split};
}

}  // namespace hop
}  // namespace mla
