// backward(loss): runs the recorded rules in reverse topological order. Gradients of
// intermediate tensors are disposed as soon as their node has consumed them; gradients of
// leaves (parameters) are added into leaf.grad (f32, preallocated by the optimizer; copied into
// it when it is logically zero, lazy_grad_zero.ts) or, when a leaf has none, kept as a new f32
// tensor that the caller owns.
import { backendOf } from '../backend/backend.js';
import { emptyTensor, type GradGraphNode, type Tensor } from '../tensor/tensor.js';
import { keep } from '../tensor/scope.js';
import { claimGradBeta } from './lazy_grad_zero.js';

function addInto(acc: Tensor, g: Tensor): void {
  backendOf(acc).binary('add', acc, acc, g);
}

/** prev + g, in place when prev's storage is not shared (a rule may pass a gradient through as an alias). */
function sum(prev: Tensor, g: Tensor): Tensor {
  const backend = backendOf(prev);
  if (prev.storage.refs === 1 && prev.isContiguous()) { addInto(prev, g); return prev; }
  const out = emptyTensor(backend, prev.shape, prev.dtype);
  backend.binary('add', out, prev, g);
  prev.dispose();
  return out;
}

/** Accumulates a gradient into a leaf's f32 grad (the first write of a step copies). Used by backward and by fused rules. */
export function accumulateLeafGrad(leaf: Tensor, g: Tensor): void {
  const backend = backendOf(g);
  if (leaf.grad) {
    if (claimGradBeta(leaf.grad) === 0) backend.copy(leaf.grad, g);
    else addInto(leaf.grad, g);
  } else {
    const acc = keep(emptyTensor(backend, leaf.shape, 'f32'));
    backend.copy(acc, g);
    leaf.grad = acc;
  }
}

/** Topological order of the nodes reachable from the roots (inputs before the nodes that use them). */
function topoOrder(roots: readonly GradGraphNode[]): GradGraphNode[] {
  const order: GradGraphNode[] = [];
  const state = new Map<GradGraphNode, 'open' | 'done'>();
  for (const root of roots) {
    if (state.has(root)) continue;
    const stack: { node: GradGraphNode; next: number }[] = [{ node: root, next: 0 }];
    state.set(root, 'open');
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      if (top.next < top.node.inputs.length) {
        const link = top.node.inputs[top.next++]!.gradLink;
        if (link && !state.has(link.node)) {
          state.set(link.node, 'open');
          stack.push({ node: link.node, next: 0 });
        }
      } else {
        state.set(top.node, 'done');
        order.push(top.node);
        stack.pop();
      }
    }
  }
  return order;
}

/**
 * Back-propagates from a scalar (or any) tensor. seed defaults to ones of root's shape. Every
 * node reached is released afterwards, so backward runs once per forward.
 */
export function backward(root: Tensor, seed?: Tensor): void {
  backwardFrom([{ root, ...(seed ? { seed } : {}) }]);
}

/**
 * Back-propagates from several tensors of one graph in one pass, each with its seed (default:
 * f32 ones of its shape), as a pipeline stage does from its output, seeded with the gradient
 * received for it, and from its own load-balance loss. Seeds stay the caller's.
 */
export function backwardFrom(roots: readonly { root: Tensor; seed?: Tensor }[]): void {
  const grads = new Map<GradGraphNode, (Tensor | null)[]>();
  const slot = (n: GradGraphNode) => {
    let g = grads.get(n);
    if (!g) { g = new Array<Tensor | null>(n.outputCount).fill(null); grads.set(n, g); }
    return g;
  };
  const seeds = new Set<Tensor>();
  for (const { root, seed } of roots) {
    const rootLink = root.gradLink;
    if (!rootLink) throw new Error('internal: backward() on a tensor that no recorded op produced');
    let seedGrad = seed;
    if (seedGrad) {
      seeds.add(seedGrad);
    } else {
      seedGrad = emptyTensor(backendOf(root), root.shape, 'f32');
      backendOf(root).fill(seedGrad, 1);
    }
    const s = slot(rootLink.node), prev = s[rootLink.index];
    if (!prev) { s[rootLink.index] = seedGrad; continue; }
    // Two roots on one output: their seeds add (into a fresh tensor, since seeds are the caller's).
    const both = emptyTensor(backendOf(prev), prev.shape, prev.dtype);
    backendOf(prev).binary('add', both, prev, seedGrad);
    for (const t of [prev, seedGrad]) if (!seeds.has(t)) t.dispose();
    s[rootLink.index] = both;
  }

  const order = topoOrder(roots.map((r) => r.root.gradLink!.node));
  for (let i = order.length - 1; i >= 0; i--) {
    const node = order[i]!;
    const gouts = slot(node);
    grads.delete(node);
    const rule = node.rule;
    if (!rule) throw new Error(`internal: ${node.name} has no backward rule (backward run twice?)`);
    // Rules (and the backend methods they call) take contiguous gradients; pass-through rules
    // such as permute may have produced strided views.
    for (let j = 0; j < gouts.length; j++) {
      const g = gouts[j];
      if (g && !g.isContiguous()) {
        const c = emptyTensor(backendOf(g), g.shape, g.dtype);
        backendOf(g).copy(c, g);
        if (!seeds.has(g)) g.dispose();
        gouts[j] = c;
      }
    }
    let gins: readonly (Tensor | null)[] = [];
    if (gouts.some((g) => g !== null)) { node.prepare(); gins = rule(gouts); }
    node.release();
    for (const g of gouts) if (g && !seeds.has(g)) g.dispose();
    node.inputs.forEach((input, j) => {
      const g = gins[j];
      if (!g) return;
      const link = input.gradLink;
      if (link) {
        const s = slot(link.node);
        const prev = s[link.index];
        if (prev) { s[link.index] = sum(prev, g); g.dispose(); } else s[link.index] = g;
      } else if (input.requiresGrad) {
        accumulateLeafGrad(input, g);
        g.dispose();
      } else {
        g.dispose();
      }
    });
  }
}
