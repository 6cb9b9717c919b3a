import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { fromHost, item } from '../src/ops/create.js';
import { tidy } from '../src/tensor/scope.js';
import { backward } from '../src/autograd/backward.js';
import { add } from '../src/ops/elementwise.js';

test('tiny model forward/backward runs and frees memory', () => {
  const be = new CpuBackend();
  const m = new DeepseekV2(tinyConfig(), be, 'bf16');
  m.initialize(1);
  const B = 2, S = 16;
  const ids = fromHost(be, Array.from({ length: B * S }, (_, i) => (i * 7) % 257), [B, S], 'i32');
  const labels = fromHost(be, Array.from({ length: B * S }, (_, i) => (i * 7 + 1) % 257), [B, S], 'i32');
  const base = be.memoryStats().liveBytes;
  for (let step = 0; step < 2; step++) {
    const t0 = Date.now();
    const r = tidy(() => {
      const out = m.forward(ids, labels, B * S, { form: 'sequence', alpha: 0.01 });
      const total = add(out.crossEntropy, out.loadBalance);
      backward(total);
      return [item(out.crossEntropy), item(out.loadBalance)];
    });
    console.log('ce', r, Date.now() - t0, 'ms', be.memoryStats());
  }
  assert.equal(be.memoryStats().liveBytes, base);
});
