// Worker-thread entry of the rendezvous store (store_server.ts starts it on rank 0). It runs on
// its own thread so that it keeps answering while rank 0's main thread computes or blocks in a
// collective. A key-value map with waiting reads and counters; ranks say hello first, and a
// hello from another job (different world size, or a rank already present) is refused.
import net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { onJsonLines, writeJsonLine, type StoreReply, type StoreRequest } from './lines.js';

export interface StoreWorkerData { host: string; port: number; world: number }
export type FromStoreWorker =
  | { type: 'listening'; port: number }
  | { type: 'error'; code: string; message: string }
  | { type: 'closed' };
/** Close: stop accepting, then wait (at most waitMs) until every rank has disconnected. */
export type ToStoreWorker = { type: 'close'; waitMs: number };

const port = parentPort!;
const { host, port: wantPort, world } = workerData as StoreWorkerData;
const values = new Map<string, string>();
const counters = new Map<string, number>();
const waiting = new Map<string, Array<{ socket: net.Socket; id: number }>>();
const ranks = new Map<number, net.Socket>();
const sockets = new Set<net.Socket>();

function handle(socket: net.Socket, req: StoreRequest): void {
  const reply = (r: StoreReply): void => writeJsonLine(socket, r);
  switch (req.op) {
    case 'hello': {
      if (req.world !== world) {
        reply({ id: req.id, ok: false, error: `the rendezvous at ${host}:${wantPort} serves a world of ${world} ranks, but rank ${req.rank} has WORLD_SIZE ${req.world}; two jobs share MASTER_PORT, or the ranks were started with different sizes` });
        return;
      }
      const other = ranks.get(req.rank);
      if (other && !other.destroyed) {
        reply({ id: req.id, ok: false, error: `rank ${req.rank} joined the rendezvous at ${host}:${wantPort} twice; two jobs share MASTER_PORT (pass another --master-port), or RANK is the same on two processes` });
        return;
      }
      ranks.set(req.rank, socket);
      reply({ id: req.id, ok: true });
      return;
    }
    case 'set': {
      values.set(req.key, req.value);
      for (const w of waiting.get(req.key) ?? []) writeJsonLine(w.socket, { id: w.id, ok: true, value: req.value } satisfies StoreReply);
      waiting.delete(req.key);
      reply({ id: req.id, ok: true });
      return;
    }
    case 'get': {
      const v = values.get(req.key);
      if (v !== undefined) { reply({ id: req.id, ok: true, value: v }); return; }
      const list = waiting.get(req.key) ?? [];
      list.push({ socket, id: req.id });
      waiting.set(req.key, list);
      return;
    }
    case 'add': {
      const n = (counters.get(req.key) ?? 0) + req.delta;
      counters.set(req.key, n);
      reply({ id: req.id, ok: true, count: n });
      return;
    }
    default:
      req satisfies never;
  }
}

const server = net.createServer((socket) => {
  sockets.add(socket);
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  socket.on('close', () => { sockets.delete(socket); if (closing && sockets.size === 0) closed(); });
  onJsonLines(socket, (msg) => handle(socket, msg as StoreRequest), () => socket.destroy());
});
server.on('error', (e: NodeJS.ErrnoException) => port.postMessage({ type: 'error', code: e.code ?? 'unknown', message: e.message } satisfies FromStoreWorker));
server.listen(wantPort, host, () => {
  const address = server.address() as net.AddressInfo;
  port.postMessage({ type: 'listening', port: address.port } satisfies FromStoreWorker);
});
let closing = false;
let closeTimer: NodeJS.Timeout | null = null;
function closed(): void {
  if (closeTimer) clearTimeout(closeTimer);
  for (const s of sockets) s.destroy();
  port.postMessage({ type: 'closed' } satisfies FromStoreWorker);
  port.close();
}
port.on('message', (m: ToStoreWorker) => {
  if (m.type !== 'close' || closing) return;
  closing = true;
  server.close();
  if (sockets.size === 0) closed();
  else closeTimer = setTimeout(closed, m.waitMs);
});
