// Recomputed activations (autograd/recompute.ts): an output marked recomputable gives its memory
// back once only backward's saved views hold it, comes back bit for bit before the first rule
// that reads it, and the gradients are those of the same graph whose output stayed resident.
// Cases: SwiGLU → linear (the MLP), gathered rows → linear (the MoE's routed rows, through
// gatherRows and through dispatchRows), and the widening cast → linear (the router). Also: nothing is marked without gradient recording, and a
// forward that is never back-propagated releases everything.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { noGrad } from '../src/autograd/tape.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { cast } from '../src/ops/elementwise.js';
import { linear } from '../src/ops/linear.js';
import { sumAll } from '../src/ops/reduce.js';
import { gatherRows } from '../src/ops/rows.js';
import { dispatchRows } from '../src/ops/expert_rows.js';
import { swiglu } from '../src/ops/swiglu.js';
import { tidy, keep } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { DType } from '../src/tensor/dtype.js';
import { randomValues } from './helpers/grad_check.js';

const be = new CpuBackend();

interface Case {
  name: string;
  dtype: DType;
  /** Leaves' shapes; the last is the linear's weight. */
  shapes: number[][];
  /** The recomputable op on the leaves (all but the weight). */
  op: (xs: Tensor[]) => Tensor;
}

const idx = () => fromHost(be, Int32Array.from([3, 0, 3, 1, 4, 2, 2, 0, 1, 4, 3, 3]), [12], 'i32');
const cases: Case[] = [
  { name: 'swiglu → linear', dtype: 'bf16', shapes: [[7, 10], [7, 10], [5, 10]], op: ([g, u]) => swiglu(g!, u!) },
  { name: 'gatherRows (12 rows of 5) → linear', dtype: 'bf16', shapes: [[5, 6], [4, 6]], op: ([x]) => gatherRows(x!, idx(), null) },
  // The same 12 rows as 5 tokens' k = 4 slots (eight slots without a row): rowOfSlot is idx's inverse.
  {
    name: 'dispatchRows (12 rows of 5) → linear', dtype: 'bf16', shapes: [[5, 6], [4, 6]],
    op: ([x]) => dispatchRows(x!, idx(), fromHost(be, Int32Array.from([1, 7, -1, -1, 3, 8, -1, -1, 5, 6, -1, -1, 0, 2, 10, 11, 4, 9, -1, -1]), [20], 'i32')),
  },
  { name: 'cast bf16 → f32 → linear', dtype: 'bf16', shapes: [[6, 8], [3, 8]], op: ([x]) => cast(x!, 'f32') },
];

/** Gradients of sum(linear(op(leaves), w)) with the op's output held (hold) or dropped after forward. */
function grads(c: Case, hold: boolean): { grads: Float32Array[]; liveAfterForward: number; liveBefore: number } {
  const liveBefore = be.memoryStats().liveBytes;
  let liveAfterForward = 0;
  const out = tidy(() => {
    const leaves = c.shapes.map((s, i) => {
      const t = fromHost(be, randomValues(s.reduce((a, b) => a * b, 1), 40 + i), s, c.dtype);
      t.requiresGrad = true;
      return t;
    });
    const w = leaves[leaves.length - 1]!;
    let held: Tensor | null = null;
    const loss = tidy(() => {
      const a = c.op(leaves.slice(0, -1));
      if (hold) held = keep(a.view(a.shape, a.strides, a.offset)); // a handle outside the scopes: stays resident
      const wv = w.dtype === a.dtype ? w : cast(w, a.dtype);
      return sumAll(linear(a, wv));
    });
    liveAfterForward = be.memoryStats().liveBytes;
    backward(loss);
    (held as Tensor | null)?.dispose();
    const g = leaves.map((l) => toHostF32(l.grad!));
    for (const l of leaves) l.grad!.dispose();
    return g;
  });
  return { grads: out, liveAfterForward, liveBefore };
}

for (const c of cases) {
  test(`recomputed activation: ${c.name} gives the resident graph's gradients bit for bit, with less memory between`, () => {
    const resident = grads(c, true), recomputed = grads(c, false);
    recomputed.grads.forEach((g, i) => assert.deepEqual(g, resident.grads[i], `gradient of leaf ${i}`));
    assert.ok(recomputed.liveAfterForward < resident.liveAfterForward, `live after forward ${recomputed.liveAfterForward} vs ${resident.liveAfterForward}`);
    assert.equal(be.memoryStats().liveBytes, recomputed.liveBefore, 'every byte released');
  });
}

test('recomputable outputs: nothing is marked under noGrad, and a forward never back-propagated releases everything', () => {
  const before = be.memoryStats().liveBytes;
  noGrad(() => tidy(() => {
    const g = fromHost(be, randomValues(12, 1), [3, 4], 'f32'), u = fromHost(be, randomValues(12, 2), [3, 4], 'f32');
    const a = swiglu(g, u);
    assert.equal(a.storage.awaitsRebuild, false);
    a.dispose();
    assert.equal(a.storage.refs, 0, 'freed at once: no saved views');
  }));
  tidy(() => {
    const g = fromHost(be, randomValues(12, 1), [3, 4], 'f32'), u = fromHost(be, randomValues(12, 2), [3, 4], 'f32');
    const w = fromHost(be, randomValues(8, 3), [2, 4], 'f32');
    g.requiresGrad = true; u.requiresGrad = true; w.requiresGrad = true;
    const y = tidy(() => linear(swiglu(g, u), w));
    assert.ok(y.gradLink, 'recorded');
  });
  assert.equal(be.memoryStats().liveBytes, before);
});
