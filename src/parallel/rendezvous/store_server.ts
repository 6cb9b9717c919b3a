// Rank 0 serves the rendezvous store at MASTER_ADDR:MASTER_PORT, on a worker thread of its own
// (store_worker.ts). Binding problems are one line naming the address and the fix.
import { Worker } from 'node:worker_threads';
import type { FromStoreWorker, StoreWorkerData, ToStoreWorker } from './store_worker.js';

export interface StoreServer {
  /** The port it listens on (the asked one, or the one the system chose for port 0). */
  readonly port: number;
  /** Stops serving once every rank has disconnected (or after waitMs). */
  close(waitMs?: number): Promise<void>;
}

function bindError(host: string, port: number, code: string, message: string): Error {
  const where = `rank 0 cannot serve the rendezvous at ${host}:${port}`;
  switch (code) {
    case 'EADDRINUSE':
      return new Error(`${where}: the port is in use (another job, or a stale one still holding it); pass another --master-port (MASTER_PORT) or stop the old job`);
    case 'EADDRNOTAVAIL':
      return new Error(`${where}: ${host} is not an address of this machine; MASTER_ADDR (--master-addr) must name rank 0's machine`);
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new Error(`${where}: the name ${host} does not resolve; fix MASTER_ADDR (--master-addr)`);
    case 'EACCES':
      return new Error(`${where}: permission denied (ports below 1024 are privileged); pass --master-port 1024-65535`);
    default:
      return new Error(`${where}: ${message}; check MASTER_ADDR and MASTER_PORT`);
  }
}

export function startStoreServer(o: { host: string; port: number; world: number }): Promise<StoreServer> {
  const worker = new Worker(new URL('./store_worker.js', import.meta.url), { workerData: o satisfies StoreWorkerData });
  return new Promise((resolve, reject) => {
    let started = false;
    worker.on('error', (e) => { if (!started) reject(e); });
    worker.on('message', (m: FromStoreWorker) => {
      if (m.type === 'closed') return;
      if (m.type === 'error') {
        void worker.terminate();
        if (!started) reject(bindError(o.host, o.port, m.code, m.message));
        return;
      }
      started = true;
      // The store must not keep a finished process alive; Distributed.close() stops it in order.
      worker.unref();
      resolve({
        port: m.port,
        close: async (waitMs = 10_000) => {
          const closed = new Promise<void>((done) => {
            worker.on('message', (c: FromStoreWorker) => { if (c.type === 'closed') done(); });
            worker.once('exit', () => done());
          });
          worker.ref();
          worker.postMessage({ type: 'close', waitMs } satisfies ToStoreWorker);
          await closed;
          await worker.terminate();
        },
      });
    });
  });
}
