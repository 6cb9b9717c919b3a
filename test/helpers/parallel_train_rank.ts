// One rank of the sharded-training equivalence tests (test/parallel_train.test.ts), started by
// `moetrain launch`: joins the run, trains the tiny model for a few steps on synthetic batches
// with sharded parameters, and writes what it holds into OUT:
//   rank-RRRRR.json  { rank, metrics, entries: [{ name, shape, start, end, at }] } (at: offset in the .f32 file)
//   rank-RRRRR.f32   the entries' values (master weights and Adam moments), one after another
// Arguments: OUT then the layout's JSON (TrainLayout). Without arguments (node --test imports
// every file under dist/test) it does nothing.
import fs from 'node:fs';
import path from 'node:path';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { toHostF32 } from '../../src/ops/create.js';
import { TINY_CONFIG_JSON } from '../../src/models/tiny_config.js';
import { parseDeepseekV2Config, type DeepseekV2Config } from '../../src/models/deepseek_v2_config.js';
import type { ScheduleKind } from '../../src/parallel/schedule_sim.js';
import type { LoadBalanceForm } from '../../src/models/deepseek_v2.js';
import { initDistributed } from '../../src/parallel/init_distributed.js';
import { defaultTrainConfig, mergeTrainConfig, type TrainConfig } from '../../src/train/config.js';
import type { StepMetrics } from '../../src/train/log_line.js';
import { Training } from '../../src/train/trainer.js';
import { syntheticBatches } from './synthetic_batches.js';

/** What one equivalence run trains: the mesh, precision, load-balance form, batch shape and steps. */
export interface TrainLayout {
  dp: number;
  ep: number;
  /** Pipeline stages and context-parallel ranks (default 1), the schedule (default 1f1b). */
  pp?: number;
  cp?: number;
  schedule?: ScheduleKind;
  /** The tiny model's num_hidden_layers (default 2; a pipeline needs a layer per virtual stage). */
  layers?: number;
  precision: 'f32' | 'bf16';
  form: LoadBalanceForm;
  microBatch: number;
  globalBatch: number;
  steps: number;
  /** parallel.hold_weights and parallel.hold_grads (default false). */
  holdWeights?: boolean;
  holdGrads?: boolean;
}

export function layoutConfig(l: TrainLayout): TrainConfig {
  return mergeTrainConfig(defaultTrainConfig(), {
    device: 'cpu', precision: l.precision, steps: l.steps, seq_len: 32, micro_batch_size: l.microBatch, global_batch_size: l.globalBatch,
    schedule: { type: 'cosine', warmup_steps: 1 }, load_balance: { form: l.form, alpha: 0.01 },
    parallel: { pp: l.pp ?? 1, dp: l.dp, cp: l.cp ?? 1, ep: l.ep, collective_timeout_sec: 60, schedule: l.schedule ?? '1f1b',
      hold_weights: l.holdWeights ?? false, hold_grads: l.holdGrads ?? false },
  }, 'parallel train test');
}

/** The ranks a layout launches. */
export function layoutWorld(l: TrainLayout): number {
  return (l.pp ?? 1) * l.dp * (l.cp ?? 1) * l.ep;
}

/** The layout with one rank: what the single process trains. */
export function singleLayout(l: TrainLayout): TrainLayout {
  return { ...l, dp: 1, ep: 1, pp: 1, cp: 1, schedule: '1f1b', holdWeights: false, holdGrads: false };
}

/** The tiny model with the layout's layer count. */
export function layoutModel(l: TrainLayout): DeepseekV2Config {
  return parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: l.layers ?? TINY_CONFIG_JSON.num_hidden_layers }, 'tiny config (test layout)');
}

export interface RankOutput {
  rank: number;
  metrics: StepMetrics[];
  entries: { name: string; shape: number[]; start: number; end: number; at: number }[];
}

/** Trains `layout` on this process (a launched rank when the environment says so, else a single process). */
export async function trainLayout(layout: TrainLayout): Promise<{ metrics: StepMetrics[]; entries: { name: string; shape: readonly number[]; start: number; end: number; values: Float32Array }[]; rank: number }> {
  const backend = new CpuBackend();
  const model = layoutModel(layout);
  const cfg = layoutConfig(layout);
  const dist = process.env.WORLD_SIZE === undefined ? null : await initDistributed(cfg, model, backend);
  const training = new Training(cfg, model, backend, dist);
  for (const m of training.models) m.initialize(cfg.seed);
  const data = syntheticBatches({ vocab: model.vocab_size, seqLen: cfg.seq_len, microBatch: cfg.micro_batch_size });
  const metrics: StepMetrics[] = [];
  for (let s = 0; s < cfg.steps; s++) metrics.push(training.step(s, data));
  const entries = training.checkpointEntries().map((e) => ({ name: e.name, shape: e.shape, start: e.start, end: e.end, values: toHostF32(e.tensor) }));
  training.dispose();
  await dist?.close();
  return { metrics, entries, rank: dist?.rank ?? 0 };
}

async function main(): Promise<void> {
  const [out, layoutJson] = process.argv.slice(2);
  if (!out || !layoutJson) return;
  const r = await trainLayout(JSON.parse(layoutJson) as TrainLayout);
  const name = `rank-${String(r.rank).padStart(5, '0')}`;
  let at = 0;
  const index: RankOutput = { rank: r.rank, metrics: r.metrics, entries: [] };
  const data = new Float32Array(r.entries.reduce((n, e) => n + e.values.length, 0));
  for (const e of r.entries) {
    index.entries.push({ name: e.name, shape: [...e.shape], start: e.start, end: e.end, at });
    data.set(e.values, at);
    at += e.values.length;
  }
  fs.writeFileSync(path.join(out, `${name}.f32`), new Uint8Array(data.buffer));
  fs.writeFileSync(path.join(out, `${name}.json`), JSON.stringify(index));
}

main().catch((e: unknown) => {
  console.error(`moetrain: error: ${(e as Error).message}`);
  process.exit(1);
});
