// The training loop. Training.step runs one optimizer step: micro-batches with gradient
// accumulation, the global gradient norm (before clipping) and clipping folded into the
// optimizer, the schedule, timing with the device synchronised. train() runs a whole run around
// it: resume or initialise, one log line and one JSONL record per step, checkpoints, and a clean
// stop with a checkpoint on SIGINT/SIGTERM (signals.ts).
//
// The recipe (optim/recipe.ts) decides the parameters and the optimizer: f32 masters and Adam
// ("default"), or bf16 weights without masters and LeanAdam ("lean", a single process only), whose
// gradients are bf16 and f32 side by side, so the norm sums one list per dtype.
//
// Whole parameters' gradients are zeroed lazily (autograd/lazy_grad_zero.ts): the optimizer
// leaves them as they are and the trainer marks them logically zero, so the next step's first
// write of each one overwrites it (beta = 0) instead of adding to zeros written for it; before
// the norm, a gradient no op wrote this step (an unused parameter) is zero-filled. Sharded
// parameters keep the optimizer's zeroing (parallel/fsdp.ts owns their buffers).
//
// A launched run (parallel/init_distributed.ts) holds its parameters fully sharded
// (parallel/fsdp.ts) over dp·cp·ep: its R = dp·ep replicas each read G/R sequences of the global
// batch G, gradients are reduce-scattered (summed, so 1/R joins clipping in the optimizer's
// gradient scale), the gradient norm is the square root of the world's summed Σg² over shards
// (each element held by one rank), and rank 0 alone logs: losses summed over the world (every
// rank's share of them) over the micro-batches, tokens per second over the slowest rank's step
// time, the largest peak memory. With parallel.hold_weights / hold_grads the step ends its
// passes by reducing the held full gradients and releasing the held gathered weights (fsdp.ts).
//
// With pp > 1 each rank holds its pipeline stage's model part(s) (parallel/pipeline.ts; two
// under DualPipeV), each sharded on its own, and the pipeline executor runs the replica's
// micro-batches through the schedule. With cp > 1 each rank of a cp group reads the same
// micro-batches and keeps its zigzag share of every sequence (parallel/zigzag.ts); attention
// runs as a ring over the group (parallel/context_parallel.ts) and the cross-entropy divides by
// the whole micro-batch's label count, so the shares add up over cp.
import fs from 'node:fs';
import path from 'node:path';
import type { Backend } from '../backend/backend.js';
import { GradSquareSum } from './grad_square_sum.js';
import { setGradSquaresRecording } from '../autograd/grad_squares.js';
import { backward } from '../autograd/backward.js';
import { noGrad } from '../autograd/tape.js';
import { markGradZero, settleGrad } from '../autograd/lazy_grad_zero.js';
import { fromHost, toHostF32 } from '../ops/create.js';
import { add, scale } from '../ops/elementwise.js';
import { keep, tidy } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { DeepseekV2 } from '../models/deepseek_v2.js';
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { namedParameters } from '../models/deepseek_v2_names.js';
import { buildWeights, flopsPerToken, wholeModel, type ParamSpec } from '../models/deepseek_v2_weights.js';
import { ParamArena, wholeParamTensors, type ArenaTensor } from '../nn/param_arena.js';
import { Adam } from '../optim/adam.js';
import { LeanAdam } from '../optim/lean_adam.js';
import { leanGradDtype, leanKeepsMaster } from '../optim/recipe.js';
import { Param } from '../nn/param.js';
import { learningRate } from '../optim/schedule.js';
import type { Distributed } from '../parallel/init_distributed.js';
import { FullyShardedModel, type ShardEntry } from '../parallel/fsdp.js';
import { DataGroupExpertCounts } from '../parallel/expert_counts.js';
import { ExpertDispatch, ownedExperts } from '../parallel/expert_dispatch.js';
import { allReduceValues } from '../parallel/host_values.js';
import { ContextParallelAttention } from '../parallel/context_parallel.js';
import { pipelineParts, runPipelineStep, type MicroBatchTokens } from '../parallel/pipeline.js';
import { pipelineSchedule } from '../parallel/schedule.js';
import type { Schedule } from '../parallel/schedule_sim.js';
import { zigzagSplit } from '../parallel/zigzag.js';
import type { ShardBytes } from '../parallel/fsdp.js';
import { formatStageLines } from './stage_line.js';
import { formatContextLine } from './context_line.js';
import { formatShardLines } from './shard_line.js';
import type { TrainConfig } from './config.js';
import { formatLogLine, type StepMetrics } from './log_line.js';
import { writeCheckpoint } from './checkpoint.js';
import { agreeMax, SINGLE_PROCESS, type CheckpointGroup } from './checkpoint_group.js';
import { latestIntactCheckpoint, resumeFromLatest } from './checkpoint_resume.js';
import { savedSchedule, scheduleChangeLine } from './schedule_on_resume.js';
import { turnEventLoop, type StopListener, type StopSignal } from './signals.js';

