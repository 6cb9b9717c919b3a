// bf16 stores on the CPU backend keep NaN a NaN. Round-to-nearest-even adds 0x7fff to the f32
// bits; for a NaN whose payload sits only in the low 16 bits that carry turns it into ±Inf or
// −0 unless the rounding checks for NaN first (tensor/dtype.ts's f32ArrayToBf16 does).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { fromHost } from '../src/ops/create.js';
import { emptyTensor } from '../src/tensor/tensor.js';

// f32 NaNs with low-payload bits, the quiet NaN, and two ordinary values.
const BITS = [0x7f800001, 0x7fffffff, 0xffffffff, 0x7fc00000, 0x3f800000, 0xc0490fdb];

function isBf16NaN(bits: number): boolean {
  return (bits & 0x7f80) === 0x7f80 && (bits & 0x7f) !== 0;
}

test('a NaN stays NaN through a bf16 store on the CPU backend (contiguous and strided)', () => {
  const be = new CpuBackend();
  const values = new Float32Array(new Uint32Array(BITS).buffer);
  const src = fromHost(be, values, [2, 3], 'f32');

  const dense = emptyTensor(be, [2, 3], 'bf16');
  be.copy(dense, src);
  // A transposed view: the copy then goes through the strided store path.
  const base = emptyTensor(be, [3, 2], 'bf16');
  const strided = base.view([2, 3], [1, 2], 0);
  assert.equal(strided.isContiguous(), false);
  be.copy(strided, src);

  const fromDense = be.read(dense) as Uint16Array;
  const fromStrided = be.read(strided) as Uint16Array;
  for (const [where, got] of [['contiguous', fromDense], ['strided', fromStrided]] as const) {
    for (let i = 0; i < 4; i++) assert.ok(isBf16NaN(got[i]!), `${where} element ${i}: f32 bits 0x${BITS[i]!.toString(16)} became bf16 0x${got[i]!.toString(16)}`);
    assert.equal(got[4], 0x3f80, `${where}: 1.0`);
    assert.equal(got[5], 0xc049, `${where}: -π rounds to 0xc049`);
  }
  for (const t of [src, dense, strided, base]) t.dispose();
});
