// The lean recipe (optim/recipe.ts, optim/lean_adam.ts) on the CPU:
// - stochastic rounding (backend/cpu/stochastic_round.ts): only the two bf16 neighbours, mean
//   equal to the input within 5 standard errors, exact for bf16 values, non-finite values kept,
//   the bits a pure function of (seed, step, stream, element), and each array's 16 of them
//   uniform and unlike the other arrays';
// - one adamLeanMulti step against an f64 Adam on the same bf16 inputs: every stored weight, m
//   and v is a bf16 neighbour of the f64 value, the mean over 400 seeds is within 5 standard
//   errors of it, bf16 and f32 gradients, decay only where a slot says so, gradients zeroed;
// - training: 30 tiny steps within 1% of the default recipe's loss (measured: 0.05%), a lean
//   run that resumes from a checkpoint logs the same losses and writes the same bytes as one
//   that ran straight through, and a run cannot change its recipe on resume; live bytes steady;
// - what is refused: precision f32, a launched (sharded) run;
// - memory: the lean model's persistent bytes per parameter; every matrix's gradient bf16 with one
//   micro-batch a step (the embedding's too: its backward sums each row in f32 and rounds once).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { LeanAdamHyper } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { drawM, drawV, drawWeights, elementBits, roundingKey, stochasticRoundBf16 } from '../src/backend/cpu/stochastic_round.js';
import { TensorList, type LeanAdamSlot } from '../src/backend/tensor_list.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import type { LeanAdam } from '../src/optim/lean_adam.js';
import { recipeBytes } from '../src/optim/recipe.js';
import type { Distributed } from '../src/parallel/init_distributed.js';
import { packageRoot } from '../src/package_root.js';
import { bf16ArrayToF32, f32ToBf16, type DType } from '../src/tensor/dtype.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
const resolveTrainConfig = (o: Record<string, unknown>, source: string) => mergeTrainConfig(defaultTrainConfig(), o, source);
import { Training } from '../src/train/trainer.js';
import { fixedBatches } from './helpers/fixed_batches.js';

const cpu = new CpuBackend();
const bf = (bits: number): number => bf16ArrayToF32(Uint16Array.of(bits))[0]!;
/** The bf16 neighbours below and above x (equal when x is a bf16 value). */
function neighbours(x: number): [number, number] {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer);
  const down = bf(u[0]! >>> 16), up = (u[0]! & 0xffff) === 0 ? down : bf((u[0]! >>> 16) + 1);
  return x >= 0 ? [down, up] : [up, down];
}

test('stochastic rounding: the two neighbours, unbiased, exact on bf16 values, non-finite kept', () => {
  const key = roundingKey(7, 3, 0);
  const draws = [drawWeights, drawM, drawV];
  for (const [d, x] of [1 + 1e-4, -3.14159e-5, 0.1, 12345.678, 1e-30].entries()) {
    const [lo, hi] = neighbours(Math.fround(x));
    const N = 200_000;
    let sum = 0;
    for (let i = 0; i < N; i++) {
      const y = bf(stochasticRoundBf16(x, draws[d % 3]!(elementBits(key, i))));
      assert.ok(y === lo || y === hi, `${x} rounded to ${y}, not ${lo} or ${hi}`);
      sum += y;
    }
    // Each draw's error is at most one spacing with variance ≤ spacing²/4.
    const spacing = hi - lo, se = spacing / (2 * Math.sqrt(N));
    assert.ok(Math.abs(sum / N - Math.fround(x)) <= 5 * se + 1e-40, `${x}: mean ${sum / N} is ${Math.abs(sum / N - x) / se} standard errors away`);
  }
  for (const x of [0, 1, -2.5, 0.15625]) for (let i = 0; i < 100; i++) assert.equal(bf(stochasticRoundBf16(x, elementBits(key, i))), x);
  assert.equal(bf(stochasticRoundBf16(Infinity, 0xffff)), Infinity);
  assert.equal(bf(stochasticRoundBf16(-Infinity, 0xffff)), -Infinity);
  assert.ok(Number.isNaN(bf(stochasticRoundBf16(Number.NaN, 0))));
});

