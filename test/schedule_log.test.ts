// Learning-rate schedules at their boundaries and the numeric formats of the log line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { learningRate, type ScheduleConfig } from '../src/optim/schedule.js';
import { formatExp, formatLogLine, withThousands } from '../src/train/log_line.js';

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)), `${a} vs ${b}`);

test('warmup then cosine to min_lr_ratio', () => {
  const s: ScheduleConfig = { type: 'cosine', warmup_steps: 4, min_lr_ratio: 0.1, decay_fraction: 0 };
  close(learningRate(s, 1, 0, 14), 0.25);
  close(learningRate(s, 1, 3, 14), 1);
  close(learningRate(s, 1, 4, 14), 1);              // start of the cosine
  close(learningRate(s, 1, 9, 14), 0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * 0.5)));
  close(learningRate(s, 1, 14, 14), 0.1);
});

test('WSD: stable at the peak, then linear decay over the last fraction', () => {
  const s: ScheduleConfig = { type: 'wsd', warmup_steps: 2, min_lr_ratio: 0, decay_fraction: 0.2 };
  close(learningRate(s, 2, 1, 10), 2);
  close(learningRate(s, 2, 7, 10), 2);              // decay starts at step 8 (10 − 2)
  close(learningRate(s, 2, 8, 10), 1);
  close(learningRate(s, 2, 9, 10), 0);
});

test('constant after warmup', () => {
  const s: ScheduleConfig = { type: 'constant', warmup_steps: 0, min_lr_ratio: 0, decay_fraction: 0 };
  close(learningRate(s, 3e-4, 0, 5), 3e-4);
  close(learningRate(s, 3e-4, 4, 5), 3e-4);
});

test('C-style %.6e, thousands separators, and the whole line', () => {
  assert.equal(formatExp(1e-6, 6), '1.000000e-06');
  assert.equal(formatExp(3.5e-4, 6), '3.500000e-04');
  assert.equal(formatExp(12345, 6), '1.234500e+04');
  assert.equal(withThousands(85021.4), '85,021');
  assert.equal(withThousands(999), '999');
  assert.equal(withThousands(1234567), '1,234,567');
  const line = formatLogLine({
    step: 16, totalSteps: 25, stepTimeSec: 24.6662, crossEntropy: 2.45651, loadBalance: 0.0032341, learningRate: 1e-6,
    gradientNorm: 2.14981, tokensPerSecond: 85021.2, peakMemoryBytes: 57.22 * 2 ** 30, liveMemoryBytes: 0,
  }, new Date(2026, 2, 31, 22, 17, 25));
  assert.equal(line, '2026-03-31 22:17:25 | INFO | step 00000016/00000025 | step-time 24.666 sec | cross-entropy-loss 2.4565 | load-balance-loss 0.003234 | learning-rate 1.000000e-06 | gradient-norm 2.1498 | tokens-per-second 85,021 | peak-gpu-memory 57.22 GB');
});
