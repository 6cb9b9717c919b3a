// Collectives between processes of one machine, on CPU-backend tensors (f32, bf16, i32). The
// training step is synchronous, so each call blocks: the tensor's bytes go into a shared
// buffer, a worker thread (comm_worker.ts) exchanges them with the other ranks over loopback
// TCP, and the main thread sleeps in Atomics.wait until the worker is done, a peer is gone, or
// the collective timeout passes. Either failure is an error naming the call, the group and what
// to check; after one, the communicator refuses further calls (its peers are out of step).
import { Worker } from 'node:worker_threads';
import type { Tensor } from '../../tensor/tensor.js';
import { backendOf } from '../../backend/backend.js';
import { bytesPerElement } from '../../tensor/dtype.js';
import { denseView } from '../../backend/cpu/host.js';
import { checkArgs, FINISHED, isWholeGroup, type Communicator, type PendingCollective, type ReduceOp } from '../communicator.js';
import { LocalCommunicator } from '../local_communicator.js';
import type { StoreClient } from '../rendezvous/store_client.js';
import {
  CTRL_ERROR_BYTES, CTRL_STATE, CTRL_WORDS, ERROR_BYTES, STATE_DONE, STATE_FAILED, STATE_IDLE, STATE_PENDING,
  type CollectiveOp, type CommWorkerData, type FromCommWorker, type ToCommWorker,
} from './protocol.js';

