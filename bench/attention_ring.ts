// Ring-attention launches on one GPU (`moetrain bench attention --cp 2|4`): for s = 4096 / 8192 /
// 16384 split over cp ranks in the zigzag layout (src/parallel/zigzag.ts), the attention launches
// of the ring (zigzag.ringStep: step 0 one causal launch over the rank's 2c local tokens, every
// other step one unmasked launch of q 2c × kv c or q c × kv 2c, with c = s/(2·cp)), timed
// forward and backward, against the whole-sequence causal kernel at the same s measured in the
// same round.
//
// The ring's time: its steps are synchronous (a step ends when every rank has its next k/v), and
// at step j ≥ 1 ranks r ≥ j make the q 2c × kv c launch while ranks r < j make the q c × kv 2c
// one, so the ring takes t(causal 2c) + (cp − 1)·max(t(2c × c), t(c × 2c)); each launch shape is
// timed alone (median of CUDA-event timings, inputs rotated so that L2 never serves a repeat)
// and the ring's time is that sum. The lse merges and the transfers are not timed.
// Backward, a ring step is Backend.mlaAttentionBackwardBlock: the step's dK/dV and its dQ added
// into the rank's one f32 accumulator of the 2c local queries, which step 0 (the causal launch)
// zeroes in its preprocess and the last step rounds into bf16 dq in its finish kernel; so the
// backward ring is t(causal, zeroing) + (cp − 2)·max(t(2c × c), t(c × 2c)) + max of the two with
// the rounding. The whole-sequence row is the ordinary backward, which does both itself.
//
// Two rows per (s, cp):
//   own work         batch b = 1: a rank does 1/cp of the whole sequence's causal work, so its
//                    TFLOP/s is (FLOPs(s)/cp) / ring time, against the whole kernel's at b = 1;
//   same total work  the launches at batch b·cp (all cp ranks' work, FLOPs(s)) against the whole
//                    kernel at batch b: "the block kernels' TFLOP/s at the same total work as the
//                    whole-sequence kernel" of issue 14, whose target is ≥ 0.95×.
//
//   moetrain bench attention --cp 2     (or: node dist/bench/attention_ring.js 2 [s,s,...])
//
// FLOPs as bench/attention.ts (FlashAttention convention): causal of n is b·h·n²·(dq+dv), an
// unmasked q n × kv m launch 2·b·h·n·m·(dq+dv); backward 2.5× forward. The ring's launches sum to
// FLOPs(s)/cp per rank exactly: (2c)² + (cp − 1)·2·2c·c = 4c²·cp = s²/cp.
import { pathToFileURL } from 'node:url';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { MlaAttentionLauncher, type MlaGrads, type MlaTensorCoreKernels } from '../src/backend/cuda/ops/mla_attention.js';
import { chooseMlaKernels } from '../src/backend/cuda/ops/mla_kernel_choice.js';
import { CudaContext } from '../src/backend/cuda/runtime/context.js';
import { ringStep, zigzagChunk, type RingStep } from '../src/parallel/zigzag.js';
import { emptyTensor, type Shape, type Tensor } from '../src/tensor/tensor.js';
import { attentionFlops, D_NOPE, D_ROPE, D_V, fillRandom, L2_BYTES, median, randomBf16Chunk, timeMs } from './attention.js';

/** One launch shape: q of sq positions against kv of skv, causal (sq = skv) or unmasked. */
export interface LaunchShape { sq: number; skv: number; causal: boolean }

/** The launches of rank `rank` over the cp ring steps, in step order (1 causal of 2c, then cp − 1 unmasked). */
export function rankLaunches(cp: number, c: number, rank = 0): LaunchShape[] {
  const len = (side: RingStep['q'] | RingStep['kv']) => (side === 'both' ? 2 * c : c);
  return Array.from({ length: cp }, (_, j) => {
    const step = ringStep(cp, rank, (rank - j + cp) % cp);
    return { sq: len(step.q), skv: len(step.kv), causal: step.causal };
  });
}

