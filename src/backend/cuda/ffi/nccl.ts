// Bindings to NCCL: one communicator per process (one GPU each), collectives queued on the
// context's compute stream so they are ordered with the kernels that produce and consume their
// buffers. Rank 0 makes the 128-byte ncclUniqueId and the launcher hands it to every rank.
import koffi from 'koffi';
import type { CudaContext } from '../runtime/context.js';
import { loadLibrary } from './library.js';

type Fn = (...args: unknown[]) => number;

/** Element types NCCL moves here. */
export type NcclDType = 'f32' | 'bf16' | 'i32';

// ncclDataType_t and ncclRedOp_t (nccl.h).
function ncclType(d: NcclDType): number {
  switch (d) {
    case 'i32': return 2; // ncclInt32
    case 'f32': return 7; // ncclFloat32
    case 'bf16': return 9; // ncclBfloat16
    default: return d satisfies never;
  }
}
const ncclSum = 0;

export const NCCL_UNIQUE_ID_BYTES = 128;

interface RawNccl {
  ncclGetVersion: Fn;
  ncclGetUniqueId: Fn;
  ncclCommInitRank: Fn;
  ncclCommDestroy: Fn;
  ncclCommAbort: Fn;
  ncclAllReduce: Fn;
  ncclReduceScatter: Fn;
  ncclAllGather: Fn;
  ncclSend: Fn;
  ncclRecv: Fn;
  ncclGroupStart: Fn;
  ncclGroupEnd: Fn;
  ncclGetErrorString: (code: number) => string;
  ncclGetLastError: (comm: bigint | null) => string | null;
}

let raw: RawNccl | undefined;

function bind(): RawNccl {
  if (raw) return raw;
  const lib = loadLibrary('nccl');
  const f = (name: string, args: unknown[]): Fn => lib.func(name, 'int', args as string[]) as Fn;
  // ncclUniqueId is passed by value to ncclCommInitRank: a 128-byte struct.
  const UniqueId = koffi.struct({ internal: koffi.array('uint8_t', NCCL_UNIQUE_ID_BYTES, 'Typed') });
  raw = {
    ncclGetVersion: f('ncclGetVersion', ['void *']),
    ncclGetUniqueId: f('ncclGetUniqueId', ['void *']),
    ncclCommInitRank: f('ncclCommInitRank', ['void *', 'int', UniqueId, 'int']),
    ncclCommDestroy: f('ncclCommDestroy', ['void *']),
    ncclCommAbort: f('ncclCommAbort', ['void *']),
    // sendbuff, recvbuff, count, datatype, [op,] comm, stream
    ncclAllReduce: f('ncclAllReduce', ['uint64_t', 'uint64_t', 'size_t', 'int', 'int', 'void *', 'void *']),
    ncclReduceScatter: f('ncclReduceScatter', ['uint64_t', 'uint64_t', 'size_t', 'int', 'int', 'void *', 'void *']),
    ncclAllGather: f('ncclAllGather', ['uint64_t', 'uint64_t', 'size_t', 'int', 'void *', 'void *']),
    // buff, count, datatype, peer, comm, stream
    ncclSend: f('ncclSend', ['uint64_t', 'size_t', 'int', 'int', 'void *', 'void *']),
    ncclRecv: f('ncclRecv', ['uint64_t', 'size_t', 'int', 'int', 'void *', 'void *']),
    ncclGroupStart: f('ncclGroupStart', []),
    ncclGroupEnd: f('ncclGroupEnd', []),
    ncclGetErrorString: lib.func('ncclGetErrorString', 'const char *', ['int']) as (code: number) => string,
    ncclGetLastError: lib.func('ncclGetLastError', 'const char *', ['void *']) as (comm: bigint | null) => string | null,
  };
  return raw;
}

function check(call: string, status: number, comm: bigint | null = null): void {
  if (status === 0) return;
  const nc = bind();
  const last = nc.ncclGetLastError(comm);
  throw new Error(`${call} failed: ${nc.ncclGetErrorString(status)} (ncclResult ${status})${last ? `: ${last}` : ''}`);
}

