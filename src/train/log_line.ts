// The step log line, byte for byte the reference system's format (DESIGN.md), plus our own
// fields after it. Numbers: %08d steps, %.3f seconds, %.4f loss, %.6f load balance, %.6e
// learning rate, %.4f gradient norm, thousands-separated tokens/s, %.2f GiB.

export interface StepMetrics {
  /** 1-based step number and the run's total. */
  step: number;
  totalSteps: number;
  stepTimeSec: number;
  crossEntropy: number;
  loadBalance: number;
  learningRate: number;
  gradientNorm: number;
  tokensPerSecond: number;
  peakMemoryBytes: number;
  /** Bytes held by live tensors after the step (JSONL only: shows that memory does not grow). */
  liveMemoryBytes: number;
  /** Bytes held from the system and allocations made so far (JSONL only: allocator health). */
  reservedMemoryBytes?: number;
  systemAllocations?: number;
  /** Model FLOPs utilisation against 989 TFLOP/s (GPU only), appended when present. */
  mfu?: number;
  /** Seconds per phase when profiling (JSONL only); optimizer includes the gradient norm. */
  phases?: { forwardSec: number; backwardSec: number; optimizerSec: number };
}

const pad2 = (n: number) => String(n).padStart(2, '0');

export function timestamp(d: Date): string {
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** C's %.{digits}e: mantissa with `digits` decimals and an exponent of at least two digits. */
export function formatExp(x: number, digits: number): string {
  if (!Number.isFinite(x)) return String(x).toLowerCase();
  const [mant, exp] = x.toExponential(digits).split('e') as [string, string];
  const sign = exp.startsWith('-') ? '-' : '+';
  const mag = exp.replace(/^[+-]/, '');
  return `${mant}e${sign}${mag.padStart(2, '0')}`;
}

export function withThousands(n: number): string {
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

const steps = (n: number) => String(n).padStart(8, '0');

export function formatLogLine(m: StepMetrics, now = new Date()): string {
  const fields = [
    timestamp(now), 'INFO',
    `step ${steps(m.step)}/${steps(m.totalSteps)}`,
    `step-time ${m.stepTimeSec.toFixed(3)} sec`,
    `cross-entropy-loss ${m.crossEntropy.toFixed(4)}`,
    `load-balance-loss ${m.loadBalance.toFixed(6)}`,
    `learning-rate ${formatExp(m.learningRate, 6)}`,
    `gradient-norm ${m.gradientNorm.toFixed(4)}`,
    `tokens-per-second ${withThousands(m.tokensPerSecond)}`,
    `peak-gpu-memory ${(m.peakMemoryBytes / 2 ** 30).toFixed(2)} GB`,
  ];
  if (m.mfu !== undefined) fields.push(`mfu ${(m.mfu * 100).toFixed(1)}%`);
  return fields.join(' | ');
}
