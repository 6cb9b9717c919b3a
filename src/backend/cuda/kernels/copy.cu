// Strided copy with dtype conversion: dst[i] = src[i] over one (collapsed) shape, both views,
// broadcast strides 0 allowed in src. Used by Backend.copy and by read() of non-contiguous views.
// Floor: (bytes read + bytes written) / ~3 TB/s, e.g. 64 MiB bf16 → f32 (64 + 128 MiB) ≈ 67 µs.
#include "strided_views.cuh"

template <typename TO, typename TI>
__device__ __forceinline__ void copy_strided(TO* __restrict__ dst, const TI* __restrict__ src, long long n, int rank,
                                             const int* dims, const long long* ds, const long long* ss) {
  MT_GRID_STRIDE(i, n) {
    long long od, os;
    if (rank == 1) { od = i * ds[MT_MAX_RANK - 1]; os = i * ss[MT_MAX_RANK - 1]; }
    else view_offset2((unsigned)i, rank, dims, ds, ss, &od, &os);
    dst[od] = Convert<TO, TI>::run(src[os]);
  }
}

#define MT_COPY(TO, TI)                                                                                    \
  extern "C" __global__ void copy_##TO##_##TI(TO* dst, const TI* src, long long n, int rank, MT_SHAPE_PARAMS, \
                                             MT_STRIDE_PARAMS(ds), MT_STRIDE_PARAMS(ss)) {                  \
    MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(ds); MT_STRIDE_ARRAY(ss);                                               \
    copy_strided<TO, TI>(dst, src, n, rank, dims, ds, ss);                                                  \
  }
MT_ALL_TYPES2(MT_COPY)
