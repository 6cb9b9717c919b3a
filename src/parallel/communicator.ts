// The collectives every parallel piece (sharded parameters, expert dispatch, pipeline stages,
// ring attention) is written against. Implementations: NCCL on CUDA tensors
// (nccl_communicator.ts), TCP between processes of one machine on CPU tensors
// (cpu/cpu_communicator.ts), a world of one (local_communicator.ts), and one rank of a larger
// world simulated in one process with local copies (loopback_communicator.ts).
//
// Every call blocks the caller until its result may be read (NCCL: until the compute stream waits
// for it, which orders it with the kernels around it), except allGatherStart, whose result may be
// read only after its handle's wait(): with NCCL it runs on the communication stream while the
// compute stream goes on (FSDP's prefetch of the next unit), and reduceScatterStart likewise
// (FSDP's gradient reduction overlapping the previous unit's backward). Tensors are contiguous; a group's
// ranks must make the same calls in the same order, with matching sizes. Peers and ranks are
// numbered within the communicator (a group's rank 0 is its lowest world rank).
import type { Tensor } from '../tensor/tensor.js';

export type ReduceOp = 'sum' | 'max';

/** A started collective; wait() orders its result before the work queued after it (idempotent). */
export interface PendingCollective {
  wait(): void;
}

/** A collective already finished when its start returned (implementations with one stream). */
export const FINISHED: PendingCollective = { wait() {} };

export interface Communicator {
  /** This process's rank in the group. */
  readonly rank: number;
  /** Ranks in the group. */
  readonly size: number;
  /** The group's members as world ranks, ascending (worldRanks[rank] is this process). */
  readonly worldRanks: readonly number[];
  /** What the group is, for messages ("world", "dp", "dp·cp·ep", …). */
  readonly name: string;

  /** t = op over the group of t, in place; every rank gets the same bits. */
  allReduce(t: Tensor, op: ReduceOp): void;
  /** out = this rank's slice of Σ over the group of inp; inp has size·out.size elements. */
  reduceScatter(out: Tensor, inp: Tensor): void;
  /** reduceScatter that later compute may overlap, with allGatherStart's rules for out and inp. */
  reduceScatterStart(out: Tensor, inp: Tensor): PendingCollective;
  /** out = every rank's inp in rank order; out has size·inp.size elements. */
  allGather(out: Tensor, inp: Tensor): void;
  /**
   * allGather that later compute may overlap: out may be read, and out and inp written or freed,
   * only after the handle's wait(). Ranks start and wait in the same order as other calls.
   */
  allGatherStart(out: Tensor, inp: Tensor): PendingCollective;
  /**
   * Counts are in rows (first dimension) per peer: inp's first sendRows[0] rows go to rank 0,
   * the next sendRows[1] to rank 1, …; out receives recvRows[p] rows from each rank p, in rank
   * order. inp and out have the same row width; recvRows[p] must equal rank p's sendRows[rank].
   * Counts are host numbers; zero counts are allowed.
   */
  allToAll(out: Tensor, inp: Tensor, sendRows: readonly number[], recvRows: readonly number[]): void;
  /**
   * Point to point. A send must be matched by the peer's recv of the same size, in the same
   * order; on NCCL a send may wait until the peer receives, so two ranks that send to each other
   * at the same time use sendRecv.
   */
  send(t: Tensor, peer: number): void;
  recv(t: Tensor, peer: number): void;
  /** Sends `send` to `to` and receives `recv` from `from` at the same time (a pipeline or ring step). */
  sendRecv(send: Tensor, to: number, recv: Tensor, from: number): void;
  /** Returns once every rank of the group has called it (work queued earlier has finished). */
  barrier(): void;
  /**
   * The sub-group of this communicator's `ranks` (ascending, containing this rank). Every member
   * calls it, in the same order relative to its other group creations; non-members do not.
   * Asking for all ranks returns this communicator; a group of one is a LocalCommunicator.
   */
  group(ranks: readonly number[], name: string): Promise<Communicator>;
  /** Frees the group's resources; a closed group may not be used again. */
  close(): void;
}