/** Where batches come from: a pure function of (step, micro-batch), so resuming is exact. */
export interface BatchSource {
  /** inputs and labels i32, [micro_batch_size · seq_len] each; labels are inputs shifted by one. */
  batch(step: number, micro: number): { inputs: Int32Array; labels: Int32Array };
  readonly vocabSize: number;
}

export interface TrainRun {
  config: TrainConfig;
  model: DeepseekV2Config;
  backend: Backend;
  data: BatchSource;
  /** Receives each formatted log line (stdout in the CLI). */
  log: (line: string) => void;
  /** Loads initial weights (init_from) into a fresh model; called only when no checkpoint exists. */
  initWeights?: (model: DeepseekV2) => void;
  /** Identifies the data order; saved in checkpoints and checked on resume. */
  dataFingerprint?: string;
  /** The launched run this rank belongs to (sharded parameters; rank 0 writes the files); absent: a single process. */
  dist?: Distributed;
  /** The model's HF config.json text, stored in each checkpoint. */
  modelConfigJson?: string;
  /** The ranks that checkpoint and stop together when `dist` is absent (tests); default this process alone. */
  group?: CheckpointGroup;
  /** SIGINT/SIGTERM (signals.ts): the run stops at the next step boundary with a checkpoint. */
  stop?: StopListener;
  /** How to start over when no checkpoint is intact, for that error. */
  startOver?: string;
}

export interface TrainResult {
  metrics: StepMetrics[];
  /** The last step completed. */
  finalStep: number;
  resumedFrom: number | null;
  /** The signal that stopped the run early, or null. */
  stoppedBy: StopSignal | null;
  /** The newest checkpoint the run has (written or resumed from), or null. */
  checkpoint: string | null;
}

/** A step whose gradient norm is NaN or infinite; train() adds which checkpoint is intact. */
export class NonFiniteGradientError extends Error {}

/** The parts of a step a caller may time: forward and backward of each micro-batch, then norm + optimizer. */
export type StepPhase = 'forward' | 'backward' | 'optimizer';

export interface StepHooks {
  /** Runs one phase of the step (fn) and returns its result; a benchmark synchronises and times it here. */
  phase?: <T>(name: StepPhase, fn: () => T) => T;
}

const GPU_PEAK_FLOPS = 989e12;

/** One run's model, optimizer and step buffers; step() runs one optimizer step. */
export class Training {
  readonly model: DeepseekV2;
  /** Adam over f32 masters (recipe "default") or over bf16 weights with stochastic rounding ("lean"). */
  readonly optimizer: Adam | LeanAdam;
  /** The sharded parameters of a launched run (its first part under pp > 1); null in a single process (whole parameters). */
  readonly sharded: FullyShardedModel | null;
  /** Every sharded model part this rank holds with its virtual pipeline stage (one unless pp > 1 with DualPipeV; empty in a single process). */
  readonly parts: readonly { stage: number; sharded: FullyShardedModel }[];
  /** The schedule of one step when pp > 1, else null. */
  private readonly pipeline: Schedule | null;
  private readonly sumSq: Tensor;
  /** The gradient norm's Σ g² over every parameter's gradient (or this rank's gradient shards). */
  private readonly gradSquares: GradSquareSum;
  /** Whole parameters' gradients, zeroed lazily (see the file header); empty when sharded. */
  private readonly lazyGrads: readonly Tensor[];
  private readonly ceSum: Tensor;
  private readonly lbSum: Tensor;
  private readonly flopsPerStep: number;

