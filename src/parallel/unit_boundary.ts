// A hook on the backward pass at a unit's edge: identities over a unit's input or output
// tensors whose backward rule first runs a callback, then passes the gradients through.
// Autograd runs rules in reverse topological order, so a boundary on a unit's outputs runs its
// callback before any rule inside the unit (every path into the unit's nodes crosses it), and a
// boundary on a unit's inputs runs its callback after all of them (every node of the unit uses
// the input). Sharded parameters gather a unit's weights in the first and reduce its gradients
// in the second (fsdp.ts).
import { beginNode, linkOutputs } from '../autograd/tape.js';
import type { Tensor } from '../tensor/tensor.js';

const alias = (t: Tensor): Tensor => t.view(t.shape, t.strides, t.offset);

/**
 * Aliases of xs; when recording gradients, their node's rule calls onBackward and returns the
 * output gradients unchanged. Without recording (or when no x needs a gradient) no node is made
 * and onBackward never runs.
 */
export function backwardBoundary(name: string, xs: readonly Tensor[], onBackward: () => void): Tensor[] {
  const node = beginNode(name, xs, xs.length);
  const outs = xs.map(alias);
  if (node) {
    node.rule = (grads) => {
      onBackward();
      return grads.map((g) => (g ? alias(g) : null));
    };
  }
  linkOutputs(node, outs);
  return outs;
}
