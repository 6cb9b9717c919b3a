// Shared by the elementwise and reduction kernels: element types with f32 load/store, warp and
// block reductions, grid-stride loops (strided views: strided_views.cuh). Written without the CUDA headers
// (no cuda_bf16.h, no <cstdint>) so NVRTC compiles it with no include path beyond this folder.
//
// Element types are named as the TypeScript dtypes (f32, bf16, i32) so that a kernel instantiated
// for types A, B is exported as `<name>_<A>_<B>` and the host builds that name from tensor dtypes.
#pragma once

typedef float f32;
typedef int i32;
/** bf16 as its raw 16-bit pattern: the top half of an f32. */
struct alignas(2) bf16 { unsigned short bits; };

#define MT_FLT_MAX 3.402823466e+38f
#define MT_INF __int_as_float(0x7f800000)
#define MT_NAN __int_as_float(0x7fffffff)

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((unsigned)x.bits) << 16); }
__device__ __forceinline__ float to_f32(int x) { return (float)x; }

/** f32 → T, rounding to nearest even once (the only rounding a bf16 result sees). */
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  bf16 r; r.bits = h; return r;
}
// Half-way cases round up, as the CPU backend's Math.round does.
template <> __device__ __forceinline__ int from_f32<int>(float x) {
  const float f = floorf(x);
  return (int)(x - f >= 0.5f ? f + 1.f : f);  // x − f is exact: no rounding of x + 0.5
}

/** dst = src with dtype conversion; same-type copies move bits (exact for i32 above 2^24). */
template <typename TO, typename TI> struct Convert {
  static constexpr bool same = false;
  static __device__ __forceinline__ TO run(TI x) { return from_f32<TO>(to_f32(x)); }
};
template <typename T> struct Convert<T, T> {
  static constexpr bool same = true;
  static __device__ __forceinline__ T run(T x) { return x; }
};

// ---- 16-byte vectors: 4 f32 or 8 bf16 per load ----

template <typename T> struct Vec16 { static constexpr int N = 16 / sizeof(T); };

/** 16 bytes as four words; its alignment makes every load and store of it one 128-bit access. */
struct alignas(16) Words4 { unsigned w[4]; };

/** Loads 16 aligned bytes as Vec16<T>::N floats. */
__device__ __forceinline__ void load16(const float* p, float* out) {
  const Words4 v = *reinterpret_cast<const Words4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = __uint_as_float(v.w[i]);
}
__device__ __forceinline__ void load16(const bf16* p, float* out) {
  const Words4 v = *reinterpret_cast<const Words4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(v.w[i] << 16);
    out[2 * i + 1] = __uint_as_float(v.w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void store16(float* p, const float* in) {
  Words4 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.w[i] = __float_as_uint(in[i]);
  *reinterpret_cast<Words4*>(p) = v;
}
__device__ __forceinline__ void store16(bf16* p, const float* in) {
  Words4 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v.w[i] = (unsigned)from_f32<bf16>(in[2 * i]).bits | ((unsigned)from_f32<bf16>(in[2 * i + 1]).bits << 16);
  }
  *reinterpret_cast<Words4*>(p) = v;
}

/** 8 elements through 16-byte accesses (one for bf16, two for f32); p must be 16-byte aligned. */
__device__ __forceinline__ void load8(const float* p, float* out) { load16(p, out); load16(p + 4, out + 4); }
__device__ __forceinline__ void load8(const bf16* p, float* out) { load16(p, out); }
__device__ __forceinline__ void store8(float* p, const float* in) { store16(p, in); store16(p + 4, in + 4); }
__device__ __forceinline__ void store8(bf16* p, const float* in) { store16(p, in); }

__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }

/** Elements before p+i reaches 16-byte alignment (p must be element-aligned), at most n. */
template <typename T> __device__ __forceinline__ int head_to_align16(const T* p, int n) {
  unsigned long long a = (unsigned long long)p;
  int mis = (int)((16 - (a & 15)) & 15) / (int)sizeof(T);
  return mis < n ? mis : n;
}

// ---- reductions (f32) ----

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/** Sum over the block, returned to every thread. scratch: 32 floats of shared memory. */
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

#define MT_GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// ---- instantiation helpers: M(A), M(A,B), M(A,B,C) over the float types ----
#define MT_FLOAT_TYPES1(M) M(f32) M(bf16)
#define MT_ALL_TYPES2(M) \
  M(f32, f32) M(f32, bf16) M(f32, i32) M(bf16, f32) M(bf16, bf16) M(bf16, i32) M(i32, f32) M(i32, bf16) M(i32, i32)
#define MT_FLOAT_TYPES2(M) M(f32, f32) M(f32, bf16) M(bf16, f32) M(bf16, bf16)
#define MT_FLOAT_TYPES3(M) \
  M(f32, f32, f32) M(f32, f32, bf16) M(f32, bf16, f32) M(f32, bf16, bf16) \
  M(bf16, f32, f32) M(bf16, f32, bf16) M(bf16, bf16, f32) M(bf16, bf16, bf16)
