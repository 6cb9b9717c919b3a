// A predicted multi-GPU step from one simulated rank (simulated_rank.ts): the rank's measured
// compute, spread over the schedule's slots including its bubble, plus the communication the
// loopback copies stood in for, timed at an assumed bus bandwidth:
//
//   step ≈ others + max((compute / m) · m / (1 − bubble), overlapped)
//   overlapped = all-gather + reduce-scatter time, others = Σ of the other kinds, each
//   busBytes / bandwidth + calls · latency
//
// m micro-batches per replica; (compute / m) the rank's compute per micro-batch; m / (1 − bubble)
// the slots a pipeline rank spends, idle ones included (1F1B: m + pp − 1). FSDP's all-gathers and
// reduce-scatters run on the communication stream, each unit's gather started before the previous
// unit computes and each unit's reduction finished after the next unit's backward
// (nccl_communicator.ts, fsdp.ts), so they hide behind compute until they outlast it. The other
// kinds are exposed: the compute stream waits for them at once (expert all-to-alls and pipeline
// transfers wait for their data), and as they share the one communication stream with the
// gathers, they add to both sides. `hiddenStepSec` is the
// bound were every collective hidden behind compute.
// Assumes the other pipeline stages cost what the simulated one does (the split balances them)
// and that every peer sends what this rank does (symmetric routing, no straggler).
import type { CollectiveKind } from './loopback_communicator.js';
import { COLLECTIVE_KINDS } from './loopback_communicator.js';

/** The kinds that run beside compute (FSDP's gathers and gradient reductions). */
export const OVERLAPPED: readonly CollectiveKind[] = ['all-gather', 'reduce-scatter'];

export interface LinkAssumption {
  /** Bus bandwidth per GPU (bytes/s) in NCCL's convention (busBytes / time). */
  busBytesPerSec: number;
  /** Fixed cost per collective call (s). */
  latencySec: number;
}

export interface StepPredictionInput {
  /** The simulated rank's step time less the loopback copies (s). */
  computeSec: number;
  /** Micro-batches per replica in one step. */
  microBatches: number;
  /** The schedule's idle fraction of all rank-time (schedule_sim.ts). */
  bubble: number;
  /** Calls and bus bytes per kind, for one step of the simulated rank. */
  comm: Record<CollectiveKind, { calls: number; busBytes: number }>;
  link: LinkAssumption;
  /** Tokens of one global batch (global_batch_size · seq_len). */
  tokensPerStep: number;
}

export interface StepPrediction {
  computePerMicroSec: number;
  /** Slots per rank including the bubble: m / (1 − bubble). */
  slots: number;
  /** computePerMicro · slots. */
  computeWithBubbleSec: number;
  /** Time of each kind at the assumed link (s). */
  commSec: Record<CollectiveKind, number>;
  exposedCommSec: number;
  stepSec: number;
  tokensPerSec: number;
  /** The step were every collective hidden behind compute (an upper bound on speed; FSDP's are). */
  hiddenStepSec: number;
  hiddenTokensPerSec: number;
}

export function predictStep(p: StepPredictionInput): StepPrediction {
  if (!(p.microBatches > 0 && p.bubble >= 0 && p.bubble < 1 && p.link.busBytesPerSec > 0 && p.link.latencySec >= 0)) {
    throw new Error(`internal: predictStep of ${p.microBatches} micro-batches, bubble ${p.bubble}, link ${p.link.busBytesPerSec} B/s + ${p.link.latencySec} s`);
  }
  const computePerMicroSec = p.computeSec / p.microBatches;
  const slots = p.microBatches / (1 - p.bubble);
  const computeWithBubbleSec = computePerMicroSec * slots;
  const commSec = Object.fromEntries(COLLECTIVE_KINDS.map((k) => {
    const c = p.comm[k];
    return [k, c.busBytes / p.link.busBytesPerSec + c.calls * p.link.latencySec];
  })) as Record<CollectiveKind, number>;
  const overlapped = commSec['all-gather'] + commSec['reduce-scatter'];
  const others = COLLECTIVE_KINDS.reduce((s, k) => s + (OVERLAPPED.includes(k) ? 0 : commSec[k]), 0);
  const exposedCommSec = others + Math.max(0, overlapped - computeWithBubbleSec);
  const stepSec = computeWithBubbleSec + exposedCommSec;
  const hiddenStepSec = Math.max(computeWithBubbleSec, overlapped + others);
  return {
    computePerMicroSec, slots, computeWithBubbleSec, commSec, exposedCommSec, stepSec,
    tokensPerSec: p.tokensPerStep / stepSec, hiddenStepSec, hiddenTokensPerSec: p.tokensPerStep / hiddenStepSec,
  };
}
