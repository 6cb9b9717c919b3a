// Stochastic rounding f32 → bf16 with counter-based random bits, the same bits as the CPU
// reference (backend/cpu/stochastic_round.ts, which explains the scheme): lowbias32 hashes of
// (seed, step, stream) → key, then of (key, element index, array salt) → 32 bits, of which the
// low 16 are added to the f32 pattern before truncation. Infinities and NaN round to nearest.
#pragma once
#include "common.cuh"

#define MT_SALT_WEIGHTS 0x00000000u
#define MT_SALT_M 0x68e31da4u
#define MT_SALT_V 0xb5297a4du

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

__device__ __forceinline__ unsigned rounding_bits(unsigned key, unsigned i, unsigned salt) {
  return mix32(key ^ mix32(i) ^ salt);
}

__device__ __forceinline__ bf16 stochastic_round_bf16(float x, unsigned r) {
  const unsigned bits = __float_as_uint(x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return from_f32<bf16>(x);
  bf16 out;
  out.bits = (unsigned short)((bits + (r & 0xffffu)) >> 16);
  return out;
}
