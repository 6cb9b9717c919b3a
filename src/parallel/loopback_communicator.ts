// One rank of a larger world, simulated in one process: every collective is a local copy of the
// size the real collective would produce, so the rank's own code path (its pipeline stage, its
// parameter shards, its experts, expert dispatch, the pipeline schedule's transfers) runs with
// real shapes while no peer exists. Nothing ever waits. Values that would come from peers are
// stand-ins (finite, not meaningful):
//   allGather      this rank's input copied into every slot, rotated in the other ranks' slots
//                  (gatherRotation: identical copies would tie the router's rows);
//   reduceScatter  this rank's own slice of the input copied out (not a sum over size copies:
//                  a sum of identical slices would only scale the gradient by size, and one
//                  copy is the cheapest kernel that writes the output's bytes, so the copy time
//                  the bench subtracts stays small and the gradients keep one replica's scale);
//   allReduce      t is left as it is (this rank's value stands for the group's);
//   allToAll       symmetric routing: every peer is assumed to send this rank what this rank
//                  sends itself, so block p of the output (recvRows[p] rows) is filled with the
//                  rows of the input's self block, read cyclically through the whole input when
//                  recvRows[p] differs from the self block's length (zeros when the input is
//                  empty); the caller's counts decide every size, as with real peers;
//   send/recv      a send copies into a scratch buffer per (peer, dtype, size); a recv fills its
//                  tensor from the last same-sized send to that peer, or, before any, with fixed
//                  pseudo-random values in [−1, 1) (zeros would route every token of the next
//                  stage alike; see recvCopy).
// Groups made by group() are loopbacks of their own size sharing one record of what moved:
// calls and bytes per collective kind and group, with the bytes the real collective would put
// on the wire per rank (NCCL's bus-bandwidth conventions, below), and, when a timer is given,
// the time of the copies (CUDA events in bench/simulate.ts), so a report can say what the copies
// stand in for. A group of one is a LocalCommunicator, as in the other implementations.
// With `overlap` on CUDA tensors, allGatherStart and reduceScatterStart run their copies on the
// communication stream as NCCL's collectives run (CudaContext.onCommStream), so one GPU exercises
// FSDP's overlapped gathers and reductions (bench simulate --overlap then counts their copies as
// hidden).
import { backendOf } from '../backend/backend.js';
import { bytesPerElement } from '../tensor/dtype.js';
import { fromHost } from '../ops/create.js';
import { keep } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { CudaBackend } from '../backend/cuda/cuda_backend.js';
import { checkArgs, FINISHED, isWholeGroup, rowsOf, type Communicator, type PendingCollective, type ReduceOp } from './communicator.js';
import { LocalCommunicator } from './local_communicator.js';

export type CollectiveKind = 'all-gather' | 'reduce-scatter' | 'all-reduce' | 'all-to-all' | 'p2p';
export const COLLECTIVE_KINDS: readonly CollectiveKind[] = ['all-gather', 'reduce-scatter', 'all-to-all', 'p2p', 'all-reduce'];

/** What one kind of collective moved on one group. */
export interface CollectiveRecord {
  calls: number;
  /** The tensors' bytes: all-gather its output, reduce-scatter its input, all-reduce the tensor, all-to-all and p2p what this rank sends. */
  payloadBytes: number;
  /**
   * Bytes per rank the real collective puts on a link, by NCCL's bus-bandwidth conventions (n the
   * group size): all-reduce 2(n−1)/n·bytes; all-gather and reduce-scatter (n−1)/n of the whole
   * buffer; all-to-all the larger of the rows sent to and received from other ranks; p2p the
   * larger direction of each call. Divided by a bus bandwidth this is the collective's time.
   */
  busBytes: number;
  /** Time of the local copies, when the communicator has a timer (ms; CUDA: from events, read after the step). */
  copyMs: number;
}

/** Times one collective's copies; `done` receives the milliseconds (possibly later, e.g. once CUDA events are read). */
export interface CopyTimer {
  time(fn: () => void, done: (ms: number) => void): void;
}

/** What moved through a loopback world and its groups, by kind and group name ("all-gather dp·cp·ep"). */
export class LoopbackStats {
  readonly records = new Map<string, { kind: CollectiveKind; group: string; record: CollectiveRecord }>();

  add(kind: CollectiveKind, group: string, payloadBytes: number, busBytes: number): CollectiveRecord {
    const key = `${kind} ${group}`;
    let r = this.records.get(key);
    if (!r) { r = { kind, group, record: { calls: 0, payloadBytes: 0, busBytes: 0, copyMs: 0 } }; this.records.set(key, r); }
    r.record.calls++;
    r.record.payloadBytes += payloadBytes;
    r.record.busBytes += busBytes;
    return r.record;
  }

