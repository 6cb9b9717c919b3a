// Reverse-mode autograd. An op that has inputs needing gradients records a GradNode whose
// backward rule maps output gradients to input gradients. Tensors the rule needs are saved as
// retained aliases, so the forward code may dispose its handles early (layer scopes do); each
// node releases its saved tensors as soon as its rule has run, which is what lets activation
// memory fall during the backward pass.
import type { BackwardRule, GradGraphNode, Tensor } from '../tensor/tensor.js';
import { keep, trackNodeInScope } from '../tensor/scope.js';

/** Nodes recorded and not yet released, for leak tests. */
let liveNodes = 0;

/** How many autograd nodes exist that have not been released (by backward or by their scope). */
export function liveGradNodeCount(): number { return liveNodes; }

export class GradNode implements GradGraphNode {
  private saved: Tensor[] = [];
  private released = false;
  constructor(
    readonly name: string,
    /** The op's differentiable inputs, in the order the rule returns their gradients. */
    readonly inputs: readonly Tensor[],
    readonly outputCount: number,
    public rule: BackwardRule | null,
  ) {
    liveNodes++;
    trackNodeInScope(this);
  }

  *parents(): Iterable<GradGraphNode> {
    for (const t of this.inputs) if (t.gradLink) yield t.gradLink.node;
  }

  /** Keeps t's storage alive until this node's rule has run; returns the alias to use in the rule. */
  save(t: Tensor): Tensor {
    const alias = keep(t.view(t.shape, t.strides, t.offset));
    alias.storage.savedRefs++;
    this.saved.push(alias);
    return alias;
  }

  /** Before the rule runs: recomputes the saved tensors whose memory was given back (autograd/recompute.ts). */
  prepare(): void {
    for (const t of this.saved) if (t.storage.awaitsRebuild) t.storage.rematerialize();
  }

  release(): void {
    if (!this.released) { this.released = true; liveNodes--; }
    for (const t of this.saved) { t.storage.savedRefs--; t.dispose(); }
    this.saved = [];
    this.rule = null;
  }
}

let gradEnabled = true;

/** Runs fn with gradient recording off (evaluation, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  const before = gradEnabled;
  gradEnabled = false;
  try { return fn(); } finally { gradEnabled = before; }
}

/** Whether ops record gradient nodes now (false inside noGrad). */
export function isRecording(): boolean { return gradEnabled; }

export function needsGrad(t: Tensor): boolean {
  return t.requiresGrad || t.gradLink !== null;
}

/**
 * Starts a node for an op if recording is on and any input needs a gradient; returns null
 * otherwise (the op then skips saving anything). The caller saves tensors via node.save, sets
 * node.rule, and links outputs with linkOutputs.
 */
export function beginNode(name: string, inputs: readonly Tensor[], outputCount: number): GradNode | null {
  if (!gradEnabled || !inputs.some(needsGrad)) return null;
  return new GradNode(name, inputs, outputCount, null);
}

export function linkOutputs(node: GradNode | null, outputs: readonly Tensor[]): void {
  if (!node) return;
  outputs.forEach((t, index) => { t.gradLink = { node, index }; });
}
