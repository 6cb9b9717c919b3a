// What a pipeline schedule is, and a simulator that runs one. A schedule gives every pipeline
// rank its ordered list of actions: forward and backward passes of a micro-batch through a
// virtual stage (a contiguous block of layers; 1F1B has pp of them, DualPipeV 2·pp), a forward
// and a backward fused into one unit (DualPipeV's F&B pairs, which a GPU overlaps), and the
// point-to-point transfers of activations and their gradients between ranks. schedule.ts makes
// schedules; pipeline.ts executes them.
//
// The simulator runs every rank's list against given pass costs and records when each action
// starts and ends, so idle time and the bubble fraction (idle rank-time / all rank-time) are
// computed, not assumed. A transfer takes a fixed latency (default 0: what it costs is then
// only waiting for its peer). Three semantics:
//   ideal       the transfer actions are skipped; a pass starts once the pass that produces its
//               input has ended, wherever that ran (the schedule's compute order alone)
//   eager       a send completes when posted; a recv completes once its send has been posted
//               (the CPU communicator, whose sends are buffered)
//   rendezvous  a send and its recv complete together, once both are posted (NCCL on one
//               stream: a send waits for the peer to receive); a sendRecv's halves progress
//               independently and it completes with the later one
// A schedule that cannot finish under a semantics is a deadlock, reported with what each rank
// waits for; a pass whose input has not arrived, a transfer of something not yet produced, or a
// pass run twice or never, is a broken schedule. Both are internal errors (schedules are
// generated, not written by users).

export type ScheduleKind = '1f1b' | 'dualpipev';

/** One pass of micro-batch `mb` (0-based) through virtual stage `stage`. */
export interface Pass {
  mb: number;
  stage: number;
}

/**
 * A tensor moving between ranks: 'activation' is the output of forward(mb, stage), consumed by
 * forward(mb, stage + 1); 'gradient' is the gradient of forward(mb, stage)'s input, produced by
 * backward(mb, stage) and consumed by backward(mb, stage − 1).
 */
export interface Transfer {
  kind: 'activation' | 'gradient';
  mb: number;
  stage: number;
  from: number;
  to: number;
}

export type Action =
  | { op: 'forward'; pass: Pass }
  | { op: 'backward'; pass: Pass }
  /** A forward and a backward of different micro-batches as one unit: both inputs before it, both outputs after it. */
  | { op: 'forwardBackward'; forward: Pass; backward: Pass }
  | { op: 'send'; transfer: Transfer }
  | { op: 'recv'; transfer: Transfer }
  /** One send and one receive issued together (a pipeline step between neighbours). */
  | { op: 'sendRecv'; send: Transfer; recv: Transfer };

export interface Schedule {
  kind: ScheduleKind;
  /** Pipeline ranks. */
  pp: number;
  /** Micro-batches per optimizer step. */
  micro: number;
  /** stageRank[s]: the rank that holds virtual stage s. */
  stageRank: readonly number[];
  /** actions[r]: rank r's actions, in order. */
  actions: readonly (readonly Action[])[];
}

/** Cost of one pass through each virtual stage (any time unit; must be positive). */
export interface PassCosts {
  forward: readonly number[];
  backward: readonly number[];
}

/** The cost of each pass on its own (a measured run's durations). */
export type PassCostOf = (dir: 'forward' | 'backward', p: Pass) => number;

export type CommSemantics = 'ideal' | 'eager' | 'rendezvous';

/** Every virtual stage costs F forward and B backward (the unit costs F = 1, B = 2 by default). */
export function uniformCosts(stages: number, forward = 1, backward = 2): PassCosts {
  return { forward: new Array<number>(stages).fill(forward), backward: new Array<number>(stages).fill(backward) };
}

export interface TimedAction {
  rank: number;
  action: Action;
  /** When the rank reached the action (a transfer: when it was posted). */
  start: number;
  end: number;
}

export interface Simulation {
  /** When the last rank finishes. */
  makespan: number;
  /** Per rank: time spent in passes. */
  busy: number[];
  /** Per rank: makespan − busy (waiting on transfers, and after its last action). */
  idle: number[];
  /** Σ idle / (pp · makespan). */
  bubble: number;
  /** Every action of every rank, in the order the simulator ran them. */
  timeline: TimedAction[];
}

const key = (kind: 'activation' | 'gradient', mb: number, stage: number): string => `${kind[0]}${mb}:${stage}`;
const transferKey = (t: Transfer): string => key(t.kind, t.mb, t.stage);

