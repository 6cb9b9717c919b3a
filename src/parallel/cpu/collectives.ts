// The CPU collectives as message exchanges between the ranks of a group (run on the worker
// thread over PeerLinks). Direct, not ring: each rank sends at most one message to each peer
// per phase, which on one machine's loopback is as fast as it gets and keeps the code short.
//   all-reduce     = reduce-scatter (rank c reduces chunk c in rank order) + all-gather
//   reduce-scatter = every rank sends chunk c to rank c, which reduces it in rank order
//   all-gather     = every rank sends its piece to every other
//   all-to-all     = every rank sends its slice for p to p (empty messages included, so that
//                    every pair exchanges exactly one message per call)
// The input lies at offset 0 of the shared buffer, the output at outOffset. An operation ends
// only after its own sends have been handed to the system, so the main thread may then reuse
// the shared buffer.
import type { PeerLinks } from './peer_links.js';
import type { CollectiveOp } from './protocol.js';
import { accumulate, startAccumulator, storeAccumulator } from './reduce.js';
import { bytesPerElement, type DType } from '../../tensor/dtype.js';
import type { ReduceOp } from '../communicator.js';

export interface GroupCall {
  op: CollectiveOp;
  channel: number;
  /** World ranks of the group, ascending; `me` indexes this rank. */
  ranks: readonly number[];
  me: number;
  data: SharedArrayBuffer;
  outOffset: number;
}

function sizeMismatch(from: number, got: number, want: number): Error {
  return new Error(`rank ${from} sent ${got} bytes where this rank expected ${want} (the ranks disagree on sizes or counts, or called different collectives)`);
}

class Exchange {
  private readonly sends: Promise<void>[] = [];
  constructor(private readonly links: PeerLinks, private readonly g: GroupCall) {}

  get n(): number { return this.g.ranks.length; }
  get me(): number { return this.g.me; }

  input(offset: number, bytes: number): Uint8Array { return new Uint8Array(this.g.data, offset, bytes); }
  output(offset: number, bytes: number): Uint8Array { return new Uint8Array(this.g.data, this.g.outOffset + offset, bytes); }

  send(peer: number, payload: Uint8Array): void {
    const sent = this.links.send(this.g.ranks[peer]!, this.g.channel, payload);
    sent.catch(() => {}); // reported by flush(), or moot when a receive failed first
    this.sends.push(sent);
  }

  async recv(peer: number, wantBytes: number): Promise<Uint8Array> {
    const m = await this.links.recv(this.g.ranks[peer]!, this.g.channel);
    if (m.length !== wantBytes) throw sizeMismatch(this.g.ranks[peer]!, m.length, wantBytes);
    return m;
  }

  /** Waits for this rank's sends (rejects if a peer went away). */
  async flush(): Promise<void> { await Promise.all(this.sends.splice(0)); }
}

/** Element boundaries of chunk c when `count` elements are split over n ranks. */
function chunkStart(count: number, n: number, c: number): number {
  return Math.floor((c * count) / n);
}

/** Rank c receives chunk c of every rank's input and reduces it in rank order into out chunk. */
async function reduceChunks(x: Exchange, dtype: DType, op: ReduceOp, chunkBytes: (c: number) => [number, number], out: Uint8Array): Promise<void> {
  for (let p = 0; p < x.n; p++) {
    if (p === x.me) continue;
    const [at, bytes] = chunkBytes(p);
    x.send(p, x.input(at, bytes));
  }
  const [myAt, myBytes] = chunkBytes(x.me);
  const contribution = async (r: number): Promise<Uint8Array> => (r === x.me ? x.input(myAt, myBytes) : x.recv(r, myBytes));
  const acc = startAccumulator(await contribution(0), dtype);
  for (let r = 1; r < x.n; r++) accumulate(acc, await contribution(r), dtype, op);
  storeAccumulator(out, acc, dtype);
}

export async function runGroupCall(links: PeerLinks, g: GroupCall): Promise<void> {
  const x = new Exchange(links, g);
  const op = g.op;
  switch (op.kind) {
    case 'allReduce': {
      const eb = bytesPerElement(op.dtype);
      const count = op.bytes / eb;
      const chunk = (c: number): [number, number] => {
        const lo = chunkStart(count, x.n, c), hi = chunkStart(count, x.n, c + 1);
        return [lo * eb, (hi - lo) * eb];
      };
      const [myAt, myBytes] = chunk(x.me);
      const mine = x.output(myAt, myBytes);
      await reduceChunks(x, op.dtype, op.reduce, chunk, mine);
      for (let p = 0; p < x.n; p++) if (p !== x.me) x.send(p, mine);
      for (let p = 0; p < x.n; p++) {
        if (p === x.me) continue;
        const [at, bytes] = chunk(p);
        x.output(at, bytes).set(await x.recv(p, bytes));
      }
      break;
    }
    case 'reduceScatter':
      await reduceChunks(x, op.dtype, 'sum', (c) => [c * op.outBytes, op.outBytes], x.output(0, op.outBytes));
      break;
    case 'allGather': {
      const mine = x.input(0, op.inBytes);
      for (let p = 0; p < x.n; p++) if (p !== x.me) x.send(p, mine);
      x.output(x.me * op.inBytes, op.inBytes).set(mine);
      for (let p = 0; p < x.n; p++) if (p !== x.me) x.output(p * op.inBytes, op.inBytes).set(await x.recv(p, op.inBytes));
      break;
    }
    case 'allToAll': {
      const sendAt: number[] = [], recvAt: number[] = [];
      for (let p = 0, s = 0, r = 0; p < x.n; p++) { sendAt.push(s); recvAt.push(r); s += op.sendBytes[p]!; r += op.recvBytes[p]!; }
      for (let p = 0; p < x.n; p++) if (p !== x.me) x.send(p, x.input(sendAt[p]!, op.sendBytes[p]!));
      if (op.sendBytes[x.me] !== op.recvBytes[x.me]) throw sizeMismatch(g.ranks[x.me]!, op.sendBytes[x.me]!, op.recvBytes[x.me]!);
      x.output(recvAt[x.me]!, op.recvBytes[x.me]!).set(x.input(sendAt[x.me]!, op.sendBytes[x.me]!));
      for (let p = 0; p < x.n; p++) if (p !== x.me) x.output(recvAt[p]!, op.recvBytes[p]!).set(await x.recv(p, op.recvBytes[p]!));
      break;
    }
    case 'sendRecv': {
      if (op.to !== null) x.send(op.to, x.input(0, op.sendBytes));
      if (op.from !== null) x.output(0, op.recvBytes).set(await x.recv(op.from, op.recvBytes));
      break;
    }
    case 'barrier': {
      const empty = new Uint8Array(0);
      for (let p = 0; p < x.n; p++) if (p !== x.me) x.send(p, empty);
      for (let p = 0; p < x.n; p++) if (p !== x.me) await x.recv(p, 0);
      break;
    }
    default:
      op satisfies never;
  }
  await x.flush();
}
