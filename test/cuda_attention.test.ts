// MLA attention on CUDA (src/backend/cuda/ops/mla_attention.ts: the tensor-core kernels this GPU
// runs by default, Hopper's on an H100) against the CPU backend's
// mlaAttention / mlaAttentionBackward, at small awkward sizes (S not a multiple of the 64-row
// tile, S = 1, several heads and batches), causal and not, both backward modes; and unmasked
// blocks with q and kv of different lengths (ring attention's steps: awkward lengths both ways
// and the bench's s = 4096, cp = 4 shapes at one head). On Hopper, the persistent forward (CTAs
// walking several query tiles) gives the same bits as one CTA per tile, and with a handful of
// CTAs forced matches the CPU. GPU tests skip with "skipped: no CUDA" where no GPU is visible;
// the input checks run everywhere.
//
// Inputs are bf16 on the GPU and the same (bf16-exact) values in f32 on the CPU, so both compute
// the same function; outputs are poisoned with NaN first, so an unwritten element fails.
// Tolerance: ‖gpu − cpu‖/‖cpu‖ ≤ 1e-2 for o, 2e-2 for gradients. The GPU rounds P (and dS) to
// bf16 before their products (unit roundoff 2⁻⁸ ≈ 4e-3, averaged down over each sum) and its
// outputs to bf16; the harness measured 2e-3..3e-3 against float64 at these sizes. A wrong
// index, mask or missing term gives errors of order 1. lse is f32 from exact scores: 1e-4.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AttentionOptions } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { defaultCudaContext } from '../src/backend/cuda/runtime/context.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { MlaAttentionLauncher, type MlaForwardOptions, type MlaGrads, type MlaTensorCoreKernels } from '../src/backend/cuda/ops/mla_attention.js';
import { chooseMlaKernels } from '../src/backend/cuda/ops/mla_kernel_choice.js';
import { Rng } from '../src/nn/rng.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/dtype.js';
import { emptyTensor, type Shape, type Tensor } from '../src/tensor/tensor.js';

const skip = cudaAvailable() ? false : 'skipped: no CUDA';
const D_NOPE = 128, D_ROPE = 64, D_V = 128;
const SCALE = 1 / Math.sqrt(D_NOPE + D_ROPE);

let gpuBackend: CudaBackend | undefined;
function gpu(): CudaBackend {
  gpuBackend ??= new CudaBackend(defaultCudaContext());
  return gpuBackend;
}

let gpuAttention: { kernels: MlaTensorCoreKernels; launcher: MlaAttentionLauncher } | undefined;
/** The tensor-core kernel set "auto" picks on this GPU for DeepSeek's widths, and its launcher. */
function attention(): { kernels: MlaTensorCoreKernels; launcher: MlaAttentionLauncher } {
  if (!gpuAttention) {
    const be = gpu();
    const kernels = chooseMlaKernels({ arch: be.ctx.arch, computeCapability: be.ctx.computeCapability, dtype: 'bf16',
      dNope: D_NOPE, dRope: D_ROPE, dV: D_V, request: 'auto' });
    assert.notEqual(kernels, 'generic', `${be.ctx.name} has no tensor-core MLA kernels`);
    gpuAttention = { kernels: kernels as MlaTensorCoreKernels, launcher: new MlaAttentionLauncher(be.ctx, be.allocator) };
  }
  return gpuAttention;
}

/** N(0,1) values rounded to bf16, as f32. */
function bf16Normal(n: number, rng: Rng): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = rng.normal();
  return bf16ArrayToF32(f32ArrayToBf16(x));
}

function relativeError(got: Float32Array, ref: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = got[i]! - ref[i]!;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  // All-zero references (S = 1: the softmax is constant, so dq and dk vanish) compare absolutely.
  return den === 0 ? Math.sqrt(num / ref.length) : Math.sqrt(num / den);
}

/** Sq query and Skv key positions (Skv = Sq unless given). */
interface Case { B: number; S: number; Skv?: number; H: number; causal: boolean }

interface Problem {
  shapes: Record<'qNope' | 'qPe' | 'kNope' | 'kPe' | 'v' | 'dout', Shape>;
  values: Record<'qNope' | 'qPe' | 'kNope' | 'kPe' | 'v' | 'dout', Float32Array>;
}

