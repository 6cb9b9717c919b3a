// Learning-rate schedules as pure functions of the step (0-based), so resuming needs only the
// step number: linear warmup then cosine decay, WSD (warmup-stable-decay), or constant.

export interface ScheduleConfig {
  type: 'cosine' | 'wsd' | 'constant';
  warmup_steps: number;
  /** Final learning rate as a fraction of the peak (cosine and wsd). */
  min_lr_ratio: number;
  /** wsd: the fraction of all steps spent in the final decay. */
  decay_fraction: number;
}

export function learningRate(s: ScheduleConfig, peak: number, step: number, totalSteps: number): number {
  if (s.warmup_steps > 0 && step < s.warmup_steps) return (peak * (step + 1)) / s.warmup_steps;
  const floor = peak * s.min_lr_ratio;
  switch (s.type) {
    case 'constant':
      return peak;
    case 'cosine': {
      const span = Math.max(1, totalSteps - s.warmup_steps);
      const t = Math.min(1, (step - s.warmup_steps) / span);
      return floor + (peak - floor) * 0.5 * (1 + Math.cos(Math.PI * t));
    }
    case 'wsd': {
      const decaySteps = Math.max(1, Math.round(totalSteps * s.decay_fraction));
      const decayStart = totalSteps - decaySteps;
      if (step < decayStart) return peak;
      const t = Math.min(1, (step - decayStart + 1) / decaySteps);
      return peak + (floor - peak) * t;
    }
    default:
      return s.type satisfies never;
  }
}
