// backend/mla_head_rows.ts: which q_nope / k_nope / v layouts mlaAttention takes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { headRowStride } from '../src/backend/mla_head_rows.js';
import { emptyTensor } from '../src/tensor/tensor.js';

const cpu = new CpuBackend();

test('headRowStride: contiguous gives the width, a column view of a packed projection its row stride, anything else null', () => {
  const [B, S, H] = [2, 5, 3];
  const q = emptyTensor(cpu, [B, S, H, 192], 'bf16');
  assert.equal(headRowStride(q), 192);
  const nope = q.view([B, S, H, 128], q.strides, q.offset);
  const pe = q.view([B, S, H, 64], q.strides, q.offset + 128);
  assert.equal(headRowStride(nope), 192);
  assert.equal(headRowStride(pe), 192);
  // Heads and positions swapped: not packed as [B,S,H,rs].
  assert.equal(headRowStride(nope.view([B, H, S, 128], [q.strides[0]!, q.strides[2]!, q.strides[1]!, 1], q.offset)), null);
  // A row stride that is not a multiple of 8 (rows would lose 16-byte alignment).
  const odd = emptyTensor(cpu, [B, S, H, 132], 'bf16');
  assert.equal(headRowStride(odd.view([B, S, H, 128], odd.strides, odd.offset)), null);
  // Every other row of the projection: the positions' stride is not H·rs.
  assert.equal(headRowStride(q.view([B, 2, H, 128], [q.strides[0]!, 2 * q.strides[1]!, q.strides[2]!, 1], q.offset)), null);
  assert.equal(headRowStride(emptyTensor(cpu, [S, H, 128], 'bf16')), null, 'rank 3');
  for (const t of [q, odd]) t.dispose();
});