/** One input set of one launch shape: q, k, v, dout, o/lse from its forward, gradients (a ring step's: dqAcc and the kv side; finish: dq of all 2c queries). */
interface InputSet {
  qNope: Tensor; qPe: Tensor; kNope: Tensor; kPe: Tensor; v: Tensor; dout: Tensor; o: Tensor; lse: Tensor; grads: MlaGrads; dqAcc: Tensor;
  finish: { dqNope: Tensor; dqPe: Tensor } | null;
}

/**
 * One input set's tensors (random q, k, v, dout; o and lse left for a forward to fill): q of sq
 * positions at batch b, k/v of skv at batch kvB (b, or b·slots with ring slots), the f32 dQ
 * accumulator of dqRows positions, and the bf16 dq a last ring step rounds into (finishRows, or none).
 */
function makeInputSet(be: CudaBackend, make: (s: Shape, dtype?: 'bf16' | 'f32') => Tensor, chunk: Uint16Array, seed: number,
  b: number, kvB: number, sq: number, skv: number, h: number, dqRows: number, finishRows: number | null): InputSet {
  const set: InputSet = {
    qNope: make([b, sq, h, D_NOPE]), qPe: make([b, sq, h, D_ROPE]), kNope: make([kvB, skv, h, D_NOPE]), kPe: make([kvB, skv, 1, D_ROPE]),
    v: make([kvB, skv, h, D_V]), dout: make([b, sq, h, D_V]), o: make([b, sq, h, D_V]), lse: make([b, h, sq], 'f32'),
    grads: { dqNope: make([b, sq, h, D_NOPE]), dqPe: make([b, sq, h, D_ROPE]), dkNope: make([kvB, skv, h, D_NOPE]), dkPe: make([kvB, skv, 1, D_ROPE]), dv: make([kvB, skv, h, D_V]) },
    dqAcc: make([b, dqRows, h, D_NOPE + D_ROPE], 'f32'),
    finish: finishRows === null ? null : { dqNope: make([b, finishRows, h, D_NOPE]), dqPe: make([b, finishRows, h, D_ROPE]) },
  };
  [set.qNope, set.qPe, set.kNope, set.kPe, set.v, set.dout].forEach((t, i) => fillRandom(be.ctx, t, chunk, seed + 7919 * (i + 1)));
  return set;
}

/** A ring step's backward: which step it is (first: zeroes the accumulator; last: rounds it into dq), over the 2c local queries. */
interface RingStepBwd { step: 'first' | 'middle' | 'last'; c: number }

/** Median forward and backward ms of one launch. */
interface Timed { fwd: number; bwd: number }

/** Input sets to rotate through so that L2 (50 MB) never serves a repeat: enough for 3× its size, 2 to 16. */
const setsFor = (setBytes: number): number => Math.max(2, Math.min(16, Math.ceil((3 * L2_BYTES) / setBytes)));

/** Median ms of fwd and of bwd over `reps` calls each, every call on the next input set in turn. */
function timeRotating<S>(be: CudaBackend, sets: readonly S[], reps: number, fwd: (x: S) => void, bwd: (x: S) => void): Timed {
  let next = 0;
  const time = (f: (x: S) => void) => timeMs(be.ctx, reps, () => f(sets[next++ % sets.length]!));
  return { fwd: time(fwd), bwd: time(bwd) };
}

/**
 * Median forward and backward ms of one launch shape. `ringStep`: the backward is that ring
 * step's (backwardBlock into the f32 dQ accumulator of the 2c queries, Hopper kernels); null: the
 * whole backward.
 */
