// The host side of the CUDA kernels' strided views (src/backend/cuda/ops/strided_views.ts), which
// runs without a GPU: how a view set collapses, and when the copy and binary kernels may take
// their 8-wide path (every view's innermost 8 elements contiguous and 16-byte aligned).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { collapseViews, vectorViews } from '../src/backend/cuda/ops/strided_views.js';

test('collapseViews merges dimensions contiguous in every view and pads to rank 6', () => {
  const v = collapseViews([4, 3, 128], [[384, 128, 1], [576, 192, 1]], 'test');
  // Rows of 128 in both views: [4, 3] merges (each view's stride over 4 is 3 times its stride
  // over 3); the columns do not merge into the rows (128 ≠ 192 in the second view).
  assert.deepEqual(v, { rank: 2, dims: [1, 1, 1, 1, 12, 128], strides: [[0, 0, 0, 0, 128, 1], [0, 0, 0, 0, 192, 1]] });
  const c = collapseViews([4, 3, 128], [[384, 128, 1], [384, 128, 1]], 'test');
  assert.deepEqual(c, { rank: 1, dims: [1, 1, 1, 1, 1, 1536], strides: [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]] });
});

test('vectorViews counts in vectors of 8 when every view allows it, and refuses otherwise', () => {
  const split = collapseViews([4, 3, 128], [[384, 128, 1], [576, 192, 1]], 'test');
  assert.deepEqual(vectorViews(split, [4096n, 8192n]), {
    rank: 2, dims: [1, 1, 1, 1, 12, 16], strides: [[0, 0, 0, 0, 16, 1], [0, 0, 0, 0, 24, 1]],
  });
  // A broadcast row (stride 0 over rows) is fine; a broadcast innermost dimension is not.
  const row = collapseViews([5, 64], [[64, 1], [0, 1]], 'test');
  assert.ok(vectorViews(row, [0n, 256n]));
  const col = collapseViews([5, 64], [[64, 1], [1, 0]], 'test');
  assert.equal(vectorViews(col, [0n, 256n]), null, 'innermost stride 0');
  assert.equal(vectorViews(collapseViews([5, 12], [[12, 1], [12, 1]], 'test'), [0n, 0n]), null, 'innermost size 12');
  assert.equal(vectorViews(collapseViews([5, 32], [[40, 1], [32, 1]], 'test'), [0n, 0n]) !== null, true, 'row stride 40');
  assert.equal(vectorViews(collapseViews([5, 32], [[36, 1], [32, 1]], 'test'), [0n, 0n]), null, 'row stride 36');
  assert.equal(vectorViews(collapseViews([5, 32], [[32, 1], [32, 1]], 'test'), [8n, 0n]), null, 'a base 8 bytes past alignment');
  assert.equal(vectorViews(collapseViews([64, 37], [[1, 64], [37, 1]], 'test'), [0n, 0n]), null, 'transposed');
});
