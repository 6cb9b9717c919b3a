// cos/sin tables for rotary embeddings: plain (θ^(−2j/d)) or YaRN (DeepSeek-V2's long-context
// scaling: frequencies blended between interpolated and original by a linear ramp over the
// rotation count, and the magnitude scale mscale folded into cos and sin).

/** YaRN scaling as DeepSeek-V2's config.json gives it (rope_scaling). */
export interface RopeScaling {
  type: 'yarn';
  /** Context extension factor: frequencies are divided by it where the ramp says so. */
  factor: number;
  /** Context length the model was trained at before the extension. */
  original_max_position_embeddings: number;
  /** Rotation counts bounding the ramp between extrapolated and interpolated frequencies. */
  beta_fast: number;
  beta_slow: number;
  /**
   * Magnitude scales: cos and sin are multiplied by yarnMscale(factor, mscale) /
   * yarnMscale(factor, mscale_all_dim), and the attention softmax scale by yarnMscale(factor, mscale_all_dim)².
   */
  mscale: number;
  mscale_all_dim: number;
}

export function yarnMscale(scale: number, mscale: number): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

function correctionDim(rotations: number, dim: number, base: number, maxPos: number): number {
  return (dim * Math.log(maxPos / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
}

export function inverseFrequencies(dim: number, base: number, scaling: RopeScaling | null): Float64Array {
  const half = dim / 2;
  const extra = new Float64Array(half);
  for (let j = 0; j < half; j++) extra[j] = 1 / base ** ((2 * j) / dim);
  if (!scaling) return extra;
  const low = Math.max(Math.floor(correctionDim(scaling.beta_fast, dim, base, scaling.original_max_position_embeddings)), 0);
  const high = Math.min(Math.ceil(correctionDim(scaling.beta_slow, dim, base, scaling.original_max_position_embeddings)), dim - 1);
  const top = low === high ? high + 0.001 : high;
  const out = new Float64Array(half);
  for (let j = 0; j < half; j++) {
    const ramp = Math.min(Math.max((j - low) / (top - low), 0), 1);
    const keepOriginal = 1 - ramp;
    out[j] = (extra[j]! / scaling.factor) * (1 - keepOriginal) + extra[j]! * keepOriginal;
  }
  return out;
}

/** cos and sin [S, dim/2] as f32 for positions 0..S−1. */
export function ropeTables(seqLen: number, dim: number, base: number, scaling: RopeScaling | null): { cos: Float32Array; sin: Float32Array } {
  return ropeTablesAt(Array.from({ length: seqLen }, (_, s) => s), dim, base, scaling);
}

/** cos and sin [positions.length, dim/2] as f32, row i for position positions[i] (a context-parallel rank's tokens). */
export function ropeTablesAt(positions: readonly number[], dim: number, base: number, scaling: RopeScaling | null): { cos: Float32Array; sin: Float32Array } {
  const inv = inverseFrequencies(dim, base, scaling);
  const m = scaling ? yarnMscale(scaling.factor, scaling.mscale) / yarnMscale(scaling.factor, scaling.mscale_all_dim) : 1;
  const half = dim / 2, n = positions.length;
  const cos = new Float32Array(n * half), sin = new Float32Array(n * half);
  for (let i = 0; i < n; i++) for (let j = 0; j < half; j++) {
    // f32 angle as in the reference implementation (positions and frequencies in float32).
    const angle = Math.fround(Math.fround(positions[i]!) * Math.fround(inv[j]!));
    cos[i * half + j] = Math.cos(angle) * m;
    sin[i * half + j] = Math.sin(angle) * m;
  }
  return { cos, sin };
}