function timeLaunch(be: CudaBackend, attention: MlaAttentionLauncher, kernels: MlaTensorCoreKernels, b: number, h: number,
  shape: LaunchShape, chunk: Uint16Array, ringStep: RingStepBwd | null): Timed {
  const owned: Tensor[] = [];
  const make = (s: Shape, dtype: 'bf16' | 'f32' = 'bf16'): Tensor => { const t = emptyTensor(be, s, dtype); owned.push(t); return t; };
  const { sq, skv, causal } = shape;
  const opts = { causal, scale: 1 / Math.sqrt(D_NOPE + D_ROPE) };
  try {
    // q, q_pe, dout, o, dq, dq_pe on the q side; k, k_pe, v, dk, dk_pe, dv on the kv side.
    const setBytes = b * h * 2 * (sq * (2 * D_NOPE + 2 * D_ROPE + 2 * D_V) + skv * (2 * D_NOPE + 2 * D_V)) + b * 2 * skv * 2 * D_ROPE;
    const nSets = setsFor(setBytes);
    const sets: InputSet[] = [];
    for (let i = 0; i < nSets; i++) {
      const set = makeInputSet(be, make, chunk, 6 * 7919 * i, b, b, sq, skv, h, ringStep ? 2 * ringStep.c : sq,
        ringStep?.step === 'last' ? 2 * ringStep.c : null);
      attention.forward(kernels, set.o, set.lse, set.qNope, set.qPe, set.kNope, set.kPe, set.v, opts);
      sets.push(set);
    }
    const reps = b * sq * skv > 8192 * 8192 ? 10 : 20;
    return timeRotating(be, sets, reps, (x) => attention.forward(kernels, x.o, x.lse, x.qNope, x.qPe, x.kNope, x.kPe, x.v, opts), (x) => {
      if (ringStep) {
        attention.backwardBlock(x.dqAcc, sq === 2 * ringStep.c ? 0 : ringStep.c, x.grads, x.dout, x.qNope, x.qPe, x.kNope, x.kPe, x.v, x.o, x.lse, opts,
          { overwrite: ringStep.step === 'first', ...(x.finish ? { finish: x.finish } : {}) });
      }
      else attention.backward(kernels, x.grads, x.dout, x.qNope, x.qPe, x.kNope, x.kPe, x.v, x.o, x.lse, opts);
    });
  } finally {
    for (const t of owned) t.dispose();
  }
}

/**
 * Median forward and backward ms of rank `rank`'s whole ring in one launch each (Hopper; kernel
 * headers, "Ring slots"): q of the rank's 2c tokens at batch b, the cp ranks' k/v in slots; the
 * backward zeroes its dQ accumulator and rounds it into dq itself, as a ring's first and last block.
 */
function timeOneLaunch(be: CudaBackend, attention: MlaAttentionLauncher, b: number, h: number, cp: number, c: number, rank: number,
  chunk: Uint16Array): Timed {
  const L = 2 * c, ring = { ranks: cp, rank };
  const owned: Tensor[] = [];
  const make = (s: Shape, dtype: 'bf16' | 'f32' = 'bf16'): Tensor => { const t = emptyTensor(be, s, dtype); owned.push(t); return t; };
  const opts = { causal: true, scale: 1 / Math.sqrt(D_NOPE + D_ROPE) };
  try {
    const setBytes = b * h * 2 * L * (2 * D_NOPE + 2 * D_ROPE + 2 * D_V + cp * (2 * D_NOPE + 2 * D_V)) + cp * b * L * 4 * D_ROPE;
    const nSets = setsFor(setBytes);
    const sets: InputSet[] = [];
    for (let i = 0; i < nSets; i++) {
      const set = makeInputSet(be, make, chunk, 6 * 7919 * i, b, cp * b, L, L, h, L, null);
      attention.forward('hopper', set.o, set.lse, set.qNope, set.qPe, set.kNope, set.kPe, set.v, { ...opts, ring });
      sets.push(set);
    }
    const reps = b * L * L * cp > 8192 * 8192 ? 10 : 20;
    return timeRotating(be, sets, reps, (x) => attention.forward('hopper', x.o, x.lse, x.qNope, x.qPe, x.kNope, x.kPe, x.v, { ...opts, ring }),
      (x) => attention.backwardBlock(x.dqAcc, 0, x.grads, x.dout, x.qNope, x.qPe, x.kNope, x.kPe, x.v, x.o, x.lse, opts,
        { overwrite: true, finish: { dqNope: x.grads.dqNope, dqPe: x.grads.dqPe } }, ring));
  } finally {
    for (const t of owned) t.dispose();
  }
}

