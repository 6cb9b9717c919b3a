// The multi-tensor optimizer ops (Backend.adamMulti, Backend.sumSquaresMulti over a TensorList).
// On the CPU: adamMulti is, bit for bit, adam per slot (weight decay only where a slot says so)
// followed by zeroed gradients, and sumSquaresMulti is, bit for bit, a zeroed accumulator plus
// sumSquaresInto per tensor in list order (the order the trainer's golden curve was made with).
// On CUDA (skipped without a GPU): both against the CPU over sizes that are no chunk's or
// vector's multiple (1, 7, 4097, 16387, 3·16384+5, chunks of 16384), an unaligned view (the
// one-element path), bf16 and f32 gradients, outputs poisoned with NaN; adamMulti against the
// per-tensor CUDA kernel bit for bit (they share adam_step.cuh); sumSquaresMulti bitwise equal
// over repeated runs; adamMulti with GradsAfter 'keep' gives the bits of 'zero' and leaves the
// gradients as they were. Tolerances as test/cuda_backend.test.ts: f32 1e-5 relative (the CPU
// computes in f64 and rounds once), bf16 copies 1e-2 (one bf16 ulp on a few elements).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backendOf, type AdamHyper, type Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { TensorList, type AdamSlot, type TensorListTable } from '../src/backend/tensor_list.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import type { DType } from '../src/tensor/dtype.js';
import { emptyTensor, type Tensor } from '../src/tensor/tensor.js';

const cpu = new CpuBackend();
const skipCuda = cudaAvailable() ? false : 'skipped: no CUDA';
const SIZES = [1, 7, 4097, 16384, 16387, 3 * 16384 + 5];

function normals(rng: Rng, n: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, () => scale * rng.normal());
}

/** Host values of one slot: param, grad, m, v (v ≥ 0). */
interface SlotValues { param: Float32Array; grad: Float32Array; m: Float32Array; v: Float32Array; decay: boolean; lowp: boolean }

function slotValues(rng: Rng, sizes: readonly number[]): SlotValues[] {
  return sizes.map((n, i) => ({
    param: normals(rng, n, 0.02), grad: normals(rng, n, 1e-3), m: normals(rng, n, 1e-4),
    v: normals(rng, n, 1e-3).map((x) => x * x), decay: i % 2 === 0, lowp: i % 3 !== 1,
  }));
}

/**
 * The slots on a backend. `offset` places every tensor one element into a larger buffer, so
 * no address is 16-byte aligned (the kernels' one-element path).
 */
function makeSlots(be: Backend, vals: readonly SlotValues[], gradType: DType, offset = false): { slots: AdamSlot[]; owned: Tensor[] } {
  const owned: Tensor[] = [];
  const place = (values: Float32Array, dtype: DType): Tensor => {
    if (!offset) { const t = fromHost(be, values, [values.length], dtype); owned.push(t); return t; }
    const padded = new Float32Array(values.length + 1);
    padded.set(values, 1);
    const base = fromHost(be, padded, [padded.length], dtype);
    const view = base.view([values.length], [1], 1);
    owned.push(base, view);
    return view;
  };
  const slots = vals.map((s) => {
    let lowp: Tensor | null = null;
    if (s.lowp) {
      lowp = place(new Float32Array(s.param.length).fill(Number.NaN), 'bf16');
    }
    return { param: place(s.param, 'f32'), grad: place(s.grad, gradType), m: place(s.m, 'f32'), v: place(s.v, 'f32'), lowp, decay: s.decay };
  });
  return { slots, owned };
}

const H: AdamHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, decoupled: true, step: 7, gradScale: 0.5 };

function bitsEqual(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, what);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length), ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) assert.fail(`${what}: element ${i} is ${a[i]}, expected ${b[i]}`);
}

function relErr(got: Float32Array, want: Float32Array, what: string): number {
  assert.equal(got.length, want.length, what);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(got[i]!)) assert.fail(`${what}: element ${i} is NaN (unwritten?), expected ${want[i]}`);
    num += (got[i]! - want[i]!) ** 2;
    den += want[i]! ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

