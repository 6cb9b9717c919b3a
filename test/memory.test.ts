// Memory lifetime: scopes release what they created except what is returned or kept, exceptions
// inside a scope release everything, and a training step of the tiny model leaves live bytes
// exactly where the previous step left them.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { noGrad } from '../src/autograd/tape.js';
import { fromHost, full, item, toHostF32 } from '../src/ops/create.js';
import { add, mul } from '../src/ops/elementwise.js';
import { sumAll } from '../src/ops/reduce.js';
import { DeepseekV2, type LoadBalanceForm } from '../src/models/deepseek_v2.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { keep, scopeDepth, tidy } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { assertNoLeak } from './helpers/memory.js';

describe('scope, keep and dispose', () => {
  const be = new CpuBackend();
  test('tidy disposes what it created except what it returns (tensor, array, object)', () => {
    const base = be.memoryStats().liveBytes;
    let tmp: Tensor | null = null;
    const one = tidy(() => { tmp = full(be, [3], 'f32', 1); return full(be, [4], 'f32', 2); });
    assert.equal(tmp!.isDisposed, true);
    assert.equal(one.isDisposed, false);
    assert.deepEqual(Array.from(toHostF32(one)), [2, 2, 2, 2]);
    const many = tidy(() => {
      full(be, [5], 'f32', 0);
      return { a: full(be, [1], 'f32', 1), list: [full(be, [2], 'f32', 3), full(be, [2], 'i32', 4)], n: 7 };
    });
    assert.equal(many.a.isDisposed || many.list.some((t) => t.isDisposed), false);
    assert.equal(be.memoryStats().liveBytes - base, 16 + 4 + 8 + 8);
    one.dispose(); many.a.dispose(); many.list.forEach((t) => t.dispose());
    assert.equal(be.memoryStats().liveBytes, base);
  });
  test('nested scopes: a tensor returned by the inner scope belongs to the outer one', () => {
    const base = be.memoryStats().liveBytes;
    let inner: Tensor | null = null;
    const kept = tidy(() => {
      inner = tidy(() => full(be, [8], 'f32', 1));
      assert.equal(inner.isDisposed, false);
      return full(be, [1], 'f32', 0);
    });
    assert.equal(inner!.isDisposed, true, 'the outer scope disposed what the inner one handed it');
    kept.dispose();
    assert.equal(be.memoryStats().liveBytes, base);
  });
  test('keep() outlives every open scope; a view keeps the storage until the last handle goes', () => {
    const base = be.memoryStats().liveBytes;
    let kept: Tensor | null = null, view: Tensor | null = null;
    tidy(() => tidy(() => {
      kept = keep(full(be, [6], 'f32', 5));
      view = kept.view([2, 3], [3, 1], 0);
    }));
    assert.equal(view!.isDisposed, true);
    assert.equal(kept!.isDisposed, false);
    assert.equal(be.memoryStats().liveBytes - base, 24, 'the kept tensor is live');
    const alias = kept!.view([6], [1], 0);
    kept!.dispose();
    assert.equal(be.memoryStats().liveBytes - base, 24, 'a view keeps the storage alive after its base is disposed');
    assert.equal(toHostF32(alias)[3], 5);
    alias.dispose();
    alias.dispose(); // twice is safe
    assert.equal(be.memoryStats().liveBytes, base);
  });
  test('an exception inside tidy releases everything the scope created and restores the scope stack', () => {
    const base = be.memoryStats().liveBytes, depth = scopeDepth();
    assert.throws(() => tidy(() => {
      full(be, [100], 'f32', 1);
      tidy(() => { full(be, [10], 'f32', 1); throw new Error('boom'); });
    }), /boom/);
    assert.equal(scopeDepth(), depth);
    assert.equal(be.memoryStats().liveBytes, base);
  });
  test('an exception inside tidy after recorded ops releases the saved activations too', () => {
    const base = be.memoryStats().liveBytes;
    assert.throws(() => tidy(() => {
      const w = full(be, [16], 'f32', 2);
      w.requiresGrad = true;
      const y = mul(w, full(be, [16], 'f32', 3)); // records a node that saves both inputs
      sumAll(add(y, y));
      throw new Error('failed before backward');
    }), /failed before backward/);
    assert.equal(be.memoryStats().liveBytes, base, 'tensors saved for backward outlived the failed scope');
  });
});

describe('tiny model: no leak across training steps', () => {
  const B = 1, S = 8;
  for (const form of ['sequence', 'global-batch', 'micro-batch'] as LoadBalanceForm[]) {
    test(`forward + backward in a tidy scope (${form} load balance, bf16)`, () => {
      const be = new CpuBackend();
      const before = be.memoryStats().liveBytes;
      const m = new DeepseekV2(tinyConfig(), be, 'bf16');
      m.initialize(1);
      const ids = fromHost(be, [3, 1, 4, 1, 5, 9, 2, 6], [B, S], 'i32');
      const labels = fromHost(be, [1, 4, 1, 5, 9, 2, 6, -100], [B, S], 'i32');
      const losses: number[] = [];
      const live = assertNoLeak(be, () => {
        m.beginStep();
        for (const p of m.params) p.zeroGrad();
        losses.push(tidy(() => {
          const r = m.forward(ids, labels, B * S - 1, { form, alpha: 0.01 });
          backward(add(r.crossEntropy, r.loadBalance));
          return item(r.crossEntropy);
        }));
      }, 2);
      assert.ok(live.length === 3 && losses.every((l) => Number.isFinite(l) && l > 0));
      assert.ok(toHostF32(m.layers[1]!.moe!.router.grad).some((g) => g !== 0), 'the router gets a gradient');
      ids.dispose(); labels.dispose();
      m.dispose();
      assert.equal(be.memoryStats().liveBytes, before, 'model.dispose() releases parameters, gradients and the RoPE cache');
    });
  }
  test('evaluation under noGrad leaves nothing behind', () => {
    const be = new CpuBackend();
    const m = new DeepseekV2(tinyConfig(), be, 'f32');
    m.initialize(2);
    const ids = fromHost(be, [7, 7, 7, 1, 2, 3], [2, 3], 'i32');
    assertNoLeak(be, () => noGrad(() => tidy(() => item(m.forward(ids, ids, 6, { form: 'micro-batch', alpha: 0 }).crossEntropy))), 2);
    ids.dispose();
    m.dispose();
  });
  test('a forward pass that fails part-way inside tidy releases everything', () => {
    const be = new CpuBackend();
    const m = new DeepseekV2(tinyConfig(), be, 'f32');
    m.initialize(3);
    const ids = fromHost(be, [7, 7, 7, 1, 2, 3], [2, 3], 'i32');
    const wrongLabels = fromHost(be, [7, 7, 7, 1, 2], [5], 'i32'); // one label short: the loss's reshape fails after every layer ran
    // Warm up once so the RoPE cache exists.
    tidy(() => { backward(m.forward(ids, ids, 6, { form: 'micro-batch', alpha: 0 }).crossEntropy); });
    for (const p of m.params) p.zeroGrad();
    const base = be.memoryStats().liveBytes;
    assert.throws(() => tidy(() => { m.forward(ids, wrongLabels, 5, { form: 'micro-batch', alpha: 0 }); }));
    assert.equal(be.memoryStats().liveBytes, base, `${be.memoryStats().liveBytes - base} bytes of saved activations outlived the failed step`);
    ids.dispose(); wrongLabels.dispose();
    m.dispose();
  });
});
