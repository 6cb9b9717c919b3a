// The training configuration: a JSON file (`moetrain train --config run.json`) and/or flags
// (`--steps 200 --optimizer.lr 1e-3`). Every field is checked up front; an unknown or mistyped
// field is an error that suggests the closest name.
import { readFileSync } from 'node:fs';
import type { AdamConfig } from '../optim/adam.js';
import type { ScheduleConfig } from '../optim/schedule.js';
import { RECIPES, type Recipe } from '../optim/recipe.js';
import type { LoadBalanceForm, RecomputeMode } from '../models/deepseek_v2.js';
import { closestName } from '../models/deepseek_v2_config.js';
import type { ParallelConfig } from '../parallel/mesh.js';

export interface TrainConfig {
  /** Model: a DeepSeek-V2 config.json path, or "tiny" for the built-in demo model. */
  model: string;
  /** Token data folder (made by `moetrain tokenize`), or "demo" for the generated demo corpus. */
  data: string;
  /** Where logs, metrics.jsonl and checkpoints go; a run resumes from the latest checkpoint here. */
  run_dir: string;
  /** "auto" picks CUDA when a GPU is present, else the CPU. */
  device: 'auto' | 'cpu' | 'cuda';
  /**
   * MLA attention kernels on CUDA: "auto" takes the fastest set that applies; "hopper" (sm_90a),
   * "mma" (mma.sync, compute capability 8.0+) or "generic" (any widths) forces one. The
   * MOETRAIN_MLA_KERNELS environment variable overrides it.
   */
  mla_kernels: 'auto' | 'hopper' | 'mma' | 'generic';
  /**
   * Routed-expert GEMM on CUDA (bf16): "auto", "mma" (mma.sync kernels), "wgmma" (Hopper kernels,
   * sm_90a), "tma" (Hopper, TMA-fed kernels for all three products; sm_90a), "tma_pair" (tma with
   * the forward, data, gate-and-up data and SwiGLU products in 2-CTA clusters sharing each weight
   * tile; sm_90a, what "auto" runs there) or "per_expert" (one cuBLASLt product per expert, reading the counts on the host).
   */
  grouped_gemm: 'auto' | 'mma' | 'wgmma' | 'tma' | 'tma_pair' | 'per_expert';
  /** The head keeps each micro-batch's logits (tokens × vocabulary, compute dtype) for backward instead of recomputing them. */
  keep_logits: boolean;
  /**
   * What backward computes again instead of keeping from forward: "cheap" (SwiGLU outputs, the
   * MoE's gathered rows, the router's f32 input), "copies" (the last two only), "none", or "layers" (every decoder layer: only
   * its input and output kept; not with the global-batch load-balance form). See
   * models/deepseek_v2.ts (DeepseekV2.recompute).
   */
  recompute: RecomputeMode;
  /** Compute precision of weights and activations (masters, gradients and optimizer state are f32 in the default recipe). */
  precision: 'bf16' | 'f32';
  /**
   * "default": f32 master, bf16 copy, f32 gradient and moments (18 B/parameter); "lean": bf16
   * weights and moments updated with stochastic rounding, bf16 gradients with one micro-batch
   * per step (8 B/parameter; 10 with accumulation); see src/optim/recipe.ts. Needs bf16 precision
   * and a single process; a run keeps its recipe on resume.
   */
  recipe: Recipe;
  /** Seeds initialisation and the data order. */
  seed: number;
  /** Optimizer steps in the whole run. */
  steps: number;
  seq_len: number;
  /** Sequences per forward/backward pass. */
  micro_batch_size: number;
  /** Sequences per optimizer step (a multiple of micro_batch_size: gradient accumulation). */
  global_batch_size: number;
  optimizer: AdamConfig;
  schedule: ScheduleConfig;
  /** Global L2 norm the gradients are clipped to; 0 disables clipping. */
  grad_clip: number;
  load_balance: { form: LoadBalanceForm; alpha: number };
  /** Save a checkpoint every N steps (and always at the end); 0: only at the end. */
  checkpoint_every: number;
  /** Complete checkpoints to keep (older ones are deleted); 0 keeps all. */
  keep_checkpoints: number;
  /** Start from these weights (a moetrain checkpoint or HF folder) when the run has no checkpoint yet. */
  init_from: string | null;
  /**
   * The mesh pp × dp × cp × ep (ep innermost; the product is the number of ranks `moetrain launch`
   * starts) and the seconds a collective may wait for the other ranks; see src/parallel/mesh.ts.
   */
  parallel: ParallelConfig;
  /** Most passes over the data; a run that needs more is refused up front. null or 0: no cap. */
  max_epochs: number | null;
}

