// Worker-thread entry of the CPU communicator (cpu_communicator.ts starts one per process). It
// owns the sockets to the other ranks (peer_links.ts), so their I/O proceeds while the main
// thread sleeps in Atomics.wait; it runs one collective at a time and reports the end through
// the shared control words, a failure's message through the shared error bytes.
import { parentPort, workerData } from 'node:worker_threads';
import { PeerLinks } from './peer_links.js';
import { runGroupCall } from './collectives.js';
import {
  CTRL_ERROR_BYTES, CTRL_STATE, ERROR_BYTES, STATE_DONE, STATE_FAILED,
  type CommWorkerData, type FromCommWorker, type ToCommWorker,
} from './protocol.js';

const port = parentPort!;
const { rank, world, control, error } = workerData as CommWorkerData;
const ctrl = new Int32Array(control);
const errorBytes = new Uint8Array(error);
const links = new PeerLinks(rank, world);
const post = (m: FromCommWorker): void => port.postMessage(m);

function finish(state: number, message = ''): void {
  if (state === STATE_FAILED) {
    const { written } = new TextEncoder().encodeInto(message, errorBytes.subarray(0, ERROR_BYTES));
    Atomics.store(ctrl, CTRL_ERROR_BYTES, written);
  }
  Atomics.store(ctrl, CTRL_STATE, state);
  Atomics.notify(ctrl, CTRL_STATE);
}

port.on('message', (m: ToCommWorker) => {
  switch (m.type) {
    case 'connect':
      links.connect(m.ports, m.timeoutMs).then(() => post({ type: 'connected' }), (e: Error) => post({ type: 'error', message: e.message }));
      return;
    case 'op':
      runGroupCall(links, m).then(() => finish(STATE_DONE), (e: Error) => finish(STATE_FAILED, e.message));
      return;
    case 'close':
      links.close();
      port.close();
      return;
    default:
      m satisfies never;
  }
});

links.listen().then((p) => post({ type: 'listening', port: p }), (e: Error) => post({ type: 'error', message: `rank ${rank} cannot listen on a loopback port: ${e.message}` }));
