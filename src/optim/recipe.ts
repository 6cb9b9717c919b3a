// Training recipes: what a parameter costs in memory and how it is updated.
//
// default  f32 master + bf16 compute copy + f32 gradient + f32 Adam moments: 18 bytes per
//          parameter (optim/adam.ts). The reference numerics.
// lean     bf16 weights without a master, updated with stochastic rounding; bf16 Adam moments,
//          also stochastically rounded; bf16 gradients when a step has one micro-batch, f32 when
//          micro-batches accumulate (a sum of many bf16 roundings would lose the small ones):
//          8 bytes per parameter, 10 with accumulation (optim/lean_adam.ts says why this design).
//          Parameters computed in f32 (the router) and the RMSNorm gains (leanKeepsMaster) stay as
//          in the default recipe. The embedding's bf16 gradient is written row by row, each row's
//          sum over its tokens made in f32 and rounded once (Backend.embeddingBackward).
import type { GradsAfter } from '../backend/backend.js';
import type { DType } from '../tensor/dtype.js';

export type Recipe = 'default' | 'lean';

export const RECIPES: readonly Recipe[] = ['default', 'lean'];

/** What a trainer needs of an optimizer, whichever the recipe. */
export interface Optimizer {
  /** Number of updates taken so far (restored from a checkpoint on resume). */
  step: number;
  /** One update with learning rate lr; gradScale multiplies every gradient; every gradient is 0 afterwards unless grads is 'keep' (default 'zero'). */
  update(lr: number, gradScale: number, grads?: GradsAfter): void;
  dispose(): void;
}

/** Bytes one parameter held in the compute dtype keeps between steps (weights, gradient, moments). */
export interface RecipeBytes { weights: number; gradient: number; moments: number }

/**
 * Bytes per parameter of a recipe for a bf16 (computeBytes 2) or f32 (4) compute dtype; lean
 * needs bf16 compute. accumulating: several micro-batches per step on this rank.
 */
export function recipeBytes(recipe: Recipe, computeBytes: number, accumulating: boolean): RecipeBytes {
  switch (recipe) {
    case 'default': return { weights: 4 + (computeBytes === 4 ? 0 : computeBytes), gradient: 4, moments: 8 };
    case 'lean': return { weights: 2, gradient: accumulating ? 4 : 2, moments: 4 };
    default: return recipe satisfies never;
  }
}

/**
 * Whether a parameter of a lean run keeps the default recipe's f32 master and update: those
 * computed in f32 (the router) and the 1-D ones, the RMSNorm gains. A gain sits near 1, where the
 * bf16 spacing is 2^-7 ≈ 0.0078, and Adam moves it by about lr (≤ 4e-3 in the tiny runs, falling
 * with the schedule): a stochastically rounded gain moves by a whole spacing or not at all, noise
 * larger than the step. They are a few thousand parameters a layer; docs/lean_recipe.md measures
 * what keeping their masters changes.
 */
export function leanKeepsMaster(shape: readonly number[], dtype: DType | 'compute'): boolean {
  return dtype === 'f32' || shape.length === 1;
}

/**
 * The gradient dtype of a lean parameter: bf16 when the step has one micro-batch, so that one
 * pass writes the gradient with one rounding (a matmul's product, or the embedding's rows summed
 * in f32); f32 otherwise. Until 2026-12-07 the embedding kept an f32 gradient (0.78 GiB at
 * DeepSeek-V2-Lite's vocabulary, against 0.39 in bf16).
 */
export function leanGradDtype(spec: { readonly shape: readonly number[] }, microBatchesPerStep: number): DType {
  return microBatchesPerStep === 1 && spec.shape.length === 2 ? 'bf16' : 'f32';
}