/** Every rank's ring in one launch at one batch, by rank; the ring's time is the slowest rank's (the layer waits for it). */
interface RankTimes extends Timed { ranks: Timed[] }

/** The ranks' times with the slowest rank's forward and backward. */
function slowest(ranks: Timed[]): RankTimes {
  return { fwd: Math.max(...ranks.map((t) => t.fwd)), bwd: Math.max(...ranks.map((t) => t.bwd)), ranks };
}

function oneLaunchRing(be: CudaBackend, attention: MlaAttentionLauncher, b: number, h: number, cp: number, c: number, chunk: Uint16Array): RankTimes {
  return slowest(Array.from({ length: cp }, (_, r) => timeOneLaunch(be, attention, b, h, cp, c, r, chunk)));
}

/**
 * The three launch shapes of a ring at one batch, the backward of the two unmasked ones as the
 * ring's last step (with the rounding of dq), and the ring's step-synchronous time from them.
 */
export interface RingLaunchTimes { causal: Timed; qLong: Timed; kvLong: Timed; qLongLast: number; kvLongLast: number; ring: Timed }

export interface RingBenchRow {
  s: number;
  cp: number;
  /** The whole-sequence causal kernel at s, batch 1. */
  whole: Timed;
  /** Batch 1 (a rank's own work) and batch cp (all ranks' work: the same total work as whole); null: not timed (oneLaunchOnly). */
  own: RingLaunchTimes | null;
  sameWork: RingLaunchTimes | null;
  /** The whole ring in one launch per rank (Hopper only), at batch 1 and cp: the slowest rank. */
  oneLaunch: { own: RankTimes; sameWork: RankTimes } | null;
}

export interface RingBenchOptions {
  cp: number;
  seqs?: readonly number[];
  rounds?: number;
  /** Time only the one-launch rows (and the whole kernel), not the per-step launches: a shorter run on the device. */
  oneLaunchOnly?: boolean;
  /**
   * The whole-sequence kernel's batch (default 1); the same-total-work rows run the ring at cp×
   * it. At 1 the whole kernel's k/v (s·h·640 bytes: 42 MB at s = 4096) nearly fit the 50 MB L2
   * while the ring's cp batches of cp slots do not; a larger batch puts both past L2, to see how
   * much of the ratio is that.
   */
  batch?: number;
  log?: (line: string) => void;
}

/**
 * The ring's time from its launch times: forward t(causal 2c) + (cp − 1)·max over the two
 * unmasked shapes; backward the same with the last step's rounding of dq (see the header).
 */
function ringTime(cp: number, causal: Timed, qLong: Timed, kvLong: Timed, qLongLast: number, kvLongLast: number): Timed {
  const fwd = causal.fwd + (cp - 1) * Math.max(qLong.fwd, kvLong.fwd);
  const bwd = causal.bwd + (cp - 2) * Math.max(qLong.bwd, kvLong.bwd) + Math.max(qLongLast, kvLongLast);
  return { fwd, bwd };
}

