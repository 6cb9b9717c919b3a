// Collectives on CUDA tensors through NCCL (bindings in backend/cuda/ffi/nccl.ts). Every call of
// every group runs on the context's one communication stream, after the compute stream's work
// queued so far (an event), and the compute stream waits for it before its next kernel — except
// allGatherStart's and reduceScatterStart's, which the compute stream waits for only at the
// handle's wait(), so FSDP's prefetched gather of the next unit overlaps this unit's compute and
// a unit's gradient reduction overlaps the previous unit's backward. The caller never waits
// (barrier excepted). Why one communication stream for all groups: NCCL kernels of different
// communicators that run at once may wait on each other across ranks in different orders and
// hang; on one stream they run in the order they were issued, which is the same on every rank.
// Groups are separate NCCL communicators: the group's lowest rank makes an ncclUniqueId and publishes it through the
// rendezvous store. All-to-all is grouped send/recv; 'max' (used on small tensors: metrics)
// gathers every rank's copy and takes the maximum on the host.
import type { Backend } from '../backend/backend.js';
import type { CudaContext } from '../backend/cuda/runtime/context.js';
import { CudaBackend } from '../backend/cuda/cuda_backend.js';
import { devicePtr } from '../backend/cuda/runtime/device_buffer.js';
import { NcclComm, ncclGroupEnd, ncclGroupStart, ncclUniqueId } from '../backend/cuda/ffi/nccl.js';
import { bf16ArrayToF32, bytesPerElement, f32ArrayToBf16 } from '../tensor/dtype.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { keep } from '../tensor/scope.js';
import { checkArgs, FINISHED, isWholeGroup, type Communicator, type PendingCollective, type ReduceOp } from './communicator.js';
import { LocalCommunicator } from './local_communicator.js';
import type { StoreClient } from './rendezvous/store_client.js';

/** Element-wise maximum over `n` equal pieces of `all`, in `all`'s element type. */
function hostMax(all: Float32Array | Uint16Array | Int32Array, n: number): Float32Array | Uint16Array | Int32Array {
  const count = all.length / n;
  if (all instanceof Uint16Array) {
    const f = bf16ArrayToF32(all);
    const out = f.slice(0, count);
    for (let r = 1; r < n; r++) for (let i = 0; i < count; i++) out[i] = Math.max(out[i]!, f[r * count + i]!);
    return f32ArrayToBf16(out);
  }
  const out = all.slice(0, count);
  for (let r = 1; r < n; r++) for (let i = 0; i < count; i++) out[i] = Math.max(out[i]!, all[r * count + i]!);
  return out;
}

/** NCCL communicators this process has joined, by their world ranks. */
const joins = new Map<string, number>();

export class NcclCommunicator implements Communicator {
  private scratch: Tensor | null = null;
  /** Groups made from this communicator, by their ranks, so asking twice gives the same one. */
  private readonly groups = new Map<string, NcclCommunicator>();

  private constructor(
    private readonly nccl: NcclComm,
    private readonly backend: Backend,
    private readonly store: StoreClient,
    readonly rank: number,
    readonly worldRanks: readonly number[],
    readonly name: string,
  ) {}

  get size(): number { return this.worldRanks.length; }

  private get ctx(): CudaContext { return (this.backend as CudaBackend).ctx; }

  /** Queues `calls` on the communication stream, and the compute stream waits for them: the result is ordered before the next kernel. */
  private run(calls: (stream: bigint) => void): void {
    this.ctx.onCommStream(calls).wait();
  }

  /** Joins an NCCL communicator over `worldRanks` (blocks until every member has joined). */
  private static async join(backend: Backend, store: StoreClient, worldRanks: readonly number[], me: number, name: string): Promise<NcclCommunicator> {
    if (!(backend instanceof CudaBackend)) throw new Error(`internal: the NCCL communicator needs the CUDA backend, got ${backend.kind}`);
    const ctx: CudaContext = backend.ctx;
    // Members join the same groups in the same order, so the count of earlier joins of these
    // ranks is the same on each of them and makes the key unique.
    const ranksKey = worldRanks.join(',');
    const generation = joins.get(ranksKey) ?? 0;
    joins.set(ranksKey, generation + 1);
    const key = `nccl/${ranksKey}/${generation}`;
    let id: Uint8Array;
    if (me === 0) {
      id = ncclUniqueId();
      await store.set(key, id);
    } else {
      id = await store.get(key);
    }
    return new NcclCommunicator(new NcclComm(ctx, worldRanks.length, me, id), backend, store, me, worldRanks, name);
  }

  /** The world communicator of this job. */
  static create(store: StoreClient, rank: number, world: number, backend: Backend): Promise<NcclCommunicator> {
    return NcclCommunicator.join(backend, store, [...Array(world).keys()], rank, 'world');
  }