/** NCCL's version code, e.g. 22803 for 2.28.3. */
export function ncclVersion(): number {
  const v = new Int32Array(1);
  check('ncclGetVersion', bind().ncclGetVersion(v));
  return v[0]!;
}

/** A fresh ncclUniqueId (made on rank 0, then sent to every other rank). */
export function ncclUniqueId(): Uint8Array {
  const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
  check('ncclGetUniqueId', bind().ncclGetUniqueId(id));
  return id;
}

/** Opens/closes a group: the point-to-point calls between them (an all-to-all) run as one. */
export function ncclGroupStart(): void { check('ncclGroupStart', bind().ncclGroupStart()); }
export function ncclGroupEnd(): void { check('ncclGroupEnd', bind().ncclGroupEnd()); }

/**
 * One rank's communicator. Counts are in elements; buffers are device pointers; every call is
 * queued on the context's compute stream unless a stream is given.
 */
export class NcclComm {
  private readonly nc: RawNccl;
  private comm: bigint | null;

  /** Joins the group of `worldSize` ranks named by `id` (blocks until every rank has joined). */
  constructor(private readonly ctx: CudaContext, readonly worldSize: number, readonly rank: number, id: Uint8Array) {
    if (id.length !== NCCL_UNIQUE_ID_BYTES) throw new Error(`internal: ncclUniqueId has ${id.length} bytes, expected ${NCCL_UNIQUE_ID_BYTES}`);
    if (!(rank >= 0 && rank < worldSize)) throw new Error(`internal: NCCL rank ${rank} outside world of ${worldSize}`);
    this.nc = bind();
    ctx.makeCurrent();
    const out = new BigUint64Array(1);
    check('ncclCommInitRank', this.nc.ncclCommInitRank(out, worldSize, { internal: id }, rank));
    this.comm = out[0]!;
  }

  private handle(): bigint {
    if (this.comm === null) throw new Error('internal: NCCL communicator used after destroy()');
    return this.comm;
  }

  /** recv = Σ over ranks of send (in place when send === recv). */
  allReduce(send: bigint, recv: bigint, count: number, dtype: NcclDType, stream = this.ctx.stream): void {
    check('ncclAllReduce', this.nc.ncclAllReduce(send, recv, count, ncclType(dtype), ncclSum, this.handle(), stream), this.comm);
  }

  /** recv (recvCount elements) = this rank's slice of Σ over ranks of send (worldSize·recvCount elements). */
  reduceScatter(send: bigint, recv: bigint, recvCount: number, dtype: NcclDType, stream = this.ctx.stream): void {
    check('ncclReduceScatter', this.nc.ncclReduceScatter(send, recv, recvCount, ncclType(dtype), ncclSum, this.handle(), stream), this.comm);
  }

  /** recv (worldSize·sendCount elements) = every rank's send, in rank order. */
  allGather(send: bigint, recv: bigint, sendCount: number, dtype: NcclDType, stream = this.ctx.stream): void {
    check('ncclAllGather', this.nc.ncclAllGather(send, recv, sendCount, ncclType(dtype), this.handle(), stream), this.comm);
  }

  send(buf: bigint, count: number, dtype: NcclDType, peer: number, stream = this.ctx.stream): void {
    check('ncclSend', this.nc.ncclSend(buf, count, ncclType(dtype), peer, this.handle(), stream), this.comm);
  }

  recv(buf: bigint, count: number, dtype: NcclDType, peer: number, stream = this.ctx.stream): void {
    check('ncclRecv', this.nc.ncclRecv(buf, count, ncclType(dtype), peer, this.handle(), stream), this.comm);
  }

  /** Frees the communicator (after its queued work); abort instead when a peer has failed. */
  destroy(): void {
    if (this.comm === null) return;
    const c = this.comm;
    this.comm = null;
    check('ncclCommDestroy', this.nc.ncclCommDestroy(c));
  }

  /** Tears the communicator down without waiting for peers (error paths). */
  abort(): void {
    if (this.comm === null) return;
    const c = this.comm;
    this.comm = null;
    this.nc.ncclCommAbort(c);
  }
}
