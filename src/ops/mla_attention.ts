// MLA attention as one differentiable op over its five pieces (see Backend.mlaAttention):
// the backend concatenates q = (q_nope | q_pe) and k = (k_nope | k_pe) itself.
import { backendOf, type AttentionOptions } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/** Returns o [B,S,H,Dv] (differentiable) and lse [B,H,S] f32. */
export function mlaAttention(qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): { o: Tensor; lse: Tensor } {
  const [B, S, H] = qNope.shape as [number, number, number];
  if (kPe.shape[2] !== 1) throw new Error(`internal: k_pe must be [B,S,1,D], got [${kPe.shape}]`);
  const backend = backendOf(qNope);
  const o = emptyTensor(backend, [B, S, H, v.shape[3]!], v.dtype);
  const lse = emptyTensor(backend, [B, H, S], 'f32');
  backend.mlaAttention(o, lse, qNope, qPe, kNope, kPe, v, opts);
  const node = beginNode('mlaAttention', [qNope, qPe, kNope, kPe, v], 1);
  if (node) {
    const s = [qNope, qPe, kNope, kPe, v, o, lse].map((t) => node.save(t)) as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
    node.rule = ([g]) => {
      const grads = {
        dqNope: emptyTensor(backend, qNope.shape, qNope.dtype), dqPe: emptyTensor(backend, qPe.shape, qPe.dtype),
        dkNope: emptyTensor(backend, kNope.shape, kNope.dtype), dkPe: emptyTensor(backend, kPe.shape, kPe.dtype),
        dv: emptyTensor(backend, v.shape, v.dtype),
      };
      backend.mlaAttentionBackward(grads, g!, ...s, opts);
      return [grads.dqNope, grads.dqPe, grads.dkNope, grads.dkPe, grads.dv];
    };
  }
  linkOutputs(node, [o]);
  return { o, lse };
}
