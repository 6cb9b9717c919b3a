// Worker thread of init.ts: fills its share of a parameter's chunks, then counts itself done.
import { parentPort } from 'node:worker_threads';
import { fillNormalChunks, type InitJob } from './init.js';

parentPort!.on('message', (job: InitJob) => {
  fillNormalChunks(new Float32Array(job.buffer, 0, job.length), job.std, job.seed, job.param, job.first, job.stride);
  const counter = new Int32Array(job.done);
  Atomics.add(counter, 0, 1);
  Atomics.notify(counter, 0);
});
