// out = op(x): elementwise, x a (collapsed) view, out contiguous. The op is a run-time code that
// is uniform across the launch, so the switch costs a predictable branch, not divergence.
// Floor: (bytes read + bytes written) / ~3 TB/s.
#include "strided_views.cuh"

// Op codes: -D defines from ops/unary.ts (UNARY_DEFINES), which launches with them.
#if !defined(OP_NEG) || !defined(OP_EXP) || !defined(OP_LOG) || !defined(OP_SQRT) || !defined(OP_RSQRT) || \
    !defined(OP_SQUARE) || !defined(OP_SILU) || !defined(OP_SCALE) || !defined(OP_ADD_SCALAR)
#error "the OP_* codes are set by ops/unary.ts (UNARY_DEFINES)"
#endif

__device__ __forceinline__ float apply_unary(int op, float x, float s) {
  switch (op) {
    case OP_NEG: return -x;
    case OP_EXP: return expf(x);
    case OP_LOG: return logf(x);
    case OP_SQRT: return sqrtf(x);
    case OP_RSQRT: return 1.f / sqrtf(x);
    case OP_SQUARE: return x * x;
    case OP_SILU: return x / (1.f + expf(-x));
    case OP_SCALE: return x * s;
    case OP_ADD_SCALAR: return x + s;
    default: return MT_NAN;
  }
}

template <typename TO, typename TI>
__device__ __forceinline__ void unary_body(TO* out, const TI* x, long long n, int op, float s, int rank,
                                           const int* dims, const long long* xs) {
  MT_GRID_STRIDE(i, n) {
    long long ox = rank == 1 ? i * xs[MT_MAX_RANK - 1] : view_offset((unsigned)i, rank, dims, xs);
    out[i] = from_f32<TO>(apply_unary(op, to_f32(x[ox]), s));
  }
}

#define MT_UNARY(TO, TI)                                                                                           \
  extern "C" __global__ void unary_##TO##_##TI(TO* out, const TI* x, long long n, int op, float scalar, int rank, \
                                               MT_SHAPE_PARAMS, MT_STRIDE_PARAMS(xs)) {                            \
    MT_SHAPE_ARRAY; MT_STRIDE_ARRAY(xs);                                                                           \
    unary_body<TO, TI>(out, x, n, op, scalar, rank, dims, xs);                                                     \
  }
// i32 on either side goes through f32 (the CPU backend does the same), rounding half up on store.
MT_ALL_TYPES2(MT_UNARY)
