// Pipeline schedules, per rank, for pp ranks and m micro-batches (the actions are defined in
// schedule_sim.ts):
//
// 1F1B: rank r holds stage r of pp. It runs pp − r − 1 warm-up forwards, then alternates one
//   forward and one backward, then drains the remaining backwards; at most pp − r micro-batches'
//   activations are alive on it. Bubble (p − 1)/(m + p − 1) whatever the F:B cost ratio.
//
// DualPipeV: 2·pp virtual stages in a V: rank r holds stages r (chunk 0, on the way down) and
//   2·pp − 1 − r (chunk 1, on the way back), so rank 0 holds the embedding and the head, and
//   rank pp − 1 turns the V locally. Per rank, in order (F0/B0 are chunk 0's forward/backward of
//   the next micro-batch in order, F1/B1 chunk 1's; "F0&B1" is a forward and a backward of
//   different micro-batches as one unit, which a GPU can overlap to hide one's all-to-all behind
//   the other's compute; pipeline.ts runs them one after the other):
//     2(p−r−1) × F0;  (r+1) × [F0, F1];  (p−r−1) × [B1, F1];
//     (m−2p+r+1) × [F0&B1, F1&B0];  (p−r−1) × [B1, F1&B0];  (r+1) × [B1, B0];  (p−r−1) × B0
//   The counts are whole for m ≥ 2·pp − 1 (rank 0's steady state is then empty); below that a
//   rank would run micro-batches that do not exist. With per-chunk costs F and B the bubble is
//   (p−1)(F+B+max(F,B)) / (2m(F+B) + (p−1)(F+B+max(F,B))): against 1F1B over the same layers
//   (a stage = two chunks) each rank idles (p−1)·min(F,B) less. The backward is not split into
//   input and weight gradients (DeepSeek's zero-bubble variant fills more of the bubble so).
//
// Transfers are placed by a global order: the schedule's compute order is timed first (the
// ideal semantics of the simulator, at the costs given), each transfer gets a moment between
// the end of the pass that produces it and the start of the pass that needs it when its sender
// is between passes (so buffered sends, the CPU communicator's, run in exactly the ideal time),
// the earliest such moment when the receiver is between passes too, and every rank's list is
// the projection of the one sorted sequence of passes and transfers. A projection of one global
// order cannot deadlock even when every send waits for its receiver (NCCL on one stream); where
// every transfer found a moment free on both ranks (all of 1F1B and DualPipeV at uniform stage
// costs), that too runs in exactly the ideal time.
import {
  passesOf, simulate, uniformCosts, type Action, type Pass, type PassCosts, type Schedule, type ScheduleKind, type Transfer,
} from './schedule_sim.js';

/** Virtual stages of a schedule: pp for 1F1B, 2·pp for DualPipeV. */
export function virtualStages(kind: ScheduleKind, pp: number): number {
  switch (kind) {
    case '1f1b': return pp;
    case 'dualpipev': return 2 * pp;
    default: return kind satisfies never;
  }
}

/** The rank that holds each virtual stage. */
export function stageRanks(kind: ScheduleKind, pp: number): number[] {
  const S = virtualStages(kind, pp);
  return Array.from({ length: S }, (_, s) => (s < pp ? s : 2 * pp - 1 - s));
}

/** The virtual stages rank r holds, in chunk order (chunk 0 first). */
export function stagesOfRank(kind: ScheduleKind, pp: number, rank: number): number[] {
  return kind === '1f1b' ? [rank] : [rank, 2 * pp - 1 - rank];
}

/** The fewest micro-batches a schedule runs with (1F1B runs any count, wastefully below pp). */
export function minMicroBatches(kind: ScheduleKind, pp: number): number {
  return kind === '1f1b' ? 1 : 2 * pp - 1;
}

/**
 * Checks pp and the micro-batch count for a schedule: throws one line with the numbers and the
 * fix when the schedule cannot run; returns a warning line when it runs but wastes ranks
 * (1F1B with fewer micro-batches than stages), else null.
 */
export function checkSchedule(kind: ScheduleKind, pp: number, micro: number): string | null {
  if (!(Number.isInteger(pp) && pp >= 1)) throw new Error(`--parallel.pp must be a positive integer, got ${pp}`);
  if (!(Number.isInteger(micro) && micro >= 1)) throw new Error(`micro-batches per step must be a positive integer, got ${micro}`);
  const least = minMicroBatches(kind, pp);
  if (micro < least) {
    throw new Error(`the dualpipev schedule needs micro-batches ≥ 2·pp − 1 = 2·${pp} − 1 = ${least}, got global_batch_size / micro_batch_size = ${micro}; raise global_batch_size (or lower micro_batch_size) to give at least ${least} micro-batches, or use --parallel.schedule 1f1b`);
  }
  if (kind === '1f1b' && micro < pp) {
    return `1f1b with ${micro} micro-batches < pp = ${pp}: at most ${micro} of the ${pp} stages work at any time (bubble ${(100 * (pp - 1) / (micro + pp - 1)).toFixed(0)}%); give at least ${pp} micro-batches per step`;
  }
  return null;
}

