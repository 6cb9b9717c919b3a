// The start-up lines of a pipelined run (pp > 1): how the layers are split over the virtual
// stages with each stage's training cost, and both schedules' bubble fractions, e.g.
//   moetrain: pipeline 1f1b, pp 2, 4 virtual stages: layers 0-2 (1.2 GFLOP/token), 3-5 (1.3), …
//   moetrain: pipeline bubble (idle / all rank-time, F = 1, B = 2) at pp 2, 8 micro-batches: 1f1b 11.1%, dualpipev 7.7%
import type { DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { bubbleLine, virtualStages } from '../parallel/schedule.js';
import type { ScheduleKind } from '../parallel/schedule_sim.js';
import { splitStages } from '../parallel/stages.js';

export function formatStageLines(c: DeepseekV2Config, kind: ScheduleKind, pp: number, seqLen: number, microPerReplica: number, override: readonly number[] | null): string[] {
  const V = virtualStages(kind, pp);
  const stages = splitStages(c, V, seqLen, override ?? undefined);
  const total = stages.reduce((s, x) => s + x.flopsPerToken, 0);
  const parts = stages.map((s, i) => `stage ${i}: layers ${s.first}-${s.end - 1} (${s.end - s.first}; ${(100 * s.flopsPerToken / total).toFixed(1)}% of the cost${i === 0 ? ', embedding' : ''}${i === V - 1 ? ', head' : ''})`);
  return [
    `moetrain: pipeline ${kind}, pp ${pp}, ${V} virtual stages ${override ? '(--parallel.stages)' : '(balanced by cost)'}: ${parts.join('; ')}`,
    `moetrain: ${bubbleLine(pp, microPerReplica)}`,
  ];
}