/** Runs the ring-launch benchmark on this process's GPU and prints its table; returns the rows. */
export async function runRingAttentionBench(opts: RingBenchOptions): Promise<RingBenchRow[]> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const cp = opts.cp;
  if (!(Number.isInteger(cp) && cp >= 2)) throw new Error(`bench attention --cp ${cp}: give the context-parallel ranks to model, an integer ≥ 2 (2 or 4)`);
  const seqs = opts.seqs ?? [4096, 8192, 16384];
  for (const s of seqs) zigzagChunk(s, cp);
  const rounds = opts.rounds ?? 3;
  if (!cudaAvailable()) throw new Error('bench attention needs a CUDA GPU: libcuda did not load or no device is visible');
  const b = opts.batch ?? 1, h = 16;
  if (!(Number.isInteger(b) && b >= 1)) throw new Error(`bench attention --batch ${b}: give the whole-sequence kernel's batch, an integer ≥ 1`);
  const be = new CudaBackend(new CudaContext());
  const kernels = chooseMlaKernels({ arch: be.ctx.arch, computeCapability: be.ctx.computeCapability, dtype: 'bf16', dNope: D_NOPE, dRope: D_ROPE, dV: D_V, request: 'auto' });
  if (kernels === 'generic') throw new Error(`bench attention times the tensor-core MLA kernels; ${be.ctx.name} has none (compute capability 8.0 or later)`);
  const attention = new MlaAttentionLauncher(be.ctx, be.allocator);
  log(`ring attention launches on ${be.ctx.description}: MLA h=${h} dq=192 dv=128 bf16, ${kernels} kernels, cp=${cp} zigzag, c = s/${2 * cp}: ` +
    `a ring is 1 causal launch of 2c + ${cp - 1} unmasked (q 2c × kv c or q c × kv 2c); median of ${rounds} rounds`);
  // Every rank's launches carry 1/cp of the whole sequence's FLOPs (the convention above).
  const launchFlops = (x: LaunchShape) => h * x.sq * x.skv * (D_NOPE + D_ROPE + D_V) * (x.causal ? 1 : 2);
  for (const s of seqs) for (let r = 0; r < cp; r++) {
    const sum = rankLaunches(cp, s / (2 * cp), r).reduce((n, x) => n + launchFlops(x), 0);
    if (sum * cp !== attentionFlops(1, h, s)) throw new Error(`internal: rank ${r}'s launches at s=${s} carry ${sum} FLOPs, not 1/${cp} of ${attentionFlops(1, h, s)}`);
  }
  const chunk = randomBf16Chunk(1 << 22, 0x9e3779b9);
  // Ring steps run backwardBlock where the kernels have it (Hopper); elsewhere the whole backward, as the backend does.
  const blocks = kernels === 'hopper';
  const launchTimes = (batch: number, c: number): RingLaunchTimes => {
    const step = (s: RingStepBwd['step']): RingStepBwd | null => (blocks ? { step: s, c } : null);
    const causal = timeLaunch(be, attention, kernels, batch, h, { sq: 2 * c, skv: 2 * c, causal: true }, chunk, step('first'));
    const qLong = timeLaunch(be, attention, kernels, batch, h, { sq: 2 * c, skv: c, causal: false }, chunk, step('middle'));
    const kvLong = timeLaunch(be, attention, kernels, batch, h, { sq: c, skv: 2 * c, causal: false }, chunk, step('middle'));
    const qLongLast = blocks ? timeLaunch(be, attention, kernels, batch, h, { sq: 2 * c, skv: c, causal: false }, chunk, step('last')).bwd : qLong.bwd;
    const kvLongLast = blocks ? timeLaunch(be, attention, kernels, batch, h, { sq: c, skv: 2 * c, causal: false }, chunk, step('last')).bwd : kvLong.bwd;
    return { causal, qLong, kvLong, qLongLast, kvLongLast, ring: ringTime(cp, causal, qLong, kvLong, qLongLast, kvLongLast) };
  };
  const byRound: RingBenchRow[][] = [];
  for (let round = 0; round < rounds; round++) {
    byRound.push(seqs.map((s) => {
      const c = s / (2 * cp);
      const row: RingBenchRow = {
        s, cp,
        whole: timeLaunch(be, attention, kernels, b, h, { sq: s, skv: s, causal: true }, chunk, null),
        own: opts.oneLaunchOnly ? null : launchTimes(b, c),
        sameWork: opts.oneLaunchOnly ? null : launchTimes(b * cp, c),
        oneLaunch: blocks && c % 128 === 0
          ? { own: oneLaunchRing(be, attention, b, h, cp, c, chunk), sameWork: oneLaunchRing(be, attention, b * cp, h, cp, c, chunk) } : null,
      };
      be.allocator.releaseCached();
      return row;
    }));
  }
  // Medians over rounds, per launch; the ring time from the median launch times.
  const med = (i: number, pick: (r: RingBenchRow) => Timed): Timed =>
    ({ fwd: median(byRound.map((r) => pick(r[i]!).fwd)), bwd: median(byRound.map((r) => pick(r[i]!).bwd)) });
  const rows = seqs.map((s, i): RingBenchRow => {
    const times = (k: 'own' | 'sameWork'): RingLaunchTimes | null => {
      if (opts.oneLaunchOnly) return null;
      const causal = med(i, (r) => r[k]!.causal), qLong = med(i, (r) => r[k]!.qLong), kvLong = med(i, (r) => r[k]!.kvLong);
      const qLongLast = median(byRound.map((r) => r[i]![k]!.qLongLast)), kvLongLast = median(byRound.map((r) => r[i]![k]!.kvLongLast));
      return { causal, qLong, kvLong, qLongLast, kvLongLast, ring: ringTime(cp, causal, qLong, kvLong, qLongLast, kvLongLast) };
    };
    // Medians over rounds of each rank's times, and the slowest rank's of those.
    const medRanks = (pick: (r: RingBenchRow) => RankTimes): RankTimes => slowest(Array.from({ length: cp }, (_, k) => med(i, (r) => pick(r).ranks[k]!)));
    const one = byRound[0]![i]!.oneLaunch
      ? { own: medRanks((r) => r.oneLaunch!.own), sameWork: medRanks((r) => r.oneLaunch!.sameWork) } : null;
    return { s, cp, whole: med(i, (r) => r.whole), own: times('own'), sameWork: times('sameWork'), oneLaunch: one };
  });
  const tf = (flops: number, ms: number) => flops / ms / 1e9;
  if (!opts.oneLaunchOnly) perStepTable(rows, b, h, cp, log, tf);
  oneLaunchTable(rows, b, h, cp, log, tf);
  return rows;
}

