// One rank of a multi-GPU layout on one device (issue 15, its one-GPU part): the rank's real
// code path — its pipeline stage(s), parameter shards over dp·cp·ep (dense) and dp·cp (experts),
// its E/ep routed experts, expert dispatch, the pipeline schedule with its sends and receives —
// with every collective a local copy of the right size (parallel/loopback_communicator.ts,
// parallel/simulated_rank.ts). Defaults: the reference system's run, full DeepSeek-V2-Lite (27
// layers, random init, random tokens) at pp2·dp2·cp1·ep2, sequence 2048, 1024 sequences per step
// (the reference log's 85,021 tokens/s × 24.666 s = 2,097,128 ≈ 1024 × 2048 tokens) in
// micro-batches of 1 (of the sizes our estimator allows, the only one within its 57.2 GiB), the
// rank of the costliest pipeline stage.
//
//   moetrain bench simulate [--model configs/deepseek-v2-lite.json | tiny] [--layers N] [--layout pp2,dp2,cp1,ep2]
//                           [--parallel.pp N --parallel.dp N --parallel.cp N --parallel.ep N] [--rank R]
//                           [--schedule 1f1b|dualpipev] [--seq_len 2048] [--batch 1024] [--micro 1] [--steps 2]
//                           [--device auto|cpu|cuda] [--bus_gbps 360] [--latency_us 10]
//                           [--parallel.hold_weights] [--parallel.hold_grads]
//
// Prints each step's log line, then the step split into compute and the loopback copies (with
// what they stand in for, per collective kind), the schedule's bubble, the measured peak memory
// beside the estimator's, and a predicted throughput of the whole layout on NVLink-connected
// H100s. No run directory, no checkpoints.
import os from 'node:os';
import path from 'node:path';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import type { CudaEvent } from '../src/backend/cuda/runtime/context.js';
import { selectBackend, type DeviceChoice } from '../src/backend/select.js';
import { fromHost } from '../src/ops/create.js';
import { loadDeepseekV2Config, type DeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { parameterCount, flopsPerToken } from '../src/models/deepseek_v2_weights.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { normalValues } from '../src/nn/init.js';
import { packageRoot } from '../src/package_root.js';
import { COLLECTIVE_KINDS, type CollectiveKind, type CollectiveRecord, type CopyTimer } from '../src/parallel/loopback_communicator.js';
import { estimateMemory } from '../src/parallel/memory_estimate.js';
import { meshName, type MeshSizes } from '../src/parallel/mesh.js';
import { bubbleFraction, stagesOfRank } from '../src/parallel/schedule.js';
import type { ScheduleKind } from '../src/parallel/schedule_sim.js';
import { heaviestRank, simulatedRank } from '../src/parallel/simulated_rank.js';
import { OVERLAPPED, predictStep } from '../src/parallel/step_prediction.js';
import { keep } from '../src/tensor/scope.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { formatLogLine, type StepMetrics } from '../src/train/log_line.js';
import { formatShardLines } from '../src/train/shard_line.js';
import { formatStageLines } from '../src/train/stage_line.js';
import { Training, type BatchSource } from '../src/train/trainer.js';
import { Rng } from '../src/nn/rng.js';

/** The reference system on 8 H100s (TARGETS.md) and our target there. */
export const REFERENCE = { tokensPerSec: 85_021, peakGiB: 57.2, targetTokensPerSec: 110_000, targetPeakGiB: 57 };

/**
 * The link figures assumed when no multi-GPU machine measured them: H100 SXM NVLink 4 is 900 GB/s
 * per GPU both ways together (450 GB/s each way); NCCL's all-reduce bus bandwidth on 8 H100s
 * through NVSwitch is typically 360–400 GB/s (NVLS off). 360 is the low end, taken for every kind.
 */
export const DEFAULT_BUS_GBPS = 360;
/** Per-call cost of a collective (assumed: NCCL's small-message latency on NVLink is ~10 µs). */
export const DEFAULT_LATENCY_US = 10;

/** "pp2,dp2,ep2", "pp2·dp2·cp1·ep2": sizes named in the text, 1 for the others. */
export function parseLayout(text: string): MeshSizes {
  const sizes: MeshSizes = { pp: 1, dp: 1, cp: 1, ep: 1 };
  const words = text.split(/[\s,·x*]+/).filter((w) => w !== '');
  const seen = new Set<string>();
  for (const w of words) {
    const m = /^(pp|dp|cp|ep)(\d+)$/.exec(w);
    if (!m || seen.has(m[1]!) || Number(m[2]) < 1) {
      throw new Error(`--layout "${text}": "${w}" is not one of pp<N>, dp<N>, cp<N>, ep<N> (each at most once, N ≥ 1); write e.g. --layout pp2,dp2,cp1,ep2`);
    }
    seen.add(m[1]!);
    sizes[m[1] as keyof MeshSizes] = Number(m[2]);
  }
  return sizes;
}

/** Copies' times from CUDA events, read in batches (each read waits for the stream to reach the batch's last event). */
class EventTimer implements CopyTimer {
  private readonly free: [CudaEvent, CudaEvent][] = [];
  private pending: { pair: [CudaEvent, CudaEvent]; done: (ms: number) => void }[] = [];

  constructor(private readonly backend: CudaBackend) {}

  time(fn: () => void, done: (ms: number) => void): void {
    const ctx = this.backend.ctx;
    const pair = this.free.pop() ?? [ctx.createEvent(), ctx.createEvent()];
    pair[0].record();
    fn();
    pair[1].record();
    this.pending.push({ pair, done });
    if (this.pending.length >= 8192) this.flush();
  }

  flush(): void {
    for (const { pair, done } of this.pending) {
      done(pair[1].elapsedSince(pair[0]));
      this.free.push(pair);
    }
    this.pending = [];
  }

  dispose(): void {
    this.flush();
    for (const [a, b] of this.free) { a.destroy(); b.destroy(); }
  }
}

/** CPU copies run when called: host time is their time. */
const hostTimer: CopyTimer = {
  time(fn, done) {
    const t = performance.now();
    fn();
    done(performance.now() - t);
  },
};

/**
 * Random initial weights fast enough for a 15-layer stage (~2B held values: N(0, σ) per value on
 * the host would take minutes): one pool of N(0, 1) values on the device, copied cyclically into
 * each master shard from an offset of its own and scaled to the parameter's σ (norms: 1; o_proj and
 * down projections: σ/√(2·layers), as the model's initialize()). Values repeat with the pool's
 * period; a benchmark needs only their scale and that routing spreads over the experts.
 */
function fastRandomInit(training: Training, c: DeepseekV2Config, seed: number): void {
  const backend = training.backend;
  const POOL = (1 << 22) + 9973;
  const pool = keep(fromHost(backend, normalValues(POOL, 1, seed, 0), [POOL], 'f32'));
  const sigma = c.initializer_range, residual = sigma / Math.sqrt(2 * c.num_hidden_layers);
  let salt = 1;
  for (const e of training.checkpointEntries()) {
    if (e.name.startsWith('exp_avg')) continue;
    const t = e.tensor, n = t.size;
    if (/norm\.weight$/.test(e.name)) { backend.fill(t, 1); continue; }
    let from = (salt++ * 2_654_435_761) % POOL;
    for (let done = 0; done < n;) {
      const k = Math.min(n - done, POOL - from);
      const dst = t.view([k], [1], t.offset + done), src = pool.view([k], [1], pool.offset + from);
      backend.copy(dst, src);
      dst.dispose(); src.dispose();
      done += k; from = 0;
    }
    const std = /(o_proj|down_proj)\.weight$/.test(e.name) ? residual : sigma;
    const s = fromHost(backend, [std], [1], 'f32');
    const sView = s.view([n], [0], s.offset);
    backend.binary('mul', t, t, sView);
    sView.dispose(); s.dispose();
  }
  pool.dispose();
  training.checkpointLoaded(0);
}

const gib = (b: number): string => (b >= 2 ** 28 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(2)} MiB`);
const gb = (b: number): string => (b >= 1e9 || b === 0 ? `${(b / 1e9).toFixed(2)} GB` : `${(b / 1e6).toFixed(2)} MB`);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const thousands = (x: number): string => Math.round(x).toLocaleString('en-US');

export async function runSimulateBench(flags: Record<string, string>): Promise<void> {
  const tiny = flags['model'] === 'tiny';
  const num = (k: string, d: number): number => {
    if (flags[k] === undefined) return d;
    const v = Number(flags[k]);
    if (!(Number.isInteger(v) && v >= 0)) throw new Error(`--${k} must be a non-negative integer, got "${flags[k]}"`);
    return v;
  };
  const model = tiny ? tinyConfig() : loadDeepseekV2Config(flags['model'] ?? path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'));
  // The tiny model has 2 layers; a pipeline of two stages (four chunks under dualpipev) needs more.
  const layers = num('layers', tiny ? 4 : model.num_hidden_layers);
  const most = tiny ? 16 : model.num_hidden_layers;
  if (layers < 1 || layers > most) throw new Error(`--layers must be in 1..${most}, got ${layers}`);
  model.num_hidden_layers = layers;
  const sizes = parseLayout(flags['layout'] ?? 'pp2,dp2,cp1,ep2');
  for (const d of ['pp', 'dp', 'cp', 'ep'] as const) if (flags[`parallel.${d}`] !== undefined) sizes[d] = num(`parallel.${d}`, 1);
  const kind = (flags['schedule'] ?? '1f1b') as ScheduleKind;
  if (kind !== '1f1b' && kind !== 'dualpipev') throw new Error(`--schedule must be 1f1b or dualpipev, got "${flags['schedule']}"`);
  const S = num('seq_len', tiny ? 32 : 2048), G = num('batch', tiny ? 16 : 1024), micro = num('micro', 1), steps = num('steps', 2);
  const busGbps = Number(flags['bus_gbps'] ?? DEFAULT_BUS_GBPS), latencyUs = Number(flags['latency_us'] ?? DEFAULT_LATENCY_US);
  if (!(busGbps > 0)) throw new Error(`--bus_gbps must be a positive number of GB/s, got "${flags['bus_gbps']}"`);
  if (!(latencyUs >= 0)) throw new Error(`--latency_us must be a non-negative number of microseconds, got "${flags['latency_us']}"`);
  if (steps < 1 || micro < 1 || G % micro !== 0) throw new Error(`--steps and --micro must be ≥ 1 and --batch (${G}) a multiple of --micro (${micro})`);
  const workload = { numLayers: layers, nRoutedExperts: model.n_routed_experts, globalBatch: G, microBatch: micro, seqLen: S, schedule: kind };
  const rank = flags['rank'] !== undefined ? num('rank', 0) : heaviestRank(model, sizes, kind, S);
  const replicas = sizes.dp * sizes.ep, m = G / micro / replicas;
  // The train options of the same names (fsdp.ts): fewer gathers and reduce-scatters per step, more memory.
  const holdWeights = flags['parallel.hold_weights'] === 'true', holdGrads = flags['parallel.hold_grads'] === 'true';

  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    model: tiny ? 'tiny' : `deepseek-v2-lite (${layers} layers)`, data: 'random', device: flags['device'] ?? 'auto', steps, seq_len: S,
    micro_batch_size: micro, global_batch_size: G, checkpoint_every: 0,
    // The update's cost does not depend on the rate; a small one keeps the stand-in values near
    // their initial scale over the steps (the reference's log shows 1e-6 too).
    optimizer: { lr: 1e-6 }, schedule: { type: 'constant', warmup_steps: 0 },
    parallel: { pp: sizes.pp, dp: sizes.dp, cp: sizes.cp, ep: sizes.ep, schedule: kind, hold_weights: holdWeights, hold_grads: holdGrads },
  }, 'bench simulate');
  const backend = await selectBackend(cfg.device as DeviceChoice, { mlaKernels: cfg.mla_kernels });

  // Before any allocation: the estimator's peak for this rank's stage (it models the 1F1B split).
  const estimate = estimateMemory({ model, mesh: sizes, seqLen: S, microBatchSize: micro, microBatches: m, precision: cfg.precision, device: backend.kind, holdWeights, holdGrads });
  const pipeRank = Math.floor(rank / (sizes.dp * sizes.cp * sizes.ep));
  const estRow = kind === '1f1b' ? estimate[pipeRank]! : estimate.reduce((a, b) => (b.peakBytes > a.peakBytes ? b : a));
  const have = backend instanceof CudaBackend ? backend.ctx.totalMemoryBytes : os.totalmem();
  if (estRow.peakBytes > have) {
    throw new Error(`bench simulate: rank ${rank} needs about ${gib(estRow.peakBytes)} (moetrain estimate-memory, stage ${estRow.stage}) but ` +
      `${backend.kind === 'cuda' ? 'this GPU has' : 'this machine has (--device cpu)'} ${gib(have)}; use a smaller --micro or --seq_len, fewer --layers, or a larger --layout pp`);
  }

  const timer = backend instanceof CudaBackend ? new EventTimer(backend) : null;
  const overlap = flags['overlap'] === 'true' || flags['overlap'] === '1';
  const dist = await simulatedRank(sizes, rank, workload, timer ?? hostTimer, overlap);
  const say = (line: string): void => console.log(line);
  say(`bench simulate: ${backend.description}; rank ${rank} of ${meshName(sizes)} (pipeline rank ${dist.mesh.coords.pp}, ` +
    `virtual stage${kind === 'dualpipev' ? 's' : ''} ${stagesOfRank(kind, sizes.pp, dist.mesh.coords.pp).join(' and ')}, ${kind}${flags['rank'] === undefined ? ', the costliest' : ''}); ` +
    `${layers} layers, ${(parameterCount(model) / 1e9).toFixed(2)}B parameters in the model; ${G}×${S} tokens per step, micro-batch ${micro}, ` +
    `${m} micro-batches per replica${holdWeights ? '; gathered weights held over the step' : ''}${holdGrads ? '; full gradients held over the step' : ''}; every collective is a local copy (loopback; all-to-all assumes symmetric routing: every peer sends this rank what it sends itself)`);
  const training = new Training(cfg, model, backend, dist);
  const bytes = training.shardBytes()!;
  for (const line of formatShardLines(dist.mesh, dist.groups, bytes, cfg.precision)) say(line);
  if (sizes.pp > 1) for (const line of formatStageLines(model, kind, sizes.pp, S, m, null)) say(line);
  fastRandomInit(training, model, cfg.seed);

  const rng = new Rng(cfg.seed);
  const data: BatchSource = {
    vocabSize: model.vocab_size,
    batch: () => {
      const inputs = new Int32Array(micro * S), labels = new Int32Array(micro * S);
      for (let i = 0; i < inputs.length; i++) { inputs[i] = rng.below(model.vocab_size); labels[i] = rng.below(model.vocab_size); }
      return { inputs, labels };
    },
  };
  const holdsHead = stagesOfRank(kind, sizes.pp, dist.mesh.coords.pp).includes(kind === '1f1b' ? sizes.pp - 1 : 2 * sizes.pp - 1);
  say(`bench simulate: log lines are this rank's: ${holdsHead ? 'its stage holds the head: cross-entropy is its replica\'s mean' : 'cross-entropy is computed on the rank of the last stage, so it reads 0 here'}; ` +
    'load-balance-loss is of its own layers; the values come from stand-in inputs and weights (loopback copies), so only their finiteness means something; gradient-norm is of its own shards; tokens-per-second is the global batch over this rank\'s step time (no communication, no bubble)');
  const metrics: StepMetrics[] = [];
  const comms: Record<CollectiveKind, CollectiveRecord>[] = [];
  for (let step = 0; step < steps; step++) {
    dist.comm.stats.reset();
    const record = training.step(step, data);
    timer?.flush();
    delete record.mfu; // the model's FLOPs over one rank's time would be no one's utilisation
    // The step sums every rank's share of the losses over the world; here there is one rank: its
    // replica's sums over the global micro-batch count, so × replicas gives its replica's mean.
    record.crossEntropy *= replicas;
    record.loadBalance *= replicas;
    say(formatLogLine(record));
    metrics.push(record);
    comms.push(dist.comm.stats.byKind());
    if (!Number.isFinite(record.gradientNorm) || !Number.isFinite(record.crossEntropy)) throw new Error(`bench simulate: step ${step + 1} gave a non-finite loss or gradient norm`);
  }
  const byGroup = [...dist.comm.stats.records.values()];
  training.dispose();
  timer?.dispose();
  await dist.close();

  // Timed steps: all but the first (compilation, first allocations) when there are several.
  const timed = metrics.length > 1 ? metrics.slice(1) : metrics;
  const timedComm = comms.length > 1 ? comms.slice(1) : comms;
  const stepSec = median(timed.map((r) => r.stepTimeSec));
  // With --overlap FSDP's copies ran beside compute: only the other copies are in the step's time.
  const copyMs = median(timedComm.map((c) => COLLECTIVE_KINDS.reduce((s, k) => s + (overlap && OVERLAPPED.includes(k) ? 0 : c[k].copyMs), 0)));
  const computeSec = Math.max(0, stepSec - copyMs / 1000);
  const last = timedComm[timedComm.length - 1]!;
  say(`bench simulate: step ${stepSec.toFixed(3)} s (median of ${timed.length}) = compute ${computeSec.toFixed(3)} s + loopback copies ${(copyMs / 1000).toFixed(3)} s${overlap ? ' (not counting the all-gathers\' and reduce-scatters\', which overlapped)' : ''}; ` +
    `the copies stand in for, per step of this rank:`);
  for (const k of COLLECTIVE_KINDS) {
    const c = last[k];
    say(`  ${k.padEnd(15)} ${String(c.calls).padStart(7)} calls  payload ${gb(c.payloadBytes).padStart(11)}  on the wire ${gb(c.busBytes).padStart(11)}  copies ${c.copyMs.toFixed(1).padStart(9)} ms`);
  }
  say(`  by group: ${byGroup.filter((g) => g.record.calls > 0).map((g) => `${g.kind} ${g.group} ${gb(g.record.busBytes)}`).join('; ')} (the last step)`);
  const bubble = sizes.pp > 1 ? bubbleFraction(kind, sizes.pp, m) : 0;
  say(`bench simulate: pipeline bubble of ${kind} at pp ${sizes.pp}, ${m} micro-batches: ${(100 * bubble).toFixed(2)}% of rank-time idle ` +
    `(parallel/schedule_sim.ts at F = 1, B = 2; one rank alone never waits, so the step above has none)`);
  const peak = Math.max(...metrics.map((r) => r.peakMemoryBytes));
  say(`bench simulate: peak memory ${gib(peak)} measured; the estimator (moetrain estimate-memory) says ${gib(estRow.peakBytes)} for stage ${estRow.stage} ` +
    `(persistent ${gib(estRow.persistentBytes)}, activations ${gib(estRow.parts.activations)})${kind === 'dualpipev' ? ' — its 1F1B split, the largest stage: it does not model dualpipev' : ''}; ` +
    `largest stage ${gib(Math.max(...estimate.map((r) => r.peakBytes)))}; measured/estimate ${(peak / estRow.peakBytes).toFixed(3)}`);

  const p = predictStep({
    computeSec, microBatches: m, bubble, tokensPerStep: G * S,
    comm: last, link: { busBytesPerSec: busGbps * 1e9, latencySec: latencyUs * 1e-6 },
  });
  const world = sizes.pp * sizes.dp * sizes.cp * sizes.ep;
  say(`bench simulate: predicted ${world}-GPU step, assuming bus bandwidth ${busGbps} GB/s per GPU for every collective (published NVIDIA figure, not measured here: ` +
    `H100 SXM NVLink 4 is 900 GB/s per GPU both ways, 450 GB/s each way; NCCL all-reduce bus bandwidth on 8×H100 is typically 360-400 GB/s) ` +
    `and ${latencyUs} µs per call (assumed, not measured); FSDP all-gathers and reduce-scatters overlap compute (communication stream), every other collective exposed:`);
  say(`  compute ${(p.computePerMicroSec * 1000).toFixed(1)} ms per micro-batch × ${p.slots.toFixed(1)} slots (incl. bubble) = ${p.computeWithBubbleSec.toFixed(3)} s`);
  say(`  communication ${p.exposedCommSec.toFixed(3)} s exposed, of ${COLLECTIVE_KINDS.map((k) => `${k} ${p.commSec[k].toFixed(3)}`).join(', ')} (FSDP's beyond compute count)`);
  say(`  step ${p.stepSec.toFixed(3)} s → ${thousands(p.tokensPerSec)} tokens/s, ${(p.tokensPerSec * flopsPerToken(model, S) / world / 989e12 * 100).toFixed(1)}% MFU per GPU; ` +
    `peak ${gib(peak)} on this rank (estimator: ${gib(Math.max(...estimate.map((r) => r.peakBytes)))} on the fullest stage)`);
  say(`  were all communication hidden behind compute (FSDP's is): step ${p.hiddenStepSec.toFixed(3)} s → ${thousands(p.hiddenTokensPerSec)} tokens/s`);
  say(`  reference (8 H100s): ${thousands(REFERENCE.tokensPerSec)} tokens/s at ${REFERENCE.peakGiB} GiB; target ≥ ${thousands(REFERENCE.targetTokensPerSec)} tokens/s at ≤ ${REFERENCE.targetPeakGiB} GiB ` +
    `(predicted/reference ${(p.tokensPerSec / REFERENCE.tokensPerSec).toFixed(2)}×)`);
}