function makeProblem({ B, S, Skv = S, H }: Case, seed: number): Problem {
  const rng = new Rng(seed);
  const shapes = {
    qNope: [B, S, H, D_NOPE], qPe: [B, S, H, D_ROPE], kNope: [B, Skv, H, D_NOPE], kPe: [B, Skv, 1, D_ROPE],
    v: [B, Skv, H, D_V], dout: [B, S, H, D_V],
  };
  const values = {} as Problem['values'];
  for (const [name, shape] of Object.entries(shapes) as [keyof Problem['values'], Shape][]) {
    values[name] = bf16Normal(shape.reduce((a, b) => a * b, 1), rng);
  }
  return { shapes, values };
}

const GRAD_NAMES = ['dqNope', 'dqPe', 'dkNope', 'dkPe', 'dv'] as const;
const GRAD_OF = { dqNope: 'qNope', dqPe: 'qPe', dkNope: 'kNope', dkPe: 'kPe', dv: 'v' } as const;

/** The CPU backend in f32: o, lse and the five gradients. */
function cpuReference(p: Problem, opts: AttentionOptions): Record<string, Float32Array> {
  const cpu = new CpuBackend();
  const t = {} as Record<keyof Problem['values'], Tensor>;
  for (const name of Object.keys(p.shapes) as (keyof Problem['values'])[]) {
    t[name] = emptyTensor(cpu, p.shapes[name], 'f32');
    cpu.write(t[name], p.values[name]);
  }
  const [B, S, H] = p.shapes.qNope as [number, number, number];
  const o = emptyTensor(cpu, [B, S, H, D_V], 'f32');
  const lse = emptyTensor(cpu, [B, H, S], 'f32');
  cpu.mlaAttention(o, lse, t.qNope, t.qPe, t.kNope, t.kPe, t.v, opts);
  const grads = Object.fromEntries(GRAD_NAMES.map((g) => [g, emptyTensor(cpu, p.shapes[GRAD_OF[g]], 'f32')])) as unknown as MlaGrads;
  cpu.mlaAttentionBackward(grads, t.dout, t.qNope, t.qPe, t.kNope, t.kPe, t.v, o, lse, opts);
  const out: Record<string, Float32Array> = { o: cpu.read(o) as Float32Array, lse: cpu.read(lse) as Float32Array };
  for (const g of GRAD_NAMES) out[g] = cpu.read(grads[g]) as Float32Array;
  return out;
}

function poisoned(be: CudaBackend, shape: Shape, dtype: 'bf16' | 'f32'): Tensor {
  const t = emptyTensor(be, shape, dtype);
  if (dtype === 'bf16') be.write(t, new Uint16Array(t.size).fill(0x7fc0));
  else be.write(t, new Float32Array(t.size).fill(NaN));
  return t;
}

const readBf16 = (be: CudaBackend, t: Tensor): Float32Array => bf16ArrayToF32(be.read(t) as Uint16Array);

/** The GPU forward and backward (both modes; deterministic twice) on the problem's values. */
function gpuRun(p: Problem, opts: AttentionOptions): { out: Record<string, Float32Array>; det: Record<string, Float32Array>; detAgain: Record<string, Float32Array> } {
  const be = gpu();
  const owned: Tensor[] = [];
  const keep = (t: Tensor): Tensor => { owned.push(t); return t; };
  try {
    const t = {} as Record<keyof Problem['values'], Tensor>;
    for (const name of Object.keys(p.shapes) as (keyof Problem['values'])[]) {
      t[name] = keep(emptyTensor(be, p.shapes[name], 'bf16'));
      be.write(t[name], f32ArrayToBf16(p.values[name]));
    }
    const [B, S, H] = p.shapes.qNope as [number, number, number];
    const o = keep(poisoned(be, [B, S, H, D_V], 'bf16'));
    const lse = keep(poisoned(be, [B, H, S], 'f32'));
    const { kernels, launcher } = attention();
    launcher.forward(kernels, o, lse, t.qNope, t.qPe, t.kNope, t.kPe, t.v, opts);
    const backward = (deterministic: boolean): Record<string, Float32Array> => {
      const grads = Object.fromEntries(GRAD_NAMES.map((g) => [g, keep(poisoned(be, p.shapes[GRAD_OF[g]], 'bf16'))])) as unknown as MlaGrads;
      launcher.backward(kernels, grads, t.dout, t.qNope, t.qPe, t.kNope, t.kPe, t.v, o, lse, { ...opts, deterministic });
      return Object.fromEntries(GRAD_NAMES.map((g) => [g, readBf16(be, grads[g])]));
    };
    const out = { o: readBf16(be, o), lse: be.read(lse) as Float32Array, ...backward(false) };
    return { out, det: backward(true), detAgain: backward(true) };
  } finally {
    for (const x of owned) x.dispose();
  }
}