/** Rows of a tensor's first dimension and the elements per row (1 for a vector). */
export function rowsOf(t: Tensor): { rows: number; rowElems: number } {
  let rowElems = 1;
  for (let d = 1; d < t.shape.length; d++) rowElems *= t.shape[d]!;
  return { rows: t.shape[0] ?? 1, rowElems };
}

function fail(c: Communicator, call: string, what: string): never {
  throw new Error(`internal: ${call} on group ${c.name}: ${what}`);
}

function contiguous(c: Communicator, call: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    t.assertLive(call);
    if (!t.isContiguous()) fail(c, call, `${t} is not contiguous`);
  }
}

/** The argument checks shared by every implementation (misuse is a programming error). */
export const checkArgs = {
  allReduce(c: Communicator, t: Tensor): void { contiguous(c, 'allReduce', t); },
  reduceScatter(c: Communicator, out: Tensor, inp: Tensor): void {
    contiguous(c, 'reduceScatter', out, inp);
    if (out.dtype !== inp.dtype) fail(c, 'reduceScatter', `dtypes differ (${out.dtype}, ${inp.dtype})`);
    if (inp.size !== c.size * out.size) fail(c, 'reduceScatter', `input has ${inp.size} elements, expected size·out = ${c.size}·${out.size}`);
  },
  allGather(c: Communicator, out: Tensor, inp: Tensor): void {
    contiguous(c, 'allGather', out, inp);
    if (out.dtype !== inp.dtype) fail(c, 'allGather', `dtypes differ (${out.dtype}, ${inp.dtype})`);
    if (out.size !== c.size * inp.size) fail(c, 'allGather', `output has ${out.size} elements, expected size·inp = ${c.size}·${inp.size}`);
  },
  /** Returns the elements per row. */
  allToAll(c: Communicator, out: Tensor, inp: Tensor, sendRows: readonly number[], recvRows: readonly number[]): number {
    contiguous(c, 'allToAll', out, inp);
    if (out.dtype !== inp.dtype) fail(c, 'allToAll', `dtypes differ (${out.dtype}, ${inp.dtype})`);
    if (sendRows.length !== c.size || recvRows.length !== c.size) fail(c, 'allToAll', `needs one count per rank (${c.size}), got ${sendRows.length} and ${recvRows.length}`);
    for (const n of [...sendRows, ...recvRows]) if (!(Number.isInteger(n) && n >= 0)) fail(c, 'allToAll', `counts must be non-negative integers, got [${sendRows}] / [${recvRows}]`);
    const a = rowsOf(inp), b = rowsOf(out);
    const sent = sendRows.reduce((x, y) => x + y, 0), got = recvRows.reduce((x, y) => x + y, 0);
    if (sent !== a.rows) fail(c, 'allToAll', `sendRows sum to ${sent} but the input has ${a.rows} rows`);
    if (got !== b.rows) fail(c, 'allToAll', `recvRows sum to ${got} but the output has ${b.rows} rows`);
    if (a.rowElems !== b.rowElems) fail(c, 'allToAll', `row widths differ (${a.rowElems} in, ${b.rowElems} out)`);
    return a.rowElems;
  },
  peer(c: Communicator, call: string, t: Tensor, peer: number): void {
    contiguous(c, call, t);
    if (!(Number.isInteger(peer) && peer >= 0 && peer < c.size) || peer === c.rank) fail(c, call, `peer ${peer} is not another rank of a group of ${c.size}`);
  },
  group(c: Communicator, ranks: readonly number[]): void {
    for (let i = 0; i < ranks.length; i++) {
      const r = ranks[i]!;
      if (!(Number.isInteger(r) && r >= 0 && r < c.size) || (i > 0 && r <= ranks[i - 1]!)) fail(c, 'group', `ranks [${ranks}] are not ascending ranks of a group of ${c.size}`);
    }
    if (!ranks.includes(c.rank)) fail(c, 'group', `rank ${c.rank} asked for group [${ranks}], which does not contain it`);
  },
};

/** True when `ranks` is every rank of c (the group is c itself). */
export function isWholeGroup(c: Communicator, ranks: readonly number[]): boolean {
  return ranks.length === c.size;
}