  /** The records summed by kind (every kind present, zero when unused). */
  byKind(): Record<CollectiveKind, CollectiveRecord> {
    const out = Object.fromEntries(COLLECTIVE_KINDS.map((k) => [k, { calls: 0, payloadBytes: 0, busBytes: 0, copyMs: 0 }])) as Record<CollectiveKind, CollectiveRecord>;
    for (const { kind, record } of this.records.values()) {
      const o = out[kind];
      o.calls += record.calls; o.payloadBytes += record.payloadBytes; o.busBytes += record.busBytes; o.copyMs += record.copyMs;
    }
    return out;
  }

  reset(): void { this.records.clear(); }
}

/** dst ← src (equal element counts, contiguous) at element offsets, `n` elements. */
function copyRange(dst: Tensor, dstAt: number, src: Tensor, srcAt: number, n: number): void {
  if (n === 0) return;
  const d = dst.view([n], [1], dst.offset + dstAt), s = src.view([n], [1], src.offset + srcAt);
  try {
    backendOf(dst).copy(d, s);
  } finally {
    d.dispose(); s.dispose();
  }
}

/**
 * Where slot p of a loopback all-gather starts reading this rank's input of n elements (it reads
 * on cyclically): 0 for the rank's own slot, d·7919 mod n for the slot d ranks further on. Were
 * every slot the same copy, the rows of a weight sharded by rows would repeat — the router's rows
 * of experts e, e + E/n, … would be equal, their logits tied, and routing would pile onto a few
 * experts; a rotation by a prime that divides no row length keeps every gathered row distinct.
 */
export function gatherRotation(p: number, rank: number, size: number, n: number): number {
  const d = (p - rank + size) % size;
  return n === 0 ? 0 : (d * 7919) % n;
}

export interface LoopbackOptions {
  /** For messages and the stats ("world", "dp", …). */
  name?: string;
  /** The group's members as world ranks (default 0 … size−1). */
  worldRanks?: readonly number[];
  /** Shared by a world and its groups (default a new one). */
  stats?: LoopbackStats;
  timer?: CopyTimer;
  /** allGatherStart and reduceScatterStart on CUDA tensors run on the communication stream (see the file header). */
  overlap?: boolean;
}

export class LoopbackCommunicator implements Communicator {
  readonly name: string;
  readonly worldRanks: readonly number[];
  readonly stats: LoopbackStats;
  private readonly timer: CopyTimer | null;
  private readonly overlap: boolean;
  /** The last send to each peer, by "peer dtype size". */
  private readonly scratch = new Map<string, Tensor>();
  private readonly groups = new Map<string, LoopbackCommunicator>();
  private closed = false;

  constructor(readonly size: number, readonly rank: number, opts: LoopbackOptions = {}) {
    if (!(Number.isInteger(size) && size >= 1 && Number.isInteger(rank) && rank >= 0 && rank < size)) {
      throw new Error(`internal: a loopback group of ${size} ranks cannot have rank ${rank}`);
    }
    this.name = opts.name ?? 'world';
    this.worldRanks = opts.worldRanks ?? Array.from({ length: size }, (_, i) => i);
    if (this.worldRanks.length !== size) throw new Error(`internal: loopback group ${this.name} of ${size} ranks given ${this.worldRanks.length} world ranks`);
    this.stats = opts.stats ?? new LoopbackStats();
    this.timer = opts.timer ?? null;
    this.overlap = opts.overlap ?? false;
  }

  /** Records a call and runs its copies (timed when a timer is set). */
  private run(kind: CollectiveKind, payloadBytes: number, busBytes: number, copies: () => void): void {
    if (this.closed) throw new Error(`internal: loopback group ${this.name} used after close()`);
    const record = this.stats.add(kind, this.name, payloadBytes, busBytes);
    if (this.timer) this.timer.time(copies, (ms) => { record.copyMs += ms; });
    else copies();
  }

  allReduce(t: Tensor, _op: ReduceOp): void {
    checkArgs.allReduce(this, t);
    const bytes = t.size * bytesPerElement(t.dtype);
    this.run('all-reduce', bytes, 2 * (this.size - 1) / this.size * bytes, () => {});
  }

  reduceScatter(out: Tensor, inp: Tensor): void {
    checkArgs.reduceScatter(this, out, inp);
    const bytes = inp.size * bytesPerElement(inp.dtype);
    this.run('reduce-scatter', bytes, (this.size - 1) / this.size * bytes, () => copyRange(out, 0, inp, this.rank * out.size, out.size));
  }

  allGatherStart(out: Tensor, inp: Tensor): PendingCollective {
    return this.started(out, () => this.allGather(out, inp));
  }

  reduceScatterStart(out: Tensor, inp: Tensor): PendingCollective {
    return this.started(out, () => this.reduceScatter(out, inp));
  }

  /** Runs `copies` on the communication stream when overlapping on CUDA (as NCCL's run), else at once. */
  private started(out: Tensor, copies: () => void): PendingCollective {
    const be = backendOf(out);
    if (!this.overlap || !(be instanceof CudaBackend)) { copies(); return FINISHED; }
    return be.ctx.onCommStream(copies);
  }