export function describeAction(a: Action): string {
  const pass = (p: Pass) => `${p.mb}, stage ${p.stage}`;
  const tr = (t: Transfer) => `${t.kind} of (${pass(t)}) ${t.from}→${t.to}`;
  switch (a.op) {
    case 'forward': return `forward(${pass(a.pass)})`;
    case 'backward': return `backward(${pass(a.pass)})`;
    case 'forwardBackward': return `forward(${pass(a.forward)}) & backward(${pass(a.backward)})`;
    case 'send': return `send ${tr(a.transfer)}`;
    case 'recv': return `recv ${tr(a.transfer)}`;
    case 'sendRecv': return `sendRecv (send ${tr(a.send)}; recv ${tr(a.recv)})`;
    default: return a satisfies never;
  }
}

function broken(rank: number, a: Action, what: string): never {
  throw new Error(`internal: pipeline schedule: rank ${rank} at ${describeAction(a)}: ${what}`);
}

/** The passes of a compute action, forward first. */
export function passesOf(a: Action): { forward: Pass | null; backward: Pass | null } {
  switch (a.op) {
    case 'forward': return { forward: a.pass, backward: null };
    case 'backward': return { forward: null, backward: a.pass };
    case 'forwardBackward': return { forward: a.forward, backward: a.backward };
    default: return { forward: null, backward: null };
  }
}

/** The sends and recvs of a transfer action. */
function halvesOf(a: Action): { sends: Transfer[]; recvs: Transfer[] } {
  switch (a.op) {
    case 'send': return { sends: [a.transfer], recvs: [] };
    case 'recv': return { sends: [], recvs: [a.transfer] };
    case 'sendRecv': return { sends: [a.send], recvs: [a.recv] };
    default: return { sends: [], recvs: [] };
  }
}

/**
 * Runs every rank's actions; throws on a deadlock or a broken schedule. `latency`: how long data
 * takes from one rank to another (added to every received tensor's arrival; default 0).
 */
