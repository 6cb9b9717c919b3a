// The device-side table of a multi-tensor op (built once per list by ops/multi_tensor_table.ts):
// one MtEntry per tensor (up to MT_ENTRY_PTRS addresses of equally sized arrays, the element
// count, the entry's first chunk and flags), then one int per chunk naming its entry. A chunk is
// MT_CHUNK consecutive elements of one tensor (the last chunk of a tensor may be shorter); a
// block walks the chunks blockIdx.x, blockIdx.x + gridDim.x, …, so which block sums which
// elements depends only on the table and the grid, never on scheduling.
#pragma once
#include "common.cuh"

#if !defined(MT_CHUNK) || !defined(MT_ENTRY_PTRS) || !defined(MT_ENTRY_BYTES) || !defined(MT_FLAG_DECAY) || !defined(MT_FLAG_VEC16)
#error "MT_CHUNK, MT_ENTRY_PTRS, MT_ENTRY_BYTES and the MT_FLAG_* bits are set by ops/multi_tensor_table.ts (MULTI_TENSOR_DEFINES)"
#endif
static_assert(MT_CHUNK % 4 == 0, "a chunk holds whole groups of four elements, so chunk starts keep 16-byte alignment");

struct MtEntry {
  unsigned long long ptr[MT_ENTRY_PTRS];  // 0 where an array is absent
  long long n;                            // elements of each array
  int first_chunk;                        // index of the entry's first chunk in the chunk list
  int flags;                              // MT_FLAG_DECAY, MT_FLAG_VEC16 (every present address 16-byte aligned)
};
static_assert(sizeof(MtEntry) == MT_ENTRY_BYTES, "MtEntry's layout is written by ops/multi_tensor_table.ts");

/** The part of a table entry one chunk covers: its entry, first element and length. */
struct MtChunk {
  const MtEntry* e;
  long long start;
  int len;
};

__device__ __forceinline__ MtChunk mt_chunk(const MtEntry* __restrict__ entries, const int* __restrict__ chunk_entry, int c) {
  MtChunk k;
  k.e = entries + chunk_entry[c];
  k.start = (long long)(c - k.e->first_chunk) * MT_CHUNK;
  const long long rest = k.e->n - k.start;
  k.len = rest < MT_CHUNK ? (int)rest : MT_CHUNK;
  return k;
}

// ---- four elements through one access (16 bytes of f32, 8 of bf16); p 16-byte aligned for f32, 8 for bf16 ----

/** 8 bytes as two words; its alignment makes every load and store of it one 64-bit access. */
struct alignas(8) Words2 { unsigned w[2]; };

__device__ __forceinline__ void load4(const float* p, float* out) { load16(p, out); }
__device__ __forceinline__ void load4(const bf16* p, float* out) {
  const Words2 v = *reinterpret_cast<const Words2*>(p);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    out[2 * i] = __uint_as_float(v.w[i] << 16);
    out[2 * i + 1] = __uint_as_float(v.w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void store4(float* p, const float* in) { store16(p, in); }
__device__ __forceinline__ void store4(bf16* p, const float* in) {
  Words2 v;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    v.w[i] = (unsigned)from_f32<bf16>(in[2 * i]).bits | ((unsigned)from_f32<bf16>(in[2 * i + 1]).bits << 16);
  }
  *reinterpret_cast<Words2*>(p) = v;
}
