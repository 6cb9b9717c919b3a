// Changing --steps, --optimizer.lr or --schedule.* between a checkpoint and its resume: the run
// follows the settings it is given now (the learning rate is a pure function of the step and
// those settings), and says so in one line naming each change and the learning rate of the next
// step under the old and the new settings (written as the log line writes it). Unchanged settings print nothing.
import { learningRate } from '../optim/schedule.js';
import type { ScheduleRecord } from './checkpoint_format.js';
import { formatExp } from './log_line.js';

/** The schedule a checkpoint recorded; the format before schedule records has the config's fields. */
export function savedSchedule(state: { schedule?: ScheduleRecord; config?: unknown }): ScheduleRecord | null {
  if (state.schedule) return state.schedule;
  const c = state.config as { steps?: unknown; optimizer?: { lr?: unknown }; schedule?: ScheduleRecord['schedule'] } | null | undefined;
  if (typeof c?.steps === 'number' && typeof c.optimizer?.lr === 'number' && c.schedule) return { steps: c.steps, lr: c.optimizer.lr, schedule: c.schedule };
  return null;
}

/** The line for a resume at optimizer step `step` (0-based index of the next step), or null when nothing changed. */
export function scheduleChangeLine(saved: ScheduleRecord | null, now: ScheduleRecord, step: number): string | null {
  if (!saved) return null;
  const fields: [string, unknown, unknown][] = [
    ['steps', saved.steps, now.steps],
    ['optimizer.lr', saved.lr, now.lr],
    ['schedule.type', saved.schedule.type, now.schedule.type],
    ['schedule.warmup_steps', saved.schedule.warmup_steps, now.schedule.warmup_steps],
    ['schedule.min_lr_ratio', saved.schedule.min_lr_ratio, now.schedule.min_lr_ratio],
    ['schedule.decay_fraction', saved.schedule.decay_fraction, now.schedule.decay_fraction],
  ];
  const changed = fields.filter(([, a, b]) => a !== b).map(([name, a, b]) => `${name} ${String(a)} → ${String(b)}`);
  if (changed.length === 0) return null;
  const before = learningRate(saved.schedule, saved.lr, step, saved.steps);
  const after = learningRate(now.schedule, now.lr, step, now.steps);
  return `moetrain: the learning-rate schedule differs from the checkpoint's (${changed.join(', ')}); the new settings apply: step ${step + 1} runs at ${formatExp(after, 6)} (the checkpoint's settings give ${formatExp(before, 6)})`;
}
