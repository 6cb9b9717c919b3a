// Fill a view with one bit pattern (the host converts the value to the dtype's bits: f32 and i32
// are 32-bit words, bf16 a 16-bit word). Floor: bytes written / ~3 TB/s.
#include "strided_views.cuh"

template <typename W>
__device__ __forceinline__ void fill_strided(W* __restrict__ dst, long long n, W bits, int rank, const int* dims, const long long* ds) {
  MT_GRID_STRIDE(i, n) {
    long long od = rank == 1 ? i * ds[MT_MAX_RANK - 1] : view_offset((unsigned)i, rank, dims, ds);
    dst[od] = bits;
  }
}

extern "C" __global__ void fill_b32(unsigned* dst, long long n, unsigned bits, int rank, MT_SHAPE_PARAMS, MT_STRIDE_PARAMS(ds)) {
  MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(ds);
  fill_strided<unsigned>(dst, n, bits, rank, dims, ds);
}
extern "C" __global__ void fill_b16(unsigned short* dst, long long n, unsigned bits, int rank, MT_SHAPE_PARAMS, MT_STRIDE_PARAMS(ds)) {
  MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(ds);
  fill_strided<unsigned short>(dst, n, (unsigned short)bits, rank, dims, ds);
}