const CASES: Case[] = [
  { B: 2, S: 17, H: 3, causal: true },
  { B: 1, S: 1, H: 2, causal: true },
  { B: 1, S: 70, H: 2, causal: true },
  { B: 2, S: 33, H: 1, causal: false },
  { B: 1, S: 129, H: 2, causal: false },
  // More key tiles than the Hopper forward's shared-memory ring has stages (ring reuse).
  { B: 1, S: 300, H: 2, causal: true },
  // Several 64-query steps per 128-key block of the Hopper backward, a partial last key tile, B > 1.
  { B: 2, S: 260, H: 3, causal: false },
  // Unmasked blocks with q ≠ kv: more keys than queries and fewer, partial tiles on both sides,
  // one side shorter than one tile, B > 1 (the batch strides of q and k differ).
  { B: 2, S: 192, Skv: 320, H: 3, causal: false },
  { B: 1, S: 320, Skv: 64, H: 2, causal: false },
  { B: 2, S: 17, Skv: 300, H: 2, causal: false },
  { B: 2, S: 300, Skv: 17, H: 2, causal: false },
  { B: 1, S: 1, Skv: 129, H: 2, causal: false },
  // The bench's per-step shapes at s = 4096, cp = 4 (c = 512), one head: q 2c × kv c, q c × kv 2c.
  { B: 1, S: 1024, Skv: 512, H: 1, causal: false },
  { B: 1, S: 512, Skv: 1024, H: 1, causal: false },
];

for (const c of CASES) {
  const lengths = c.Skv === undefined ? `S=${c.S}` : `q ${c.S} × kv ${c.Skv}`;
  test(`MLA attention on CUDA matches the CPU backend: B=${c.B} ${lengths} H=${c.H} ${c.causal ? 'causal' : 'full'}`, { skip }, () => {
    const opts: AttentionOptions = { causal: c.causal, scale: SCALE };
    const p = makeProblem(c, 1000 + c.S * 7 + c.H + (c.Skv ?? 0) * 13);
    const ref = cpuReference(p, opts);
    const { out, det, detAgain } = gpuRun(p, opts);
    let lseErr = 0;
    for (let i = 0; i < ref.lse!.length; i++) lseErr = Math.max(lseErr, Math.abs(out.lse![i]! - ref.lse![i]!) / Math.max(1, Math.abs(ref.lse![i]!)));
    assert.ok(lseErr <= 1e-4, `lse error ${lseErr}`);
    const oErr = relativeError(out.o!, ref.o!);
    assert.ok(oErr <= 1e-2, `o relative error ${oErr}`);
    for (const g of GRAD_NAMES) {
      const e = relativeError(out[g]!, ref[g]!);
      assert.ok(e <= 2e-2, `${g} relative error ${e} (fast mode)`);
      const ed = relativeError(det[g]!, ref[g]!);
      assert.ok(ed <= 2e-2, `${g} relative error ${ed} (deterministic mode)`);
      assert.deepEqual(detAgain[g], det[g], `${g}: deterministic mode gave different bits on a second run`);
    }
  });
}

