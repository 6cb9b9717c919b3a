// Host-memory helpers of the CPU backend: a buffer is an ArrayBuffer; every op reads its
// inputs as dense f32 (widening bf16, converting i32) and stores results with one rounding.
import { bf16ArrayToF32, f32ArrayToBf16, bytesPerElement, type DType, type HostArray } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import type { DeviceBuffer } from '../backend.js';

export class HostBuffer implements DeviceBuffer {
  constructor(readonly data: ArrayBuffer, readonly bytes: number) {}
}

/** The typed array over a tensor's whole storage, starting at element 0 of the storage. */
export function storageArray(t: Tensor): HostArray {
  const buf = (t.storage.buffer as HostBuffer).data;
  const n = t.storage.bytes / bytesPerElement(t.dtype);
  return arrayOf(t.dtype, buf, 0, n);
}

export function arrayOf(dtype: DType, buf: ArrayBuffer, byteOffset: number, length: number): HostArray {
  switch (dtype) {
    case 'f32': return new Float32Array(buf, byteOffset, length);
    case 'bf16': return new Uint16Array(buf, byteOffset, length);
    case 'i32': return new Int32Array(buf, byteOffset, length);
    default: return dtype satisfies never;
  }
}

/** The contiguous elements of t (t must be contiguous), as its own typed array type, no copy. */
export function denseView(t: Tensor): HostArray {
  if (!t.isContiguous()) throw new Error(`internal: cpu op expected a contiguous tensor, got strides [${t.strides}]`);
  const buf = (t.storage.buffer as HostBuffer).data;
  return arrayOf(t.dtype, buf, t.offset * bytesPerElement(t.dtype), t.size);
}

/** Calls fn(linearIndex, storageIndex) over every element of a view in row-major order. */
export function forEachIndex(t: Tensor, fn: (i: number, at: number) => void): void {
  const rank = t.rank;
  const n = t.size;
  if (n === 0) return;
  if (t.isContiguous()) { for (let i = 0; i < n; i++) fn(i, t.offset + i); return; }
  const idx = new Array<number>(rank).fill(0);
  let at = t.offset;
  for (let i = 0; i < n; i++) {
    fn(i, at);
    for (let d = rank - 1; d >= 0; d--) {
      idx[d]!++;
      at += t.strides[d]!;
      if (idx[d]! < t.shape[d]!) break;
      at -= t.strides[d]! * t.shape[d]!;
      idx[d] = 0;
    }
  }
}

/** The elements of t (any view, any dtype) as a new dense Float32Array. */
export function readF32(t: Tensor): Float32Array {
  if (t.isContiguous()) {
    const v = denseView(t);
    if (v instanceof Float32Array) return v.slice();
    if (v instanceof Uint16Array) return bf16ArrayToF32(v);
    return Float32Array.from(v);
  }
  const src = storageArray(t);
  const out = new Float32Array(t.size);
  if (src instanceof Uint16Array) {
    const u = new Uint32Array(out.buffer);
    forEachIndex(t, (i, at) => { u[i] = src[at]! << 16; });
  } else {
    forEachIndex(t, (i, at) => { out[i] = src[at]!; });
  }
  return out;
}

/** Stores dense f32 values into a contiguous tensor, rounding once to its dtype. */
export function writeF32(t: Tensor, values: Float32Array): void {
  const dst = denseView(t);
  if (values.length !== dst.length) throw new Error(`internal: writeF32 length ${values.length} into ${dst.length}`);
  if (dst instanceof Float32Array) dst.set(values);
  else if (dst instanceof Uint16Array) f32ArrayToBf16(values, dst);
  else for (let i = 0; i < values.length; i++) dst[i] = Math.round(values[i]!);
}

/** The elements of an i32 tensor (contiguous) as an Int32Array view. */
export function readI32(t: Tensor): Int32Array {
  const v = denseView(t);
  if (!(v instanceof Int32Array)) throw new Error(`internal: expected an i32 tensor, got ${t.dtype}`);
  return v;
}