  /** `dist`: the launched run this rank belongs to (parameters sharded over it); null: a single process. */
  constructor(readonly config: TrainConfig, modelConfig: DeepseekV2Config, readonly backend: Backend, readonly dist: Distributed | null = null) {
    if (dist && config.recipe !== 'default') {
      throw new Error(`recipe "${config.recipe}" runs in a single process only: a launched run's sharded layout (parallel/fsdp.ts) keeps f32 master shards; train without \`moetrain launch\`, or pass --recipe default`);
    }
    if (dist) {
      const { mesh, groups } = dist;
      const experts = ownedExperts(mesh.coords.ep, mesh.sizes.ep, modelConfig.n_routed_experts);
      const { pp } = mesh.sizes, kind = config.parallel.schedule;
      const parts = pp > 1
        ? pipelineParts(modelConfig, kind, pp, mesh.coords.pp, config.seq_len, experts, config.parallel.stages ?? undefined)
        : [{ stage: 0, part: { ...wholeModel(modelConfig), experts } }];
      this.parts = parts.map(({ stage, part }) => {
        const sharded = new FullyShardedModel(modelConfig, backend, config.precision, part, { dense: groups.denseShard, expert: groups.expertShard },
          { weights: config.parallel.hold_weights, grads: config.parallel.hold_grads });
        const m = sharded.model;
        if (groups.data.size > 1) m.expertCounts = new DataGroupExpertCounts(groups.data);
        // Each ep rank holds E/ep experts and its own tokens: tokens travel to their experts' ranks.
        if (groups.ep.size > 1) m.expertDispatch = new ExpertDispatch(groups.ep, modelConfig.n_routed_experts);
        if (groups.cp.size > 1) m.attentionHook = new ContextParallelAttention(groups.cp);
        return { stage, sharded };
      });
      this.sharded = this.parts[0]!.sharded;
      this.model = this.sharded.model;
      this.optimizer = new Adam(this.parts.flatMap((p) => p.sharded.adamSlots()), config.optimizer);
      const micro = config.global_batch_size / config.micro_batch_size;
      this.pipeline = pp > 1 ? pipelineSchedule(kind, pp, micro / groups.data.size) : null;
    } else {
      this.sharded = null;
      this.parts = [];
      this.pipeline = null;
      if (config.recipe === 'lean') {
        // bf16 weights without masters, except where leanKeepsMaster says; gradients bf16 where one
        // pass writes them once per step (leanGradDtype). Carved from one arena (nn/param_arena.ts), as the
        // default recipe's parameters are.
        const micro = config.global_batch_size / config.micro_batch_size;
        const specs: ParamSpec[] = [];
        buildWeights(modelConfig, wholeModel(modelConfig), (spec) => { specs.push(spec); return spec; });
        const arena = new ParamArena(backend, specs.flatMap((s): ArenaTensor[] => (leanKeepsMaster(s.shape, s.dtype)
          ? wholeParamTensors([{ shape: s.shape, dtype: s.dtype === 'f32' ? 'f32' : 'bf16' }])
          : [{ shape: s.shape, dtype: 'bf16' }, { shape: s.shape, dtype: leanGradDtype(s, micro) }])));
        this.model = new DeepseekV2(modelConfig, backend, config.precision, wholeModel(modelConfig), (spec, dtype) =>
          (leanKeepsMaster(spec.shape, dtype) ? new Param(spec.shape, backend, dtype, { arena })
            : new Param(spec.shape, backend, dtype, { arena, lean: { gradDtype: leanGradDtype(spec, micro) } })));
        arena.close();
        this.optimizer = new LeanAdam(this.model.params, config.optimizer, backend, config.seed);
      } else {
        this.model = new DeepseekV2(modelConfig, backend, config.precision);
        this.optimizer = new Adam(this.model.params, config.optimizer, backend);
      }
    }
    for (const m of this.models) { m.keepLogits = config.keep_logits; m.recompute = config.recompute; }
    this.flopsPerStep = flopsPerToken(modelConfig, config.seq_len) * config.global_batch_size * config.seq_len;
    this.sumSq = keep(emptyTensor(backend, [1], 'f32'));
    const grads = this.sharded ? this.parts.flatMap((p) => p.sharded.gradShards()) : this.model.params.map((p) => p.grad);
    this.gradSquares = new GradSquareSum(backend, grads);
    this.lazyGrads = this.sharded ? [] : grads;
    this.ceSum = keep(emptyTensor(backend, [1], 'f32'));
    this.lbSum = keep(emptyTensor(backend, [1], 'f32'));
  }

