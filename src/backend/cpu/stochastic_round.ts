// Stochastic rounding f32 → bf16 for the lean recipe (optim/lean_adam.ts), with the random bits
// drawn from a counter-based hash instead of a generator's state: the bits for element i of a
// tensor at step t are a pure function of (seed, step, stream, element), so a run is
// reproducible, a resumed run draws exactly the bits it would have drawn, and the GPU kernel
// (cuda/kernels/stochastic_round.cuh) draws the same bits as this reference.
//
// Rounding: add a uniform 16-bit integer r to the low half of x's bit pattern and keep the top
// half. x rounds away from zero (in magnitude) with probability (low 16 bits of x) / 65536, the
// distance to the lower neighbour over the bf16 spacing, so E[round(x)] = x. Infinities and NaN
// round to nearest (a NaN stays NaN).
//
// The hash is lowbias32 (a 32-bit xorshift-multiply finaliser with good avalanche). The key of a
// (seed, step, stream) triple mixes them in sequence; an element's 32 bits are one lowbias32 of
// the key xor the element's Weyl number (i·golden ratio, a bijection of i). One element rounds
// three arrays, each with 16 bits: the weights take the low half, m the high half, v the high
// half of the bits times an odd constant (a bijection, so uniform too). Why one hash and not one
// per array: the GPU pass is bound by its integer work otherwise (four lowbias32 per element
// measured 13.0 ms against a 9.5 ms byte floor on an H100); each array's 16 bits are still
// uniform and independent of the value rounded, which is all unbiasedness needs.
import { f32ToBf16 } from '../../tensor/dtype.js';

/** lowbias32: a 32-bit integer finaliser (every input bit flips each output bit with probability ≈ 1/2). */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** The per-(seed, step, stream) key; stream names a tensor (a slot of the optimizer's list). */
export function roundingKey(seed: number, step: number, stream: number): number {
  return mix32((seed ^ mix32((step ^ mix32((stream + 0x9e3779b9) >>> 0)) >>> 0)) >>> 0);
}

/** 32 random bits for element i (u32) of the tensor with this key. */
export function elementBits(key: number, i: number): number {
  return mix32((key ^ Math.imul(i >>> 0, 0x9e3779b9)) >>> 0);
}

/** The 16 bits each array of an element rounds with (low 16 bits of the result), from its elementBits. */
export const drawWeights = (bits: number): number => bits & 0xffff;
export const drawM = (bits: number): number => bits >>> 16;
export const drawV = (bits: number): number => Math.imul(bits, 0x2c1b3c6d) >>> 16;

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** x (an f32 value) → bf16 bits, rounded up in magnitude with probability (low half)/65536; r: 32 random bits (the low 16 are used). */
export function stochasticRoundBf16(x: number, r: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000) return f32ToBf16(x);
  return ((bits + (r & 0xffff)) >>> 16) & 0xffff;
}
