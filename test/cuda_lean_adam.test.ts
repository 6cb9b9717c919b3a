// The lean recipe on CUDA (skipped without a GPU): Backend.adamLeanMulti
// (kernels/adam_lean_multi.cu) against the CPU reference (backend/cpu/adam_lean.ts) over sizes
// that are no chunk's or vector's multiple (1, 7, 4097, 16387, 3·16384+5), the bench's expert
// and attention shapes (1408×2048, 2048×2048), unaligned views (the one-element path), bf16 and
// f32 gradients, two steps through one list (the table built once; the second starts the CPU
// from the GPU's state after the first, so each step is compared alone). Both draw the same rounding
// bits, so they differ only where the f32 arithmetic order (fused multiply-adds on the GPU, f64
// then one rounding on the CPU) moves a value across a rounding threshold: such an element is
// one bf16 spacing away, and there are few of them (≤ 1e-3 of the elements). The update is in
// place (nothing to poison); the gradients must be exactly zero after it (with GradsAfter 'keep':
// the same bits as 'zero', and the gradients left as they were), the GPU must give the
// same bits on a repeat, and the tables must be freed with their lists. Then the tiny lean run
// on the GPU follows the CPU's lean run, and its device memory does not grow.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { Backend, LeanAdamHyper } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { TensorList, type LeanAdamSlot } from '../src/backend/tensor_list.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { packageRoot } from '../src/package_root.js';
import { bf16ArrayToF32, f32ToBf16, type DType } from '../src/tensor/dtype.js';
import type { Tensor } from '../src/tensor/tensor.js';

const cpu = new CpuBackend();
const skip = cudaAvailable() ? false : 'skipped: no CUDA';
const SIZES = [1, 7, 4097, 16384, 16387, 3 * 16384 + 5, 1408 * 2048, 2048 * 2048];
const H: LeanAdamHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, decoupled: true, step: 7, gradScale: 0.5, seed: 1234, firstStream: 3 };

interface Vals { w: Float32Array; g: Float32Array; m: Float32Array; v: Float32Array; decay: boolean }
const rb = (x: number) => bf16ArrayToF32(Uint16Array.of(f32ToBf16(x)))[0]!;

function values(rng: Rng): Vals[] {
  return SIZES.map((n, i) => ({
    w: Float32Array.from({ length: n }, () => rb(0.02 * rng.normal())), g: Float32Array.from({ length: n }, () => 1e-3 * rng.normal()),
    m: Float32Array.from({ length: n }, () => rb(1e-4 * rng.normal())), v: Float32Array.from({ length: n }, () => rb((1e-3 * rng.normal()) ** 2)),
    decay: i % 2 === 0,
  }));
}

/** The slots on a backend; `offset` puts every tensor one element into a larger buffer (unaligned). */
function slots(be: Backend, vals: readonly Vals[], gradType: DType, offset: boolean): { list: TensorList<LeanAdamSlot>; owned: Tensor[] } {
  const owned: Tensor[] = [];
  const place = (x: Float32Array, dt: DType): Tensor => {
    if (!offset) { const t = fromHost(be, x, [x.length], dt); owned.push(t); return t; }
    const padded = new Float32Array(x.length + 1);
    padded.set(x, 1);
    const base = fromHost(be, padded, [padded.length], dt), view = base.view([x.length], [1], 1);
    owned.push(base, view);
    return view;
  };
  return { list: new TensorList(vals.map((s) => ({ weights: place(s.w, 'bf16'), grad: place(s.g, gradType), m: place(s.m, 'bf16'), v: place(s.v, 'bf16'), decay: s.decay }))), owned };
}

/**
 * Elements that differ must be one bf16 spacing apart, and few. Where the two terms of
 * β·m + (1−β)·g (or p − lr·u) cancel, the CPU's f64 sum and the GPU's f32 sum differ by up to
 * ~2^-24 of the terms, which are at most about the tensor's largest value: such an element may
 * differ by 2^-20 of that (16× margin) even where its own bf16 spacing is far smaller (measured on
 * the H100: m = 2.2e-11 on the GPU against −1.4e-20 on the CPU, in a tensor of |m| up to ~1e-2).
 */
function close(got: Float32Array, want: Float32Array, what: string): void {
  let differ = 0, scale = 0;
  for (const x of want) scale = Math.max(scale, Math.abs(x));
  const floor = scale * 2 ** -20;
  for (let i = 0; i < got.length; i++) {
    if (got[i] === want[i]) continue;
    differ++;
    const spacing = Math.max(Math.max(Math.abs(want[i]!), Math.abs(got[i]!)) * 2 ** -7, floor);
    assert.ok(Math.abs(got[i]! - want[i]!) <= spacing, `${what}[${i}]: GPU ${got[i]} vs CPU ${want[i]}`);
  }
  assert.ok(differ <= Math.max(1, got.length * 1e-3), `${what}: ${differ} of ${got.length} elements differ from the CPU`);
}

