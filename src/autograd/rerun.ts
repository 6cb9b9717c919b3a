// Whole blocks recomputed in backward (activation checkpointing; train option recompute=layers):
// the block's forward runs without recording, so none of its activations stay alive until
// backward, only its inputs (saved by one node) and its outputs. When backward reaches that node,
// its rule runs the forward again from the saved inputs, recording, back-propagates the output
// gradients through the fresh graph at once, and hands on the gradients it collected for the
// inputs. The cost is one more forward of the block; the gain is every activation of the block
// between its forward and its backward, which for a decoder layer is ~30× its input.
//
// The second forward must compute what the first did: the same ops on the same inputs and
// weights (no dropout here; routing is deterministic), and it must not change any state the
// first one changed (the model refuses the global-batch load-balance form, whose counts each
// forward adds to, with recomputed layers: models/deepseek_v2.ts). Collectives inside the block
// (expert all-to-all, the cp sequence counts) run again, in the same order on every rank,
// since every rank reaches the same block in the same backward order. Parameter gradients are
// written by the second forward's rules as in a normal backward, in the same order, so a run
// with blocks recomputed computes the same values as one without.
//
// How the input gradients are collected: each saved input is given to the second forward as an
// alias whose gradLink points at a node of its own ("sink") that has no inputs; backwardFrom
// delivers the summed gradient of that alias to the sink's rule, which keeps it.
import { beginNode, GradNode, isRecording, linkOutputs, noGrad } from './tape.js';
import { backwardFrom } from './backward.js';
import { tidy } from '../tensor/scope.js';
import type { Tensor } from '../tensor/tensor.js';

/**
 * outputs = forward(inputs), with forward run again from the saved inputs in backward instead of
 * keeping its activations. Outside recording (noGrad, evaluation) it is just forward(inputs).
 */
export function rerunInBackward(inputs: readonly Tensor[], forward: (inputs: readonly Tensor[]) => Tensor[]): Tensor[] {
  if (!isRecording()) return forward(inputs);
  const outputs = noGrad(() => forward(inputs));
  const node = beginNode('rerun', inputs, outputs.length);
  if (!node) return outputs;
  const saved = inputs.map((x) => node.save(x));
  node.rule = (gouts) => tidy(() => {
    const collected: (Tensor | null)[] = saved.map(() => null);
    const aliases = saved.map((x, i) => {
      const alias = x.view(x.shape, x.strides, x.offset);
      const sink = new GradNode('rerun input', [], 1, ([g]) => {
        // The engine disposes g after this rule: an alias of it (in this scope, returned below) keeps it.
        if (g) collected[i] = g.view(g.shape, g.strides, g.offset);
        return [];
      });
      alias.gradLink = { node: sink, index: 0 };
      return alias;
    });
    const again = forward(aliases);
    const roots = again.flatMap((root, j) => (gouts[j] ? [{ root, seed: gouts[j]! }] : []));
    // Outputs that no recorded op produced (a constant part of the block) take no gradient.
    backwardFrom(roots.filter((r) => r.root.gradLink !== null));
    // Sinks the gradient never reached (an input unused on every path that has a gradient).
    return collected;
  });
  linkOutputs(node, outputs);
  return outputs;
}
