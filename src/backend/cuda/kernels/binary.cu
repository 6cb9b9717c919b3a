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
    if (rank == 1) { oa = i * as[MT_MAX_RANK - 1]; ob = i * bs[MT_MAX_RANK - 1]; }
    else view_offset2((unsigned)i, rank, dims, as, bs, &oa, &ob);
    out[i] = from_f32<TO>(apply_binary(op, to_f32(a[oa]), to_f32(b[ob])));
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
    if (rank == 1) { oa = i * as[MT_MAX_RANK - 1]; ob = i * bs[MT_MAX_RANK - 1]; }
    else view_offset2((unsigned)i, rank, dims, as, bs, &oa, &ob);
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