/** The Hopper forward's raw outputs (o as bf16 bits, lse) for each `persistent` choice, on one upload of the inputs. */
function hopperForwards(p: Problem, opts: AttentionOptions, launches: readonly MlaForwardOptions['persistent'][]): { o: Uint16Array; lse: Float32Array }[] {
  const be = gpu();
  const owned: Tensor[] = [];
  const keep = (t: Tensor): Tensor => { owned.push(t); return t; };
  try {
    const t = {} as Record<keyof Problem['values'], Tensor>;
    for (const name of ['qNope', 'qPe', 'kNope', 'kPe', 'v'] as const) {
      t[name] = keep(emptyTensor(be, p.shapes[name], 'bf16'));
      be.write(t[name], f32ArrayToBf16(p.values[name]));
    }
    const [B, S, H] = p.shapes.qNope as [number, number, number];
    return launches.map((persistent) => {
      const o = keep(poisoned(be, [B, S, H, D_V], 'bf16'));
      const lse = keep(poisoned(be, [B, H, S], 'f32'));
      attention().launcher.forward('hopper', o, lse, t.qNope, t.qPe, t.kNope, t.kPe, t.v, { ...opts, persistent });
      return { o: be.read(o) as Uint16Array, lse: be.read(lse) as Float32Array };
    });
  } finally {
    for (const x of owned) x.dispose();
  }
}

/** Index of the first element whose bits differ, or -1. */
function firstDifference(a: Uint16Array | Float32Array, b: Uint16Array | Float32Array): number {
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength), y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return Math.floor(i / a.BYTES_PER_ELEMENT);
  return x.length === y.length ? -1 : x.length;
}

// The persistent Hopper forward: a 1-D grid of CTAs each running several query tiles ("items",
// H·ceil(Sq/128)·B of them) claimed from a work counter, its K/V ring and Q buffer running on
// across items. Each item's arithmetic is the same whichever CTA runs it, so every launch must
// give the same bits: one CTA per item (false), one per SM (true), and 7 CTAs (many items each,
// on any GPU). The launches follow one another on the launcher's counter, which is never reset.
// Shapes with more items than an H100 has SMs (132): causal (8 tiles × 16 heads × 3 = 384, from
// 8 key tiles down to 1), ring attention's unmasked q 2c × kv c block at c = 512 (512 items of 4
// key tiles), and items of a single key tile.
const PERSISTENT_CASES: Case[] = [
  { B: 3, S: 1000, H: 16, causal: true },
  { B: 4, S: 1024, Skv: 512, H: 16, causal: false },
  { B: 2, S: 300, Skv: 17, H: 16, causal: false },
];

for (const c of PERSISTENT_CASES) {
  const lengths = c.Skv === undefined ? `S=${c.S}` : `q ${c.S} × kv ${c.Skv}`;
  test(`MLA attention on CUDA: the persistent Hopper forward gives the same bits as one CTA per query tile: B=${c.B} ${lengths} H=${c.H} ${c.causal ? 'causal' : 'full'}`, { skip }, (t) => {
    if (attention().kernels !== 'hopper') { t.skip(`${gpu().ctx.name} runs the mma.sync forward`); return; }
    const p = makeProblem(c, 5000 + c.S + c.H + (c.Skv ?? 0) * 3);
    const launches = [false, true, 7] as const;
    const runs = hopperForwards(p, { causal: c.causal, scale: SCALE }, launches);
    const [first] = runs;
    assert.ok(!bf16ArrayToF32(first!.o).some(Number.isNaN) && !first!.lse.some(Number.isNaN), 'one CTA per tile left outputs unwritten');
    runs.forEach((r, i) => {
      const o = firstDifference(r.o, first!.o), lse = firstDifference(r.lse, first!.lse);
      assert.equal(o, -1, `persistent: ${launches[i]}: o differs from one CTA per tile at element ${o}`);
      assert.equal(lse, -1, `persistent: ${launches[i]}: lse differs from one CTA per tile at element ${lse}`);
    });
  });
}

