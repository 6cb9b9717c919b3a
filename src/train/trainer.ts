// The training loop. Training.step runs one optimizer step: micro-batches with gradient
// accumulation, the global gradient norm (before clipping) and clipping folded into the
// optimizer, the schedule, timing with the device synchronised. train() runs a whole run around
// it: resume or initialise, one log line and one JSONL record per step, checkpoints, and a clean
// stop with a checkpoint on SIGINT/SIGTERM (signals.ts).
import fs from 'node:fs';
import path from 'node:path';
import type { Backend } from '../backend/backend.js';
import { TensorList } from '../backend/tensor_list.js';
import { backward } from '../autograd/backward.js';
import { noGrad } from '../autograd/tape.js';
import { fromHost, toHostF32 } from '../ops/create.js';
import { add, scale } from '../ops/elementwise.js';
import { keep, tidy } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { DeepseekV2 } from '../models/deepseek_v2.js';
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { flopsPerToken } from '../models/deepseek_v2_weights.js';
import { Adam } from '../optim/adam.js';
import { learningRate } from '../optim/schedule.js';
import type { TrainConfig } from './config.js';
import { formatLogLine, type StepMetrics } from './log_line.js';
import { modelTarget, saveCheckpoint } from './checkpoint.js';
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
  /** The model's HF config.json text, stored in each checkpoint. */
  modelConfigJson?: string;
  /** The ranks of a parallel run, which checkpoint and stop together (default: this process alone). */
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
  readonly optimizer: Adam;
  private readonly sumSq: Tensor;
  /** Every parameter's gradient, for the one-pass gradient norm. */
  private readonly grads: TensorList<Tensor>;
  private readonly ceSum: Tensor;
  private readonly lbSum: Tensor;
  private readonly flopsPerStep: number;

  constructor(readonly config: TrainConfig, modelConfig: DeepseekV2Config, readonly backend: Backend) {
    this.model = new DeepseekV2(modelConfig, backend, config.precision);
    this.optimizer = new Adam(this.model.params, config.optimizer, backend);
    this.flopsPerStep = flopsPerToken(modelConfig, config.seq_len) * config.global_batch_size * config.seq_len;
    this.sumSq = keep(emptyTensor(backend, [1], 'f32'));
    this.grads = new TensorList(this.model.params.map((p) => p.grad));
    this.ceSum = keep(emptyTensor(backend, [1], 'f32'));
    this.lbSum = keep(emptyTensor(backend, [1], 'f32'));
  }

  /** Optimizer step `step` (0-based): its micro-batches from data, the update, and its metrics. */
  step(step: number, data: BatchSource, hooks: StepHooks = {}): StepMetrics {
    const { config: cfg, backend, model, ceSum, lbSum, sumSq } = this;
    const phase = hooks.phase ?? (<T>(_: StepPhase, fn: () => T): T => fn());
    const micro = cfg.global_batch_size / cfg.micro_batch_size;
    const B = cfg.micro_batch_size, S = cfg.seq_len;
    backend.synchronize();
    backend.resetPeak();
    const t0 = performance.now();
    model.beginStep();
    backend.fill(ceSum, 0);
    backend.fill(lbSum, 0);
    for (let m = 0; m < micro; m++) {
      const { inputs, labels } = data.batch(step, m);
      tidy(() => {
        const loss = phase('forward', () => {
          const ids = fromHost(backend, inputs, [B, S], 'i32');
          const lab = fromHost(backend, labels, [B, S], 'i32');
          let count = 0;
          for (let i = 0; i < labels.length; i++) if (labels[i]! >= 0) count++;
          const out = model.forward(ids, lab, count, cfg.load_balance);
          // Each micro-batch contributes 1/micro of the step's mean losses.
          const total = scale(add(out.crossEntropy, out.loadBalance), 1 / micro);
          backend.binary('add', ceSum, ceSum, out.crossEntropy);
          backend.binary('add', lbSum, lbSum, out.loadBalance);
          return total;
        });
        phase('backward', () => backward(loss));
      });
    }
    const { gradNorm, lr } = phase('optimizer', () => {
      // Global L2 norm of the gradients before clipping; clipping is a scale given to the optimizer.
      backend.sumSquaresMulti(sumSq, this.grads);
      const [sq] = toHostF32(sumSq);
      const norm = Math.sqrt(sq!);
      if (!Number.isFinite(norm)) {
        throw new NonFiniteGradientError(`step ${step + 1}: the gradient norm is ${norm}; lower optimizer.lr or check the data`);
      }
      const clip = cfg.grad_clip > 0 && norm > cfg.grad_clip ? cfg.grad_clip / (norm + 1e-6) : 1;
      const rate = learningRate(cfg.schedule, cfg.optimizer.lr, step, cfg.steps);
      // The update also zeroes every gradient (one pass over the parameters).
      noGrad(() => this.optimizer.update(rate, clip));
      return { gradNorm: norm, lr: rate };
    });
    const ce = toHostF32(ceSum)[0]! / micro;
    const lb = toHostF32(lbSum)[0]! / micro;
    backend.synchronize();
    const dt = (performance.now() - t0) / 1000;
    const mem = backend.memoryStats();
    return {
      step: step + 1, totalSteps: cfg.steps, stepTimeSec: dt, crossEntropy: ce, loadBalance: lb,
      learningRate: lr, gradientNorm: gradNorm, tokensPerSecond: (cfg.global_batch_size * S) / dt,
      peakMemoryBytes: mem.peakBytes, liveMemoryBytes: mem.liveBytes, reservedMemoryBytes: mem.reservedBytes,
      ...(mem.systemAllocations !== undefined ? { systemAllocations: mem.systemAllocations } : {}),
      ...(backend.kind === 'cuda' ? { mfu: this.flopsPerStep / dt / GPU_PEAK_FLOPS } : {}),
    };
  }

  dispose(): void {
    this.sumSq.dispose(); this.ceSum.dispose(); this.lbSum.dispose();
    this.grads.dispose();
    this.optimizer.dispose();
    this.model.dispose();
  }
}

