// Strided copy with dtype conversion: dst[i] = src[i] over one (collapsed) shape, both views,
// broadcast strides 0 allowed in src. Used by Backend.copy and by read() of non-contiguous views.
// Floor: (bytes read + bytes written) / ~3 TB/s, e.g. 64 MiB bf16 → f32 (64 + 128 MiB) ≈ 67 µs.
#include "strided_views.cuh"

template <typename TO, typename TI>
__device__ __forceinline__ void copy_strided(TO* __restrict__ dst, const TI* __restrict__ src, long long n, int rank,
                                             const int* dims, const long long* ds, const long long* ss) {
  MT_GRID_STRIDE(i, n) {
    long long od, os;
    index_offsets2(i, rank, dims, ds, ss, &od, &os);
    dst[od] = Convert<TO, TI>::run(src[os]);
  }
}

// The same over views whose innermost VEC = 8 elements are contiguous and 16-byte aligned
// (ops/strided_views.ts vectorViews; dims and strides count vectors): 8 elements a thread in
// 16-byte accesses. Same-type copies move the bits, as the scalar path does; others convert.
template <typename TO, typename TI>
__device__ __forceinline__ void copy_vec8(TO* __restrict__ dst, const TI* __restrict__ src, long long n8, int rank,
                                          const int* dims, const long long* ds, const long long* ss) {
  MT_GRID_STRIDE(i, n8) {
    long long od, os;
    index_offsets2(i, rank, dims, ds, ss, &od, &os);
    if constexpr (sizeof(TO) == sizeof(TI) && Convert<TO, TI>::same) {
      const Words4* from = reinterpret_cast<const Words4*>(src + 8 * os);
      Words4* to = reinterpret_cast<Words4*>(dst + 8 * od);
#pragma unroll
      for (int w = 0; w < (int)sizeof(TO) / 2; ++w) to[w] = from[w];
    } else {
      float v[8];
      load8(src + 8 * os, v);
      store8(dst + 8 * od, v);
    }
  }
}

#define MT_COPY(TO, TI)                                                                                    \
  extern "C" __global__ void copy_##TO##_##TI(TO* dst, const TI* src, long long n, int rank, MT_SHAPE_PARAMS, \
                                             MT_STRIDE_PARAMS(ds), MT_STRIDE_PARAMS(ss)) {                  \
    MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(ds); MT_STRIDE_ARRAY(ss);                                               \
    copy_strided<TO, TI>(dst, src, n, rank, dims, ds, ss);                                                  \
  }
MT_ALL_TYPES2(MT_COPY)

#define MT_COPY_VEC8(TO, TI)                                                                                        \
  extern "C" __global__ void copy_vec8_##TO##_##TI(TO* dst, const TI* src, long long n8, int rank, MT_SHAPE_PARAMS, \
                                                  MT_STRIDE_PARAMS(ds), MT_STRIDE_PARAMS(ss)) {                    \
    MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(ds); MT_STRIDE_ARRAY(ss);                                                      \
    copy_vec8<TO, TI>(dst, src, n8, rank, dims, ds, ss);                                                           \
  }
MT_FLOAT_TYPES2(MT_COPY_VEC8)