test('adamMulti on the CPU is adam per slot (decay where marked) and then zeroed gradients, bit for bit', () => {
  const vals = slotValues(new Rng(3), SIZES);
  for (const decoupled of [true, false]) {
    const h = { ...H, decoupled };
    const a = makeSlots(cpu, vals, 'f32'), b = makeSlots(cpu, vals, 'f32');
    const list = new TensorList(a.slots);
    cpu.adamMulti(list, h);
    b.slots.forEach((s) => cpu.adam(s.param, s.grad, s.m, s.v, s.lowp, s.decay ? h : { ...h, weightDecay: 0 }));
    a.slots.forEach((s, i) => {
      const r = b.slots[i]!, what = `${decoupled ? 'adamw' : 'adam'} slot ${i} (n=${s.param.size})`;
      bitsEqual(toHostF32(s.param), toHostF32(r.param), `${what} param`);
      bitsEqual(toHostF32(s.m), toHostF32(r.m), `${what} m`);
      bitsEqual(toHostF32(s.v), toHostF32(r.v), `${what} v`);
      if (s.lowp) bitsEqual(toHostF32(s.lowp), toHostF32(r.lowp!), `${what} bf16 copy`);
      assert.ok(toHostF32(s.grad).every((g) => g === 0), `${what}: the gradient is zeroed`);
    });
    // The decay flag matters: a decayed slot moved differently from the same slot undecayed.
    const undecayed = makeSlots(cpu, vals.slice(0, 1).map((s) => ({ ...s, decay: false })), 'f32');
    cpu.adamMulti(new TensorList(undecayed.slots), h);
    assert.notDeepEqual(toHostF32(undecayed.slots[0]!.param), toHostF32(a.slots[0]!.param));
    list.dispose();
    for (const t of [...a.owned, ...b.owned, ...undecayed.owned]) t.dispose();
  }
});

test('sumSquaresMulti on the CPU overwrites out with Σ x² in the trainer\'s order, bit for bit', () => {
  const rng = new Rng(5);
  const xs = SIZES.map((n, i) => fromHost(cpu, normals(rng, n, 1 + i), [n], i % 2 ? 'bf16' : 'f32'));
  const out = fromHost(cpu, [Number.NaN], [1], 'f32');
  cpu.sumSquaresMulti(out, new TensorList(xs));
  const ref = fromHost(cpu, [0], [1], 'f32');
  for (const x of xs) cpu.sumSquaresInto(ref, x);
  bitsEqual(toHostF32(out), toHostF32(ref), 'sumSquaresMulti');
  // Exact small case; an empty list gives 0.
  const a = fromHost(cpu, [3, 4], [2], 'f32'), b = fromHost(cpu, [1, -2, 2], [3], 'bf16');
  cpu.sumSquaresMulti(out, new TensorList([a, b]));
  assert.deepEqual([...toHostF32(out)], [34]);
  cpu.sumSquaresMulti(out, new TensorList<Tensor>([]));
  assert.deepEqual([...toHostF32(out)], [0]);
  for (const t of [...xs, out, ref, a, b]) t.dispose();
});

test('a TensorList is frozen and disposes the table a backend attached once', () => {
  const x = emptyTensor(cpu, [3], 'f32');
  const list = new TensorList([x]);
  assert.equal(list.length, 1);
  assert.throws(() => (list.entries as Tensor[]).push(x));
  let disposed = 0;
  const table: TensorListTable = { dispose: () => { disposed++; } };
  list.table = table;
  list.dispose();
  list.dispose();
  assert.equal(disposed, 1);
  assert.equal(list.table, null);
  x.dispose();
});

test('adamMulti on CUDA matches the CPU and the per-tensor kernel (sizes, alignment, bf16 grads)', { skip: skipCuda }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const gpu = createCudaBackend();
  const vals = slotValues(new Rng(7), SIZES);
  const live0 = gpu.memoryStats().liveBytes;
  for (const [gradType, offset, decoupled] of [['f32', false, true], ['f32', true, true], ['bf16', false, false], ['bf16', true, true]] as const) {
    const c = makeSlots(cpu, vals, gradType), g = makeSlots(gpu, vals, gradType, offset), r = makeSlots(gpu, vals, gradType, offset);
    const cl = new TensorList(c.slots), gl = new TensorList(g.slots);
    // Two steps through the same list: the second reuses the table built by the first.
    for (const step of [7, 8]) {
      const h = { ...H, decoupled, step, gradScale: step === 7 ? 0.5 : 1 };
      cpu.adamMulti(cl, h);
      gpu.adamMulti(gl, h);
      r.slots.forEach((s) => gpu.adam(s.param, s.grad, s.m, s.v, s.lowp, s.decay ? h : { ...h, weightDecay: 0 }));
      r.slots.forEach((s) => gpu.fill(s.grad, 0));
      gpu.synchronize();
      g.slots.forEach((s, i) => {
        const what = `${gradType} grads${offset ? ', unaligned' : ''}, step ${step}, slot ${i} (n=${s.param.size})`;
        const cs = c.slots[i]!, rs = r.slots[i]!;
        for (const k of ['param', 'm', 'v'] as const) {
          const e = relErr(toHostF32(s[k]), toHostF32(cs[k]), `${what} ${k}`);
          assert.ok(e <= 1e-5, `${what} ${k}: relative error ${e} against the CPU`);
          bitsEqual(toHostF32(s[k]), toHostF32(rs[k]), `${what} ${k} against the per-tensor kernel`);
        }
        if (s.lowp) {
          const e = relErr(toHostF32(s.lowp), toHostF32(cs.lowp!), `${what} bf16 copy`);
          assert.ok(e <= 1e-2, `${what} bf16 copy: relative error ${e}`);
        }
        assert.ok(toHostF32(s.grad).every((x) => x === 0), `${what}: the gradient is zeroed`);
      });
      // Fresh gradients for the next step.
      for (const set of [c, g, r]) set.slots.forEach((s, i) => backendWrite(s.grad, vals[i]!.grad));
    }
    gl.dispose();
    for (const t of [...c.owned, ...g.owned, ...r.owned]) t.dispose();
  }
  assert.equal(gpu.memoryStats().liveBytes, live0, 'the tables are freed with their lists');
});