/** Stop codes agreed by all-reduce (max): every rank stops after the same step. */
const STOP_CODES: readonly (StopSignal | null)[] = [null, 'SIGINT', 'SIGTERM'];

/** A whole run: resume or initialise, then every remaining step with its log line, JSONL record and checkpoints. */
export async function train(run: TrainRun): Promise<TrainResult> {
  const { config: cfg, backend } = run;
  const group = run.group ?? SINGLE_PROCESS;
  fs.mkdirSync(cfg.run_dir, { recursive: true });
  const training = new Training(cfg, run.model, backend);
  const { model, optimizer } = training;
  const ckptDir = path.join(cfg.run_dir, 'checkpoints');
  const schedule = { steps: cfg.steps, lr: cfg.optimizer.lr, schedule: cfg.schedule };
  const resumed = resumeFromLatest(ckptDir, modelTarget(model, optimizer), {
    backend, group, log: run.log, ...(run.dataFingerprint ? { dataFingerprint: run.dataFingerprint } : {}),
    startOver: run.startOver ?? `move ${ckptDir} aside (mv ${ckptDir} ${ckptDir}.damaged) and run the same command again, or pass a new --run_dir`,
  });
  let startStep = 0;
  if (resumed) {
    startStep = resumed.state.step;
    run.log(`resuming from ${resumed.folder} (step ${startStep})`);
    const change = scheduleChangeLine(savedSchedule(resumed.state), schedule, startStep);
    if (change) run.log(change);
  } else if (run.initWeights) {
    run.initWeights(model);
  } else {
    model.initialize(cfg.seed);
  }
  const metricsPath = path.join(cfg.run_dir, 'metrics.jsonl');
  // Rank 0 writes the run's metrics.jsonl.
  const lead = group.rank === 0;
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
    checkpoint = saveCheckpoint(ckptDir, step, model, optimizer, {
      keep: cfg.keep_checkpoints, config: cfg, schedule, group, jobId,
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
