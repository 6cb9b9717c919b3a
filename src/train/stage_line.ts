// The start-up lines of a pipelined run (pp > 1): how the layers are split over the virtual
// stages with each stage's training cost, and both schedules' bubble fractions, e.g.
//   moetrain: pipeline 1f1b, pp 2, 2 virtual stages (balanced by cost): stage 0: layers 0-1 (2; 2.78 MFLOP/token, 46.5% of the cost, embedding); stage 1: …
//   moetrain: pipeline bubble (idle / all rank-time, F = 1, B = 2) at pp 2, 8 micro-batches: 1f1b 11.1%, dualpipev 9.4%
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { bubbleLine, virtualStages } from '../parallel/schedule.js';
import type { ScheduleKind } from '../parallel/schedule_sim.js';
import { splitStages } from '../parallel/stages.js';

/** Training FLOPs with a unit, 3 significant digits: "2.78 MFLOP". */
function flops(x: number): string {
  const [scale, unit] = x >= 1e12 ? [1e12, 'T'] : x >= 1e9 ? [1e9, 'G'] : x >= 1e6 ? [1e6, 'M'] : [1e3, 'k'];
  return `${(x / scale).toPrecision(3)} ${unit}FLOP`;
}

/** The stage split (layers, training FLOPs per token and share of the cost per virtual stage) and the bubble line. */
export function formatStageLines(c: DeepseekV2Config, kind: ScheduleKind, pp: number, seqLen: number, microPerReplica: number, override: readonly number[] | null): string[] {
  const V = virtualStages(kind, pp);
  const stages = splitStages(c, V, seqLen, override ?? undefined);
  const total = stages.reduce((s, x) => s + x.flopsPerToken, 0);
  const parts = stages.map((s, i) => `stage ${i}: layers ${s.first}-${s.end - 1} (${s.end - s.first}; ${flops(s.flopsPerToken)}/token, ${(100 * s.flopsPerToken / total).toFixed(1)}% of the cost${i === 0 ? ', embedding' : ''}${i === V - 1 ? ', head' : ''})`);
  return [
    `moetrain: pipeline ${kind}, pp ${pp}, ${V} virtual stages ${override ? '(--parallel.stages)' : '(balanced by cost)'}: ${parts.join('; ')}`,
    `moetrain: ${bubbleLine(pp, microPerReplica)}`,
  ];
}