test('adamMulti on CUDA with "keep": the bits of "zero", the gradients left as they were (sizes, alignment, bf16 grads)', { skip: skipCuda }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const gpu = createCudaBackend();
  const vals = slotValues(new Rng(11), SIZES);
  for (const [gradType, offset] of [['f32', false], ['f32', true], ['bf16', false], ['bf16', true]] as const) {
    const z = makeSlots(gpu, vals, gradType, offset), k = makeSlots(gpu, vals, gradType, offset);
    const zl = new TensorList(z.slots), kl = new TensorList(k.slots);
    const before = k.slots.map((s) => toHostF32(s.grad));
    gpu.adamMulti(zl, H, 'zero');
    gpu.adamMulti(kl, H, 'keep');
    gpu.synchronize();
    k.slots.forEach((s, i) => {
      const what = `${gradType} grads${offset ? ', unaligned' : ''}, slot ${i} (n=${s.param.size})`, zs = z.slots[i]!;
      for (const f of ['param', 'm', 'v'] as const) bitsEqual(toHostF32(s[f]), toHostF32(zs[f]), `${what} ${f}: "keep" against "zero"`);
      if (s.lowp) bitsEqual(toHostF32(s.lowp), toHostF32(zs.lowp!), `${what} bf16 copy: "keep" against "zero"`);
      bitsEqual(toHostF32(s.grad), before[i]!, `${what}: the gradient is left as it was`);
      assert.ok(toHostF32(zs.grad).every((x) => x === 0), `${what}: "zero" zeroes the gradient`);
    });
    zl.dispose(); kl.dispose();
    for (const t of [...z.owned, ...k.owned]) t.dispose();
  }
});

test('sumSquaresMulti on CUDA matches the CPU and gives the same bits every run', { skip: skipCuda }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const gpu = createCudaBackend();
  const rng = new Rng(13);
  const values = [...SIZES, 40 * 16384 + 3].map((n, i) => normals(rng, n, 1 + i));
  for (const [dtype, offset] of [['f32', false], ['bf16', false], ['f32', true]] as const) {
    const want = (() => {
      const xs = values.map((v) => fromHost(cpu, v, [v.length], dtype));
      const out = fromHost(cpu, [0], [1], 'f32');
      cpu.sumSquaresMulti(out, new TensorList(xs));
      const r = toHostF32(out)[0]!;
      for (const t of [...xs, out]) t.dispose();
      return r;
    })();
    const owned: Tensor[] = [];
    const xs = values.map((v) => {
      if (!offset) { const t = fromHost(gpu, v, [v.length], dtype); owned.push(t); return t; }
      const padded = new Float32Array(v.length + 1);
      padded.set(v, 1);
      const base = fromHost(gpu, padded, [padded.length], dtype);
      const view = base.view([v.length], [1], 1);
      owned.push(base, view);
      return view;
    });
    const list = new TensorList(xs);
    const out = fromHost(gpu, [Number.NaN], [1], 'f32');
    const runs = [0, 1, 2].map(() => { gpu.sumSquaresMulti(out, list); return toHostF32(out)[0]!; });
    const what = `${dtype}${offset ? ', unaligned' : ''}`;
    assert.ok(Math.abs(runs[0]! - want) / want < 1e-5, `${what}: CUDA ${runs[0]} vs CPU ${want}`);
    assert.ok(runs.every((x) => Object.is(x, runs[0])), `${what}: runs differ: ${runs}`);
    list.dispose();
    for (const t of [...owned, out]) t.dispose();
  }
  const out = fromHost(gpu, [Number.NaN], [1], 'f32');
  gpu.sumSquaresMulti(out, new TensorList<Tensor>([]));
  assert.deepEqual([...toHostF32(out)], [0], 'an empty list sums to 0');
  out.dispose();
});

/** Writes host f32 values into t (f32 or bf16, contiguous or a view) through a fresh tensor and a copy. */
function backendWrite(t: Tensor, values: Float32Array): void {
  const be = backendOf(t);
  const src = fromHost(be, values, [values.length], t.dtype);
  be.copy(t, src);
  src.dispose();
}
