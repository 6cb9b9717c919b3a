// Trains the tiny model on the CPU in this process for a test: the run's metrics and its
// checkpoint tensors (in checkpointEntries order) as f32, with the config's fields overridden.
import type { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { tinyConfig } from '../../src/models/tiny_config.js';
import { toHostF32 } from '../../src/ops/create.js';
import { defaultTrainConfig, mergeTrainConfig } from '../../src/train/config.js';
import type { StepMetrics } from '../../src/train/log_line.js';
import { Training } from '../../src/train/trainer.js';
import { fixedBatches } from './fixed_batches.js';

/** 3 steps of 2×16 tokens per micro-batch, `micro` micro-batches a step, one warm-up step; `overrides` on top. */
export function trainTiny(backend: CpuBackend, micro: number, overrides: Record<string, unknown> = {}): { metrics: StepMetrics[]; weights: Float32Array[] } {
  const model = tinyConfig();
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    device: 'cpu', steps: 3, seq_len: 16, micro_batch_size: 2, global_batch_size: 2 * micro, schedule: { warmup_steps: 1 }, ...overrides,
  }, 'test');
  const training = new Training(cfg, model, backend);
  training.model.initialize(cfg.seed);
  const data = fixedBatches(model.vocab_size, cfg.micro_batch_size, cfg.seq_len);
  const metrics = Array.from({ length: cfg.steps }, (_, s) => training.step(s, data));
  const weights = training.checkpointEntries().map((e) => toHostF32(e.tensor));
  training.dispose();
  return { metrics, weights };
}
