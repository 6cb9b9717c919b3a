// Every rank of a ring in one process, for code that talks only through sendRecv (ring
// attention): ranks run one after the other, each through a ReplayRing view that records what
// it sends (per rank and call index, as host values) and receives what its `from` peer sent at
// the same call index in the latest run that reached it (zeros before any did). A message can
// depend on messages of earlier calls of other ranks (ring attention's gradient accumulators
// pick up each rank's part on the way), so the ranks are run in passes until no message changes:
// a call's message is right once every message it depends on was right in an earlier run, which
// takes at most (calls per rank + 1) passes. One GPU can then run a whole ring of the real code.
// "Changes" allows 1e-3 of the message's largest value: a GPU backward that adds with atomics
// differs in its last bits run to run, while a message still missing a rank's part is off by
// a share of order one.
import { backendOf } from '../../src/backend/backend.js';
import type { Communicator, PendingCollective, ReduceOp } from '../../src/parallel/communicator.js';
import { bf16ArrayToF32, type HostArray as Host } from '../../src/tensor/dtype.js';
import type { Tensor } from '../../src/tensor/tensor.js';

/** A message's values as numbers (bf16 bits, which read() returns as Uint16Array, decoded). */
function numbers(h: Host): Float32Array | Int32Array {
  return h instanceof Uint16Array ? bf16ArrayToF32(h) : h;
}

function differs(a: Host, b: Host): boolean {
  if (a.length !== b.length) return true;
  const x = numbers(a), y = numbers(b);
  let big = 0, worst = 0;
  for (let i = 0; i < x.length; i++) {
    if (Number.isNaN(x[i]!) !== Number.isNaN(y[i]!)) return true;
    big = Math.max(big, Math.abs(y[i]!));
    worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
  }
  return worst > 1e-3 * big;
}

/** The shared store of one ring: messages by sender and call index. */
export class ReplayStore {
  private readonly sent = new Map<string, Host>();
  /** Messages that differed from the previous run's (or were new) since the last reset. */
  changed = 0;

  record(rank: number, call: number, values: Host): void {
    const key = `${rank}:${call}`, old = this.sent.get(key);
    if (!old || differs(old, values)) this.changed++;
    this.sent.set(key, values);
  }

  get(rank: number, call: number): Host | undefined { return this.sent.get(`${rank}:${call}`); }
}

/** Rank `rank` of a ring of `size` over `store`; `sendRecv` only. Reset `calls` before each run. */
export class ReplayRing implements Communicator {
  readonly worldRanks: readonly number[];
  readonly name = 'replay ring';
  calls = 0;

  constructor(readonly rank: number, readonly size: number, private readonly store: ReplayStore) {
    this.worldRanks = Array.from({ length: size }, (_, i) => i);
  }

  sendRecv(send: Tensor, _to: number, recv: Tensor, from: number): void {
    const call = this.calls++, be = backendOf(send);
    this.store.record(this.rank, call, be.read(send));
    const got = this.store.get(from, call);
    if (got && got.length === recv.size) be.write(recv, got);
    else be.fill(recv, 0);
  }

  private unsupported(what: string): never { throw new Error(`internal: ReplayRing supports sendRecv only, not ${what}`); }
  allReduce(_t: Tensor, _op: ReduceOp): void { this.unsupported('allReduce'); }
  reduceScatter(): void { this.unsupported('reduceScatter'); }
  reduceScatterStart(): PendingCollective { this.unsupported('reduceScatterStart'); }
  allGather(): void { this.unsupported('allGather'); }
  allGatherStart(): PendingCollective { this.unsupported('allGatherStart'); }
  allToAll(): void { this.unsupported('allToAll'); }
  send(): void { this.unsupported('send'); }
  recv(): void { this.unsupported('recv'); }
  barrier(): void { this.unsupported('barrier'); }
  group(): Promise<Communicator> { return this.unsupported('group'); }
  close(): void {}
}

/**
 * Runs `run(comm)` for every rank of a ring of `size`, in passes until no message changes, and
 * returns the last pass's results (by rank) and the number of passes. Throws when it does not
 * settle within `maxPasses`.
 */
export function replayRing<T>(size: number, run: (comm: ReplayRing) => T, maxPasses = 3 * size + 3): { results: T[]; passes: number } {
  const store = new ReplayStore();
  const rings = Array.from({ length: size }, (_, r) => new ReplayRing(r, size, store));
  for (let pass = 1; pass <= maxPasses; pass++) {
    store.changed = 0;
    const results = rings.map((ring) => { ring.calls = 0; return run(ring); });
    if (store.changed === 0) return { results, passes: pass };
  }
  throw new Error(`replayRing: the messages of a ring of ${size} still changed after ${maxPasses} passes`);
}
