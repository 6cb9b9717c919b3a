// A rank's connection to the rendezvous store (served by rank 0, store_server.ts). Used at
// start-up and when groups are made, so it is asynchronous: set/get (get waits until the key
// exists), add (a counter) and barrier. Every wait has the collective timeout, and each failure
// is one line naming MASTER_ADDR:MASTER_PORT and what to check.
import net from 'node:net';
import { onJsonLines, writeJsonLine, type StoreReply, type StoreRequest } from './lines.js';

export interface StoreAddress {
  host: string;
  port: number;
  /** This process's rank and the world size (the store refuses ranks of another job). */
  rank: number;
  world: number;
  /** How long to keep trying to reach the store, and how long any one request may wait. */
  timeoutMs: number;
}

type Pending = { resolve: (r: StoreReply & { ok: true }) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };
type RequestBody = StoreRequest extends infer R ? (R extends StoreRequest ? Omit<R, 'id'> : never) : never;

const RETRY_MS = 200;
const RETRYABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE']);

function connectOnce(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    socket.setTimeout(timeoutMs, () => { socket.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })); });
    socket.once('connect', () => { socket.setTimeout(0); socket.removeAllListeners('error'); resolve(socket); });
    socket.once('error', reject);
  });
}

export class StoreClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly barriers = new Map<string, number>();
  private closed = false;
  private lost: string | null = null;

  private constructor(private readonly socket: net.Socket, readonly address: StoreAddress) {
    socket.setNoDelay(true);
    socket.unref();
    onJsonLines(socket, (msg) => this.onReply(msg as StoreReply), () => this.fail('sent a line that is not JSON'));
    socket.on('error', (e: NodeJS.ErrnoException) => this.fail(`connection error ${e.code ?? e.message}`));
    socket.on('close', () => this.fail('closed the connection (rank 0 exited; see its error)'));
  }

  private get where(): string { return `${this.address.host}:${this.address.port}`; }

  /** Connects (retrying until the timeout: rank 0 may start later) and joins the store. */
  static async connect(a: StoreAddress): Promise<StoreClient> {
    const deadline = Date.now() + a.timeoutMs;
    let lastCode = 'no attempt';
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`rank ${a.rank} could not reach the rendezvous at ${a.host}:${a.port} within ${(a.timeoutMs / 1000).toFixed(0)} s (${lastCode}); check that rank 0 is running, that MASTER_ADDR and MASTER_PORT are the same on every rank and reachable from this machine, or raise --parallel.collective_timeout_sec`);
      }
      try {
        const socket = await connectOnce(a.host, a.port, Math.min(left, 5000));
        const client = new StoreClient(socket, a);
        try {
          await client.request({ op: 'hello', rank: a.rank, world: a.world }, 'join');
        } catch (e) {
          client.close();
          throw e;
        }
        return client;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === undefined || !RETRYABLE.has(code)) throw e;
        lastCode = code;
        await new Promise((r) => setTimeout(r, Math.min(RETRY_MS, Math.max(0, deadline - Date.now()))));
      }
    }
  }

  private onReply(r: StoreReply): void {
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    clearTimeout(p.timer);
    if (this.pending.size === 0) this.socket.unref();
    if (r.ok) p.resolve(r);
    else p.reject(new Error(r.error));
  }

  private fail(why: string): void {
    if (this.lost !== null) return;
    this.lost = this.closed ? 'was closed by this rank' : `the rendezvous at ${this.where} ${why}`;
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(new Error(this.lost)); }
    this.pending.clear();
  }

  private request(body: RequestBody, what: string): Promise<StoreReply & { ok: true }> {
    if (this.lost !== null) return Promise.reject(new Error(this.lost));
    const id = this.nextId++;
    const ms = this.address.timeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        if (this.pending.size === 0) this.socket.unref();
        reject(new Error(`rank ${this.address.rank} waited ${(ms / 1000).toFixed(0)} s at the rendezvous (${this.where}) for ${what}; another rank failed or is stuck (see its output), or raise --parallel.collective_timeout_sec`));
      }, ms);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.ref();
      writeJsonLine(this.socket, { ...body, id } as StoreRequest);
    });
  }

  async set(key: string, value: Uint8Array): Promise<void> {
    await this.request({ op: 'set', key, value: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') }, `set "${key}"`);
  }

  /** The value of key, waiting until some rank sets it. */
  async get(key: string): Promise<Uint8Array> {
    const r = await this.request({ op: 'get', key }, `"${key}", which another rank publishes`);
    return new Uint8Array(Buffer.from(r.value ?? '', 'base64'));
  }

  /** Adds delta to the counter `key` (0 when new) and returns its new value. */
  async add(key: string, delta: number): Promise<number> {
    const r = await this.request({ op: 'add', key, delta }, `add "${key}"`);
    return r.count ?? 0;
  }

  /** Returns once `count` ranks (default: the world) have called barrier with this name as often. */
  async barrier(name: string, count = this.address.world): Promise<void> {
    const generation = this.barriers.get(name) ?? 0;
    this.barriers.set(name, generation + 1);
    const key = `barrier/${name}/${generation}`;
    if ((await this.add(key, 1)) === count) await this.set(`${key}/done`, new Uint8Array(0));
    await this.get(`${key}/done`);
  }

  close(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
