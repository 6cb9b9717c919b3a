// What the main thread and the CPU communicator's worker thread (comm_worker.ts) say to each
// other. Set-up messages are ordinary worker messages; each collective is one 'op' message,
// after which the main thread sleeps in Atomics.wait on the control word until the worker marks
// it done or failed. Tensor bytes travel in a SharedArrayBuffer: the input at offset 0, the
// output at `outOffset`.
import type { DType } from '../../tensor/dtype.js';
import type { ReduceOp } from '../communicator.js';

/** Control words (Int32Array over a SharedArrayBuffer). */
export const CTRL_STATE = 0;
export const CTRL_ERROR_BYTES = 1;
export const CTRL_WORDS = 2;
/** Values of the state word. */
export const STATE_IDLE = 0;
export const STATE_PENDING = 1;
export const STATE_DONE = 2;
export const STATE_FAILED = 3;
/** Room for a failure message (UTF-8). */
export const ERROR_BYTES = 4096;

export interface CommWorkerData {
  rank: number;
  world: number;
  control: SharedArrayBuffer;
  error: SharedArrayBuffer;
}

/** The collectives as the worker runs them; sizes in bytes, peers (to, from) as ranks of the group. */
export type CollectiveOp =
  | { kind: 'allReduce'; reduce: ReduceOp; dtype: DType; bytes: number }
  | { kind: 'reduceScatter'; dtype: DType; outBytes: number }
  | { kind: 'allGather'; inBytes: number }
  | { kind: 'allToAll'; sendBytes: number[]; recvBytes: number[] }
  | { kind: 'sendRecv'; to: number | null; sendBytes: number; from: number | null; recvBytes: number }
  | { kind: 'barrier' };

export type ToCommWorker =
  | { type: 'connect'; ports: number[]; timeoutMs: number }
  | {
    type: 'op';
    op: CollectiveOp;
    /** Channel of the group (every message of the group travels on it, in order). */
    channel: number;
    /** The group's world ranks, ascending; `me` is this process's index in it. */
    ranks: number[];
    me: number;
    data: SharedArrayBuffer;
    outOffset: number;
  }
  | { type: 'close' };

export type FromCommWorker =
  | { type: 'listening'; port: number }
  | { type: 'connected' }
  | { type: 'error'; message: string };
