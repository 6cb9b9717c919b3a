// Adam (src/optim/adam.ts): the fused update (one multi-tensor pass, optim/fused_adam.ts) against
// the per-parameter reference (updateEach) on the tiny model's parameters, bit for bit on the
// CPU and within f32/bf16 tolerance on CUDA (skipped without a GPU); both zero every gradient;
// matrices are decayed and rank-1 norm weights are not.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backendOf, type Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { normalValues } from '../src/nn/init.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { Adam, type AdamConfig } from '../src/optim/adam.js';

const CONFIG: AdamConfig = { type: 'adamw', lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };

/** The tiny model initialised with seed 1 and a gradient of seed 100 + i in parameter i. */
function setup(be: Backend): { model: DeepseekV2; adam: Adam } {
  const model = new DeepseekV2(tinyConfig(), be, 'bf16');
  model.initialize(1);
  const adam = new Adam(model.params, CONFIG, be);
  return { model, adam };
}

function setGrads(model: DeepseekV2, seed: number): void {
  model.params.forEach((p, i) => backendOf(p.grad).write(p.grad, normalValues(p.size, 1e-2, seed, i)));
}

/** Two updates (fused or per parameter) with fresh gradients before each. */
function twoSteps(be: Backend, fused: boolean): DeepseekV2 {
  const { model, adam } = setup(be);
  for (const step of [0, 1]) {
    setGrads(model, 10 + step);
    if (fused) adam.update(3e-3, step === 0 ? 0.5 : 1); else adam.updateEach(3e-3, step === 0 ? 0.5 : 1);
    for (const p of model.params) assert.ok(toHostF32(p.grad).every((g) => g === 0), 'every gradient is 0 after the update');
  }
  adam.dispose();
  return model;
}

test('Adam.update (fused) gives the bits of updateEach on the CPU and zeroes the gradients', () => {
  const cpu = new CpuBackend();
  const fused = twoSteps(cpu, true), each = twoSteps(cpu, false);
  fused.params.forEach((p, i) => {
    assert.deepEqual(toHostF32(p.master), toHostF32(each.params[i]!.master), `master ${i}`);
    assert.deepEqual(toHostF32(p.value), toHostF32(each.params[i]!.value), `bf16 copy ${i}`);
  });
  fused.dispose(); each.dispose();
});

test('AdamW decays matrices and leaves rank-1 norm weights undecayed', () => {
  const cpu = new CpuBackend();
  // With zero gradients the update is the decay alone: p ← p − lr·wd·p for matrices, p for norms.
  const { model, adam } = setup(cpu);
  const before = model.params.map((p) => toHostF32(p.master));
  adam.update(0.5, 1);
  let matrices = 0, norms = 0;
  model.params.forEach((p, i) => {
    const after = toHostF32(p.master), b = before[i]!;
    if (p.shape.length >= 2) {
      matrices++;
      for (let j = 0; j < after.length; j += 97) assert.equal(after[j], Math.fround(b[j]! - 0.5 * (0.1 * b[j]!)), `matrix ${i}[${j}]`);
    } else {
      norms++;
      assert.deepEqual(after, b, `norm weight ${i} is not decayed`);
    }
  });
  assert.ok(matrices > 0 && norms > 0);
  adam.dispose(); model.dispose();
});

test('Adam.update on CUDA matches updateEach on CUDA and the CPU', { skip: cudaAvailable() ? false : 'skipped: no CUDA' }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const gpu = createCudaBackend(), cpu = new CpuBackend();
  const fused = twoSteps(gpu, true), each = twoSteps(gpu, false), ref = twoSteps(cpu, true);
  fused.params.forEach((p, i) => {
    assert.deepEqual(toHostF32(p.master), toHostF32(each.params[i]!.master), `master ${i}: fused vs per-parameter kernel`);
    const got = toHostF32(p.master), want = toHostF32(ref.params[i]!.master);
    let num = 0, den = 0;
    for (let j = 0; j < want.length; j++) { num += (got[j]! - want[j]!) ** 2; den += want[j]! ** 2; }
    assert.ok(Math.sqrt(num / den) <= 1e-5, `master ${i}: relative error ${Math.sqrt(num / den)} against the CPU`);
  });
  fused.dispose(); each.dispose(); ref.dispose();
});

test('the CPU step reads a bf16 gradient as its value, the same as that value in f32', () => {
  const be = new CpuBackend();
  const n = 37;
  const h = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, decoupled: false, step: 3, gradScale: 0.5 };
  const run = (gradDtype: 'f32' | 'bf16'): Float32Array[] => {
    const t = (values: Float32Array, dtype: 'f32' | 'bf16' = 'f32') => fromHost(be, values, [n], dtype);
    // Gradients that bf16 holds exactly (8 significant bits), so both runs see the same numbers.
    const g = Float32Array.from({ length: n }, (_, i) => ((i % 11) - 5) / 64);
    const p = t(normalValues(n, 0.1, 1, 0)), m = t(normalValues(n, 1e-3, 2, 0)), v = t(normalValues(n, 1e-3, 3, 0).map((x) => x * x)), grad = t(g, gradDtype);
    be.adam(p, grad, m, v, null, h);
    const out = [toHostF32(p), toHostF32(m), toHostF32(v)];
    for (const x of [p, m, v, grad]) x.dispose();
    return out;
  };
  assert.deepEqual(run('bf16'), run('f32'));
});
