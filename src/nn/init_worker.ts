// Worker thread of init.ts: fills its share of a job's chunks, then counts itself done.
import { parentPort } from 'node:worker_threads';
import { fillJobChunks, type InitJob } from './init.js';

parentPort!.on('message', (job: InitJob) => {
  fillJobChunks(job);
  const counter = new Int32Array(job.done);
  Atomics.add(counter, 0, 1);
  Atomics.notify(counter, 0);
});
