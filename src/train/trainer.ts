// The training loop. Training.step runs one optimizer step: micro-batches with gradient
// accumulation, the global gradient norm (before clipping) and clipping folded into the
// optimizer, the schedule, timing with the device synchronised. train() runs a whole run around
// it: resume or initialise, one log line and one JSONL record per step, and checkpoints.
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
import { latestCheckpoint, loadCheckpoint, saveCheckpoint } from './checkpoint.js';

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
}

export interface TrainResult {
  metrics: StepMetrics[];
  finalStep: number;
  resumedFrom: number | null;
}

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
        throw new Error(`step ${step + 1}: the gradient norm is ${norm}; lower optimizer.lr or check the data (the last checkpoint is intact)`);
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

/** A whole run: resume or initialise, then every remaining step with its log line, JSONL record and checkpoints. */
export function train(run: TrainRun): TrainResult {
  const { config: cfg, backend } = run;
  fs.mkdirSync(cfg.run_dir, { recursive: true });
  const training = new Training(cfg, run.model, backend);
  const { model, optimizer } = training;
  const ckptDir = path.join(cfg.run_dir, 'checkpoints');
  const latest = latestCheckpoint(ckptDir);
  let startStep = 0;
  if (latest) {
    startStep = loadCheckpoint(latest, model, optimizer, run.dataFingerprint);
    run.log(`resuming from ${latest} (step ${startStep})`);
  } else if (run.initWeights) {
    run.initWeights(model);
  } else {
    model.initialize(cfg.seed);
  }
  const metricsPath = path.join(cfg.run_dir, 'metrics.jsonl');
  if (fs.existsSync(metricsPath)) {
    // Records past the checkpoint belong to steps that will run again: drop them.
    const kept = fs.readFileSync(metricsPath, 'utf8').split('\n')
      .filter((l) => l.trim() !== '' && startStep > 0 && (JSON.parse(l) as { step: number }).step <= startStep);
    fs.writeFileSync(metricsPath, kept.map((l) => l + '\n').join(''));
  }
  const metrics: StepMetrics[] = [];
  for (let step = startStep; step < cfg.steps; step++) {
    const record = training.step(step, run.data);
    metrics.push(record);
    run.log(formatLogLine(record));
    fs.appendFileSync(metricsPath, JSON.stringify({ time: new Date().toISOString(), ...record }) + '\n');
    const last = step + 1 === cfg.steps;
    if (last || (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every === 0)) {
      saveCheckpoint(ckptDir, step + 1, model, optimizer, { keep: cfg.keep_checkpoints, config: cfg, ...(run.dataFingerprint ? { dataFingerprint: run.dataFingerprint } : {}) });
    }
  }
  training.dispose();
  return { metrics, finalStep: cfg.steps, resumedFrom: latest ? startStep : null };
}
