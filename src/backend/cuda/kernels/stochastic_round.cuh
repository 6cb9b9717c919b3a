// Stochastic rounding f32 → bf16 with counter-based random bits, the same bits as the CPU
// reference (backend/cpu/stochastic_round.ts, which explains the scheme): lowbias32 hashes of
// (seed, step, stream) → key, then one of key ^ (element index · golden ratio) → 32 bits, from
// which each array of the element takes 16 (draw_*), added to the f32 pattern before truncation.
// Infinities and NaN round to nearest.
#pragma once
#include "common.cuh"

__device__ __forceinline__ unsigned mix32(unsigned x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}

__device__ __forceinline__ unsigned rounding_key(unsigned seed, unsigned step, unsigned stream) {
  return mix32(seed ^ mix32(step ^ mix32(stream + 0x9e3779b9u)));
}

__device__ __forceinline__ unsigned element_bits(unsigned key, unsigned i) { return mix32(key ^ (i * 0x9e3779b9u)); }

// The 16 bits (the low half of the result) each array of an element rounds with.
__device__ __forceinline__ unsigned draw_weights(unsigned bits) { return bits & 0xffffu; }
__device__ __forceinline__ unsigned draw_m(unsigned bits) { return bits >> 16; }
__device__ __forceinline__ unsigned draw_v(unsigned bits) { return (bits * 0x2c1b3c6du) >> 16; }

__device__ __forceinline__ bf16 stochastic_round_bf16(float x, unsigned r) {
  const unsigned bits = __float_as_uint(x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return from_f32<bf16>(x);
  bf16 out;
  out.bits = (unsigned short)((bits + (r & 0xffffu)) >> 16);
  return out;
}