// Several items per CTA at small awkward shapes, against the CPU: 5 CTAs over 18 causal items of
// 3, 2 and 1 key tiles (Q reloaded per item, the K/V ring's stages and phases carried across
// items, claims, and CTAs whose last item has one key tile); unmasked items of one key tile
// only; unmasked items of 3 key tiles with a partial last one, on 4 CTAs.
const FEW_CTA_CASES: (Case & { ctas: number })[] = [
  { B: 2, S: 300, H: 3, causal: true, ctas: 5 },
  { B: 2, S: 300, Skv: 17, H: 3, causal: false, ctas: 5 },
  { B: 2, S: 192, Skv: 300, H: 3, causal: false, ctas: 4 },
];

for (const c of FEW_CTA_CASES) {
  const lengths = c.Skv === undefined ? `S=${c.S}` : `q ${c.S} × kv ${c.Skv}`;
  test(`MLA attention on CUDA: the Hopper forward on ${c.ctas} CTAs matches the CPU backend: B=${c.B} ${lengths} H=${c.H} ${c.causal ? 'causal' : 'full'}`, { skip }, (t) => {
    if (attention().kernels !== 'hopper') { t.skip(`${gpu().ctx.name} runs the mma.sync forward`); return; }
    const opts: AttentionOptions = { causal: c.causal, scale: SCALE };
    const p = makeProblem(c, 7000 + c.S * 7 + c.H + (c.Skv ?? 0) * 13);
    const ref = cpuReference(p, opts);
    const [run] = hopperForwards(p, opts, [c.ctas]);
    let lseErr = 0;
    for (let i = 0; i < ref.lse!.length; i++) lseErr = Math.max(lseErr, Math.abs(run!.lse[i]! - ref.lse![i]!) / Math.max(1, Math.abs(ref.lse![i]!)));
    assert.ok(lseErr <= 1e-4, `lse error ${lseErr}`);
    const oErr = relativeError(bf16ArrayToF32(run!.o), ref.o!);
    assert.ok(oErr <= 1e-2, `o relative error ${oErr}`);
  });
}

// The model passes q_nope, k_nope and v as views of their projections (q [B,S,H,192], kv
// [B,S,H,256]): the Hopper kernels read them in place through tensor maps with that row stride,
// the other kernel sets get contiguous copies (CudaBackend.withAttentionRows). Either way the
// results are those of contiguous inputs: o, lse, dk_nope and dv bit for bit; dq and dk_pe, which
// fast mode adds with f32 atomics, within their run-to-run rounding.
for (const c of [{ B: 2, S: 1000, H: 16, causal: true }, { B: 1, S: 384, H: 3, causal: false }] as Case[]) {
  test(`MLA attention on CUDA takes q_nope, k_nope and v as views of their projections: B=${c.B} S=${c.S} H=${c.H} ${c.causal ? 'causal' : 'full'}`, { skip }, () => {
    const be = gpu();
    const p = makeProblem(c, 41);
    const opts = { causal: c.causal, scale: SCALE };
    const owned: Tensor[] = [];
    const keep = (t: Tensor): Tensor => { owned.push(t); return t; };
    const upload = (shape: Shape, values: Float32Array): Tensor => { const t = keep(emptyTensor(be, shape, 'bf16')); be.write(t, f32ArrayToBf16(values)); return t; };
    try {
      const { B, S, H } = c;
      const dense = Object.fromEntries((Object.keys(p.shapes) as (keyof Problem['values'])[]).map((n) => [n, upload(p.shapes[n], p.values[n])])) as Record<keyof Problem['values'], Tensor>;
      // The projections, with the dense inputs' values in their columns (q_pe's columns hold q_pe).
      const q = keep(emptyTensor(be, [B, S, H, D_NOPE + D_ROPE], 'bf16')), kv = keep(emptyTensor(be, [B, S, H, D_NOPE + D_V], 'bf16'));
      const cols = (t: Tensor, from: number, width: number): Tensor => keep(t.view([B, S, H, width], t.strides, t.offset + from));
      const views = { qNope: cols(q, 0, D_NOPE), kNope: cols(kv, 0, D_NOPE), v: cols(kv, D_NOPE, D_V) };
      be.copy(views.qNope, dense.qNope); be.copy(cols(q, D_NOPE, D_ROPE), dense.qPe);
      be.copy(views.kNope, dense.kNope); be.copy(views.v, dense.v);
      assert.ok(!views.qNope.isContiguous() && !views.kNope.isContiguous() && !views.v.isContiguous());
      const run = (qn: Tensor, kn: Tensor, vv: Tensor) => {
        const o = keep(poisoned(be, [B, S, H, D_V], 'bf16')), lse = keep(poisoned(be, [B, H, S], 'f32'));
        be.mlaAttention(o, lse, qn, dense.qPe, kn, dense.kPe, vv, opts);
        const grads = Object.fromEntries(GRAD_NAMES.map((g) => [g, keep(poisoned(be, p.shapes[GRAD_OF[g]], 'bf16'))])) as unknown as MlaGrads;
        be.mlaAttentionBackward(grads, dense.dout, qn, dense.qPe, kn, dense.kPe, vv, o, lse, opts);
        return { o: be.read(o) as Uint16Array, lse: be.read(lse) as Float32Array, ...Object.fromEntries(GRAD_NAMES.map((g) => [g, readBf16(be, grads[g])])) } as Record<string, Uint16Array | Float32Array>;
      };
      const want = run(dense.qNope, dense.kNope, dense.v), got = run(views.qNope, views.kNope, views.v);
      for (const k of ['o', 'lse', 'dkNope', 'dv']) assert.equal(firstDifference(got[k]!, want[k]!), -1, `${k}: bit for bit`);
      for (const k of ['dqNope', 'dqPe', 'dkPe']) {
        const err = relativeError(got[k] as Float32Array, want[k] as Float32Array);
        assert.ok(err < 1e-2, `${k}: relative error ${err} against contiguous inputs`);
      }
    } finally {
      for (const t of owned) t.dispose();
    }
  });
}

