// A group of one process (the world without a launcher, or a mesh group of size 1): every
// collective is the identity, so a reduction is a no-op and a gather, scatter or all-to-all is
// a copy. Works on any backend's tensors.
import { backendOf } from '../backend/backend.js';
import { contiguousStrides, type Tensor } from '../tensor/tensor.js';
import { checkArgs, FINISHED, type Communicator, type PendingCollective, type ReduceOp } from './communicator.js';

/** dst ← src for contiguous tensors of equal element count, whatever their shapes. */
function copyFlat(dst: Tensor, src: Tensor): void {
  if (dst.size === 0) return;
  const flat = src.view(dst.shape, contiguousStrides(dst.shape), src.offset);
  try {
    backendOf(dst).copy(dst, flat);
  } finally {
    flat.dispose();
  }
}

export class LocalCommunicator implements Communicator {
  readonly rank = 0;
  readonly size = 1;
  readonly worldRanks: readonly number[];

  /** `worldRank`: this process's rank in the world the group belongs to. */
  constructor(readonly name = 'world', worldRank = 0) {
    this.worldRanks = [worldRank];
  }

  allReduce(t: Tensor, _op: ReduceOp): void { checkArgs.allReduce(this, t); }
  reduceScatterStart(out: Tensor, inp: Tensor): PendingCollective {
    this.reduceScatter(out, inp);
    return FINISHED;
  }

  reduceScatter(out: Tensor, inp: Tensor): void { checkArgs.reduceScatter(this, out, inp); copyFlat(out, inp); }
  allGatherStart(out: Tensor, inp: Tensor): PendingCollective {
    this.allGather(out, inp);
    return FINISHED;
  }

  allGather(out: Tensor, inp: Tensor): void { checkArgs.allGather(this, out, inp); copyFlat(out, inp); }
  allToAll(out: Tensor, inp: Tensor, sendRows: readonly number[], recvRows: readonly number[]): void {
    checkArgs.allToAll(this, out, inp, sendRows, recvRows);
    copyFlat(out, inp);
  }
  send(t: Tensor, peer: number): void { checkArgs.peer(this, 'send', t, peer); }
  recv(t: Tensor, peer: number): void { checkArgs.peer(this, 'recv', t, peer); }
  sendRecv(send: Tensor, to: number, _recv: Tensor, _from: number): void { checkArgs.peer(this, 'sendRecv', send, to); }
  barrier(): void {}
  group(ranks: readonly number[], _name: string): Promise<Communicator> {
    checkArgs.group(this, ranks);
    return Promise.resolve(this);
  }
  close(): void {}
}