function oneFOneBOrder(pp: number, m: number, r: number): Action[] {
  const out: Action[] = [];
  const warm = Math.min(pp - r - 1, m);
  const F = (mb: number): Action => ({ op: 'forward', pass: { mb, stage: r } });
  const B = (mb: number): Action => ({ op: 'backward', pass: { mb, stage: r } });
  for (let i = 0; i < warm; i++) out.push(F(i));
  for (let i = 0; i < m - warm; i++) out.push(F(warm + i), B(i));
  for (let i = m - warm; i < m; i++) out.push(B(i));
  return out;
}

function dualPipeVOrder(pp: number, m: number, r: number): Action[] {
  const out: Action[] = [];
  const s0 = r, s1 = 2 * pp - 1 - r;
  const next = { f0: 0, f1: 0, b0: 0, b1: 0 };
  const pass = (which: keyof typeof next, stage: number): Pass => ({ mb: next[which]++, stage });
  const F0 = (): Action => ({ op: 'forward', pass: pass('f0', s0) });
  const F1 = (): Action => ({ op: 'forward', pass: pass('f1', s1) });
  const B0 = (): Action => ({ op: 'backward', pass: pass('b0', s0) });
  const B1 = (): Action => ({ op: 'backward', pass: pass('b1', s1) });
  const F0B1 = (): Action => ({ op: 'forwardBackward', forward: pass('f0', s0), backward: pass('b1', s1) });
  const F1B0 = (): Action => ({ op: 'forwardBackward', forward: pass('f1', s1), backward: pass('b0', s0) });
  const repeat = (n: number, ...steps: (() => Action)[]) => { for (let i = 0; i < n; i++) for (const f of steps) out.push(f()); };
  repeat(2 * (pp - r - 1), F0);
  repeat(r + 1, F0, F1);
  repeat(pp - r - 1, B1, F1);
  repeat(m - 2 * pp + r + 1, F0B1, F1B0);
  repeat(pp - r - 1, B1, F1B0);
  repeat(r + 1, B1, B0);
  repeat(pp - r - 1, B0);
  return out;
}

/** Each rank's passes in order, without transfers. */
export function computeOrder(kind: ScheduleKind, pp: number, micro: number): Action[][] {
  checkSchedule(kind, pp, micro);
  const order = kind === '1f1b' ? oneFOneBOrder : dualPipeVOrder;
  return Array.from({ length: pp }, (_, r) => order(pp, micro, r));
}

/** Busy intervals of one rank in the ideal timing, sorted. */
type Intervals = { start: number; end: number }[];

/** Index of the last interval that starts before t (−1 when none). */
function lastStartingBefore(iv: Intervals, t: number): number {
  let lo = 0, hi = iv.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (iv[mid]!.start < t) lo = mid + 1; else hi = mid;
  }
  return lo - 1;
}

/** Time a rank inside a pass at t still needs before it can meet a transfer (0 when between passes). */
function stallAt(iv: Intervals, t: number): number {
  const x = iv[lastStartingBefore(iv, t)];
  return x && t < x.end ? x.end - t : 0;
}

/**
 * A time in [ready, needed] for a transfer from rank a to rank b: one when a is between passes
 * (so the data leaves when the ideal timing has it ready, and buffered sends lose nothing),
 * the earliest of those where b is between passes too, else the one where b's pass ends soonest.
 */
function transferTime(a: Intervals, b: Intervals, ready: number, needed: number): number {
  const candidates = [ready];
  for (const iv of [a, b]) {
    for (let i = Math.max(0, lastStartingBefore(iv, ready)); i < iv.length && iv[i]!.start <= needed; i++) {
      for (const t of [iv[i]!.start, iv[i]!.end]) if (t >= ready && t <= needed) candidates.push(t);
    }
  }
  let best = ready, bestStall = Infinity;
  for (const t of candidates.sort((x, y) => x - y)) {
    if (stallAt(a, t) > 0) continue;
    const stall = stallAt(b, t);
    if (stall < bestStall) { best = t; bestStall = stall; }
  }
  return best;
}

