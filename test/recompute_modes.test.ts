// The train option recompute (models/deepseek_v2.ts DeepseekV2.recompute; autograd/recompute.ts
// and autograd/rerun.ts) on the CPU:
// - training the tiny model for 3 steps gives the same losses, gradient norms and weights bit for
//   bit with recompute cheap, copies, none and layers (the same ops in the same order; only when they
//   run differs), with one and with two micro-batches, the sequence and micro-batch
//   load-balance forms;
// - what stays alive from forward to backward: with layers, far less than with cheap (each
//   layer's activations are gone, only its input and output are held), with none more than with
//   cheap (the SwiGLU outputs and gathered rows are held), with copies in between (the SwiGLU
//   outputs are held); after the step every byte and every
//   autograd node is back where it was;
// - rerunInBackward on a small block: the input's gradient arrives whole when the input feeds the
//   block twice, an input no output depends on gets none, and outside recording it is the plain forward;
// - recompute layers with the global-batch load-balance form is refused by the config (one line
//   naming both options) and by the model.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { rerunInBackward } from '../src/autograd/rerun.js';
import { liveGradNodeCount, noGrad } from '../src/autograd/tape.js';
import { DeepseekV2, type RecomputeMode } from '../src/models/deepseek_v2.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { add, mul } from '../src/ops/elementwise.js';
import { sumAll } from '../src/ops/reduce.js';
import { tidy } from '../src/tensor/scope.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { trainTiny } from './helpers/train_tiny.js';

const model = tinyConfig();

const train = (recompute: RecomputeMode, micro: number, form: 'sequence' | 'micro-batch') =>
  trainTiny(new CpuBackend(), micro, { recompute, load_balance: { form, alpha: 0.01 } });

function bitsEqual(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length), b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
}

for (const [micro, form] of [[1, 'sequence'], [2, 'micro-batch']] as const) {
  test(`recompute cheap, none and layers train the same bit for bit (${micro} micro-batch${micro > 1 ? 'es' : ''}, load balance ${form})`, () => {
    const ref = train('cheap', micro, form);
    for (const mode of ['copies', 'none', 'layers'] as const) {
      const got = train(mode, micro, form);
      got.metrics.forEach((m, s) => {
        for (const k of ['crossEntropy', 'loadBalance', 'gradientNorm'] as const) {
          assert.ok(Object.is(m[k], ref.metrics[s]![k]), `${mode}, step ${s + 1} ${k}: ${m[k]}, cheap ${ref.metrics[s]![k]}`);
        }
      });
      got.weights.forEach((w, i) => bitsEqual(w, ref.weights[i]!, `${mode}: checkpoint tensor ${i}`));
    }
  });
}

test('recompute: bytes held from forward to backward (layers < cheap < copies < none), all returned after backward', () => {
  const held: Record<RecomputeMode, number> = { cheap: 0, copies: 0, none: 0, layers: 0 };
  for (const mode of ['cheap', 'copies', 'none', 'layers'] as const) {
    const backend = new CpuBackend();
    const m = new DeepseekV2(model, backend, 'bf16');
    m.initialize(7);
    m.recompute = mode;
    const B = 2, S = 32;
    const ids = fromHost(backend, Int32Array.from({ length: B * S }, (_, i) => (i * 37) % model.vocab_size), [B, S], 'i32');
    const labels = fromHost(backend, Int32Array.from({ length: B * S }, (_, i) => (i * 11) % model.vocab_size), [B, S], 'i32');
    // A first forward fills the model's caches (RoPE tables, the top-k constant).
    noGrad(() => tidy(() => { m.forward(ids, labels, B * S, { form: 'sequence', alpha: 0.01 }); }));
    const base = backend.memoryStats().liveBytes, nodes = liveGradNodeCount();
    tidy(() => {
      const out = m.forward(ids, labels, B * S, { form: 'sequence', alpha: 0.01 });
      const loss = add(out.crossEntropy, out.loadBalance);
      held[mode] = backend.memoryStats().liveBytes - base;
      backward(loss);
    });
    assert.equal(backend.memoryStats().liveBytes, base, `${mode}: every byte given back after backward`);
    assert.equal(liveGradNodeCount(), nodes, `${mode}: every autograd node released`);
    ids.dispose(); labels.dispose(); m.dispose();
  }
  console.log(`# bytes held from forward to backward: cheap ${held.cheap}, copies ${held.copies}, none ${held.none}, layers ${held.layers}`);
  assert.ok(held.cheap < held.copies && held.copies < held.none, `cheap ${held.cheap} < copies ${held.copies} < none ${held.none}`);
  assert.ok(held.layers < 0.5 * held.cheap, `layers holds ${held.layers} bytes, cheap ${held.cheap}`);
  assert.ok(held.none > held.cheap, `none holds ${held.none} bytes, cheap ${held.cheap}`);
});

test('rerunInBackward: an input used twice gets its whole gradient, an unused one none; plain forward outside recording', () => {
  const be = new CpuBackend();
  const x = fromHost(be, [1, 2, 3], [3], 'f32'), y = fromHost(be, [4, 5, 6], [3], 'f32');
  x.requiresGrad = true; y.requiresGrad = true;
  let runs = 0;
  // f(x, y) = Σ x·x + Σ x (y unused by the output that has a gradient): df/dx = 2x + 1.
  const block = ([a, b]: readonly ((typeof x) | undefined)[]) => { runs++; return [add(sumAll(mul(a!, a!)), sumAll(a!)), mul(b!, b!)]; };
  tidy(() => {
    const [f] = rerunInBackward([x, y], block);
    assert.equal(runs, 1);
    backward(f!);
    assert.equal(runs, 2, 'run again in backward');
  });
  assert.deepEqual(Array.from(toHostF32(x.grad!)), [3, 5, 7]);
  assert.equal(y.grad, null, 'no gradient reached y');
  const plain = noGrad(() => rerunInBackward([x], ([a]) => [sumAll(a!)]));
  assert.equal(plain[0]!.gradLink, null);
  assert.deepEqual(Array.from(toHostF32(plain[0]!)), [6]);
  for (const t of [x, y, x.grad!, plain[0]!]) t.dispose();
});

test('recompute layers with the global-batch load-balance form is refused by the config and by the model', () => {
  assert.throws(() => mergeTrainConfig(defaultTrainConfig(), { recompute: 'layers', load_balance: { form: 'global-batch', alpha: 0.01 } }, 'test'),
    /recompute "layers".*global-batch.*--load_balance.form sequence.*--recompute cheap/);
  assert.doesNotThrow(() => mergeTrainConfig(defaultTrainConfig(), { recompute: 'layers', load_balance: { form: 'global-batch', alpha: 0 } }, 'test'));
  const backend = new CpuBackend();
  const m = new DeepseekV2(model, backend, 'bf16');
  m.recompute = 'layers';
  const ids = fromHost(backend, [1, 2, 3, 4], [1, 4], 'i32');
  assert.throws(() => tidy(() => { m.forward(ids, ids, 4, { form: 'global-batch', alpha: 0.01 }); }), /recompute=layers cannot be combined with load_balance.form=global-batch/);
  ids.dispose(); m.dispose();
});
