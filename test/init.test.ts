// Initial weights: the same values whether worker threads or the calling thread make them, the
// right moments, and different parameters getting different streams.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fillNormalChunks, INIT_CHUNK, normalValues, stopInitWorkers } from '../src/nn/init.js';

test('parallel and single-threaded initialisation agree bit for bit', () => {
  const n = 9 * INIT_CHUNK + 12345; // above the parallel threshold, not a chunk multiple
  const parallel = normalValues(n, 0.02, 1234, 7);
  const serial = new Float32Array(n);
  fillNormalChunks(serial, 0.02, 1234, 7, 0, 1);
  assert.deepEqual(parallel, serial);
  let sum = 0, sq = 0;
  for (const x of parallel) { sum += x; sq += x * x; }
  const mean = sum / n, std = Math.sqrt(sq / n - mean * mean);
  assert.ok(Math.abs(mean) < 1e-4, `mean ${mean}`);
  assert.ok(Math.abs(std - 0.02) < 1e-4, `std ${std}`);
  stopInitWorkers();
});

test('different parameters and seeds give different values', () => {
  const a = normalValues(1000, 1, 1, 0), b = normalValues(1000, 1, 1, 1), c = normalValues(1000, 1, 2, 0);
  assert.notDeepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.deepEqual(a, normalValues(1000, 1, 1, 0));
});
