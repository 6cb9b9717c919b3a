// The CPU reference of Backend.adamLeanMulti: the lean recipe's Adam/AdamW step over bf16
// weights and bf16 moments. Each element is widened to f32, stepped with the arithmetic of the
// default step (cpu_backend.ts adam; cuda/kernels/adam_step.cuh), and the new weights, m and v
// are stored back with stochastic rounding (stochastic_round.ts), each array with its own 16 of
// the element's hashed bits.
// Why stochastic rounding for all three: an Adam update is typically 1e-3 of a weight and v's
// per-step change is (1 − β2) of v, both below half a bf16 spacing (2^-9 relative), so
// round-to-nearest would drop them and the weights and v would stall; rounded stochastically
// they are kept in expectation.
import type { GradsAfter, LeanAdamHyper } from '../backend.js';
import type { LeanAdamSlot } from '../tensor_list.js';
import { denseView } from './host.js';
import { drawM, drawV, drawWeights, elementBits, roundingKey, stochasticRoundBf16 } from './stochastic_round.js';

const widen = new Uint32Array(1);
const widened = new Float32Array(widen.buffer);
const bf16ToF32 = (bits: number): number => { widen[0] = bits << 16; return widened[0]!; };

/** One slot's step (stream: its index in the hash); zeroes its gradient unless grads is 'keep'. */
export function adamLeanSlot(s: LeanAdamSlot, h: LeanAdamHyper, stream: number, grads: GradsAfter): void {
  const W = denseView(s.weights) as Uint16Array, M = denseView(s.m) as Uint16Array, V = denseView(s.v) as Uint16Array;
  const G = denseView(s.grad);
  if (!(W instanceof Uint16Array && M instanceof Uint16Array && V instanceof Uint16Array)) throw new Error('internal: adamLeanMulti weights, m and v must be bf16');
  const gradBf16 = G instanceof Uint16Array;
  const wd = s.decay ? h.weightDecay : 0;
  const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
  const key = roundingKey(h.seed, h.step, stream);
  for (let i = 0; i < W.length; i++) {
    const p = bf16ToF32(W[i]!);
    let g = (gradBf16 ? bf16ToF32(G[i]!) : G[i]!) * h.gradScale;
    if (!h.decoupled) g += wd * p;
    const m = Math.fround(h.beta1 * bf16ToF32(M[i]!) + (1 - h.beta1) * g);
    const v = Math.fround(h.beta2 * bf16ToF32(V[i]!) + (1 - h.beta2) * g * g);
    let upd = (m / bc1) / (Math.sqrt(v / bc2) + h.eps);
    if (h.decoupled) upd += wd * p;
    const bits = elementBits(key, i);
    W[i] = stochasticRoundBf16(Math.fround(p - h.lr * upd), drawWeights(bits));
    M[i] = stochasticRoundBf16(m, drawM(bits));
    V[i] = stochasticRoundBf16(v, drawV(bits));
  }
  if (grads === 'zero') G.fill(0);
}