/** Adds the transfers to every rank's compute order (see the header) and pairs adjacent send/recv into sendRecv. */
function placeTransfers(kind: ScheduleKind, pp: number, micro: number, order: Action[][], costs: PassCosts): Action[][] {
  const stageRank = stageRanks(kind, pp), S = stageRank.length;
  const ideal = simulate({ kind, pp, micro, stageRank, actions: order }, costs, 'ideal');
  const intervals: Intervals[] = Array.from({ length: pp }, () => []);
  const startOf = new Map<string, number>(), endOf = new Map<string, number>();
  type Event = { time: number; cls: number; tie: string; ranks: [number, Action][] };
  const events: Event[] = [];
  for (const t of ideal.timeline) {
    intervals[t.rank]!.push({ start: t.start, end: t.end });
    const { forward, backward } = passesOf(t.action);
    for (const [p, dir] of [[forward, 'f'], [backward, 'b']] as const) {
      if (!p) continue;
      startOf.set(`${dir}${p.mb}:${p.stage}`, t.start);
      endOf.set(`${dir}${p.mb}:${p.stage}`, t.end);
    }
    events.push({ time: t.start, cls: 1, tie: `${t.rank}`, ranks: [[t.rank, t.action]] });
  }
  for (const iv of intervals) iv.sort((x, y) => x.start - y.start);
  for (let mb = 0; mb < micro; mb++) {
    for (let st = 0; st < S; st++) {
      const moves: [Transfer['kind'], number, string, string][] = [];
      if (st + 1 < S) moves.push(['activation', st + 1, `f${mb}:${st}`, `f${mb}:${st + 1}`]);
      if (st > 0) moves.push(['gradient', st - 1, `b${mb}:${st}`, `b${mb}:${st - 1}`]);
      for (const [kindOf, to, producer, consumer] of moves) {
        const from = stageRank[st]!, toRank = stageRank[to]!;
        if (from === toRank) continue;
        const tr: Transfer = { kind: kindOf, mb, stage: st, from, to: toRank };
        const time = transferTime(intervals[from]!, intervals[toRank]!, endOf.get(producer)!, startOf.get(consumer)!);
        events.push({ time, cls: 0, tie: `${kindOf[0]}${String(mb).padStart(6, '0')}:${String(st).padStart(4, '0')}`, ranks: [[from, { op: 'send', transfer: tr }], [toRank, { op: 'recv', transfer: tr }]] });
      }
    }
  }
  // Transfers at a moment go before the passes that start then; ties in a fixed order.
  events.sort((x, y) => x.time - y.time || x.cls - y.cls || (x.tie < y.tie ? -1 : x.tie > y.tie ? 1 : 0));
  const lists: Action[][] = Array.from({ length: pp }, () => []);
  for (const e of events) for (const [r, a] of e.ranks) lists[r]!.push(a);
  return lists.map(pairSendRecv);
}

/** Adjacent send and recv (either order) become one sendRecv. */
function pairSendRecv(list: Action[]): Action[] {
  const out: Action[] = [];
  for (let i = 0; i < list.length; i++) {
    const a = list[i]!, b = list[i + 1];
    if (b && a.op === 'send' && b.op === 'recv') { out.push({ op: 'sendRecv', send: a.transfer, recv: b.transfer }); i++; continue; }
    if (b && a.op === 'recv' && b.op === 'send') { out.push({ op: 'sendRecv', send: b.transfer, recv: a.transfer }); i++; continue; }
    out.push(a);
  }
  return out;
}

/**
 * The schedule of one optimizer step: every rank's passes and transfers. `costs` (per virtual
 * stage; default F = 1, B = 2) only decides where transfers go, never what runs.
 */
export function pipelineSchedule(kind: ScheduleKind, pp: number, micro: number, costs?: PassCosts): Schedule {
  const stageRank = stageRanks(kind, pp);
  const c = costs ?? uniformCosts(stageRank.length);
  const actions = placeTransfers(kind, pp, micro, computeOrder(kind, pp, micro), c);
  return { kind, pp, micro, stageRank, actions };
}

/** The bubble fraction of a schedule's compute order at unit costs F = 1, B = 2 per virtual stage. */
export function bubbleFraction(kind: ScheduleKind, pp: number, micro: number, costs?: PassCosts): number {
  const stageRank = stageRanks(kind, pp);
  const c = costs ?? uniformCosts(stageRank.length);
  return simulate({ kind, pp, micro, stageRank, actions: computeOrder(kind, pp, micro) }, c, 'ideal').bubble;
}

/** The start-up line: both schedules' bubble fractions at this pp and micro-batch count. */
export function bubbleLine(pp: number, micro: number): string {
  const part = (kind: ScheduleKind): string => (micro < minMicroBatches(kind, pp)
    ? `${kind} needs ≥ ${minMicroBatches(kind, pp)} micro-batches`
    : `${kind} ${(100 * bubbleFraction(kind, pp, micro)).toFixed(1)}%`);
  return `pipeline bubble (idle / all rank-time, F = 1, B = 2) at pp ${pp}, ${micro} micro-batches: ${part('1f1b')}, ${part('dualpipev')}`;
}