/** The bytes of a contiguous CPU tensor, without a copy. */
function bytesOf(t: Tensor): Uint8Array {
  if (backendOf(t).kind !== 'cpu') throw new Error(`internal: the CPU communicator moves CPU tensors, got ${t}`);
  const v = denseView(t);
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** A stable 32-bit id of a group (FNV-1a of its world ranks), the same on every member. */
function channelOf(worldRanks: readonly number[]): number {
  let h = 0x811c9dc5;
  for (const ch of worldRanks.join(',')) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return h;
}

const align8 = (n: number): number => Math.ceil(n / 8) * 8;

/** This process's worker thread and shared buffers; every group of the process uses it. */
class CpuCommEngine {
  private data = new SharedArrayBuffer(1 << 16);
  private readonly ctrl: Int32Array;
  private readonly errorBytes: Uint8Array;
  private readonly channels = new Map<number, string>();
  private broken: string | null = null;

  private constructor(private readonly worker: Worker, control: SharedArrayBuffer, error: SharedArrayBuffer, readonly rank: number, readonly timeoutMs: number) {
    this.ctrl = new Int32Array(control);
    this.errorBytes = new Uint8Array(error);
  }

  static async start(store: StoreClient, rank: number, world: number, timeoutMs: number): Promise<CpuCommEngine> {
    const control = new SharedArrayBuffer(CTRL_WORDS * 4);
    const error = new SharedArrayBuffer(ERROR_BYTES);
    const worker = new Worker(new URL('./comm_worker.js', import.meta.url), { workerData: { rank, world, control, error } satisfies CommWorkerData });
    const next = (): Promise<FromCommWorker> => new Promise((resolve, reject) => {
      const onError = (e: Error): void => { worker.off('message', onMessage); reject(e); };
      const onMessage = (m: FromCommWorker): void => { worker.off('error', onError); resolve(m); };
      worker.once('message', onMessage);
      worker.once('error', onError);
    });
    const expect = async (type: FromCommWorker['type']): Promise<FromCommWorker> => {
      const m = await next();
      if (m.type === 'error') { void worker.terminate(); throw new Error(m.message); }
      if (m.type !== type) throw new Error(`internal: the communicator worker said ${m.type}, expected ${type}`);
      return m;
    };
    const listening = await expect('listening');
    if (listening.type !== 'listening') throw new Error('internal: unreachable');
    await store.set(`cpu_comm/port/${rank}`, new TextEncoder().encode(String(listening.port)));
    const ports: number[] = [];
    for (let r = 0; r < world; r++) ports.push(Number(new TextDecoder().decode(await store.get(`cpu_comm/port/${r}`))));
    worker.postMessage({ type: 'connect', ports, timeoutMs } satisfies ToCommWorker);
    await expect('connected');
    // The worker must not keep a finished process alive.
    worker.unref();
    return new CpuCommEngine(worker, control, error, rank, timeoutMs);
  }

  channel(worldRanks: readonly number[]): number {
    const id = channelOf(worldRanks);
    const key = worldRanks.join(',');
    const known = this.channels.get(id);
    if (known !== undefined && known !== key) throw new Error(`internal: groups [${known}] and [${key}] hash to the same channel`);
    this.channels.set(id, key);
    return id;
  }

  /**
   * Runs one collective: copies `input` into the shared buffer, waits for the worker, and
   * returns the output bytes (a view into the shared buffer, valid until the next call).
   */
  run(op: CollectiveOp, g: CpuCommunicator, call: string, input: Uint8Array, outBytes: number): Uint8Array {
    if (this.broken !== null) throw new Error(`${call} on group ${g.label}: the communicator is unusable after an earlier failure (${this.broken})`);
    const outOffset = align8(input.byteLength);
    if (outOffset + outBytes > this.data.byteLength) this.data = new SharedArrayBuffer(2 ** Math.ceil(Math.log2(outOffset + outBytes)));
    new Uint8Array(this.data, 0, input.byteLength).set(input);
    Atomics.store(this.ctrl, CTRL_STATE, STATE_PENDING);
    this.worker.postMessage({ type: 'op', op, channel: g.channel, ranks: [...g.worldRanks], me: g.rank, data: this.data, outOffset } satisfies ToCommWorker);
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const state = Atomics.load(this.ctrl, CTRL_STATE);
      if (state === STATE_DONE) break;
      if (state === STATE_FAILED) {
        const text = new TextDecoder().decode(this.errorBytes.slice(0, Atomics.load(this.ctrl, CTRL_ERROR_BYTES)));
        this.broken = text;
        throw new Error(`${call} on group ${g.label} failed: ${text}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        this.broken = `${call} timed out`;
        throw new Error(`${call} on group ${g.label} did not finish within ${(this.timeoutMs / 1000).toFixed(0)} s: another rank of the group did not reach it (stuck, much slower, or calling different collectives); check the other ranks' output, or raise --parallel.collective_timeout_sec`);
      }
      Atomics.wait(this.ctrl, CTRL_STATE, STATE_PENDING, left);
    }
    Atomics.store(this.ctrl, CTRL_STATE, STATE_IDLE);
    return new Uint8Array(this.data, outOffset, outBytes);
  }

  close(): void {
    this.broken ??= 'closed';
    this.worker.postMessage({ type: 'close' } satisfies ToCommWorker);
  }
}

export class CpuCommunicator implements Communicator {
  readonly rank: number;
  readonly size: number;
  readonly channel: number;

  private constructor(private readonly engine: CpuCommEngine, readonly worldRanks: readonly number[], readonly name: string, private readonly ownsEngine: boolean) {
    this.rank = worldRanks.indexOf(engine.rank);
    this.size = worldRanks.length;
    this.channel = engine.channel(worldRanks);
  }

  /** The world communicator: starts this process's worker and connects it to every other rank. */
  static async create(store: StoreClient, rank: number, world: number, timeoutMs: number): Promise<CpuCommunicator> {
    const engine = await CpuCommEngine.start(store, rank, world, timeoutMs);
    return new CpuCommunicator(engine, [...Array(world).keys()], 'world', true);
  }

  /** "dp (world ranks 0,2)" */
  get label(): string { return `${this.name} (world ranks ${this.worldRanks.join(',')})`; }

  allReduce(t: Tensor, op: ReduceOp): void {
    checkArgs.allReduce(this, t);
    const bytes = bytesOf(t);
    bytes.set(this.engine.run({ kind: 'allReduce', reduce: op, dtype: t.dtype, bytes: bytes.byteLength }, this, 'allReduce', bytes, bytes.byteLength));
  }

  reduceScatterStart(out: Tensor, inp: Tensor): PendingCollective {
    this.reduceScatter(out, inp);
    return FINISHED;
  }

  reduceScatter(out: Tensor, inp: Tensor): void {
    checkArgs.reduceScatter(this, out, inp);
    const o = bytesOf(out);
    o.set(this.engine.run({ kind: 'reduceScatter', dtype: inp.dtype, outBytes: o.byteLength }, this, 'reduceScatter', bytesOf(inp), o.byteLength));
  }

  allGatherStart(out: Tensor, inp: Tensor): PendingCollective {
    this.allGather(out, inp);
    return FINISHED;
  }

  allGather(out: Tensor, inp: Tensor): void {
    checkArgs.allGather(this, out, inp);
    const i = bytesOf(inp), o = bytesOf(out);
    o.set(this.engine.run({ kind: 'allGather', inBytes: i.byteLength }, this, 'allGather', i, o.byteLength));
  }

  allToAll(out: Tensor, inp: Tensor, sendRows: readonly number[], recvRows: readonly number[]): void {
    const rowBytes = checkArgs.allToAll(this, out, inp, sendRows, recvRows) * bytesPerElement(inp.dtype);
    const o = bytesOf(out);
    const op: CollectiveOp = { kind: 'allToAll', sendBytes: sendRows.map((n) => n * rowBytes), recvBytes: recvRows.map((n) => n * rowBytes) };
    o.set(this.engine.run(op, this, 'allToAll', bytesOf(inp), o.byteLength));
  }

  send(t: Tensor, peer: number): void {
    checkArgs.peer(this, 'send', t, peer);
    const b = bytesOf(t);
    this.engine.run({ kind: 'sendRecv', to: peer, sendBytes: b.byteLength, from: null, recvBytes: 0 }, this, `send to rank ${peer}`, b, 0);
  }

  recv(t: Tensor, peer: number): void {
    checkArgs.peer(this, 'recv', t, peer);
    const b = bytesOf(t);
    b.set(this.engine.run({ kind: 'sendRecv', to: null, sendBytes: 0, from: peer, recvBytes: b.byteLength }, this, `recv from rank ${peer}`, new Uint8Array(0), b.byteLength));
  }

  sendRecv(send: Tensor, to: number, recv: Tensor, from: number): void {
    checkArgs.peer(this, 'sendRecv', send, to);
    checkArgs.peer(this, 'sendRecv', recv, from);
    const s = bytesOf(send), r = bytesOf(recv);
    r.set(this.engine.run({ kind: 'sendRecv', to, sendBytes: s.byteLength, from, recvBytes: r.byteLength }, this, `sendRecv (to rank ${to}, from rank ${from})`, s, r.byteLength));
  }

  barrier(): void {
    this.engine.run({ kind: 'barrier' }, this, 'barrier', new Uint8Array(0), 0);
  }

  group(ranks: readonly number[], name: string): Promise<Communicator> {
    checkArgs.group(this, ranks);
    if (isWholeGroup(this, ranks)) return Promise.resolve(this);
    if (ranks.length === 1) return Promise.resolve(new LocalCommunicator(name, this.worldRanks[ranks[0]!]));
    return Promise.resolve(new CpuCommunicator(this.engine, ranks.map((r) => this.worldRanks[r]!), name, false));
  }

  /** Closing the world communicator stops the worker; a sub-group has nothing of its own. */
  close(): void {
    if (this.ownsEngine) this.engine.close();
  }
}