export function defaultTrainConfig(): TrainConfig {
  return {
    model: 'tiny', data: 'demo', run_dir: 'runs/default', device: 'auto', precision: 'bf16', recipe: 'default', seed: 1234,
    mla_kernels: 'auto', grouped_gemm: 'auto', keep_logits: false, recompute: 'cheap',
    steps: 100, seq_len: 64, micro_batch_size: 16, global_batch_size: 16,
    optimizer: { type: 'adamw', lr: 4e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.01 },
    schedule: { type: 'cosine', warmup_steps: 10, min_lr_ratio: 0.1, decay_fraction: 0.2 },
    grad_clip: 1.0,
    load_balance: { form: 'sequence', alpha: 3e-3 },
    checkpoint_every: 50, keep_checkpoints: 2, init_from: null,
    parallel: { pp: 1, dp: 1, cp: 1, ep: 1, collective_timeout_sec: 300, schedule: '1f1b', stages: null, hold_weights: false, hold_grads: false },
    max_epochs: null,
  };
}

type Check = (v: unknown) => string | null;
const positiveInt: Check = (v) => (Number.isInteger(v) && (v as number) > 0 ? null : 'a positive integer');
const nonNegInt: Check = (v) => (Number.isInteger(v) && (v as number) >= 0 ? null : 'a non-negative integer');
const nonNeg: Check = (v) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? null : 'a non-negative number');
const positive: Check = (v) => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? null : 'a positive number');
const fraction: Check = (v) => (typeof v === 'number' && v >= 0 && v < 1 ? null : 'a number in [0, 1)');
const str: Check = (v) => (typeof v === 'string' && v.length > 0 ? null : 'a non-empty string');
const strOrNull: Check = (v) => (v === null || (typeof v === 'string' && v.length > 0) ? null : 'a path or null');
const bool: Check = (v) => (typeof v === 'boolean' ? null : 'true or false');
const nonNegIntOrNull: Check = (v) => (v === null || (Number.isInteger(v) && (v as number) >= 0) ? null : 'a non-negative integer or null');
/** A check that the value is one of `xs`; help lists the choices (`choices`). */
const stageList: Check = (v) => (v === null || (Array.isArray(v) && v.length > 0 && v.every((x) => Number.isInteger(x) && x > 0)) ? null : 'null or a list of positive layer counts (e.g. "3,5" or [3, 5])');
const oneOf = (...xs: string[]): Check => Object.assign((v: unknown) => (xs.includes(v as string) ? null : `one of ${xs.map((x) => `"${x}"`).join(', ')}`), { choices: xs });

