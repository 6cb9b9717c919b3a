// bench train --profile's section timing (bench/train_profile.ts) on the tiny model, CPU: with
// the profiler installed, a forward gives the same loss bit for bit, and the backward the same
// gradients up to bf16 rounding (its markers only pass gradients through, but as extra nodes
// they can change the order in which autograd adds two bf16 gradients of one tensor: 1e-2
// relative, a bf16 ulp on some elements); every layer kind the model has is timed in both
// passes; and every section's backward is closed by the end.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../src/autograd/backward.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import type { ModelSection } from '../src/models/section_hooks.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { add } from '../src/ops/elementwise.js';
import { tidy } from '../src/tensor/scope.js';
import { SectionProfiler, type ProfileKind } from '../bench/train_profile.js';

const B = 2, S = 12;

/** Loss and every gradient of one forward + backward, with or without the profiler. */
function run(profiled: boolean, opts?: ConstructorParameters<typeof SectionProfiler>[1]): { loss: Float32Array; grads: Float32Array[]; profiler: SectionProfiler | null; calls: ModelSection[] } {
  const be = new CpuBackend();
  const model = new DeepseekV2(tinyConfig(), be, 'bf16');
  model.initialize(3);
  const profiler = profiled ? new SectionProfiler(be, opts) : null;
  const calls: ModelSection[] = [];
  if (profiler) {
    model.sections = { section: (kind, x, fn) => { calls.push(kind); return profiler.section(kind, x, fn); } };
  }
  const V = model.config.vocab_size;
  const ids = Int32Array.from({ length: B * S }, (_, i) => (i * 37 + 5) % V);
  const labels = Int32Array.from({ length: B * S }, (_, i) => (i * 53 + 11) % V);
  let loss: Float32Array = new Float32Array();
  tidy(() => {
    const out = model.forward(fromHost(be, ids, [B, S], 'i32'), fromHost(be, labels, [B, S], 'i32'), B * S, { form: 'micro-batch', alpha: 0.01 });
    const total = add(out.crossEntropy, out.loadBalance);
    loss = toHostF32(total);
    profiler?.beginBackward();
    backward(total);
    profiler?.endBackward();
  });
  const grads = model.params.map((p) => toHostF32(p.grad));
  model.dispose();
  return { loss, grads, profiler, calls };
}

test('the section profiler changes no number and times every layer kind in both passes', () => {
  const plain = run(false), timed = run(true);
  assert.deepEqual(timed.loss, plain.loss);
  timed.grads.forEach((g, i) => {
    const want = plain.grads[i]!;
    let num = 0, den = 0;
    for (let j = 0; j < want.length; j++) { num += (g[j]! - want[j]!) ** 2; den += want[j]! ** 2; }
    assert.ok(den > 0 && Math.sqrt(num / den) <= 1e-2, `gradient ${i}: relative error ${Math.sqrt(num / den)}`);
  });
  const p = timed.profiler!;
  // The tiny model: layer 0 dense, layer 1 MoE with a shared expert; the load-balance loss is on.
  assert.deepEqual(new Set(timed.calls), new Set<ModelSection>(['attention', 'mlp', 'router', 'experts', 'head']));
  for (const kind of ['attention', 'mlp', 'router', 'experts', 'head'] as const) {
    assert.ok(p.forward[kind] > 0, `forward ${kind} timed`);
    assert.ok(p.backward[kind] > 0, `backward ${kind} timed`);
  }
  assert.equal(p.openSections, 0, 'every section opened in backward is closed');
  p.reset();
  assert.equal(p.forward.attention, 0);
});

test('untimed, the sections only say which kind runs (bench train --kernels): every kind in forward and in backward, and no times', () => {
  const kinds: ProfileKind[] = [];
  const untimed = run(true, { timed: false, onKind: (k) => { kinds.push(k); } });
  // The forward reports each section and 'other' after it, ending with the head; backward then
  // reopens the sections in reverse order.
  assert.ok(kinds.includes('head'), 'the head is reported');
  const forwardKinds = new Set(kinds.slice(0, kinds.indexOf('head') + 1)), backwardKinds = new Set(kinds.slice(kinds.indexOf('head') + 1));
  for (const kind of ['attention', 'mlp', 'router', 'experts', 'head'] as const) {
    assert.ok(forwardKinds.has(kind), `forward reports ${kind}`);
    assert.ok(backwardKinds.has(kind), `backward reports ${kind}`);
  }
  assert.equal(kinds[kinds.length - 1], 'other', 'the last section closed hands back to other');
  const p = untimed.profiler!;
  for (const kind of ['attention', 'mlp', 'router', 'experts', 'head'] as const) assert.equal(p.forward[kind] + p.backward[kind], 0, `${kind} untimed`);
  assert.equal(p.openSections, 0);
  assert.deepEqual(untimed.loss, run(false).loss);
});
