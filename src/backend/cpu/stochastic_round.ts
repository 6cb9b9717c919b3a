// Stochastic rounding f32 → bf16 for the lean recipe (optim/lean_adam.ts), with the random bits
// drawn from a counter-based hash instead of a generator's state: the bits for element i of a
// tensor at step t are a pure function of (seed, step, stream, element, which array), so a run
// is reproducible, a resumed run draws exactly the bits it would have drawn, and the GPU kernel
// (cuda/kernels/stochastic_round.cuh) draws the same bits as this reference.
//
// Rounding: add a uniform 16-bit integer r to the low half of x's bit pattern and keep the top
// half. x rounds away from zero (in magnitude) with probability (low 16 bits of x) / 65536, the
// distance to the lower neighbour over the bf16 spacing, so E[round(x)] = x. Infinities and NaN
// round to nearest (a NaN stays NaN).
//
// The hash is lowbias32 (a 32-bit xorshift-multiply finaliser with good avalanche); the key of a
// (seed, step, stream) triple mixes them in sequence, the bits of an element mix the key with
// the element index and the array's salt.
import { f32ToBf16 } from '../../tensor/dtype.js';

/** lowbias32: a 32-bit integer finaliser (every input bit flips each output bit with probability ≈ 1/2). */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** Which array of a parameter a rounding is for: each draws independent bits. */
export const ROUND_SALT = { weights: 0x00000000, m: 0x68e31da4, v: 0xb5297a4d } as const;

/** The per-(seed, step, stream) key; stream names a tensor (a slot of the optimizer's list). */
export function roundingKey(seed: number, step: number, stream: number): number {
  return mix32((seed ^ mix32((step ^ mix32((stream + 0x9e3779b9) >>> 0)) >>> 0)) >>> 0);
}

/** 32 random bits for element i (u32) of the tensor with this key, for the array with salt. */
export function roundingBits(key: number, i: number, salt: number): number {
  return mix32((key ^ mix32(i >>> 0) ^ salt) >>> 0);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** x (an f32 value) → bf16 bits, rounded up in magnitude with probability (low half)/65536; r: 32 random bits (the low 16 are used). */
export function stochasticRoundBf16(x: number, r: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000) return f32ToBf16(x);
  return ((bits + (r & 0xffff)) >>> 16) & 0xffff;
}