test('MLA attention on CUDA rejects inputs it cannot take, naming the input', { skip }, () => {
  const be = gpu();
  const owned: Tensor[] = [];
  const make = (shape: Shape, dtype: 'bf16' | 'f32' = 'bf16'): Tensor => { const t = emptyTensor(be, shape, dtype); owned.push(t); return t; };
  try {
    const [B, S, H] = [1, 8, 2];
    const qn = make([B, S, H, D_NOPE]), qp = make([B, S, H, D_ROPE]), kn = make([B, S, H, D_NOPE]);
    const kpPerHead = make([B, S, H, D_ROPE]), v = make([B, S, H, D_V]);
    const o = make([B, S, H, D_V]), lse = make([B, H, S], 'f32');
    const { kernels, launcher } = attention();
    assert.throws(() => launcher.forward(kernels, o, lse, qn, qp, kn, kpPerHead, v, { causal: true, scale: SCALE }),
      /mlaAttention: kPe has shape \[1,8,2,64\], expected \[B,Skv,1,64\]/);
    const kp = make([B, S, 1, D_ROPE]);
    const lseBf16 = make([B, H, S]);
    assert.throws(() => launcher.forward(kernels, o, lseBf16, qn, qp, kn, kp, v, { causal: true, scale: SCALE }),
      /mlaAttention: lse is bf16; the CUDA kernels take f32 here/);
    // A causal mask compares positions: q and kv of different lengths are refused.
    const kn2 = make([B, 2 * S, H, D_NOPE]), kp2 = make([B, 2 * S, 1, D_ROPE]), v2 = make([B, 2 * S, H, D_V]);
    assert.throws(() => launcher.forward(kernels, o, lse, qn, qp, kn2, kp2, v2, { causal: true, scale: SCALE }),
      /mlaAttention: a causal mask needs as many queries as keys, got q 8 × kv 16/);
    // kv of another length than v.
    assert.throws(() => launcher.forward(kernels, o, lse, qn, qp, kn2, kp2, v, { causal: false, scale: SCALE }),
      /mlaAttention: v has shape \[1,8,2,128\], expected \[B,Skv,H,128\] = \[1,16,2,128\]/);
    if (kernels === 'hopper') {
      assert.throws(() => launcher.forward(kernels, o, lse, qn, qp, kn, kp, v, { causal: true, scale: SCALE, persistent: 0 }),
        /mlaAttention: persistent: 0 must be true, false or a whole number of CTAs ≥ 1/);
    }
  } finally {
    for (const t of owned) t.dispose();
  }
});
