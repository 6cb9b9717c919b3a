// Initial weights: the same values whether worker threads or the calling thread make them, the
// right moments, and different parameters getting different streams.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fillJobChunks, fillNormalChunks, INIT_CHUNK, normalValues, normalValuesMany, stopInitWorkers } from '../src/nn/init.js';

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

test('parameters made together get, bit for bit, the values each gets alone', () => {
  // Small parts that only together pass the parallel threshold (the workers then share chunks
  // across parts), a part of one value, and parts that are not chunk multiples.
  const parts = [
    { length: 3 * INIT_CHUNK + 5, std: 0.02, param: 4 }, { length: 1, std: 1, param: 9 },
    { length: 2 * INIT_CHUNK, std: 0.5, param: 0 }, { length: 4 * INIT_CHUNK - 3, std: 0.01, param: 11 },
  ];
  const together = normalValuesMany(parts, 77);
  assert.equal(together.length, parts.length);
  parts.forEach((p, i) => {
    const alone = new Float32Array(p.length);
    fillNormalChunks(alone, p.std, 77, p.param, 0, 1);
    assert.deepEqual(together[i], alone, `part ${i}`);
  });
  // Every chunk is filled by exactly one of any number of workers: stride s, shares 0..s-1.
  for (const stride of [1, 2, 3, 7, 15]) {
    const total = parts.reduce((n, p) => n + p.length, 0);
    const buffer = new SharedArrayBuffer(total * 4);
    let offset = 0;
    const placed = parts.map((p) => { const q = { ...p, offset }; offset += p.length; return q; });
    for (let first = 0; first < stride; first++) fillJobChunks({ buffer, parts: placed, seed: 77, first, stride });
    placed.forEach((p, i) => assert.deepEqual(new Float32Array(buffer, p.offset * 4, p.length), together[i], `stride ${stride}, part ${i}`));
  }
  assert.deepEqual(normalValuesMany([], 1), []);
  stopInitWorkers();
});

test('different parameters and seeds give different values', () => {
  const a = normalValues(1000, 1, 1, 0), b = normalValues(1000, 1, 1, 1), c = normalValues(1000, 1, 2, 0);
  assert.notDeepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.deepEqual(a, normalValues(1000, 1, 1, 0));
});
