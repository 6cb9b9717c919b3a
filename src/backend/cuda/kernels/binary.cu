// out = a op b: elementwise over out's (collapsed) shape; a and b are views already broadcast to
// it (stride 0 where broadcast); out contiguous. Floor: (bytes of a + b + out) / ~3 TB/s, less
// where broadcasting makes an operand re-read from cache.
#include "strided_views.cuh"

// Op codes: -D defines from ops/binary.ts (BINARY_DEFINES), which launches with them.
#if !defined(OP_ADD) || !defined(OP_SUB) || !defined(OP_MUL) || !defined(OP_DIV)
#error "the OP_* codes are set by ops/binary.ts (BINARY_DEFINES)"
#endif

__device__ __forceinline__ float apply_binary(int op, float a, float b) {
  switch (op) {
    case OP_ADD: return a + b;
    case OP_SUB: return a - b;
    case OP_MUL: return a * b;
    case OP_DIV: return a / b;
    default: return MT_NAN;
  }
}

template <typename TO, typename TA, typename TB>
__device__ __forceinline__ void binary_body(TO* __restrict__ out, const TA* a, const TB* b, long long n, int op, int rank,
                                            const int* dims, const long long* as, const long long* bs) {
  MT_GRID_STRIDE(i, n) {
    long long oa, ob;
    index_offsets2(i, rank, dims, as, bs, &oa, &ob);
    out[i] = from_f32<TO>(apply_binary(op, to_f32(a[oa]), to_f32(b[ob])));
  }
}

// The same over views whose innermost VEC = 8 elements are contiguous and 16-byte aligned
// (ops/strided_views.ts vectorViews): dims and strides count vectors; each thread moves 8
// elements per operand (16 bytes of bf16, 32 of f32), so enough bytes are in flight to reach
// the memory's bandwidth. The arithmetic is the scalar path's, element by element.
template <typename TO, typename TA, typename TB>
__device__ __forceinline__ void binary_vec8_body(TO* __restrict__ out, const TA* a, const TB* b, long long n8, int op, int rank,
                                                 const int* dims, const long long* as, const long long* bs) {
  MT_GRID_STRIDE(i, n8) {
    long long oa, ob;
    index_offsets2(i, rank, dims, as, bs, &oa, &ob);
    float va[8], vb[8];
    load8(a + 8 * oa, va);
    load8(b + 8 * ob, vb);
#pragma unroll
    for (int j = 0; j < 8; ++j) va[j] = apply_binary(op, va[j], vb[j]);
    store8(out + 8 * i, va);
  }
}

// i32 ⊙ i32 → i32 in integer arithmetic (wrapping, division truncating toward zero, x/0 = 0), as
// the CPU backend's `f(a, b) | 0` gives for the values it sees.
__device__ __forceinline__ int apply_binary_i32(int op, int a, int b) {
  switch (op) {
    case OP_ADD: return (int)((unsigned)a + (unsigned)b);
    case OP_SUB: return (int)((unsigned)a - (unsigned)b);
    case OP_MUL: return (int)((unsigned)a * (unsigned)b);
    case OP_DIV: return b == 0 ? 0 : (b == -1 ? (int)(0u - (unsigned)a) : a / b);
    default: return 0;
  }
}

extern "C" __global__ void binary_i32_i32_i32(int* out, const int* a, const int* b, long long n, int op, int rank,
                                              MT_SHAPE_PARAMS, MT_STRIDE_PARAMS(as), MT_STRIDE_PARAMS(bs)) {
  MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(as); MT_STRIDE_ARRAY(bs);
  MT_GRID_STRIDE(i, n) {
    long long oa, ob;
    index_offsets2(i, rank, dims, as, bs, &oa, &ob);
    out[i] = apply_binary_i32(op, a[oa], b[ob]);
  }
}

// a and b are not __restrict__: out may be one of them (in-place updates).
#define MT_BINARY(TO, TA, TB)                                                                                          \
  extern "C" __global__ void binary_##TO##_##TA##_##TB(TO* out, const TA* a, const TB* b, long long n, int op, int rank, \
                                                       MT_SHAPE_PARAMS, MT_STRIDE_PARAMS(as), MT_STRIDE_PARAMS(bs)) {  \
    MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(as); MT_STRIDE_ARRAY(bs);                                                          \
    binary_body<TO, TA, TB>(out, a, b, n, op, rank, dims, as, bs);                                                     \
  }
MT_FLOAT_TYPES3(MT_BINARY)

#define MT_BINARY_VEC8(TO, TA, TB)                                                                                        \
  extern "C" __global__ void binary_vec8_##TO##_##TA##_##TB(TO* out, const TA* a, const TB* b, long long n8, int op, int rank, \
                                                            MT_SHAPE_PARAMS, MT_STRIDE_PARAMS(as), MT_STRIDE_PARAMS(bs)) {  \
    MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(as); MT_STRIDE_ARRAY(bs);                                                               \
    binary_vec8_body<TO, TA, TB>(out, a, b, n8, op, rank, dims, as, bs);                                                    \
  }
MT_FLOAT_TYPES3(MT_BINARY_VEC8)