test('stochastic rounding bits: a pure function of (seed, step, stream, element); the three draws uniform and unlike each other', () => {
  const draw = (seed: number, step: number, stream: number) => Array.from({ length: 64 }, (_, i) => elementBits(roundingKey(seed, step, stream), i));
  assert.deepEqual(draw(1234, 5, 2), draw(1234, 5, 2));
  const base = draw(1234, 5, 2);
  for (const other of [draw(1235, 5, 2), draw(1234, 6, 2), draw(1234, 5, 3)]) {
    const same = base.filter((b, i) => b === other[i]).length;
    assert.ok(same <= 1, `${same} of 64 draws equal across different inputs`);
  }
  // Each array's 16 bits are spread (each of 16 buckets gets 1/16 ± 20%), and no two arrays round an
  // element with the same bits more often than chance (1 in 65,536) allows.
  const key = roundingKey(1, 1, 0), N = 160_000;
  const draws = { weights: drawWeights, m: drawM, v: drawV };
  const buckets = Object.fromEntries(Object.keys(draws).map((k) => [k, new Array<number>(16).fill(0)]));
  let sameWM = 0, sameWV = 0, sameMV = 0;
  for (let i = 0; i < N; i++) {
    const bits = elementBits(key, i), w = drawWeights(bits), m = drawM(bits), v = drawV(bits);
    for (const [k, f] of Object.entries(draws)) buckets[k]![f(bits) >>> 12]!++;
    for (const r of [w, m, v]) assert.ok(r >= 0 && r < 65536, `draw ${r} is not 16 bits`);
    sameWM += +(w === m); sameWV += +(w === v); sameMV += +(m === v);
  }
  for (const [k, b] of Object.entries(buckets)) for (const n of b) assert.ok(Math.abs(n - N / 16) < 2_000, `${k}: bucket ${n} of ${N} draws`);
  assert.ok(Math.max(sameWM, sameWV, sameMV) <= 12, `equal draws between arrays: ${sameWM}, ${sameWV}, ${sameMV} of ${N} (chance: ~2.4)`);
});

interface LeanValues { w: Float32Array; g: Float32Array; m: Float32Array; v: Float32Array; decay: boolean }

/** bf16-representable values (rounded to nearest) for weights and moments. */
function leanValues(rng: Rng, n: number, decay: boolean): LeanValues {
  const r = (x: number) => bf(f32ToBf16(x));
  return {
    w: Float32Array.from({ length: n }, () => r(0.02 * rng.normal())),
    g: Float32Array.from({ length: n }, () => 1e-3 * rng.normal()),
    m: Float32Array.from({ length: n }, () => r(1e-4 * rng.normal())),
    v: Float32Array.from({ length: n }, () => r((1e-3 * rng.normal()) ** 2)),
    decay,
  };
}

function leanSlots(vals: readonly LeanValues[], gradType: DType): { list: TensorList<LeanAdamSlot>; owned: Tensor[] } {
  const owned: Tensor[] = [];
  const put = (x: Float32Array, dt: DType) => { const t = fromHost(cpu, x, [x.length], dt); owned.push(t); return t; };
  const slots = vals.map((s) => ({ weights: put(s.w, 'bf16'), grad: put(s.g, gradType), m: put(s.m, 'bf16'), v: put(s.v, 'bf16'), decay: s.decay }));
  return { list: new TensorList(slots), owned };
}

/** Adam/AdamW in f64 on the same (bf16) inputs: the value before any rounding. */
function f64Step(s: LeanValues, gradType: DType, h: LeanAdamHyper, i: number): { w: number; m: number; v: number } {
  const wd = s.decay ? h.weightDecay : 0, p = s.w[i]!;
  let g = (gradType === 'bf16' ? bf(f32ToBf16(s.g[i]!)) : s.g[i]!) * h.gradScale;
  if (!h.decoupled) g += wd * p;
  const m = h.beta1 * s.m[i]! + (1 - h.beta1) * g, v = h.beta2 * s.v[i]! + (1 - h.beta2) * g * g;
  let upd = (m / (1 - h.beta1 ** h.step)) / (Math.sqrt(v / (1 - h.beta2 ** h.step)) + h.eps);
  if (h.decoupled) upd += wd * p;
  return { w: p - h.lr * upd, m, v };
}