const SCHEMA: Record<string, Check | Record<string, Check>> = {
  model: str, data: str, run_dir: str, device: oneOf('auto', 'cpu', 'cuda'), precision: oneOf('bf16', 'f32'), recipe: oneOf(...RECIPES),
  mla_kernels: oneOf('auto', 'hopper', 'mma', 'generic'), grouped_gemm: oneOf('auto', 'mma', 'wgmma', 'tma', 'tma_pair', 'per_expert'),
  keep_logits: bool, recompute: oneOf('cheap', 'copies', 'none', 'layers'), seed: nonNegInt, steps: positiveInt, seq_len: positiveInt, micro_batch_size: positiveInt, global_batch_size: positiveInt,
  optimizer: { type: oneOf('adamw', 'adam'), lr: positive, beta1: fraction, beta2: fraction, eps: positive, weight_decay: nonNeg },
  schedule: { type: oneOf('cosine', 'wsd', 'constant'), warmup_steps: nonNegInt, min_lr_ratio: nonNeg, decay_fraction: fraction },
  grad_clip: nonNeg,
  load_balance: { form: oneOf('micro-batch', 'global-batch', 'sequence'), alpha: nonNeg },
  checkpoint_every: nonNegInt, keep_checkpoints: nonNegInt, init_from: strOrNull,
  // Pipeline stages, data-parallel replicas, context-parallel ranks, expert-parallel ranks, how
  // long a collective or the rendezvous waits for the other ranks, the pipeline schedule, an
  // optional split of the layers over its stages, and what FSDP holds whole across micro-batches.
  parallel: {
    pp: positiveInt, dp: positiveInt, cp: positiveInt, ep: positiveInt, collective_timeout_sec: positive,
    schedule: oneOf('1f1b', 'dualpipev'), stages: stageList, hold_weights: bool, hold_grads: bool,
  },
  max_epochs: nonNegIntOrNull,
};

/** One line per SCHEMA field (dotted for sections): what `moetrain train --help` prints beside
 * the field's default. A test checks that every field has one. */