  /** The model (parts) this rank holds. */
  get models(): DeepseekV2[] {
    return this.sharded ? this.parts.map((p) => p.sharded.model) : [this.model];
  }

  /** What this rank keeps between steps, over its parts (null in a single process). */
  shardBytes(): ShardBytes | null {
    if (!this.sharded) return null;
    const out: ShardBytes = { heldElements: 0, parameterElements: 0, weights: 0, gradients: 0, optimizer: 0, largestUnitTransient: 0, heldOverStep: 0 };
    for (const p of this.parts) {
      const b = p.sharded.bytes();
      out.heldElements += b.heldElements; out.parameterElements += b.parameterElements;
      out.weights += b.weights; out.gradients += b.gradients; out.optimizer += b.optimizer; out.heldOverStep += b.heldOverStep;
      out.largestUnitTransient = Math.max(out.largestUnitTransient, b.largestUnitTransient);
    }
    return out;
  }

  /**
   * Micro-batch `mb` of step `step` as this rank reads it: the whole micro-batch, or under cp > 1
   * its zigzag share; labelCount is the whole micro-batch's.
   */
  private tokens(data: BatchSource, step: number, mb: number): MicroBatchTokens & { labelCount: number } {
    const { inputs, labels } = data.batch(step, mb);
    let labelCount = 0;
    for (let i = 0; i < labels.length; i++) if (labels[i]! >= 0) labelCount++;
    const cp = this.dist?.groups.cp;
    if (!cp || cp.size === 1) return { inputs, labels, labelCount };
    const B = this.config.micro_batch_size, S = this.config.seq_len;
    return { inputs: zigzagSplit(inputs, B, S, cp.size, cp.rank), labels: zigzagSplit(labels, B, S, cp.size, cp.rank), labelCount };
  }

  /** Replicas reading different sequences (dp·ep), and this rank's index among them. */
  get replicas(): { count: number; index: number } {
    const data = this.dist?.groups.data;
    return { count: data?.size ?? 1, index: data?.rank ?? 0 };
  }

  /** Gradient bytes the last step's norm read (gradients whose writers left their squares are not read). */
  get gradNormReadBytes(): number { return this.gradSquares.lastReadBytes; }