/** The per-step rows (a launch per ring step, step-synchronous) and their verdicts. */
function perStepTable(rows: readonly RingBenchRow[], b: number, h: number, cp: number, log: (line: string) => void, tf: (flops: number, ms: number) => number): void {
  const header = ['s', 'cp', 'row (batch)', 'causal 2c fwd / bwd ms', 'q 2c × kv c fwd / bwd ms', 'q c × kv 2c fwd / bwd ms', 'last step bwd ms (2c × c, c × 2c)',
    'whole fwd ms / TFLOPS', 'ring fwd ms / TFLOPS', 'fwd ratio', 'whole bwd ms / TFLOPS', 'ring bwd ms / TFLOPS', 'bwd ratio'];
  log(`| ${header.join(' | ')} |`);
  log(`|${header.map(() => '---').join('|')}|`);
  const pair = (t: Timed) => `${t.fwd.toFixed(3)} / ${t.bwd.toFixed(3)}`;
  const verdicts: string[] = [];
  for (const r of rows) {
    const whole = attentionFlops(b, h, r.s);
    for (const [name, batch, t] of [['own work', b, r.own!], ['same total work', b * cp, r.sameWork!]] as const) {
      const flops = attentionFlops(batch, h, r.s) / cp;
      const ratio = (k: 'fwd' | 'bwd') => tf(flops * (k === 'bwd' ? 2.5 : 1), t.ring[k]) / tf(whole * (k === 'bwd' ? 2.5 : 1), r.whole[k]);
      log(`| ${[
        r.s, r.cp, `${name} (${batch})`, pair(t.causal), pair(t.qLong), pair(t.kvLong), `${t.qLongLast.toFixed(3)}, ${t.kvLongLast.toFixed(3)}`,
        `${r.whole.fwd.toFixed(3)} / ${tf(whole, r.whole.fwd).toFixed(0)}`, `${t.ring.fwd.toFixed(3)} / ${tf(flops, t.ring.fwd).toFixed(0)}`, `${ratio('fwd').toFixed(3)}x`,
        `${r.whole.bwd.toFixed(3)} / ${tf(2.5 * whole, r.whole.bwd).toFixed(0)}`, `${t.ring.bwd.toFixed(3)} / ${tf(2.5 * flops, t.ring.bwd).toFixed(0)}`, `${ratio('bwd').toFixed(3)}x`,
      ].join(' | ')} |`);
      if (batch !== b) {
        const ok = ratio('fwd') >= 0.95 && ratio('bwd') >= 0.95;
        verdicts.push(`s=${r.s}: fwd ${ratio('fwd').toFixed(3)}x bwd ${ratio('bwd').toFixed(3)}x ${ok ? 'meets' : 'MISSES'} it`);
      }
    }
  }
  log(`target (issue 14): same-total-work ring TFLOP/s ≥ 0.95× the whole-sequence kernel's, forward and backward; cp=${cp}: ${verdicts.join('; ')}`);
}