for (const gradType of ['bf16', 'f32'] as const) {
  for (const decoupled of [true, false]) {
    test(`adamLeanMulti (${decoupled ? 'AdamW' : 'Adam'}, ${gradType} gradients) against an f64 step: neighbours, unbiased over seeds, gradients zeroed`, () => {
      const rng = new Rng(11);
      const vals = [leanValues(rng, 37, true), leanValues(rng, 5, false), leanValues(rng, 300, true)];
      const h0: LeanAdamHyper = { lr: 4e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, decoupled, step: 3, gradScale: 0.7, seed: 0, firstStream: 0 };
      const seeds = 400;
      const sums = vals.map((s) => ({ w: new Float64Array(s.w.length), m: new Float64Array(s.w.length), v: new Float64Array(s.w.length) }));
      for (let seed = 0; seed < seeds; seed++) {
        const { list, owned } = leanSlots(vals, gradType);
        cpu.adamLeanMulti(list, { ...h0, seed });
        list.entries.forEach((slot, k) => {
          const w = toHostF32(slot.weights), m = toHostF32(slot.m), v = toHostF32(slot.v);
          assert.ok(toHostF32(slot.grad).every((x) => x === 0), 'gradients are zero after the step');
          for (let i = 0; i < w.length; i++) {
            const ref = f64Step(vals[k]!, gradType, h0, i);
            for (const [name, got, want] of [['w', w[i]!, ref.w], ['m', m[i]!, ref.m], ['v', v[i]!, ref.v]] as const) {
              const [lo, hi] = neighbours(want);
              // One f32 rounding of the value may cross a bf16 boundary: allow the next neighbour out.
              const spacing = Math.max(hi - lo, Math.abs(want) * 2 ** -8);
              assert.ok(Math.abs(got - want) <= spacing * (1 + 1e-6), `slot ${k} ${name}[${i}]: ${got} vs f64 ${want}`);
            }
            sums[k]!.w[i]! += w[i]!; sums[k]!.m[i]! += m[i]!; sums[k]!.v[i]! += v[i]!;
          }
        });
        for (const t of owned) t.dispose();
      }
      // Unbiased: the mean over seeds is within 5 standard errors (spacing / (2√seeds)) of the f64 value.
      let checked = 0;
      vals.forEach((s, k) => {
        for (let i = 0; i < s.w.length; i++) {
          const ref = f64Step(s, gradType, h0, i);
          for (const [name, sum, want] of [['w', sums[k]!.w[i]!, ref.w], ['m', sums[k]!.m[i]!, ref.m], ['v', sums[k]!.v[i]!, ref.v]] as const) {
            const [lo, hi] = neighbours(want), se = Math.max(hi - lo, Math.abs(want) * 2 ** -8) / (2 * Math.sqrt(seeds));
            // f32 arithmetic before the rounding adds ~2^-24 relative.
            assert.ok(Math.abs(sum / seeds - want) <= 5 * se + Math.abs(want) * 2 ** -22, `slot ${k} ${name}[${i}]: mean ${sum / seeds} vs f64 ${want} (${(Math.abs(sum / seeds - want) / se).toFixed(1)} se)`);
            checked++;
          }
        }
      });
      assert.equal(checked, 3 * 342);
    });
  }
}

test('weight decay applies only to slots marked decay', () => {
  const rng = new Rng(3);
  const vals = [leanValues(rng, 64, true), leanValues(rng, 64, false)];
  for (const s of vals) s.g.fill(0), s.m.fill(0), s.v.fill(0);
  const { list, owned } = leanSlots(vals, 'f32');
  // Zero gradient and moments: AdamW moves only decayed weights, by lr·wd·w (rounded stochastically).
  cpu.adamLeanMulti(list, { lr: 0.5, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.5, decoupled: true, step: 1, gradScale: 1, seed: 9, firstStream: 0 });
  assert.deepEqual(toHostF32(list.entries[1]!.weights), vals[1]!.w);
  const w0 = toHostF32(list.entries[0]!.weights);
  for (let i = 0; i < 64; i++) {
    const [lo, hi] = neighbours(vals[0]!.w[i]! * 0.75);
    assert.ok(w0[i] === lo || w0[i] === hi, `decayed ${w0[i]} vs ${vals[0]!.w[i]! * 0.75}`);
  }
  for (const t of owned) t.dispose();
});

// ---- training ----

const model = tinyConfig();
const trainConfig = (recipe: string, steps: number) => resolveTrainConfig({ device: 'cpu', recipe, steps, seq_len: 32, micro_batch_size: 8, global_batch_size: 8 }, 'test');

function runSteps(recipe: string, steps: number): number[] {
  const cfg = trainConfig(recipe, steps);
  const training = new Training(cfg, model, cpu);
  training.model.initialize(cfg.seed);
  const data = fixedBatches(model.vocab_size, cfg.micro_batch_size, cfg.seq_len);
  const live: number[] = [];
  const losses = Array.from({ length: steps }, (_, s) => { const m = training.step(s, data); live.push(m.liveMemoryBytes); return m.crossEntropy; });
  // Nothing a step allocates outlives it.
  assert.equal(live[steps - 1], live[4], `${recipe}: live bytes after step 5 and after step ${steps}`);
  training.dispose();
  return losses;
}

