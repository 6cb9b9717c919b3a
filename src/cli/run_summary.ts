// The line a training run ends with, from the step metrics the trainer returns: the steps this
// invocation ran, tokens, elapsed wall time, final and best cross-entropy, and the mean tokens/s
// (all tokens over the summed step times, so slow steps weigh as much as they cost).
//
//   summary: steps 1-100 (100), 102,400 tokens in 61.2 s; final loss 1.4539, best 1.4501 at step 97; mean 1,702 tokens/s
import type { StepMetrics } from '../train/log_line.js';
import { withThousands } from '../train/log_line.js';

export function runSummary(metrics: readonly StepMetrics[], tokensPerStep: number, elapsedSec: number): string {
  if (metrics.length === 0) throw new Error('internal: a summary of no steps');
  const first = metrics[0]!, last = metrics[metrics.length - 1]!;
  let best = first;
  let stepSeconds = 0;
  for (const m of metrics) {
    if (m.crossEntropy < best.crossEntropy) best = m;
    stepSeconds += m.stepTimeSec;
  }
  const tokens = metrics.length * tokensPerStep;
  return `summary: steps ${first.step}-${last.step} (${metrics.length}), ${withThousands(tokens)} tokens in ${elapsedSec.toFixed(1)} s; ` +
    `final loss ${last.crossEntropy.toFixed(4)}, best ${best.crossEntropy.toFixed(4)} at step ${best.step}; ` +
    `mean ${withThousands(tokens / Math.max(stepSeconds, 1e-9))} tokens/s`;
}