export function simulate(s: Schedule, costs: PassCosts | PassCostOf, semantics: CommSemantics, latency = 0): Simulation {
  const S = s.stageRank.length, P = s.pp;
  const costOf: PassCostOf = typeof costs === 'function' ? costs : (dir, p) => costs[dir][p.stage]!;
  const pc = new Array<number>(P).fill(0);
  const clock = new Array<number>(P).fill(0);
  const busy = new Array<number>(P).fill(0);
  /** What each rank holds as input for a pass, and since when: activation (mb, s) feeds forward(mb, s+1), gradient (mb, s) feeds backward(mb, s−1). */
  const have = Array.from({ length: P }, () => new Map<string, number>());
  /** Passes done on their rank ('f'/'b' + mb:stage) and when they ended. */
  const done = new Map<string, number>();
  /** Post times of transfer halves: 'send '/'recv ' + transfer key. */
  const posted = new Map<string, number>();
  const timeline: TimedAction[] = [];

  const deliver = (kind: 'activation' | 'gradient', mb: number, stage: number, at: number, rank: number): void => {
    const next = kind === 'activation' ? stage + 1 : stage - 1;
    if (next < 0 || next >= S) return;
    const to = s.stageRank[next]!;
    // Local hand-offs (consecutive stages on one rank, the turn of DualPipeV's V) need no transfer;
    // in the ideal semantics nothing does.
    if (to === rank) have[to]!.set(key(kind, mb, stage), at);
    else if (semantics === 'ideal') have[to]!.set(key(kind, mb, stage), at + latency);
  };

  /** Runs a compute action if its inputs are there; returns false when it must wait (ideal only). */
  const compute = (r: number, a: Action): boolean => {
    const { forward, backward } = passesOf(a);
    let ready = clock[r]!, cost = 0;
    const need = (k: string, what: string): boolean => {
      const t = have[r]!.get(k);
      if (t === undefined) {
        if (semantics === 'ideal') return false;
        broken(r, a, `${what} has not arrived`);
      }
      ready = Math.max(ready, t);
      return true;
    };
    for (const [p, dir] of [[forward, 'f'], [backward, 'b']] as const) {
      if (!p) continue;
      if (!(p.mb >= 0 && p.mb < s.micro && p.stage >= 0 && p.stage < S)) broken(r, a, `a step has micro-batches 0…${s.micro - 1} and stages 0…${S - 1}`);
      if (s.stageRank[p.stage] !== r) broken(r, a, `stage ${p.stage} belongs to rank ${s.stageRank[p.stage]}`);
      if (done.has(`${dir}${p.mb}:${p.stage}`)) broken(r, a, 'this pass ran before');
      if (dir === 'f') {
        if (p.stage > 0 && !need(key('activation', p.mb, p.stage - 1), 'its input activation')) return false;
        cost += costOf('forward', p);
      } else {
        const f = done.get(`f${p.mb}:${p.stage}`);
        if (f === undefined) broken(r, a, 'its forward has not run on this rank');
        ready = Math.max(ready, f);
        if (p.stage < S - 1 && !need(key('gradient', p.mb, p.stage + 1), 'the gradient of its output')) return false;
        cost += costOf('backward', p);
      }
    }
    if (!(cost > 0)) broken(r, a, `its cost must be positive, got ${cost}`);
    const end = ready + cost;
    timeline.push({ rank: r, action: a, start: ready, end });
    clock[r] = end;
    busy[r]! += cost;
    if (forward) { done.set(`f${forward.mb}:${forward.stage}`, end); deliver('activation', forward.mb, forward.stage, end, r); }
    if (backward) { done.set(`b${backward.mb}:${backward.stage}`, end); deliver('gradient', backward.mb, backward.stage, end, r); }
    return true;
  };

  /** Posts a transfer action's halves; completes it when they are matched. Returns false while it waits. */
  const transfer = (r: number, a: Action): boolean => {
    const { sends, recvs } = halvesOf(a);
    const t0 = clock[r]!;
    for (const t of sends) {
      if (t.from !== r) broken(r, a, `the send is from rank ${t.from}`);
      if (s.stageRank[t.stage] !== r) broken(r, a, `stage ${t.stage} is not on this rank`);
      const producer = `${t.kind === 'activation' ? 'f' : 'b'}${t.mb}:${t.stage}`;
      if (!done.has(producer)) broken(r, a, 'it has not been produced yet');
      const want = s.stageRank[t.kind === 'activation' ? t.stage + 1 : t.stage - 1];
      if (t.to !== want || t.to === r) broken(r, a, `it belongs to rank ${want}`);
      if (!posted.has(`send ${transferKey(t)}`)) posted.set(`send ${transferKey(t)}`, t0);
    }
    for (const t of recvs) {
      if (t.to !== r) broken(r, a, `the recv is for rank ${t.to}`);
      if (!posted.has(`recv ${transferKey(t)}`)) posted.set(`recv ${transferKey(t)}`, t0);
    }
    let end = t0;
    for (const t of sends) {
      const peer = posted.get(`recv ${transferKey(t)}`);
      if (semantics === 'rendezvous') {
        if (peer === undefined) return false;
        end = Math.max(end, peer);
      }
    }
    for (const t of recvs) {
      const peer = posted.get(`send ${transferKey(t)}`);
      if (peer === undefined) return false;
      end = Math.max(end, semantics === 'rendezvous' ? peer : peer + latency);
    }
    if (semantics === 'rendezvous') end += latency;
    for (const t of recvs) have[r]!.set(transferKey(t), end);
    timeline.push({ rank: r, action: a, start: t0, end });
    clock[r] = end;
    return true;
  };

  for (;;) {
    let progress = false;
    for (let r = 0; r < P; r++) {
      const list = s.actions[r]!;
      while (pc[r]! < list.length) {
        const a = list[pc[r]!]!;
        const isCompute = a.op === 'forward' || a.op === 'backward' || a.op === 'forwardBackward';
        const ran = isCompute ? compute(r, a) : semantics === 'ideal' || transfer(r, a);
        if (!ran) break;
        pc[r]!++;
        progress = true;
      }
    }
    if (pc.every((n, r) => n === s.actions[r]!.length)) break;
    if (!progress) {
      const waits = pc.map((n, r) => `rank ${r} ${n < s.actions[r]!.length ? `waits at ${describeAction(s.actions[r]![n]!)}` : 'is done'}`);
      throw new Error(`internal: pipeline schedule ${s.kind} pp${P} m${s.micro} deadlocks under ${semantics} transfers: ${waits.join('; ')}`);
    }
  }
  for (let mb = 0; mb < s.micro; mb++) {
    for (let st = 0; st < S; st++) {
      if (!done.has(`f${mb}:${st}`) || !done.has(`b${mb}:${st}`)) throw new Error(`internal: pipeline schedule ${s.kind}: micro-batch ${mb} never runs ${done.has(`f${mb}:${st}`) ? 'backward' : 'forward'} through stage ${st}`);
    }
  }
  if (semantics !== 'ideal') {
    for (const k of posted.keys()) {
      const [side, id] = k.split(' ') as [string, string];
      if (!posted.has(`${side === 'send' ? 'recv' : 'send'} ${id}`)) throw new Error(`internal: pipeline schedule ${s.kind}: ${k} has no matching ${side === 'send' ? 'recv' : 'send'}`);
    }
  }
  const makespan = Math.max(...clock);
  const idle = busy.map((b) => makespan - b);
  return { makespan, busy, idle, bubble: idle.reduce((x, y) => x + y, 0) / (P * makespan), timeline };
}