test('30 tiny lean steps stay within 1% of the default recipe\'s loss', () => {
  const d = runSteps('default', 30), l = runSteps('lean', 30);
  const mean = (xs: number[]) => xs.slice(-5).reduce((a, b) => a + b, 0) / 5;
  const gap = Math.abs(mean(l) - mean(d)) / mean(d);
  assert.ok(d[29]! < d[0]! - 0.5, `the default run learns: ${d[0]} → ${d[29]}`);
  assert.ok(gap < 0.01, `mean loss of steps 26-30: lean ${mean(l)} vs default ${mean(d)} (${(100 * gap).toFixed(2)}%)`);
});

test('lean memory: no f32 master; bf16 gradients with one micro-batch, f32 with accumulation', () => {
  const held = (recipe: string, global: number) => {
    const before = cpu.memoryStats().liveBytes;
    const cfg = resolveTrainConfig({ device: 'cpu', recipe, seq_len: 32, micro_batch_size: 8, global_batch_size: global }, 'test');
    const t = new Training(cfg, model, cpu);
    const bytes = cpu.memoryStats().liveBytes - before;
    const params = t.model.params.reduce((a, p) => a + p.size, 0);
    t.dispose();
    return bytes / params;
  };
  const d = held('default', 8), l1 = held('lean', 8), l2 = held('lean', 16);
  // The tiny model is small: the f32 router and the norm gains weigh more than in DeepSeek-V2-Lite.
  assert.ok(Math.abs(d - 18) < 0.5, `default ${d} B/param`);
  assert.ok(l1 < 9.5 && l1 >= 8, `lean, one micro-batch: ${l1} B/param`);
  assert.ok(l2 < 10.5 && l2 > l1, `lean, accumulating: ${l2} B/param`);
  assert.deepEqual(recipeBytes('lean', 2, false), { weights: 2, gradient: 2, moments: 4 });
  assert.deepEqual(recipeBytes('default', 2, false), { weights: 6, gradient: 4, moments: 8 });
});

test('lean parameters: the matrices are bf16 without a master; the norm gains and the router keep f32 masters and f32 moments', () => {
  const cfg = resolveTrainConfig({ device: 'cpu', recipe: 'lean', seq_len: 32, micro_batch_size: 8, global_batch_size: 8 }, 'test');
  const t = new Training(cfg, model, cpu);
  const opt = t.optimizer as LeanAdam;
  let gains = 0, matrices = 0, router = 0;
  for (const p of t.model.params) {
    const { m, v } = opt.moments(p);
    if (p.shape.length === 1) {
      gains++;
      assert.ok(!p.lean && p.weights.dtype === 'f32' && p.value.dtype === 'bf16' && p.grad.dtype === 'f32', `gain [${p.shape}]`);
      assert.equal(m.dtype, 'f32'); assert.equal(v.dtype, 'f32');
    } else if (p.value.dtype === 'f32') {
      router++;
      assert.ok(!p.lean && m.dtype === 'f32' && v.dtype === 'f32', `router [${p.shape}]`);
    } else {
      matrices++;
      assert.ok(p.lean && p.weights === p.value && m.dtype === 'bf16' && v.dtype === 'bf16', `matrix [${p.shape}]`);
    }
  }
  // tiny: per layer the attention, kv and MLP norms (and q's where q_lora_rank is set), then the final norm.
  const perLayer = 3 + (model.q_lora_rank ? 1 : 0);
  assert.equal(gains, perLayer * model.num_hidden_layers + 1);
  assert.ok(matrices > 0 && router > 0, `${matrices} matrices, ${router} routers`);
  t.dispose();
});

test('lean gradients: bf16 for every matrix, the embedding\'s too, with one micro-batch a step; f32 when accumulating', () => {
  for (const [global, want] of [[8, 'bf16'], [16, 'f32']] as const) {
    const cfg = resolveTrainConfig({ device: 'cpu', recipe: 'lean', seq_len: 32, micro_batch_size: 8, global_batch_size: global }, 'test');
    const t = new Training(cfg, model, cpu);
    const embed = t.model.embed!;
    assert.equal(embed.grad.dtype, want, `embedding gradient, ${global / 8} micro-batch(es)`);
    for (const p of t.model.params) if (p.lean) assert.equal(p.grad.dtype, want, `matrix [${p.shape}]`);
    t.dispose();
  }
});

