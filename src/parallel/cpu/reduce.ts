// Element-wise reduction of the CPU collectives. Contributions are combined in rank order
// 0, 1, …, n−1 by the one rank that owns a chunk, so every rank ends with the same bits: f32
// adds round to f32 after each addition (as a sequential f32 loop would), bf16 accumulates in
// f32 and rounds once at the end, i32 wraps like the hardware.
import { bf16ArrayToF32, f32ArrayToBf16, type DType } from '../../tensor/dtype.js';
import type { ReduceOp } from '../communicator.js';

export type Accumulator = Float32Array | Int32Array;

function asElements(bytes: Uint8Array, dtype: DType): Float32Array | Uint16Array | Int32Array {
  switch (dtype) {
    case 'f32': return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    case 'bf16': return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
    case 'i32': return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    default: return dtype satisfies never;
  }
}

/** A fresh accumulator holding the first contribution. */
export function startAccumulator(first: Uint8Array, dtype: DType): Accumulator {
  const x = asElements(first, dtype);
  if (x instanceof Int32Array) return x.slice();
  if (x instanceof Float32Array) return x.slice();
  return bf16ArrayToF32(x);
}

/** acc = acc op x, element-wise. */
export function accumulate(acc: Accumulator, next: Uint8Array, dtype: DType, op: ReduceOp): void {
  const x = asElements(next, dtype);
  if (x.length !== acc.length) throw new Error(`internal: reduction of ${x.length} elements into ${acc.length}`);
  if (x instanceof Uint16Array) {
    const bits = new Uint32Array(1), f = new Float32Array(bits.buffer);
    for (let i = 0; i < x.length; i++) {
      bits[0] = x[i]! << 16;
      acc[i] = op === 'sum' ? acc[i]! + f[0]! : Math.max(acc[i]!, f[0]!);
    }
    return;
  }
  if (acc instanceof Int32Array) {
    if (op === 'sum') for (let i = 0; i < x.length; i++) acc[i] = (acc[i]! + x[i]!) | 0;
    else for (let i = 0; i < x.length; i++) acc[i] = Math.max(acc[i]!, x[i]!);
    return;
  }
  if (op === 'sum') for (let i = 0; i < x.length; i++) acc[i] = acc[i]! + x[i]!;
  else for (let i = 0; i < x.length; i++) acc[i] = Math.max(acc[i]!, x[i]!);
}

/** Writes the accumulator into `out` in the collective's dtype. */
export function storeAccumulator(out: Uint8Array, acc: Accumulator, dtype: DType): void {
  const o = asElements(out, dtype);
  if (o instanceof Uint16Array) f32ArrayToBf16(acc as Float32Array, o);
  else (o as Float32Array).set(acc as Float32Array);
}