  /** Optimizer step `step` (0-based): its micro-batches from data, the update, and its metrics. */
  step(step: number, data: BatchSource, hooks: StepHooks = {}): StepMetrics {
    const { config: cfg, backend, model, ceSum, lbSum, sumSq, sharded, dist } = this;
    const phase = hooks.phase ?? (<T>(_: StepPhase, fn: () => T): T => fn());
    const micro = cfg.global_batch_size / cfg.micro_batch_size;
    // Replica d reads micro-batches [d·micro/R, (d+1)·micro/R) of the global batch.
    const R = this.replicas.count, local = micro / R, first = this.replicas.index * local;
    // Under cp each rank holds S/cp tokens of every sequence.
    const B = cfg.micro_batch_size, S = cfg.seq_len / (dist?.groups.cp.size ?? 1);
    backend.synchronize();
    backend.resetPeak();
    const t0 = performance.now();
    for (const m of this.models) m.beginStep();
    // Whole gradients: their writers may leave their Σ g² for the norm (autograd/grad_squares.ts).
    setGradSquaresRecording(this.lazyGrads.length > 0);
    backend.fill(ceSum, 0);
    backend.fill(lbSum, 0);
    let pipelined: { ce: number; lb: number } | null = null;
    // Held gathered weights (parallel.hold_weights) go before the optimizer changes the shards,
    // also when a pass throws; held full gradients (hold_grads) are reduced once, after the last backward.
    try {
      if (this.pipeline && dist) {
        // The executor runs forwards and backwards interleaved: the step's passes are one 'forward' phase.
        const partOf = new Map(this.parts.map((p) => [p.stage, p.sharded]));
        const r = phase('forward', () => runPipelineStep({
          schedule: this.pipeline!, comm: dist.groups.pp, chunks: this.parts.map((p) => ({ stage: p.stage, model: p.sharded.model })),
          batch: (mb) => this.tokens(data, step, first + mb), microBatchSize: B, seqLen: S, loadBalance: cfg.load_balance,
          afterBackward: (stage) => partOf.get(stage)!.finishBackward(),
        }));
        pipelined = { ce: r.crossEntropySum ?? 0, lb: r.loadBalanceSum };
      }
      for (let m = 0; m < (pipelined ? 0 : local); m++) {
        const { inputs, labels, labelCount } = this.tokens(data, step, first + m);
        tidy(() => {
          const loss = phase('forward', () => {
            const ids = fromHost(backend, inputs, [B, S], 'i32');
            const lab = fromHost(backend, labels, [B, S], 'i32');
            const out = model.forward(ids, lab, labelCount, cfg.load_balance);
            // Each micro-batch contributes 1/local of this replica's mean losses.
            const total = scale(add(out.crossEntropy, out.loadBalance), 1 / local);
            backend.binary('add', ceSum, ceSum, out.crossEntropy);
            backend.binary('add', lbSum, lbSum, out.loadBalance);
            return total;
          });
          phase('backward', () => {
            backward(loss);
            sharded?.finishBackward();
          });
        });
      }
      phase(pipelined ? 'forward' : 'backward', () => { for (const p of this.parts) p.sharded.reduceHeldGrads(); });
    } finally {
      for (const p of this.parts) p.sharded.releaseHeld();
    }
    const { gradNorm, lr } = phase('optimizer', () => {
      // Global L2 norm of the gradients before clipping; clipping is a scale given to the optimizer.
      // Sharded gradients are sums over the R replicas: the mean is 1/R of them. A whole
      // gradient still marked logically zero (no op wrote it this step) is zero-filled first.
      for (const g of this.lazyGrads) settleGrad(g);
      this.gradSquares.sum(sumSq);
      setGradSquaresRecording(false);
      dist?.comm.allReduce(sumSq, 'sum');
      const [sq] = toHostF32(sumSq);
      const norm = Math.sqrt(sq!) / R;
      if (!Number.isFinite(norm)) {
        throw new NonFiniteGradientError(`step ${step + 1}: the gradient norm is ${norm}; lower optimizer.lr or check the data`);
      }
      const clip = cfg.grad_clip > 0 && norm > cfg.grad_clip ? cfg.grad_clip / (norm + 1e-6) : 1;
      const rate = learningRate(cfg.schedule, cfg.optimizer.lr, step, cfg.steps);
      // The update zeroes the gradient shards in its pass; whole gradients are left as they are
      // and marked logically zero instead (the next step's first write overwrites them).
      noGrad(() => this.optimizer.update(rate, clip / R, sharded ? 'zero' : 'keep'));
      for (const g of this.lazyGrads) markGradZero(g);
      for (const p of this.parts) p.sharded.markGradsZeroed();
      return { gradNorm: norm, lr: rate };
    });
    let ce = pipelined ? pipelined.ce : toHostF32(ceSum)[0]!, lb = pipelined ? pipelined.lb : toHostF32(lbSum)[0]!;
    // Each rank holds a share: its replica's micro-batches, its cp share of their tokens, its stage's layers.
    if (dist) [ce, lb] = allReduceValues(dist.comm, backend, [ce, lb], 'sum') as [number, number];
    backend.synchronize();
    let dt = (performance.now() - t0) / 1000;
    const mem = backend.memoryStats();
    let peak = mem.peakBytes;
    // The step takes as long as its slowest rank; memory is reported for the fullest.
    if (dist) [dt, peak] = allReduceValues(dist.comm, backend, [dt, peak], 'max') as [number, number];
    return {
      step: step + 1, totalSteps: cfg.steps, stepTimeSec: dt, crossEntropy: ce / micro, loadBalance: lb / micro,
      learningRate: lr, gradientNorm: gradNorm, tokensPerSecond: (cfg.global_batch_size * S) / dt,
      peakMemoryBytes: peak, liveMemoryBytes: mem.liveBytes, reservedMemoryBytes: mem.reservedBytes,
      ...(mem.systemAllocations !== undefined ? { systemAllocations: mem.systemAllocations } : {}),
      ...(backend.kind === 'cuda' ? { mfu: this.flopsPerStep / dt / GPU_PEAK_FLOPS } : {}),
    };
  }

