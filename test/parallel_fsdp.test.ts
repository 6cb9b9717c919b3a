// Fully sharded parameters in one process: evictable storage, the sharding plan (every element
// of every parameter held by exactly one rank of its group, aligned, experts apart from dense
// weights), and the sharded code path with groups of one (the path a launched world of one
// takes) against the whole-parameter trainer: the same losses, gradient norms and parameters,
// units gathered only while they run, nothing left behind. The multi-rank runs are in
// parallel_train.test.ts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { add } from '../src/ops/elementwise.js';
import { tidy } from '../src/tensor/scope.js';
import { emptyTensor, evictedTensor, type Tensor } from '../src/tensor/tensor.js';
import { backendOf } from '../src/backend/backend.js';
import { parseDeepseekV2Config, type DeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { parameterShapes } from '../src/models/deepseek_v2_names.js';
import { wholeModel } from '../src/models/deepseek_v2_weights.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import { ALIGN_ELEMENTS, heldRange, planShards } from '../src/parallel/fsdp_plan.js';
import { FullyShardedModel } from '../src/parallel/fsdp.js';
import { initDistributed } from '../src/parallel/init_distributed.js';
import { LocalCommunicator } from '../src/parallel/local_communicator.js';
import { checkArgs, FINISHED, type Communicator, type PendingCollective } from '../src/parallel/communicator.js';
import { defaultTrainConfig, mergeTrainConfig, type TrainConfig } from '../src/train/config.js';
import { Training } from '../src/train/trainer.js';
import type { StepMetrics } from '../src/train/log_line.js';
import { syntheticBatches } from './helpers/synthetic_batches.js';
import { compareParams } from './helpers/compare_params.js';

const tiny = (over: Record<string, unknown> = {}): DeepseekV2Config => parseDeepseekV2Config({ ...TINY_CONFIG_JSON, ...over }, 'fsdp test');

describe('evictable storage', () => {
  test('evict frees the memory while views stay; using them throws; restore gives fresh memory', () => {
    const be = new CpuBackend();
    const base = be.memoryStats().liveBytes;
    const t = emptyTensor(be, [64], 'f32');
    be.fill(t, 3);
    const v = t.view([8], [1], 8);
    t.storage.evict();
    assert.equal(be.memoryStats().liveBytes, base, 'evicted memory is back with the backend');
    assert.equal(t.storage.resident, false);
    assert.throws(() => be.read(v), /used while evicted/);
    assert.throws(() => t.storage.evict(), /already evicted/);
    t.storage.restore();
    assert.equal(be.memoryStats().liveBytes - base, 256);
    be.fill(v, 5);
    assert.deepEqual(Array.from(be.read(v)), new Array(8).fill(5));
    t.dispose();
    assert.equal(be.memoryStats().liveBytes - base, 256, 'the view still holds the storage');
    v.dispose();
    assert.equal(be.memoryStats().liveBytes, base);
    const e = evictedTensor(be, [10], 'bf16');
    assert.equal(be.memoryStats().liveBytes, base, 'an evicted tensor starts without memory');
    e.dispose();
    assert.equal(be.memoryStats().liveBytes, base, 'releasing an evicted storage frees nothing twice');
  });
});

describe('sharding plan', () => {
  const c = tiny({ num_hidden_layers: 3 });
  for (const dtype of ['bf16', 'f32'] as const) {
    for (const [dense, expert] of [[1, 1], [2, 2], [3, 1], [4, 2], [4, 4]] as const) {
      test(`${dtype}, dense over ${dense}, experts over ${expert}: every element held once, aligned`, () => {
        const part = { ...wholeModel(c), experts: [2, 6] as const };
        const units = planShards(c, part, dtype, { dense, expert });
        assert.deepEqual(units.map((u) => (u.unit.kind === 'layer' ? `layer${u.unit.index}` : u.unit.kind)), ['embed', 'layer0', 'layer1', 'layer2', 'head']);
        const shapes = new Map(parameterShapes(c, part).map((s) => [s.name, s.shape]));
        const seen = new Map<string, number[]>();
        for (const u of units) {
          for (const f of u.flats) {
            const g = f.group === 'dense' ? dense : expert;
            assert.equal(f.padded, f.shardSize * g);
            assert.equal(f.shardSize % ALIGN_ELEMENTS, 0);
            assert.ok(f.used <= f.padded);
            for (const m of f.members) {
              assert.equal(m.offset % ALIGN_ELEMENTS, 0, `${m.name} starts aligned`);
              assert.deepEqual(m.shape, shapes.get(m.name), `${m.name} shape`);
              assert.equal(f.group === 'expert', /\.mlp\.experts\./.test(m.name), `${m.name} is in the ${f.group} flat`);
              assert.equal(f.dtype, dtype === 'bf16' && /\.mlp\.gate\.weight$/.test(m.name) ? 'f32' : dtype, `${m.name} dtype`);
              assert.equal(m.decay, m.shape.length >= 2);
              const counts = seen.get(m.name) ?? new Array<number>(m.size).fill(0);
              for (let r = 0; r < g; r++) {
                const h = heldRange(f, m, r);
                if (!h) continue;
                assert.ok(h.shardOffset >= 0 && h.shardOffset + h.end - h.start <= f.shardSize);
                for (let i = h.start; i < h.end; i++) counts[i]!++;
              }
              seen.set(m.name, counts);
            }
          }
        }
        assert.deepEqual([...seen.keys()].sort(), [...shapes.keys()].sort(), 'every parameter of the part is planned');
        for (const [name, counts] of seen) assert.ok(counts.every((n) => n === 1), `${name}: every element held by exactly one rank`);
        // In f32 the router joins the dense flat; in bf16 it has its own f32 flat.
        assert.equal(units[2]!.flats.length, dtype === 'bf16' ? 3 : 2);
      });
    }
  }
});

function config(over: Record<string, unknown>): TrainConfig {
  return mergeTrainConfig(defaultTrainConfig(), {
    device: 'cpu', steps: 3, seq_len: 16, micro_batch_size: 2, global_batch_size: 4,
    schedule: { type: 'constant', warmup_steps: 0 }, optimizer: { lr: 1e-2 }, ...over,
  }, 'fsdp test');
}

async function runSteps(cfg: TrainConfig, sharded: boolean, steps: number): Promise<{ metrics: StepMetrics[]; params: Map<string, Float32Array> }> {
  const be = new CpuBackend();
  const model = tiny();
  const dist = sharded ? await initDistributed(cfg, model, be, {}) : null;
  const training = new Training(cfg, model, be, dist);
  training.model.initialize(cfg.seed);
  const data = syntheticBatches({ vocab: model.vocab_size, seqLen: cfg.seq_len, microBatch: cfg.micro_batch_size });
  const metrics: StepMetrics[] = [];
  for (let s = 0; s < steps; s++) metrics.push(training.step(s, data));
  const params = new Map(training.checkpointEntries().map((e) => [e.name, toHostF32(e.tensor)]));
  training.dispose();
  return { metrics, params };
}

describe('the sharded path with groups of one', () => {
  for (const [precision, form] of [['f32', 'global-batch'], ['bf16', 'sequence']] as const) {
    test(`${precision}, ${form} load balance: the losses, norms and parameters of the whole-parameter trainer`, async () => {
      const cfg = config({ precision, load_balance: { form, alpha: 0.01 } });
      const whole = await runSteps(cfg, false, 3), sharded = await runSteps(cfg, true, 3);
      // The forward passes compute the same things in the same order: step 1's losses are
      // bit-identical. Gradients differ only in how micro-batches are added (a sum of two
      // micro-batches then added to the shard, against accumulation in place): ~1e-7 relative.
      assert.equal(sharded.metrics[0]!.crossEntropy, whole.metrics[0]!.crossEntropy);
      assert.equal(sharded.metrics[0]!.loadBalance, whole.metrics[0]!.loadBalance);
      for (let s = 0; s < 3; s++) {
        const a = whole.metrics[s]!, b = sharded.metrics[s]!;
        for (const k of ['crossEntropy', 'loadBalance', 'gradientNorm'] as const) {
          assert.ok(Math.abs(a[k] - b[k]) <= 1e-5 * Math.abs(a[k]), `step ${s + 1} ${k}: ${b[k]} vs ${a[k]}`);
        }
      }
      assert.deepEqual([...sharded.params.keys()].sort(), [...whole.params.keys()].sort());
      // Adam divides each gradient by its own running RMS, so an element whose gradient is near
      // the rounding noise can move by a visible fraction of lr: bound each tensor's relative L2
      // difference and each element's difference against lr. In bf16 a master that moved by an
      // ulp can round its compute copy the other way (2^-8 relative), hence the wider bounds.
      const d = compareParams(whole.params, sharded.params);
      const [l2, abs] = precision === 'f32' ? [1e-5, 1e-3] : [1e-4, 1e-2];
      assert.ok(d.relL2 < l2, `parameters: relative L2 difference ${d.relL2} (${d.worst})`);
      assert.ok(d.maxAbs < abs * cfg.optimizer.lr, `parameters: largest element difference ${d.maxAbs} (lr ${cfg.optimizer.lr})`);
    });
  }

  test('checkpoint entries: a whole run\'s masters and moments written into a sharded run\'s entries continue it', async () => {
    const cfg = config({ precision: 'bf16', load_balance: { form: 'micro-batch', alpha: 0.01 } });
    const be = new CpuBackend();
    const c = tiny();
    const data = syntheticBatches({ vocab: c.vocab_size, seqLen: cfg.seq_len, microBatch: cfg.micro_batch_size });
    const whole = new Training(cfg, c, be);
    whole.model.initialize(cfg.seed);
    whole.step(0, data);
    const sharded = new Training(cfg, c, be, await initDistributed(cfg, c, be, {}));
    const source = new Map(whole.checkpointEntries().map((e) => [e.name, e]));
    const entries = sharded.checkpointEntries();
    assert.equal(entries.length, source.size);
    for (const e of entries) {
      const w = source.get(e.name)!;
      assert.deepEqual(e.shape, w.shape, e.name);
      be.write(e.tensor, toHostF32(w.tensor).subarray(e.start, e.end));
    }
    sharded.checkpointLoaded(whole.optimizer.step);
    const a = whole.step(1, data), b = sharded.step(1, data);
    assert.equal(b.crossEntropy, a.crossEntropy, 'the restored bf16 compute copies give the same forward');
    assert.ok(Math.abs(b.gradientNorm - a.gradientNorm) <= 1e-6 * a.gradientNorm);
    assert.equal(b.learningRate, a.learningRate);
    whole.dispose();
    sharded.dispose();
  });

  test('a unit\'s weights are gathered only while it runs and its backward needs them; nothing outlives a step', () => {
    const be = new CpuBackend();
    const c = tiny();
    // Rank 0 of a group of two whose other rank is this one again: the flats are really sharded
    // (a group of one holds them whole and never evicts; see the next test).
    const two = new MirroredPair();
    const base = be.memoryStats().liveBytes;
    const fsdp = new FullyShardedModel(c, be, 'bf16', wholeModel(c), { dense: two, expert: two });
    const m = fsdp.model;
    m.initialize(5);
    const resident = () => ({
      embed: m.embed!.value.storage.resident,
      layer0: m.layers[0]!.attn.qProj!.value.storage.resident,
      layer1: m.layers[1]!.moe!.experts[0]!.up.value.storage.resident,
      router: m.layers[1]!.moe!.router.value.storage.resident,
      head: m.lmHead!.value.storage.resident,
      grads: m.layers[0]!.inputNorm.grad.storage.resident,
    });
    const ids = fromHost(be, [3, 1, 4, 1, 5, 9, 2, 6], [1, 8], 'i32');
    const labels = fromHost(be, [1, 4, 1, 5, 9, 2, 6, -100], [1, 8], 'i32');
    let steady = 0;
    for (let step = 0; step < 3; step++) {
      m.beginStep();
      tidy(() => {
        const r = m.forward(ids, labels, 7, { form: 'global-batch', alpha: 0.01 });
        assert.deepEqual(resident(), { embed: false, layer0: false, layer1: false, router: false, head: true, grads: false }, 'after forward only the head stays gathered');
        assert.throws(() => be.read(m.layers[0]!.attn.oProj.value), /used while evicted/);
        backward(add(r.crossEntropy, r.loadBalance));
        // Layer 0's reduction is in flight (finished once the next one starts: the embedding's).
        assert.deepEqual(resident(), { embed: false, layer0: false, layer1: false, router: false, head: false, grads: true }, 'after backward the embedding gradient waits and layer 0\'s is being reduced');
        assert.equal(m.embed!.grad.storage.resident, true);
        fsdp.finishBackward();
        assert.equal(m.embed!.grad.storage.resident, false);
        assert.equal(m.layers[0]!.inputNorm.grad.storage.resident, false, 'every reduction finished');
      });
      const sq = emptyTensor(be, [1], 'f32');
      be.fill(sq, 0);
      for (const g of fsdp.gradShards()) be.sumSquaresInto(sq, g);
      assert.ok(toHostF32(sq)[0]! > 0, 'gradients reached the shards');
      sq.dispose();
      fsdp.zeroGrads();
      // The first step makes the RoPE tables, k and the global-batch counts, which stay.
      if (step === 0) steady = be.memoryStats().liveBytes;
      else assert.equal(be.memoryStats().liveBytes, steady, `step ${step + 1}: live bytes back to the steady state`);
    }
    const bytes = fsdp.bytes();
    assert.equal(bytes.weights + bytes.gradients + bytes.optimizer, 18 * bytes.heldElements - 2 * routerShard(fsdp, 2), '18 bytes per element except the f32 router flat (16)');
    assert.ok(bytes.largestUnitTransient > 0);
    ids.dispose(); labels.dispose();
    fsdp.dispose();
    assert.equal(be.memoryStats().liveBytes, base, 'dispose releases shards, views and the RoPE cache');
  });

  test('started gathers and reduce-scatters are waited for before their results are read or their memory freed (collectives that land only at wait())', () => {
    // DeferredPair's collectives write NaN at start and the real values at wait(), as a
    // communication stream's land later: a unit's weights read before its ready(), or a gradient
    // shard read before its reduction finished, give NaN. Two micro-batches per step, so the
    // second reduction goes through a partial sum.
    const run = (comm: Communicator) => {
      const be = new CpuBackend();
      const c = tiny();
      const fsdp = new FullyShardedModel(c, be, 'bf16', wholeModel(c), { dense: comm, expert: comm });
      const m = fsdp.model;
      m.initialize(5);
      const ids = fromHost(be, [3, 1, 4, 1, 5, 9, 2, 6], [1, 8], 'i32');
      const labels = fromHost(be, [1, 4, 1, 5, 9, 2, 6, -100], [1, 8], 'i32');
      const out: number[] = [];
      for (let step = 0; step < 2; step++) {
        m.beginStep();
        for (let micro = 0; micro < 2; micro++) {
          tidy(() => {
            const r = m.forward(ids, labels, 7, { form: 'global-batch', alpha: 0.01 });
            out.push(toHostF32(r.crossEntropy)[0]!);
            backward(add(r.crossEntropy, r.loadBalance));
            fsdp.finishBackward();
          });
        }
        const sq = emptyTensor(be, [1], 'f32');
        be.fill(sq, 0);
        for (const g of fsdp.gradShards()) be.sumSquaresInto(sq, g);
        out.push(toHostF32(sq)[0]!);
        sq.dispose();
        fsdp.zeroGrads();
      }
      out.push(be.memoryStats().liveBytes); // nothing of a reduction left behind
      ids.dispose(); labels.dispose();
      fsdp.dispose();
      return out;
    };
    const deferred = new DeferredPair();
    const want = run(new MirroredPair()), got = run(deferred);
    assert.ok(want.every(Number.isFinite));
    assert.deepEqual(got, want);
    assert.ok(deferred.started > 0 && deferred.waited === deferred.started, `every started collective was waited for (${deferred.waited} of ${deferred.started})`);
  });

  test('a group of one holds its flats whole: no gather, no full gradient, no reduce-scatter; gradients accumulate in the shard', () => {
    const be = new CpuBackend();
    const c = tiny();
    const one = new CountingLocal();
    const fsdp = new FullyShardedModel(c, be, 'bf16', wholeModel(c), { dense: one, expert: one });
    const m = fsdp.model;
    m.initialize(5);
    const ids = fromHost(be, [3, 1, 4, 1, 5, 9, 2, 6], [1, 8], 'i32');
    const labels = fromHost(be, [1, 4, 1, 5, 9, 2, 6, -100], [1, 8], 'i32');
    const shardNorm = (): number => {
      const sq = emptyTensor(be, [1], 'f32');
      be.fill(sq, 0);
      for (const g of fsdp.gradShards()) be.sumSquaresInto(sq, g);
      const v = toHostF32(sq)[0]!;
      sq.dispose();
      return v;
    };
    const norms: number[] = [];
    // Two micro-batches of one step: the second adds to the first (the shards are the gradients).
    for (let micro = 0; micro < 2; micro++) {
      if (micro === 0) m.beginStep();
      tidy(() => {
        const r = m.forward(ids, labels, 7, { form: 'global-batch', alpha: 0.01 });
        assert.equal(m.layers[0]!.attn.oProj.value.storage.resident, true, 'the weights are the shard: always resident');
        backward(add(r.crossEntropy, r.loadBalance));
        fsdp.finishBackward();
      });
      norms.push(shardNorm());
    }
    assert.equal(one.calls, 0, 'no collective on a group of one');
    assert.ok(norms[0]! > 0);
    // The same micro-batch twice: the accumulated gradient is twice the first (Σg² four times).
    assert.ok(Math.abs(norms[1]! / norms[0]! - 4) < 1e-4, `accumulated Σg² ratio ${norms[1]! / norms[0]!}`);
    assert.equal(fsdp.bytes().largestUnitTransient, 0, 'nothing gathered');
    assert.equal(m.layers[0]!.attn.oProj.grad.storage, fsdp.gradShards()[1]!.storage, 'the parameter gradients are views of the shards');
    ids.dispose(); labels.dispose();
    fsdp.dispose();
  });
});

/** Elements of the f32 router flat's shard in the tiny model's bf16 plan over a group of `g` (its compute copy is its master). */
function routerShard(fsdp: FullyShardedModel, g: number): number {
  const c = fsdp.model.config;
  const units = planShards(c, wholeModel(c), 'bf16', { dense: g, expert: g });
  return units[2]!.flats.find((f) => f.dtype === 'f32')!.shardSize;
}

/**
 * Rank 0 of a pair whose rank 1 mirrors it: a gather writes this rank's input into both halves,
 * a reduce-scatter keeps the first half. Enough for residency and memory checks, not for values.
 */
class MirroredPair implements Communicator {
  readonly rank = 0;
  readonly size = 2;
  readonly worldRanks = [0, 1];
  readonly name = 'mirrored pair';
  allGatherStart(out: Tensor, inp: Tensor): PendingCollective {
    this.allGather(out, inp);
    return FINISHED;
  }

  allGather(out: Tensor, inp: Tensor): void {
    checkArgs.allGather(this, out, inp);
    const be = backendOf(out);
    for (const half of [0, 1]) { const v = out.view([inp.size], [1], out.offset + half * inp.size); be.copy(v, inp); v.dispose(); }
  }
  reduceScatterStart(out: Tensor, inp: Tensor): PendingCollective {
    this.reduceScatter(out, inp);
    return FINISHED;
  }

  reduceScatter(out: Tensor, inp: Tensor): void {
    checkArgs.reduceScatter(this, out, inp);
    const v = inp.view([out.size], [1], inp.offset);
    backendOf(out).copy(out, v);
    v.dispose();
  }
  allReduce(): void { throw new Error('not used by the sharded model'); }
  allToAll(): void { throw new Error('not used by the sharded model'); }
  send(): void { throw new Error('not used by the sharded model'); }
  recv(): void { throw new Error('not used by the sharded model'); }
  sendRecv(): void { throw new Error('not used by the sharded model'); }
  barrier(): void {}
  group(): Promise<Communicator> { return Promise.reject(new Error('not used by the sharded model')); }
  close(): void {}
}

/**
 * MirroredPair whose started gathers and reduce-scatters land only at wait() (NaN until then): a
 * communication stream's timing at its latest.
 */
class DeferredPair extends MirroredPair {
  started = 0;
  waited = 0;
  override reduceScatterStart(out: Tensor, inp: Tensor): PendingCollective {
    checkArgs.reduceScatter(this, out, inp);
    backendOf(out).fill(out, Number.NaN);
    this.started++;
    let done = false;
    return { wait: () => { if (!done) { done = true; this.waited++; this.reduceScatter(out, inp); } } };
  }
  override allGatherStart(out: Tensor, inp: Tensor): PendingCollective {
    checkArgs.allGather(this, out, inp);
    backendOf(out).fill(out, Number.NaN);
    this.started++;
    let done = false;
    return { wait: () => { if (!done) { done = true; this.waited++; this.allGather(out, inp); } } };
  }
}

/** A group of one that counts the collectives it is asked for. */
class CountingLocal extends LocalCommunicator {
  calls = 0;
  override allGather(out: Tensor, inp: Tensor): void { this.calls++; super.allGather(out, inp); }
  override reduceScatter(out: Tensor, inp: Tensor): void { this.calls++; super.reduceScatter(out, inp); }
}
