// Strided views for the kernels that take any view (copy, fill, unary, binary). The host
// (ops/strided_views.ts) collapses a view to at most MT_MAX_RANK dimensions, innermost last,
// padding at the front with size-1 dimensions; sizes and strides arrive as separate scalar
// parameters. MT_MAX_RANK is a -D define from ops/strided_views.ts.
#pragma once
#include "common.cuh"

#ifndef MT_MAX_RANK
#error "MT_MAX_RANK is set by ops/strided_views.ts (STRIDED_VIEWS_DEFINES)"
#endif
static_assert(MT_MAX_RANK == 6, "the parameter lists below name six sizes and six strides per view");

#define MT_SHAPE_PARAMS int d0, int d1, int d2, int d3, int d4, int d5
#define MT_STRIDE_PARAMS(p) long long p##0, long long p##1, long long p##2, long long p##3, long long p##4, long long p##5
#define MT_SHAPE_ARRAY const int dims[MT_MAX_RANK] = {d0, d1, d2, d3, d4, d5}
#define MT_STRIDE_ARRAY(p) const long long p[MT_MAX_RANK] = {p##0, p##1, p##2, p##3, p##4, p##5}

/** Element offset of linear index i (row-major over dims) in a view with the given strides. */
__device__ __forceinline__ long long view_offset(unsigned i, int rank, const int* dims, const long long* strides) {
  long long off = 0;
#pragma unroll
  for (int k = MT_MAX_RANK - 1; k >= 0; --k) {
    if (k >= MT_MAX_RANK - rank) {
      unsigned d = (unsigned)dims[k];
      unsigned q = i / d;
      off += (long long)(i - q * d) * strides[k];
      i = q;
    }
  }
  return off;
}

/** Offsets of linear index i in two views of the same shape (one division chain for both). */
__device__ __forceinline__ void view_offset2(unsigned i, int rank, const int* dims, const long long* sa, const long long* sb,
                                             long long* oa, long long* ob) {
  long long a = 0, b = 0;
#pragma unroll
  for (int k = MT_MAX_RANK - 1; k >= 0; --k) {
    if (k >= MT_MAX_RANK - rank) {
      unsigned d = (unsigned)dims[k];
      unsigned q = i / d;
      unsigned c = i - q * d;
      a += (long long)c * sa[k];
      b += (long long)c * sb[k];
      i = q;
    }
  }
  *oa = a; *ob = b;
}

/** view_offset2 with the collapsed rank-1 case (a plain stride per view) taken without the divisions. */
__device__ __forceinline__ void index_offsets2(long long i, int rank, const int* dims, const long long* sa, const long long* sb,
                                               long long* oa, long long* ob) {
  if (rank == 1) { *oa = i * sa[MT_MAX_RANK - 1]; *ob = i * sb[MT_MAX_RANK - 1]; }
  else view_offset2((unsigned)i, rank, dims, sa, sb, oa, ob);
}