  allReduce(t: Tensor, op: ReduceOp): void {
    checkArgs.allReduce(this, t);
    if (t.size === 0) return;
    switch (op) {
      case 'sum':
        this.run((s) => this.nccl.allReduce(devicePtr(t), devicePtr(t), t.size, t.dtype, s));
        return;
      case 'max': {
        const all = emptyTensor(this.backend, [this.size * t.size], t.dtype);
        try {
          this.run((s) => this.nccl.allGather(devicePtr(t), devicePtr(all), t.size, t.dtype, s));
          this.backend.write(t, hostMax(this.backend.read(all), this.size));
        } finally {
          all.dispose();
        }
        return;
      }
      default:
        op satisfies never;
    }
  }

  reduceScatter(out: Tensor, inp: Tensor): void {
    checkArgs.reduceScatter(this, out, inp);
    if (out.size > 0) this.run((s) => this.nccl.reduceScatter(devicePtr(inp), devicePtr(out), out.size, out.dtype, s));
  }

  allGather(out: Tensor, inp: Tensor): void {
    checkArgs.allGather(this, out, inp);
    if (inp.size > 0) this.run((s) => this.nccl.allGather(devicePtr(inp), devicePtr(out), inp.size, inp.dtype, s));
  }

  allGatherStart(out: Tensor, inp: Tensor): PendingCollective {
    checkArgs.allGather(this, out, inp);
    if (inp.size === 0) return FINISHED;
    return this.ctx.onCommStream((s) => this.nccl.allGather(devicePtr(inp), devicePtr(out), inp.size, inp.dtype, s));
  }

  reduceScatterStart(out: Tensor, inp: Tensor): PendingCollective {
    checkArgs.reduceScatter(this, out, inp);
    if (out.size === 0) return FINISHED;
    return this.ctx.onCommStream((s) => this.nccl.reduceScatter(devicePtr(inp), devicePtr(out), out.size, out.dtype, s));
  }

  allToAll(out: Tensor, inp: Tensor, sendRows: readonly number[], recvRows: readonly number[]): void {
    const rowElems = checkArgs.allToAll(this, out, inp, sendRows, recvRows);
    const eb = BigInt(bytesPerElement(inp.dtype));
    const dtype = inp.dtype;
    let sendAt = devicePtr(inp), recvAt = devicePtr(out);
    this.run((stream) => {
      ncclGroupStart();
      try {
        for (let p = 0; p < this.size; p++) {
          const s = sendRows[p]! * rowElems, r = recvRows[p]! * rowElems;
          if (s > 0) this.nccl.send(sendAt, s, dtype, p, stream);
          if (r > 0) this.nccl.recv(recvAt, r, dtype, p, stream);
          sendAt += BigInt(s) * eb;
          recvAt += BigInt(r) * eb;
        }
      } finally {
        ncclGroupEnd();
      }
    });
  }

  send(t: Tensor, peer: number): void {
    checkArgs.peer(this, 'send', t, peer);
    if (t.size > 0) this.run((s) => this.nccl.send(devicePtr(t), t.size, t.dtype, peer, s));
  }

  recv(t: Tensor, peer: number): void {
    checkArgs.peer(this, 'recv', t, peer);
    if (t.size > 0) this.run((s) => this.nccl.recv(devicePtr(t), t.size, t.dtype, peer, s));
  }

  sendRecv(send: Tensor, to: number, recv: Tensor, from: number): void {
    checkArgs.peer(this, 'sendRecv', send, to);
    checkArgs.peer(this, 'sendRecv', recv, from);
    this.run((s) => {
      ncclGroupStart();
      try {
        if (send.size > 0) this.nccl.send(devicePtr(send), send.size, send.dtype, to, s);
        if (recv.size > 0) this.nccl.recv(devicePtr(recv), recv.size, recv.dtype, from, s);
      } finally {
        ncclGroupEnd();
      }
    });
  }

  barrier(): void {
    // A one-element all-reduce, then wait for the stream: every rank has reached this point.
    this.scratch ??= keep(emptyTensor(this.backend, [1], 'i32'));
    const scratch = this.scratch;
    this.run((s) => this.nccl.allReduce(devicePtr(scratch), devicePtr(scratch), 1, 'i32', s));
    this.backend.synchronize();
  }

  async group(ranks: readonly number[], name: string): Promise<Communicator> {
    checkArgs.group(this, ranks);
    if (isWholeGroup(this, ranks)) return this;
    if (ranks.length === 1) return new LocalCommunicator(name, this.worldRanks[ranks[0]!]);
    const worldRanks = ranks.map((r) => this.worldRanks[r]!);
    const key = worldRanks.join(',');
    let g = this.groups.get(key);
    if (!g) {
      g = await NcclCommunicator.join(this.backend, this.store, worldRanks, ranks.indexOf(this.rank), name);
      this.groups.set(key, g);
    }
    return g;
  }

  /** Frees this communicator and the groups made from it (after their queued work). */
  close(): void {
    for (const g of this.groups.values()) g.close();
    this.groups.clear();
    this.scratch?.dispose();
    this.scratch = null;
    this.nccl.destroy();
  }
}