const OPTION_HELP: Record<string, string> = {
  model: 'a DeepSeek-V2 config.json, or "tiny" for the built-in demo model',
  data: 'token data folder made by `moetrain tokenize`, or "demo" for the generated demo corpus',
  run_dir: 'logs, metrics.jsonl and checkpoints; a run resumes from the latest checkpoint here',
  device: 'auto: CUDA when a GPU is present, else the CPU',
  precision: 'compute precision (master weights, gradients and optimizer state are f32 in the default recipe)',
  recipe: 'default: f32 master + bf16 copy + f32 grads and Adam moments (18 B/param); lean: bf16 weights and moments with stochastic rounding, bf16 grads when one micro-batch per step (8 B/param; 10 when accumulating); needs precision bf16, one process',
  seed: 'seeds the initial weights and the data order',
  steps: 'optimizer steps in the whole run',
  seq_len: 'tokens per training sequence',
  micro_batch_size: 'sequences per forward/backward pass',
  global_batch_size: 'sequences per optimizer step (a multiple of micro_batch_size: gradient accumulation)',
  'optimizer.type': 'adamw (decoupled weight decay) or adam',
  'optimizer.lr': 'peak learning rate',
  'optimizer.beta1': 'Adam first-moment decay',
  'optimizer.beta2': 'Adam second-moment decay',
  'optimizer.eps': 'Adam denominator epsilon',
  'optimizer.weight_decay': 'weight decay (adamw)',
  'schedule.type': 'learning-rate schedule after warmup: cosine decay, warmup-stable-decay, or constant',
  'schedule.warmup_steps': 'linear warmup steps from 0 to the peak rate',
  'schedule.min_lr_ratio': 'final learning rate as a fraction of the peak (cosine and wsd)',
  'schedule.decay_fraction': 'wsd: fraction of all steps spent in the final decay',
  grad_clip: 'global L2 norm the gradients are clipped to; 0 disables clipping',
  'load_balance.form': 'load-balance loss over each micro-batch, the global batch, or each sequence',
  'load_balance.alpha': 'load-balance loss coefficient',
  checkpoint_every: 'save a checkpoint every N steps (and always at the end); 0: only at the end',
  keep_checkpoints: 'complete checkpoints to keep (older ones are deleted); 0 keeps all',
  init_from: 'start from these weights (moetrain checkpoint or HF folder) when the run has no checkpoint yet',
  max_epochs: 'most passes over the data; a run that needs more is refused up front; 0 or null: no cap',
  mla_kernels: 'MLA attention kernels on the GPU: auto (Hopper kernels on H100/H200, else mma.sync or generic), hopper, mma, generic',
  grouped_gemm: 'routed-expert GEMM kernels on the GPU: auto (tma_pair on H100/H200, with the wgmma weight product where it accumulates; else mma), mma, wgmma (H100/H200), tma (H100/H200: TMA-fed persistent forward, data and weight products), tma_pair (tma with the forward, data, gate-and-up data and SwiGLU products in 2-CTA clusters that share each weight tile by TMA multicast), per_expert (one cuBLASLt call per expert)',
  keep_logits: 'the head keeps each micro-batch\'s logits for backward (tokens × vocabulary × 2 bytes held from the head\'s forward to its backward, e.g. 1.56 GiB for 8192 tokens of DeepSeek-V2-Lite) instead of recomputing them: one lm_head GEMM less per micro-batch; estimate-memory shows the cost',
  recompute: 'what backward computes again instead of keeping: cheap (SwiGLU outputs, the MoE\'s gathered rows, the router\'s f32 input), copies (only the gathered rows and the f32 input, which are copies: SwiGLU outputs kept), none (keep all: faster, more memory), layers (every decoder layer recomputed in backward from its input: one more forward of the layers, the least memory; not with load_balance.form global-batch); estimate-memory shows the cost',
  'parallel.pp': 'pipeline stages (mesh pp × dp × cp × ep = ranks started by `moetrain launch`)',
  'parallel.dp': 'data-parallel replicas (with ep: dp·ep replicas read different sequences)',
  'parallel.cp': 'context-parallel ranks (the sequence is split over them)',
  'parallel.ep': 'expert-parallel ranks (each holds n_routed_experts / ep experts; innermost)',
  'parallel.collective_timeout_sec': 'seconds a collective or the rendezvous waits for the other ranks before failing',
  'parallel.schedule': 'pipeline schedule when pp > 1: 1f1b, or dualpipev (two chunks per rank in a V; needs ≥ 2·pp − 1 micro-batches per replica)',
  'parallel.hold_weights': 'keep each unit\'s gathered bf16 weights until the optimizer step: 1 all-gather per unit per step instead of 2 per micro-batch, for the whole stage\'s weights resident (estimate-memory shows the cost); nothing changes for flats sharded over one rank',
  'parallel.hold_grads': 'accumulate each unit\'s full f32 gradient over the micro-batches: 1 reduce-scatter per unit per step instead of 1 per micro-batch, for the whole stage\'s f32 gradients resident; nothing changes for flats sharded over one rank',
  'parallel.stages': 'layers per pipeline stage, e.g. 3,5 (2·pp counts for dualpipev); null: split to balance cost (printed at start)',
};

export interface TrainOptionInfo {
  /** Dotted name, e.g. "optimizer.lr". */
  name: string;
  /** Value in defaultTrainConfig(). */
  default: unknown;
  /** The allowed values of a choice field, else null. */
  choices: readonly string[] | null;
  /** What the field takes, found by asking its check: a flag (true passes), a number, or text. */
  kind: 'flag' | 'number' | 'text';
  /** One line for --help ('' when OPTION_HELP has none). */
  help: string;
}

/** Every training option in SCHEMA order, with its default and help line: the --help listing. */
export function trainOptions(): TrainOptionInfo[] {
  const defaults = defaultTrainConfig() as unknown as Record<string, unknown>;
  const out: TrainOptionInfo[] = [];
  const add = (name: string, check: Check, value: unknown): void => {
    const choices = (check as { choices?: readonly string[] }).choices ?? null;
    const kind = check(true) === null ? 'flag' : [0, 0.5, 1].some((v) => check(v) === null) ? 'number' : 'text';
    out.push({ name, default: value, choices, kind, help: OPTION_HELP[name] ?? '' });
  };
  for (const [key, rule] of Object.entries(SCHEMA)) {
    if (typeof rule === 'function') { add(key, rule, defaults[key]); continue; }
    const section = defaults[key] as Record<string, unknown>;
    for (const [sub, check] of Object.entries(rule)) add(`${key}.${sub}`, check, section[sub]);
  }
  return out;
}

