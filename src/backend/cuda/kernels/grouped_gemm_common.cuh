// Shared by the grouped expert GEMM kernels (grouped_gemm.cu: mma.sync; grouped_gemm_wgmma.cu:
// Hopper wgmma; grouped_gemm_tma.cu: TMA, persistent): cp.async copies, the shared-window
// address, and the tile scheduler that maps a CTA's tile to (expert, row tile) from the device
// offsets. No standard headers (NVRTC and nvcc alike).
#pragma once

namespace ggc {

typedef unsigned int u32;

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}
// 16-byte global→shared copy; when !valid nothing is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// Rows of expert x relative to off[0], clamped to [0, M] (offsets past M cannot make a CTA read
// or write outside the M rows the host allocated).
__device__ __forceinline__ void expert_rows(const int* __restrict__ off, int x, int M, int& s, int& en) {
  const int base = off[0];
  s = min(max(off[x] - base, 0), M);
  en = min(max(off[x + 1] - base, s), M);
}

// Row tiles t = 0, 1, … of the walk over experts in order (each expert's rows cut into BM-row
// tiles), for a caller whose t never decreases from one call to the next (a persistent CTA's
// tiles): each call resumes at the expert the previous one stopped at, so a CTA's whole walk reads
// each offset about once. Why not a scan from expert 0 per tile: at E = 64 that is ~32 dependent
// loads and compares on average, ~0.5 µs before every tile's first wait.
template <int BM>
struct RowTileCursor {
  int x = 0, first = 0;  // the expert the walk is at, and its first row tile's t
  // The (expert, first row, end row) of row tile t; false when t is past the last tile (as is
  // every later t).
  __device__ __forceinline__ bool find(const int* __restrict__ off, int E, int M, int t, int& e, int& row0, int& rowEnd) {
    for (; x < E; ++x) {
      int s, en;
      expert_rows(off, x, M, s, en);
      const int tiles = (en - s + BM - 1) / BM;
      if (t - first < tiles) { e = x; row0 = s + (t - first) * BM; rowEnd = en; return true; }
      first += tiles;
    }
    return false;
  }
};

// Row tile `t` of a fresh walk, for a CTA that handles one tile. Launched over ceil(M/BM) + E
// tiles, since Σ_e ceil(c_e/BM) ≤ M/BM + E.
template <int BM>
__device__ __forceinline__ bool find_row_tile(const int* __restrict__ off, int E, int M, int t, int& e, int& row0, int& rowEnd) {
  RowTileCursor<BM> walk;
  return walk.find(off, E, M, t, e, row0, rowEnd);
}

}  // namespace ggc
