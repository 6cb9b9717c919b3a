// `moetrain estimate-memory`: the per-rank memory of a model on a mesh, before anything is
// allocated (parallel/memory_estimate.ts): persistent state and peak, with their parts, per
// pipeline stage. Takes the training options that decide it, with train's defaults.
import type { CommandSpec } from './args.js';
import { defaultTrainConfig, flagsToOverrides, mergeTrainConfig } from '../train/config.js';
import { loadDeepseekV2Config } from '../models/deepseek_v2_config.js';
import { tinyConfig } from '../models/tiny_config.js';
import { estimateMemory, formatEstimate } from '../parallel/memory_estimate.js';
import { validateMesh } from '../parallel/mesh.js';

const d = defaultTrainConfig();

export const ESTIMATE_COMMAND: CommandSpec = {
  name: 'estimate-memory',
  summary: 'Print the per-rank GPU memory of a training configuration (persistent state and peak, with their parts), per pipeline stage, without allocating anything.',
  positionals: [],
  options: [
    { name: 'model', value: 'PATH', default: d.model, help: 'a DeepSeek-V2 config.json, or "tiny"' },
    { name: 'layers', value: 'N', help: 'use only the first N decoder layers of the model (e.g. the 4-layer slice of bench train)' },
    { name: 'parallel.pp', value: 'N', default: '1', help: 'pipeline stages' },
    { name: 'parallel.dp', value: 'N', default: '1', help: 'data-parallel replicas' },
    { name: 'parallel.cp', value: 'N', default: '1', help: 'context-parallel ranks' },
    { name: 'parallel.ep', value: 'N', default: '1', help: 'expert-parallel ranks' },
    { name: 'seq_len', value: 'N', default: String(d.seq_len), help: 'tokens per sequence' },
    { name: 'micro_batch_size', value: 'N', default: String(d.micro_batch_size), help: 'sequences per forward/backward pass' },
    { name: 'global_batch_size', value: 'N', default: 'micro_batch_size × dp × ep', help: 'sequences per optimizer step (sets the micro-batches in flight under pipelining)' },
    { name: 'precision', value: 'bf16|f32', default: d.precision, help: 'compute precision' },
    { name: 'recipe', value: 'default|lean', default: d.recipe, help: 'training recipe: default (18 B per parameter) or lean (8 B; 10 when accumulating; one rank)' },
    { name: 'parallel.hold_weights', value: null, help: 'count every sharded unit of the stage gathered for the whole step (the train option)' },
    { name: 'parallel.hold_grads', value: null, help: 'count every sharded unit\'s whole f32 gradient resident for the whole step (the train option)' },
    { name: 'keep_logits', value: null, help: 'count each micro-batch\'s whole logits kept by the head from its forward to its backward (the train option)' },
    { name: 'recompute', value: 'cheap|copies|none|layers', default: d.recompute, help: 'what backward computes again instead of keeping (the train option): cheap parts, only the copies among them, none, or whole layers' },
    { name: 'device', value: 'cuda|cpu', default: 'cuda', help: 'cuda rounds allocations as the GPU caching allocator does; cpu counts bytes exactly' },
  ],
  notes: [
    'Persistent: f32 master, bf16 copy, f32 gradient and Adam m, v of the parameters this rank holds (18 bytes each in bf16);',
    'with --recipe lean, bf16 weights, bf16 m, v and bf16 gradients with one micro-batch per step (8 bytes; 10 accumulating).',
    'Peak adds the gathered weights of two layers and one layer\'s whole gradients (when sharded), the activations kept',
    'for backward of every micro-batch in flight, the logits and their gradient on the last stage, and workspace.',
    'With --parallel.hold_weights every sharded unit\'s gathered weights (held-weights) replace the two layers, and with',
    '--parallel.hold_grads every sharded unit\'s whole f32 gradient (held-grads) replaces the one layer\'s.',
  ],
};

export function estimateCommand(flags: Record<string, string>): void {
  const { layers, device = 'cuda', global_batch_size: global, ...rest } = flags;
  if (device !== 'cuda' && device !== 'cpu') throw new Error(`--device must be cuda or cpu, got "${device}"`);
  const cfg = mergeTrainConfig(d, flagsToOverrides({ ...rest, ...(global !== undefined ? { global_batch_size: global } : {}) }), 'estimate-memory');
  const model = cfg.model === 'tiny' ? tinyConfig() : loadDeepseekV2Config(cfg.model);
  if (layers !== undefined) {
    const n = Number(layers);
    if (!Number.isInteger(n) || n < 1 || n > model.num_hidden_layers) throw new Error(`--layers must be an integer in 1..${model.num_hidden_layers}, got "${layers}"`);
    model.num_hidden_layers = n;
  }
  const mesh = { pp: cfg.parallel.pp, dp: cfg.parallel.dp, cp: cfg.parallel.cp, ep: cfg.parallel.ep };
  const replicas = mesh.dp * mesh.ep;
  const globalBatch = global !== undefined ? cfg.global_batch_size : cfg.micro_batch_size * replicas;
  validateMesh(mesh, mesh.pp * mesh.dp * mesh.cp * mesh.ep, {
    numLayers: model.num_hidden_layers, nRoutedExperts: model.n_routed_experts, globalBatch, microBatch: cfg.micro_batch_size,
    seqLen: cfg.seq_len, schedule: cfg.parallel.schedule,
  });
  const rows = estimateMemory({
    model, mesh, seqLen: cfg.seq_len, microBatchSize: cfg.micro_batch_size,
    microBatches: globalBatch / cfg.micro_batch_size / replicas, precision: cfg.precision, recipe: cfg.recipe, device,
    holdWeights: cfg.parallel.hold_weights, holdGrads: cfg.parallel.hold_grads, keepLogits: cfg.keep_logits,
    recompute: cfg.recompute,
  });
  console.log(`${cfg.model}${layers !== undefined ? ` (first ${layers} layers)` : ''}, sequence ${cfg.seq_len}, micro-batch ${cfg.micro_batch_size}, global batch ${globalBatch}, ${cfg.precision}, recipe ${cfg.recipe}` +
    `${cfg.parallel.hold_weights ? ', holding gathered weights' : ''}${cfg.parallel.hold_grads ? ', holding full gradients' : ''}`);
  console.log(formatEstimate(rows, mesh));
}