/** Applies `overrides` (nested objects, dotted-path keys already split) onto base, checking every field. */
export function mergeTrainConfig(base: TrainConfig, overrides: Record<string, unknown>, source: string): TrainConfig {
  const out = structuredClone(base) as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(overrides)) {
    const rule = SCHEMA[key];
    if (!rule) {
      const near = closestName(key, Object.keys(SCHEMA));
      throw new Error(`${source}: unknown training option "${key}"${near ? ` (did you mean "${near}"?)` : ''}`);
    }
    if (typeof rule === 'function') {
      const want = rule(value);
      if (want) throw new Error(`${source}: "${key}" must be ${want}, got ${JSON.stringify(value)}`);
      out[key] = value;
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${source}: "${key}" must be an object`);
    const section = out[key] as Record<string, unknown>;
    for (const [sub, v] of Object.entries(value as Record<string, unknown>)) {
      const r = rule[sub];
      if (!r) {
        const near = closestName(sub, Object.keys(rule));
        throw new Error(`${source}: unknown training option "${key}.${sub}"${near ? ` (did you mean "${key}.${near}"?)` : ''}`);
      }
      // A list given as a flag arrives as "3,5".
      const value = r === stageList && typeof v === 'string' && /^\d+(,\d+)*$/.test(v) ? v.split(',').map(Number) : v;
      const want = r(value);
      if (want) throw new Error(`${source}: "${key}.${sub}" must be ${want}, got ${JSON.stringify(v)}`);
      section[sub] = value;
    }
  }
  const c = out as unknown as TrainConfig;
  if (c.global_batch_size % c.micro_batch_size !== 0) {
    throw new Error(`${source}: global_batch_size (${c.global_batch_size}) must be a multiple of micro_batch_size (${c.micro_batch_size})`);
  }
  if (c.recompute === 'layers' && c.load_balance.form === 'global-batch' && c.load_balance.alpha > 0) {
    throw new Error(`${source}: recompute "layers" runs each layer's forward twice, and the global-batch load-balance counts would be added twice; use --load_balance.form sequence (or micro-batch), or --recompute cheap`);
  }
  if (c.recipe === 'lean' && c.precision !== 'bf16') throw new Error(`${source}: recipe "lean" keeps bf16 weights and needs precision "bf16" (got "${c.precision}"); pass --precision bf16 or --recipe default`);
  if (c.schedule.warmup_steps > c.steps) throw new Error(`${source}: schedule.warmup_steps (${c.schedule.warmup_steps}) exceeds steps (${c.steps}); lower --schedule.warmup_steps`);
  return c;
}

export function readTrainConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) { throw new Error(`${path}: cannot read the training config (${(e as NodeJS.ErrnoException).code ?? e})`); }
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('expected a JSON object');
    return v as Record<string, unknown>;
  } catch (e) { throw new Error(`${path}: not a valid training config (${(e as Error).message})`); }
}

/** Parses `--a.b value` flags into a nested override object (numbers and booleans typed). */
export function flagsToOverrides(flags: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, raw] of Object.entries(flags)) {
    const parts = k.replace(/-/g, '_').split('.');
    let v: unknown = raw;
    if (raw === 'null') v = null;
    else if (raw === 'true' || raw === 'false') v = raw === 'true';
    else if (raw.trim() !== '' && !Number.isNaN(Number(raw))) v = Number(raw);
    let o = out;
    for (const p of parts.slice(0, -1)) o = (o[p] ??= {}) as Record<string, unknown>;
    o[parts[parts.length - 1]!] = v;
  }
  return out;
}
