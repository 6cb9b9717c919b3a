// runtime/launch_timer.ts (bench train --kernels): the bracketing and adding up, on a stand-in
// driver whose events hold the time they were recorded at (no GPU needed), and on the GPU: the
// kernels and cuBLASLt products of a few backend calls are timed under their names.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CudaDriver } from '../src/backend/cuda/ffi/driver.js';
import { LaunchTimer, launchTiming } from '../src/backend/cuda/runtime/launch_timer.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { defaultCudaContext } from '../src/backend/cuda/runtime/context.js';
import { emptyTensor } from '../src/tensor/tensor.js';

/** Events are numbers; recording one stamps it with the stand-in clock, which `work` advances. */
function fakeDriver() {
  let clock = 0, made = 0, destroyed = 0, synced = 0;
  const stamps = new Map<bigint, number>();
  const driver = {
    eventCreate: () => BigInt(++made),
    eventRecord: (e: bigint) => { stamps.set(e, clock); },
    eventSynchronize: () => { synced++; },
    eventElapsedMs: (a: bigint, b: bigint) => stamps.get(b)! - stamps.get(a)!,
    eventDestroy: () => { destroyed++; },
  } as unknown as CudaDriver;
  return { driver, work: (ms: number) => { clock += ms; }, counts: () => ({ made, destroyed, synced }) };
}

test('LaunchTimer adds up each name\'s bracketed time and count, and starts over after collect', () => {
  const f = fakeDriver();
  const timer = new LaunchTimer(f.driver);
  assert.equal(timer.around('a', 0n, () => { f.work(2); return 7; }), 7);
  f.work(100); // between launches: not charged to anyone
  timer.around('b', 0n, () => f.work(0.5));
  timer.around('a', 0n, () => f.work(3));
  const t = timer.collect();
  assert.deepEqual([...t.entries()].sort(), [['a', { ms: 5, count: 2 }], ['b', { ms: 0.5, count: 1 }]]);
  assert.equal(f.counts().made, 6);
  timer.around('c', 0n, () => f.work(1));
  assert.deepEqual([...timer.collect().entries()], [['c', { ms: 1, count: 1 }]]);
  assert.equal(f.counts().made, 6, 'events are reused after a collect');
  timer.dispose();
  assert.equal(f.counts().destroyed, 6);
});

test('kernels and cuBLASLt products are timed under their names while a timer is installed', { skip: cudaAvailable() ? false : 'skipped: no CUDA' }, () => {
  const ctx = defaultCudaContext();
  const be = new CudaBackend(ctx);
  const a = emptyTensor(be, [256, 512], 'bf16'), b = emptyTensor(be, [384, 512], 'bf16'), out = emptyTensor(be, [256, 384], 'f32');
  const timer = new LaunchTimer(ctx.driver);
  try {
    be.fill(a, 1); be.fill(b, 1);
    launchTiming.timer = timer;
    be.fill(out, 0);
    be.matmul(out, a, b, { transB: true });
    launchTiming.timer = null;
    be.matmul(out, a, b, { transB: true }); // untimed
    const t = timer.collect();
    const names = [...t.keys()];
    assert.ok(names.some((n) => n.startsWith('cuBLASLt 256x384x512 tB bf16->f32')), names.join(', '));
    assert.equal(t.size, 2, `one fill kernel and one product: ${names.join(', ')}`);
    for (const [name, r] of t) { assert.equal(r.count, 1, name); assert.ok(r.ms > 0 && r.ms < 1000, `${name}: ${r.ms} ms`); }
    assert.equal(be.read(out)[0], 512);
  } finally {
    launchTiming.timer = null;
    timer.dispose();
    a.dispose(); b.dispose(); out.dispose();
  }
});