  /**
   * This rank's master weights (a lean run's bf16 weights) and Adam moments as ranges [start, end) of the flattened full
   * tensors (HF names, exp_avg.<name>, exp_avg_sq.<name>); whole tensors in a single process.
   * The tensors stay owned by the model and optimizer; loading into them and then calling
   * checkpointLoaded restores a run.
   */
  checkpointEntries(): ShardEntry[] {
    if (this.sharded) return this.parts.flatMap((p) => p.sharded.shardEntries());
    const named = namedParameters(this.model);
    const whole = (name: string, shape: readonly number[], tensor: Tensor): ShardEntry => ({ name, shape, start: 0, end: tensor.size, tensor });
    return [
      ...named.map(({ name, param }) => whole(name, param.shape, param.weights)),
      ...named.flatMap(({ name, param }) => {
        const { m, v } = this.optimizer.moments(param);
        return [whole(`exp_avg.${name}`, param.shape, m), whole(`exp_avg_sq.${name}`, param.shape, v)];
      }),
    ];
  }

  /** After checkpointEntries' tensors were loaded: refreshes the compute copies and the optimizer's step count. */
  checkpointLoaded(optimizerStep: number): void {
    if (this.sharded) for (const p of this.parts) p.sharded.syncCompute();
    else for (const p of this.model.params) p.syncValue();
    this.optimizer.step = optimizerStep;
  }

  dispose(): void {
    this.sumSq.dispose(); this.ceSum.dispose(); this.lbSum.dispose();
    this.gradSquares.dispose();
    this.optimizer.dispose();
    if (this.sharded) for (const p of this.parts) p.sharded.dispose();
    else this.model.dispose();
  }
}

/** Stop codes agreed by all-reduce (max): every rank stops after the same step. */
const STOP_CODES: readonly (StopSignal | null)[] = [null, 'SIGINT', 'SIGTERM'];

