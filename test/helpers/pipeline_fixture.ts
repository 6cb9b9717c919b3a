// The pipeline tests' shared pieces: the tiny model with 4 layers, deterministic micro-batches,
// the whole model's step in one process (the reference), a rank's pipeline (its model parts
// and one step of a schedule), and the gradient comparison by HF name. Micro-batches are
// B = PP_B (default 2) sequences of S = PP_S (default 16) tokens.
import assert from 'node:assert/strict';
import type { Backend } from '../../src/backend/backend.js';
import { backward } from '../../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../../src/ops/create.js';
import { add, scale } from '../../src/ops/elementwise.js';
import { tidy } from '../../src/tensor/scope.js';
import type { DType } from '../../src/tensor/dtype.js';
import { DeepseekV2, type LoadBalance } from '../../src/models/deepseek_v2.js';
import { parseDeepseekV2Config } from '../../src/models/deepseek_v2_config.js';
import { namedParameters } from '../../src/models/deepseek_v2_names.js';
import { TINY_CONFIG_JSON } from '../../src/models/tiny_config.js';
import type { Communicator } from '../../src/parallel/communicator.js';
import { pipelineParts, runPipelineStep, type MicroBatchTokens, type PipelineChunk } from '../../src/parallel/pipeline.js';
import { pipelineSchedule } from '../../src/parallel/schedule.js';
import type { ScheduleKind } from '../../src/parallel/schedule_sim.js';

export const B = Number(process.env.PP_B ?? 2), S = Number(process.env.PP_S ?? 16), SEED = 77;
export const config = parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: 4 }, 'pipeline test');

/** Micro-batch mb's tokens: a seeded hash, with every 7th label ignored (< 0). */
export function batchOf(mb: number): MicroBatchTokens {
  const inputs = new Int32Array(B * S), labels = new Int32Array(B * S);
  for (let i = 0; i < B * S; i++) {
    const h = Math.imul((mb + 1) * 1009 + i, 0x9e3779b1) >>> 0;
    inputs[i] = h % config.vocab_size;
    labels[i] = i % 7 === 3 ? -100 : (h >>> 8) % config.vocab_size;
  }
  return { inputs, labels };
}

/** The whole model's step in this process: loss sums and every parameter's gradient by name. */
export function singleProcess(be: Backend, micro: number, lb: LoadBalance, dtype: DType): { ce: number; lb: number; grads: Map<string, Float32Array> } {
  const model = new DeepseekV2(config, be, dtype);
  model.initialize(SEED);
  model.beginStep();
  let ce = 0, lbSum = 0;
  for (let mb = 0; mb < micro; mb++) {
    const { inputs, labels } = batchOf(mb);
    tidy(() => {
      const count = labels.filter((l) => l >= 0).length;
      const out = model.forward(fromHost(be, inputs, [B, S], 'i32'), fromHost(be, labels, [B, S], 'i32'), count, lb);
      // f32 sums, as the executor's device accumulator adds them.
      ce = Math.fround(ce + toHostF32(out.crossEntropy)[0]!);
      lbSum += toHostF32(out.loadBalance)[0]!;
      backward(scale(add(out.crossEntropy, out.loadBalance), 1 / micro));
    });
  }
  const grads = new Map(namedParameters(model).map(({ name, param }) => [name, toHostF32(param.grad)]));
  model.dispose();
  return { ce, lb: lbSum, grads };
}

function maxAbs(x: Float32Array): number {
  let m = 0;
  for (const v of x) m = Math.max(m, Math.abs(v));
  return m;
}

export type Reference = ReturnType<typeof singleProcess>;

/** This rank's model parts for a schedule, and a function that runs one step of it. */
export function pipelineOf(comm: Communicator, be: Backend, kind: ScheduleKind, micro: number, lb: LoadBalance, dtype: DType) {
  const schedule = pipelineSchedule(kind, comm.size, micro);
  const chunks: PipelineChunk[] = pipelineParts(config, kind, comm.size, comm.rank, S, [0, config.n_routed_experts]).map(({ stage, part }) => {
    const model = new DeepseekV2(config, be, dtype, part);
    model.initialize(SEED);
    return { stage, model };
  });
  const step = () => {
    for (const c of chunks) { c.model.beginStep(); for (const p of c.model.params) p.zeroGrad(); }
    return runPipelineStep({ schedule, comm, chunks, batch: batchOf, microBatchSize: B, seqLen: S, loadBalance: lb });
  };
  return { schedule, chunks, step, dispose: () => { for (const c of chunks) c.model.dispose(); } };
}

/**
 * Compares every parameter gradient of the chunks with the reference's of the same HF name;
 * returns the largest |Δ| / max |g| and where it is (asserts each reference gradient is non-zero).
 */
export function gradientDifference(chunks: readonly PipelineChunk[], want: Reference): { worst: number; where: string; count: number } {
  let worst = 0, where = '', count = 0;
  for (const c of chunks) {
    for (const { name, param } of namedParameters(c.model)) {
      const g = toHostF32(param.grad), w = want.grads.get(name);
      assert.ok(w, `${name} is not a parameter of the whole model`);
      assert.ok(maxAbs(w) > 0, `${name}: the single-process gradient is zero (the check would be empty)`);
      const rel = maxAbs(g.map((v, i) => v - w[i]!)) / maxAbs(w);
      if (rel > worst) { worst = rel; where = ` (${name})`; }
      count++;
    }
  }
  return { worst, where, count };
}
