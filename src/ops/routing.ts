// Router helpers: top-k selection (differentiable in the selected values), expert counts and
// the slot order that groups routed tokens by expert and its inverse (integer results, no
// gradient).
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { fromHost } from './create.js';

/** probs [N, E] f32 → values f32 [N, k] (differentiable) and indices i32 [N, k]. */
export function topk(probs: Tensor, k: number): { values: Tensor; indices: Tensor } {
  const [N, E] = probs.shape as [number, number];
  if (k > E) throw new Error(`internal: top-${k} of ${E}`);
  const backend = backendOf(probs);
  const values = emptyTensor(backend, [N, k], 'f32');
  const indices = emptyTensor(backend, [N, k], 'i32');
  backend.topk(values, indices, probs, k);
  const node = beginNode('topk', [probs], 1);
  if (node) {
    // Flat positions n·E + indices[n, j] let one scatter-add of [N·k, 1] rows do the backward.
    const base = new Int32Array(N * k);
    for (let n = 0; n < N; n++) for (let j = 0; j < k; j++) base[n * k + j] = n * E;
    const baseT = fromHost(backend, base, [N * k], 'i32');
    const flat = emptyTensor(backend, [N * k], 'i32');
    const iv = indices.view([N * k], [1], indices.offset);
    backend.binary('add', flat, iv, baseT);
    iv.dispose(); baseT.dispose();
    const sflat = node.save(flat);
    flat.dispose();
    node.rule = ([g]) => {
      const dp = emptyTensor(backend, [N * E, 1], 'f32');
      backend.fill(dp, 0);
      const gv = g!.view([N * k, 1], [1, 1], g!.offset);
      backend.scatterAddRows(dp, gv, sflat, null);
      gv.dispose();
      const out = dp.view([N, E], [E, 1], 0);
      dp.dispose();
      return [out];
    };
  }
  linkOutputs(node, [values]);
  return { values, indices };
}

/** counts i32 [G, E] of the expert ids in idx i32 [G, M]. */
export function bincount(idx: Tensor, numExperts: number): Tensor {
  const backend = backendOf(idx);
  const G = idx.rank === 1 ? 1 : idx.shape[0]!;
  const counts = emptyTensor(backend, idx.rank === 1 ? [numExperts] : [G, numExperts], 'i32');
  backend.bincount(counts, idx);
  return counts;
}

/** Slots sorted by expert (stable) and the group offsets [E+1]. */
export function expertOrder(expertOfSlot: Tensor, numExperts: number): { order: Tensor; offsets: Tensor } {
  const backend = backendOf(expertOfSlot);
  const order = emptyTensor(backend, [expertOfSlot.size], 'i32');
  const offsets = emptyTensor(backend, [numExperts + 1], 'i32');
  backend.expertOrder(order, offsets, expertOfSlot, numExperts);
  return { order, offsets };
}

/**
 * The row of each routed slot among `count` rows that start at `first` in order (a block of
 * experts' rows, ownedRouting), −1 for slots outside it: rowOfSlot i32 [S] for order i32 [S].
 */
export function expertOrderInverse(order: Tensor, first: number, count: number): Tensor {
  const S = order.size;
  if (first < 0 || count < 0 || first + count > S) throw new Error(`internal: rows [${first}, ${first + count}) of an order of ${S} slots`);
  const backend = backendOf(order);
  const rowOfSlot = emptyTensor(backend, [S], 'i32');
  backend.expertOrderInverse(rowOfSlot, order, first, count);
  return rowOfSlot;
}