/** A whole run: resume or initialise, then every remaining step with its log line, JSONL record and checkpoints. */
export async function train(run: TrainRun): Promise<TrainResult> {
  const { config: cfg, backend } = run;
  const dist = run.dist ?? null;
  // The world's ranks checkpoint and stop together; rank 0 writes the run folder's own files.
  const group: CheckpointGroup = dist?.comm ?? run.group ?? SINGLE_PROCESS;
  const lead = group.rank === 0;
  if (lead) fs.mkdirSync(cfg.run_dir, { recursive: true });
  const training = new Training(cfg, run.model, backend, dist);
  const bytes = training.shardBytes();
  if (bytes && dist) {
    for (const line of formatShardLines(dist.mesh, dist.groups, bytes, cfg.precision)) run.log(line);
    const { pp, cp } = dist.mesh.sizes;
    if (cp > 1) run.log(formatContextLine(cp, cfg.seq_len));
    if (pp > 1) {
      const micro = cfg.global_batch_size / cfg.micro_batch_size / dist.groups.data.size;
      for (const line of formatStageLines(run.model, cfg.parallel.schedule, pp, cfg.seq_len, micro, cfg.parallel.stages)) run.log(line);
    }
  }
  const ckptDir = path.join(cfg.run_dir, 'checkpoints');
  const schedule = { steps: cfg.steps, lr: cfg.optimizer.lr, schedule: cfg.schedule };
  const resumed = resumeFromLatest(ckptDir, { entries: training.checkpointEntries(), loaded: (st) => training.checkpointLoaded(st.optimizer_step) }, {
    backend, group, log: run.log, recipe: cfg.recipe, ...(run.dataFingerprint ? { dataFingerprint: run.dataFingerprint } : {}),
    startOver: run.startOver ?? `move ${ckptDir} aside (mv ${ckptDir} ${ckptDir}.damaged) and run the same command again, or pass a new --run_dir`,
  });
  let startStep = 0;
  if (resumed) {
    startStep = resumed.state.step;
    run.log(`resuming from ${resumed.folder} (step ${startStep})`);
    const change = scheduleChangeLine(savedSchedule(resumed.state), schedule, startStep);
    if (change) run.log(change);
  } else if (run.initWeights) {
    for (const m of training.models) run.initWeights(m);
  } else {
    for (const m of training.models) m.initialize(cfg.seed);
  }
  const metricsPath = path.join(cfg.run_dir, 'metrics.jsonl');
  if (lead && fs.existsSync(metricsPath)) {
    // Records past the checkpoint belong to steps that will run again: drop them (and a last
    // line cut short by a killed process).
    const kept = fs.readFileSync(metricsPath, 'utf8').split('\n').filter((l) => {
      try { return startStep > 0 && (JSON.parse(l) as { step: number }).step <= startStep; } catch { return false; }
    });
    fs.writeFileSync(metricsPath, kept.map((l) => l + '\n').join(''));
  }
  // Names the temporary checkpoint folders; the same on every rank.
  const jobId = String(agreeMax(group, backend, [group.rank === 0 ? process.pid : 0])[0]);
  let checkpoint = resumed?.folder ?? null;
  let savedStep = resumed ? startStep : 0;
  const save = (step: number): void => {
    checkpoint = writeCheckpoint(ckptDir, step, training.checkpointEntries(), {
      keep: cfg.keep_checkpoints, config: cfg, schedule, group, jobId, optimizerStep: training.optimizer.step,
      ...(dist ? { mesh: dist.mesh } : {}),
      ...(run.dataFingerprint ? { dataFingerprint: run.dataFingerprint } : {}), ...(run.modelConfigJson ? { modelConfigJson: run.modelConfigJson } : {}),
    });
    savedStep = step;
  };
  const metrics: StepMetrics[] = [];
  let stoppedBy: StopSignal | null = null;
  let step = startStep;
  for (; step < cfg.steps; step++) {
    await turnEventLoop();
    stoppedBy = STOP_CODES[agreeMax(group, backend, [STOP_CODES.indexOf(run.stop?.signal ?? null)])[0]!] ?? null;
    if (stoppedBy) break;
    let record: StepMetrics;
    try {
      record = training.step(step, run.data);
    } catch (e) {
      if (!(e instanceof NonFiniteGradientError)) throw e;
      const intact = latestIntactCheckpoint(ckptDir);
      throw new Error(`${e.message}; ${intact ? `the latest intact checkpoint is ${intact} (checksums verified): the run resumes from it` : 'no intact checkpoint exists: the run starts over'}`);
    }
    metrics.push(record);
    run.log(formatLogLine(record));
    if (lead) fs.appendFileSync(metricsPath, JSON.stringify({ time: new Date().toISOString(), ...record }) + '\n');
    if (step + 1 === cfg.steps || (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every === 0)) save(step + 1);
  }
  if (stoppedBy && step > savedStep) save(step);
  training.dispose();
  return { metrics, finalStep: step, resumedFrom: resumed ? startStep : null, stoppedBy, checkpoint };
}
