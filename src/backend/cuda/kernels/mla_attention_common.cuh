// Shared pieces of the MLA attention kernels (mla_attention_fwd.cu, mla_attention_bwd.cu):
// sizes, bf16 packing, and thin wrappers over the sm_80+ instructions the FlashAttention-2
// style kernels are built from (cp.async, ldmatrix, mma.sync m16n8k16). No standard headers, so
// the same text compiles under nvcc and NVRTC.
//
// Fragment layouts of mma.sync.m16n8k16 (g = lane/4, t = lane%4), used throughout:
//   A 16x16 row-major: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8 "col":      b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C 16x8 f32:        c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
// A C fragment pair of two adjacent n-tiles is exactly an A fragment of one k16 step, which is
// how P (and dS) go from one product to the next without touching shared memory.
#pragma once

typedef unsigned short bf16_t;  // raw bf16 bits
typedef unsigned int u32;

// Head widths and the mma.sync kernels' tile: -D defines from ops/mla_attention.ts
// (MLA_COMMON_DEFINES), which checks the tensors' shapes and sizes the grids with them.
#if !defined(MLA_D_NOPE) || !defined(MLA_D_ROPE) || !defined(MLA_D_V) || !defined(MLA_TILE)
#error "MLA_D_NOPE, MLA_D_ROPE, MLA_D_V and MLA_TILE are set by ops/mla_attention.ts (MLA_COMMON_DEFINES)"
#endif

namespace mla {

constexpr int D_NOPE = MLA_D_NOPE;
constexpr int D_ROPE = MLA_D_ROPE;
constexpr int D_QK = D_NOPE + D_ROPE;  // 192: q = (q_nope | q_pe), k = (k_nope | k_pe)
constexpr int D_V = MLA_D_V;
constexpr int TILE = MLA_TILE;         // query rows and key rows per tile, mma.sync backward kernels
static_assert(D_NOPE == 128 && D_ROPE == 64 && D_V == 128, "the kernels' fragment and copy layouts are written for DeepSeek-V2's 128/64/128");
// Shared-memory row strides in elements: 16 bytes of padding shifts consecutive rows by four
// banks, so the eight 16-byte rows one ldmatrix reads land in distinct banks.
constexpr int QK_STRIDE = D_QK + 8;    // 400 bytes
constexpr int V_STRIDE = D_V + 8;      // 272 bytes
constexpr int P_STRIDE = TILE + 8;     // 144 bytes
constexpr float LOG2E = 1.4426950408889634f;

// +inf without <math.h> (NVRTC has no INFINITY macro).
__device__ __forceinline__ float inf_f32() { return __int_as_float(0x7f800000); }

__device__ __forceinline__ float bf16_to_f32(bf16_t x) { return __uint_as_float(static_cast<u32>(x) << 16); }

// Two floats to a bf16x2 word, round to nearest even; lo lands in the low half (lower address).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Shared-memory address of a generic pointer (inline PTX: no header declares it under NVRTC).
__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

// 16-byte global→shared copy; when !valid nothing is read and the 16 bytes are zero-filled, so
// rows past the sequence end are exact zeros (never NaN garbage multiplied by a zero weight).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// c += a·b for one 16x8x16 tile, bf16 in, f32 accumulate.
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The fragment loaders and tile copies address shared memory by 32-bit shared-window
// addresses (smem_addr of the tile start, plus bytes): converting once per tile lets the
// compiler fold row and column offsets into the ldmatrix / cp.async immediates.

// Row-major A fragment (16 rows from row0, 16 columns from col0) of a bf16 tile with `stride`.
__device__ __forceinline__ void load_a(u32* a, u32 tile, int stride, int row0, int col0, int lane) {
  ldsm_x4(tile + ((row0 + (lane & 15)) * stride + col0 + ((lane >> 4) << 3)) * 2, a[0], a[1], a[2], a[3]);
}
// A fragment of the transpose of a stored tile: A[m][k] = tile[k0 + k][m0 + m].
__device__ __forceinline__ void load_a_t(u32* a, u32 tile, int stride, int m0, int k0, int lane) {
  ldsm_x4_t(tile + ((k0 + (lane & 7) + ((lane >> 4) << 3)) * stride + m0 + (((lane >> 3) & 1) << 3)) * 2,
            a[0], a[1], a[2], a[3]);
}
// B fragments of two adjacent n-tiles when the tile stores B transposed, rows = n:
// B[k][n] = tile[n0 + n][k0 + k] (K in S = Q·Kᵀ). b[0..1] for n0..n0+7, b[2..3] for n0+8..n0+15.
__device__ __forceinline__ void load_b_nk(u32* b, u32 tile, int stride, int n0, int k0, int lane) {
  ldsm_x4(tile + ((n0 + (lane & 7) + ((lane >> 4) << 3)) * stride + k0 + (((lane >> 3) & 1) << 3)) * 2,
          b[0], b[1], b[2], b[3]);
}
// B fragments of two adjacent n-tiles when the tile stores B as is, rows = k:
// B[k][n] = tile[k0 + k][n0 + n] (V in O = P·V).
__device__ __forceinline__ void load_b_kn(u32* b, u32 tile, int stride, int k0, int n0, int lane) {
  ldsm_x4_t(tile + ((k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * stride + n0 + ((lane >> 4) << 3)) * 2,
            b[0], b[1], b[2], b[3]);
}

// Copies ROWS rows of a 192-wide operand (128 columns from `nope`, 64 from `pe`) into a
// QK_STRIDE tile with cp.async; rows at or past `rows_left` are zero-filled. Row r of the
// operand is at nope + r·nope_stride and pe + r·pe_stride (elements).
template <int THREADS, int ROWS = TILE>
__device__ __forceinline__ void load_tile_qk(u32 tile, const bf16_t* nope, long long nope_stride,
                                             const bf16_t* pe, long long pe_stride, int rows_left, int tid) {
  constexpr int CHUNKS = D_QK / 8;  // 16-byte pieces per row: 16 from nope, 8 from pe
  static_assert(ROWS * CHUNKS % THREADS == 0, "rows × pieces must divide among the threads");
  #pragma unroll
  for (int i = 0; i < ROWS * CHUNKS / THREADS; i++) {
    int c = tid + i * THREADS;
    int r = c / CHUNKS, ch = c % CHUNKS;
    bool valid = r < rows_left;
    int rr = valid ? r : 0;
    const bf16_t* src = ch < D_NOPE / 8 ? nope + rr * nope_stride + ch * 8 : pe + rr * pe_stride + (ch - D_NOPE / 8) * 8;
    cp_async16(tile + (r * QK_STRIDE + ch * 8) * 2, src, valid);
  }
}

// Copies ROWS rows of a 128-wide operand (V, O, dO) into a V_STRIDE tile; same rules.
template <int THREADS, int ROWS = TILE>
__device__ __forceinline__ void load_tile_v(u32 tile, const bf16_t* src0, long long stride, int rows_left, int tid) {
  constexpr int CHUNKS = D_V / 8;
  static_assert(ROWS * CHUNKS % THREADS == 0, "rows × pieces must divide among the threads");
  #pragma unroll
  for (int i = 0; i < ROWS * CHUNKS / THREADS; i++) {
    int c = tid + i * THREADS;
    int r = c / CHUNKS, ch = c % CHUNKS;
    bool valid = r < rows_left;
    int rr = valid ? r : 0;
    cp_async16(tile + (r * V_STRIDE + ch * 8) * 2, src0 + rr * stride + ch * 8, valid);
  }
}

}  // namespace mla