test('embeddingBackward into a bf16 gradient: each named row is the f32 sum of its tokens\' rows from its stored value, rounded once; other rows untouched', () => {
  const V = 11, D = 6, ids = Int32Array.from([3, 7, 3, 0, 3, 7, 10]);
  const rng = new Rng(5);
  const dout = Float32Array.from({ length: ids.length * D }, () => rng.normal());
  const start = Float32Array.from({ length: V * D }, () => rng.normal() * 0.1);
  const wide = fromHost(cpu, start, [V, D], 'f32'), narrow = fromHost(cpu, start, [V, D], 'bf16');
  const startBf16 = toHostF32(narrow);
  const idsT = fromHost(cpu, ids, [ids.length], 'i32'), g = fromHost(cpu, dout, [ids.length, D], 'f32');
  // The f32 path from the same (bf16-rounded) start, then rounded: what one rounding of each row's sum gives.
  const fromBf16 = fromHost(cpu, startBf16, [V, D], 'f32');
  cpu.embeddingBackward(fromBf16, idsT, g);
  cpu.embeddingBackward(narrow, idsT, g);
  const want = toHostF32(fromBf16), got = toHostF32(narrow);
  for (let i = 0; i < V * D; i++) {
    const row = Math.floor(i / D);
    const expected = ids.includes(row) ? bf(f32ToBf16(want[i]!)) : startBf16[i]!;
    assert.equal(got[i], expected, `element ${i} (row ${row})`);
  }
  for (const t of [wide, narrow, idsT, g, fromBf16]) t.dispose();
});

test('refused: lean with precision f32, lean in a launched run', () => {
  assert.throws(() => resolveTrainConfig({ recipe: 'lean', precision: 'f32' }, 'flags'), /recipe "lean" keeps bf16 weights and needs precision "bf16".*--precision bf16 or --recipe default/);
  assert.throws(() => resolveTrainConfig({ recipe: 'light' }, 'flags'), /"recipe" must be one of "default", "lean"/);
  assert.throws(() => new Training(trainConfig('lean', 30), model, cpu, {} as Distributed), /recipe "lean" runs in a single process only.*--recipe default/);
});

// ---- through the CLI: resume and recipe changes ----

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
const tmp = (): string => { const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-lean-')); made.push(d); return d; };
function run(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: packageRoot(), encoding: 'utf8', env: { ...process.env, MOETRAIN_DEBUG: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
const losses = (out: string) => out.split('\n').filter((l) => l.includes('| INFO |')).map((l) => /cross-entropy-loss (\S+) .*gradient-norm (\S+)/.exec(l)!.slice(1).join(' '));

test('a lean run resumed from a checkpoint continues bit for bit', () => {
  const a = tmp(), b = tmp();
  const common = ['train', '--device', 'cpu', '--recipe', 'lean', '--steps', '6', '--seq_len', '32', '--micro_batch_size', '4', '--global_batch_size', '4', '--schedule.warmup_steps', '2'];
  const straight = run([...common, '--run_dir', a]);
  assert.equal(straight.code, 0, straight.err);
  const first = run([...common, '--run_dir', b, '--checkpoint_every', '3', '--keep_checkpoints', '0']);
  assert.equal(first.code, 0, first.err);
  fs.rmSync(path.join(b, 'checkpoints', 'step-00000006'), { recursive: true });
  const resumed = run([...common, '--run_dir', b]);
  assert.equal(resumed.code, 0, resumed.err);
  assert.match(resumed.out, /resuming from .*step-00000003 \(step 3\)/);
  assert.deepEqual(losses(resumed.out), losses(straight.out).slice(3));
  // The weights and moments written at step 6 are the same bytes.
  const file = (dir: string) => fs.readFileSync(path.join(dir, 'checkpoints', 'step-00000006', 'rank-00000.safetensors'));
  assert.ok(file(a).equals(file(b)), 'the step-6 checkpoints of the straight and the resumed run differ');
});

test('a run cannot change its recipe on resume', () => {
  const dir = tmp();
  const common = ['train', '--device', 'cpu', '--steps', '2', '--seq_len', '16', '--micro_batch_size', '2', '--global_batch_size', '2', '--schedule.warmup_steps', '0', '--run_dir', dir];
  assert.equal(run([...common, '--recipe', 'lean']).code, 0);
  const r = run([...common, '--steps', '3', '--recipe', 'default']);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /written by a --recipe lean run, and this run asks for --recipe default; a run keeps its recipe on resume .*pass --recipe lean, or start a new --run_dir/);
});
