// The training loop: for each step, micro-batches with gradient accumulation, the global
// gradient norm (before clipping) and clipping folded into the optimizer, the schedule, timing
// with the device synchronised, one log line and one JSONL record, and checkpoints.
import fs from 'node:fs';
import path from 'node:path';
import type { Backend } from '../backend/backend.js';
import { backward } from '../autograd/backward.js';
import { noGrad } from '../autograd/tape.js';
import { fromHost, toHostF32 } from '../ops/create.js';
import { add, scale } from '../ops/elementwise.js';
import { keep, tidy } from '../tensor/scope.js';
import { emptyTensor } from '../tensor/tensor.js';
import { DeepseekV2 } from '../models/deepseek_v2.js';
import { flopsPerToken, type DeepseekV2Config } from '../models/deepseek_v2_config.js';
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
  /** false: never write checkpoints (benchmarks). Default true. */
  saveCheckpoints?: boolean;
  /** Synchronise between phases and record their times (benchmarks; costs a little speed). */
  profile?: boolean;
}

export interface TrainResult {
  metrics: StepMetrics[];
  finalStep: number;
  resumedFrom: number | null;
}

const GPU_PEAK_FLOPS = 989e12;

export function train(run: TrainRun): TrainResult {
  const { config: cfg, backend } = run;
  fs.mkdirSync(cfg.run_dir, { recursive: true });
  const model = new DeepseekV2(run.model, backend, cfg.precision);
  const optimizer = new Adam(model.params, cfg.optimizer, backend);
  const ckptDir = path.join(cfg.run_dir, 'checkpoints');
  const latest = run.saveCheckpoints === false ? null : latestCheckpoint(ckptDir);
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
  const micro = cfg.global_batch_size / cfg.micro_batch_size;
  const B = cfg.micro_batch_size, S = cfg.seq_len;
  const tokensPerStep = cfg.global_batch_size * S;
  const flopsPerStep = flopsPerToken(run.model, S) * tokensPerStep;
  const metrics: StepMetrics[] = [];
  const sumSq = keep(emptyTensor(backend, [1], 'f32'));
  const ceSum = keep(emptyTensor(backend, [1], 'f32'));
  const lbSum = keep(emptyTensor(backend, [1], 'f32'));

  for (let step = startStep; step < cfg.steps; step++) {
    backend.synchronize();
    backend.resetPeak();
    const t0 = performance.now();
    model.beginStep();
    backend.fill(ceSum, 0);
    backend.fill(lbSum, 0);
    const phases = { forwardSec: 0, backwardSec: 0, optimizerSec: 0 };
    const mark = (key: keyof typeof phases, since: number): number => {
      if (!run.profile) return since;
      backend.synchronize();
      const now = performance.now();
      phases[key] += (now - since) / 1000;
      return now;
    };
    for (let m = 0; m < micro; m++) {
      const { inputs, labels } = run.data.batch(step, m);
      let t = performance.now();
      tidy(() => {
        const ids = fromHost(backend, inputs, [B, S], 'i32');
        const lab = fromHost(backend, labels, [B, S], 'i32');
        let count = 0;
        for (let i = 0; i < labels.length; i++) if (labels[i]! >= 0) count++;
        const out = model.forward(ids, lab, count, cfg.load_balance);
        // Each micro-batch contributes 1/micro of the step's mean losses.
        const loss = scale(add(out.crossEntropy, out.loadBalance), 1 / micro);
        backend.binary('add', ceSum, ceSum, out.crossEntropy);
        backend.binary('add', lbSum, lbSum, out.loadBalance);
        t = mark('forwardSec', t);
        backward(loss);
        mark('backwardSec', t);
      });
    }
    const tOpt = performance.now();
    // Global L2 norm of the gradients before clipping; clipping is a scale given to the optimizer.
    backend.fill(sumSq, 0);
    for (const p of model.params) backend.sumSquaresInto(sumSq, p.grad);
    const [sq] = toHostF32(sumSq);
    const gradNorm = Math.sqrt(sq!);
    if (!Number.isFinite(gradNorm)) {
      throw new Error(`step ${step + 1}: the gradient norm is ${gradNorm}; lower optimizer.lr or check the data (the last checkpoint is intact)`);
    }
    const clip = cfg.grad_clip > 0 && gradNorm > cfg.grad_clip ? cfg.grad_clip / (gradNorm + 1e-6) : 1;
    const lr = learningRate(cfg.schedule, cfg.optimizer.lr, step, cfg.steps);
    noGrad(() => optimizer.update(lr, clip));
    for (const p of model.params) p.zeroGrad();
    mark('optimizerSec', tOpt);
    const ce = toHostF32(ceSum)[0]! / micro;
    const lb = toHostF32(lbSum)[0]! / micro;
    backend.synchronize();
    const dt = (performance.now() - t0) / 1000;
    const mem = backend.memoryStats();
    const record: StepMetrics = {
      step: step + 1, totalSteps: cfg.steps, stepTimeSec: dt, crossEntropy: ce, loadBalance: lb,
      learningRate: lr, gradientNorm: gradNorm, tokensPerSecond: tokensPerStep / dt,
      peakMemoryBytes: mem.peakBytes, liveMemoryBytes: mem.liveBytes, reservedMemoryBytes: mem.reservedBytes,
      ...(mem.systemAllocations !== undefined ? { systemAllocations: mem.systemAllocations } : {}),
      ...(backend.kind === 'cuda' ? { mfu: flopsPerStep / dt / GPU_PEAK_FLOPS } : {}),
      ...(run.profile ? { phases } : {}),
    };
    metrics.push(record);
    run.log(formatLogLine(record));
    fs.appendFileSync(metricsPath, JSON.stringify({ time: new Date().toISOString(), ...record }) + '\n');
    const last = step + 1 === cfg.steps;
    if (run.saveCheckpoints !== false && (last || (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every === 0))) {
      saveCheckpoint(ckptDir, step + 1, model, optimizer, { keep: cfg.keep_checkpoints, config: cfg, ...(run.dataFingerprint ? { dataFingerprint: run.dataFingerprint } : {}) });
    }
  }
  sumSq.dispose(); ceSum.dispose(); lbSum.dispose();
  optimizer.dispose();
  model.dispose();
  return { metrics, finalStep: cfg.steps, resumedFrom: latest ? startStep : null };
}