/**
 * The ring in one launch per rank (what ring_attention.ts runs on Hopper when c is a multiple of
 * 128), and its verdicts.
 */
function oneLaunchTable(rows: readonly RingBenchRow[], b: number, h: number, cp: number, log: (line: string) => void, tf: (flops: number, ms: number) => number): void {
  if (!rows.some((r) => r.oneLaunch)) return;
  const head = ['s', 'cp', 'row (batch)', 'whole fwd ms / TFLOPS', 'one-launch ring fwd ms / TFLOPS (slowest rank)', 'fwd ratio',
    'whole bwd ms / TFLOPS', 'one-launch ring bwd ms / TFLOPS (slowest rank)', 'bwd ratio', 'ranks 0…cp−1 fwd / bwd ms'];
  log(`| ${head.join(' | ')} |`);
  log(`|${head.map(() => '---').join('|')}|`);
  const ms = (flops: number, t: number) => `${t.toFixed(3)} / ${tf(flops, t).toFixed(0)}`;
  const oneVerdicts: string[] = [];
  for (const r of rows) {
    if (!r.oneLaunch) continue;
    const whole = attentionFlops(b, h, r.s);
    for (const [name, batch, t] of [['own work', b, r.oneLaunch.own], ['same total work', b * cp, r.oneLaunch.sameWork]] as const) {
      const flops = attentionFlops(batch, h, r.s) / cp;
      const fwdRatio = tf(flops, t.fwd) / tf(whole, r.whole.fwd);
      const bwdRatio = tf(flops, t.bwd) / tf(whole, r.whole.bwd);
      log(`| ${[r.s, r.cp, `${name} (${batch})`,
        ms(whole, r.whole.fwd), ms(flops, t.fwd), `${fwdRatio.toFixed(3)}x`,
        ms(2.5 * whole, r.whole.bwd), ms(2.5 * flops, t.bwd), `${bwdRatio.toFixed(3)}x`,
        `${t.ranks.map((x) => x.fwd.toFixed(3)).join(', ')} / ${t.ranks.map((x) => x.bwd.toFixed(3)).join(', ')}`,
      ].join(' | ')} |`);
      if (batch !== b) {
        const ok = fwdRatio >= 0.95 && bwdRatio >= 0.95;
        oneVerdicts.push(`s=${r.s}: fwd ${fwdRatio.toFixed(3)}x bwd ${bwdRatio.toFixed(3)}x ${ok ? 'meets' : 'MISSES'} it`);
      }
    }
  }
  log(`target (issue 14), the ring in one launch per rank: cp=${cp}: ${oneVerdicts.join('; ')}`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await runRingAttentionBench({ cp: Number(process.argv[2] ?? 2), ...(process.argv[3] ? { seqs: process.argv[3].split(',').map(Number) } : {}) });
}