test('adamLeanMulti on CUDA matches the CPU (sizes, bench shapes, alignment, bf16 and f32 grads) and repeats bit for bit', { skip }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const gpu = createCudaBackend();
  const vals = values(new Rng(5));
  const live0 = gpu.memoryStats().liveBytes;
  for (const [gradType, offset, decoupled] of [['bf16', false, true], ['bf16', true, false], ['f32', false, false], ['f32', true, true]] as const) {
    const c = slots(cpu, vals, gradType, false), g = slots(gpu, vals, gradType, offset), again = slots(gpu, vals, gradType, offset);
    for (const step of [7, 8]) {
      const h = { ...H, decoupled, step };
      cpu.adamLeanMulti(c.list, h);
      const kept = step === 8 ? again.list.entries.map((s) => toHostF32(s.grad)) : null;
      gpu.adamLeanMulti(g.list, h);
      // The repeat of the second step leaves its gradients: the same bits otherwise.
      gpu.adamLeanMulti(again.list, h, kept ? 'keep' : 'zero');
      gpu.synchronize();
      g.list.entries.forEach((s, i) => {
        const what = `${gradType} grads${offset ? ', unaligned' : ''}, step ${step}, slot ${i} (n=${s.weights.size})`;
        const cs = c.list.entries[i]!, rs = again.list.entries[i]!;
        for (const k of ['weights', 'm', 'v'] as const) {
          const got = toHostF32(s[k]);
          close(got, toHostF32(cs[k]), `${what} ${k}`);
          assert.deepEqual(got, toHostF32(rs[k]), `${what} ${k}: a repeat on the GPU gives other bits`);
        }
        assert.ok(toHostF32(s.grad).every((x) => x === 0), `${what}: the gradient is zeroed`);
        if (kept) assert.deepEqual(toHostF32(rs.grad), kept[i], `${what}: "keep" leaves the gradient`);
      });
      // The second step starts both sides from the GPU's state: otherwise an element one spacing
      // apart after the first step may end two apart (its own rounding on top), and each step is
      // meant to be compared alone.
      c.list.entries.forEach((cs, i) => {
        const gs = g.list.entries[i]!;
        for (const k of ['weights', 'm', 'v'] as const) cpu.write(cs[k], gpu.read(gs[k]));
      });
      // Fresh gradients for the second step (the same on both sides).
      for (const set of [c, g, again]) set.list.entries.forEach((s, i) => {
        const t = fromHost(s.grad.storage.owner as Backend, vals[i]!.g, [vals[i]!.g.length], gradType);
        (s.grad.storage.owner as Backend).copy(s.grad, t);
        t.dispose();
      });
    }
    for (const set of [c, g, again]) { set.list.dispose(); for (const t of set.owned) t.dispose(); }
  }
  assert.equal(gpu.memoryStats().liveBytes, live0, 'the tables are freed with their lists');
});

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
interface Row { crossEntropy: number; liveMemoryBytes: number }
function trainRun(device: string, recipe: string, steps: number): Row[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `moetrain-lean-${device}-`));
  const r = spawnSync(process.execPath, [cli, 'train', '--device', device, '--recipe', recipe, '--steps', String(steps), '--run_dir', dir, '--checkpoint_every', '0'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const rows = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Row);
  fs.rmSync(dir, { recursive: true, force: true });
  return rows;
}

test('tiny lean run: GPU losses follow the CPU lean run and the GPU default run for 20 steps; memory steady', { skip }, () => {
  const steps = 20;
  const lean = trainRun('cuda', 'lean', steps), cpuLean = trainRun('cpu', 'lean', steps), dflt = trainRun('cuda', 'default', steps);
  const worst = (a: Row[], b: Row[]) => Math.max(...a.map((r, i) => Math.abs(r.crossEntropy - b[i]!.crossEntropy) / b[i]!.crossEntropy));
  const vsCpu = worst(lean, cpuLean), vsDefault = worst(lean, dflt);
  console.log(`# lean GPU vs lean CPU: worst relative cross-entropy difference ${vsCpu.toExponential(2)}; lean GPU vs default GPU: ${vsDefault.toExponential(2)}`);
  // As test/cuda_train.test.ts: bf16 compute in another order drifts by ~2^-8 per step; 2% catches a wrong kernel.
  assert.ok(vsCpu < 0.02, `lean: GPU and CPU losses differ by ${vsCpu} (relative)`);
  assert.ok(vsDefault < 0.02, `GPU: lean and default losses differ by ${vsDefault} (relative)`);
  assert.equal(lean[19]!.liveMemoryBytes, lean[4]!.liveMemoryBytes);
  assert.ok(lean[19]!.liveMemoryBytes < dflt[19]!.liveMemoryBytes, `lean live bytes ${lean[19]!.liveMemoryBytes} ≥ default ${dflt[19]!.liveMemoryBytes}`);
});
