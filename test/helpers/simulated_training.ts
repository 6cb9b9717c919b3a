// One rank of a parallel layout training the tiny model in this process for a test
// (parallel/simulated_rank.ts: every collective a loopback copy, counted per kind): bf16,
// micro-batches of one sequence of 16 tokens, a constant learning rate of 1e-2, 2 steps.
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { parseDeepseekV2Config, type DeepseekV2Config } from '../../src/models/deepseek_v2_config.js';
import { TINY_CONFIG_JSON } from '../../src/models/tiny_config.js';
import type { MeshSizes } from '../../src/parallel/mesh.js';
import type { ScheduleKind } from '../../src/parallel/schedule_sim.js';
import { simulatedRank, type SimulatedRank } from '../../src/parallel/simulated_rank.js';
import { defaultTrainConfig, mergeTrainConfig } from '../../src/train/config.js';
import type { StepMetrics } from '../../src/train/log_line.js';
import { Training, type BatchSource } from '../../src/train/trainer.js';
import { syntheticBatches } from './synthetic_batches.js';

export const SIM_SEQ_LEN = 16;

/** A layout, the rank simulated, its pipeline schedule, the tiny model's layer count, and the global batch (sequences). */
export interface SimCase { name: string; sizes: MeshSizes; rank: number; kind: ScheduleKind; layers: number; globalBatch: number }

export const tinyWithLayers = (layers: number): DeepseekV2Config => parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: layers }, 'simulated rank test');

/**
 * Two steps of rank c.rank (train options `overrides` on top, `parallel` merged into the
 * layout's); the metrics, the loopback's counts of the second step, and the training and rank,
 * which the caller disposes and closes.
 */
export async function simulatedTraining(c: SimCase, overrides: Record<string, unknown> & { parallel?: Record<string, unknown> } = {},
                                        data?: (model: DeepseekV2Config) => BatchSource) {
  const model = tinyWithLayers(c.layers);
  const { parallel, ...rest } = overrides;
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    device: 'cpu', steps: 2, seq_len: SIM_SEQ_LEN, micro_batch_size: 1, global_batch_size: c.globalBatch, checkpoint_every: 0, precision: 'bf16',
    schedule: { type: 'constant', warmup_steps: 0 }, optimizer: { lr: 1e-2 }, ...rest,
    parallel: { ...c.sizes, schedule: c.kind, ...parallel },
  }, 'simulated rank test');
  const dist: SimulatedRank = await simulatedRank(c.sizes, c.rank, {
    numLayers: c.layers, nRoutedExperts: model.n_routed_experts, globalBatch: c.globalBatch, microBatch: 1, seqLen: SIM_SEQ_LEN, schedule: c.kind,
  });
  const training = new Training(cfg, model, new CpuBackend(), dist);
  for (const m of training.models) m.initialize(cfg.seed);
  const source = data?.(model) ?? syntheticBatches({ vocab: model.vocab_size, seqLen: SIM_SEQ_LEN, microBatch: 1 });
  const metrics: StepMetrics[] = [];
  for (let s = 0; s < 2; s++) {
    dist.comm.stats.reset();
    metrics.push(training.step(s, source));
  }
  return { model, metrics, stats: dist.comm.stats.byKind(), training, dist };
}