  allGather(out: Tensor, inp: Tensor): void {
    checkArgs.allGather(this, out, inp);
    const bytes = out.size * bytesPerElement(out.dtype);
    this.run('all-gather', bytes, (this.size - 1) / this.size * bytes, () => {
      const n = inp.size;
      for (let p = 0; p < this.size; p++) {
        const s = gatherRotation(p, this.rank, this.size, n);
        copyRange(out, p * n, inp, s, n - s);
        copyRange(out, p * n + n - s, inp, 0, s);
      }
    });
  }

  allToAll(out: Tensor, inp: Tensor, sendRows: readonly number[], recvRows: readonly number[]): void {
    const w = checkArgs.allToAll(this, out, inp, sendRows, recvRows);
    const rowBytes = w * bytesPerElement(inp.dtype);
    const inRows = rowsOf(inp).rows;
    let selfStart = 0;
    for (let p = 0; p < this.rank; p++) selfStart += sendRows[p]!;
    let sent = 0, received = 0;
    for (let p = 0; p < this.size; p++) if (p !== this.rank) { sent += sendRows[p]!; received += recvRows[p]!; }
    this.run('all-to-all', inRows * rowBytes, Math.max(sent, received) * rowBytes, () => {
      let at = 0;
      for (let p = 0; p < this.size; p++) {
        const want = recvRows[p]!;
        if (want > 0 && inRows === 0) {
          const zeros = out.view([want * w], [1], out.offset + at * w);
          try { backendOf(out).fill(zeros, 0); } finally { zeros.dispose(); }
        } else {
          // Rows from the self block on, wrapping around the input.
          for (let done = 0, from = inRows > 0 ? selfStart % inRows : 0; done < want;) {
            const n = Math.min(want - done, inRows - from);
            copyRange(out, (at + done) * w, inp, from * w, n * w);
            done += n; from = 0;
          }
        }
        at += want;
      }
    });
  }

  private scratchKey(peer: number, t: Tensor): string { return `${peer} ${t.dtype} ${t.size}`; }

  private sendCopy(t: Tensor, peer: number): void {
    const key = this.scratchKey(peer, t);
    let s = this.scratch.get(key);
    if (!s) { s = keep(emptyTensor(backendOf(t), [t.size], t.dtype)); this.scratch.set(key, s); }
    copyRange(s, 0, t, 0, t.size);
  }

  private recvCopy(t: Tensor, peer: number): void {
    const key = this.scratchKey(peer, t);
    let s = this.scratch.get(key);
    if (!s) {
      // Nothing of this size sent yet: values in [−1, 1), not zeros. A stage fed zeros gives
      // every token the same routing (all of them to the same experts, so the all-to-all would
      // go to one rank) and zero activations that the next sends would pass on.
      const values = new Float32Array(t.size);
      for (let i = 0, x = 0x9e3779b9; i < values.length; i++) { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; values[i] = t.dtype === 'i32' ? 0 : x / 2 ** 31 - 1; }
      s = keep(fromHost(backendOf(t), values, [t.size], t.dtype));
      this.scratch.set(key, s);
    }
    copyRange(t, 0, s, 0, t.size);
  }

  send(t: Tensor, peer: number): void {
    checkArgs.peer(this, 'send', t, peer);
    const bytes = t.size * bytesPerElement(t.dtype);
    this.run('p2p', bytes, bytes, () => this.sendCopy(t, peer));
  }

  recv(t: Tensor, peer: number): void {
    checkArgs.peer(this, 'recv', t, peer);
    this.run('p2p', 0, t.size * bytesPerElement(t.dtype), () => this.recvCopy(t, peer));
  }

  sendRecv(send: Tensor, to: number, recv: Tensor, from: number): void {
    checkArgs.peer(this, 'sendRecv', send, to);
    checkArgs.peer(this, 'sendRecv', recv, from);
    const out = send.size * bytesPerElement(send.dtype), back = recv.size * bytesPerElement(recv.dtype);
    // The two directions of a link run at the same time.
    this.run('p2p', out, Math.max(out, back), () => { this.sendCopy(send, to); this.recvCopy(recv, from); });
  }

  barrier(): void {}

  group(ranks: readonly number[], name: string): Promise<Communicator> {
    checkArgs.group(this, ranks);
    if (isWholeGroup(this, ranks)) return Promise.resolve(this);
    const worldRanks = ranks.map((r) => this.worldRanks[r]!);
    if (ranks.length === 1) return Promise.resolve(new LocalCommunicator(name, worldRanks[0]!));
    // By ranks and name: with cp = 1 the dp·cp·ep and dp·ep groups have the same ranks, and the stats keep them apart.
    const key = `${ranks.join(',')} ${name}`;
    let g = this.groups.get(key);
    if (!g) {
      g = new LoopbackCommunicator(ranks.length, ranks.indexOf(this.rank), { name, worldRanks, stats: this.stats, overlap: this.overlap, ...(this.timer ? { timer: this.timer } : {}) });
      this.groups.set(key, g);
    }
    return Promise.resolve(g);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const g of this.groups.values()) g.close();
    for (const s of this.scratch.values()) s.dispose();
    this.scratch.clear();
  }
}
