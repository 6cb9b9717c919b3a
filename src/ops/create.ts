// Creating tensors and reading them back.
import { backendOf, type Backend } from '../backend/backend.js';
import { f32ArrayToBf16, type DType, type HostArray } from '../tensor/dtype.js';
import { emptyTensor, numel, type Shape, type Tensor } from '../tensor/tensor.js';

export function full(backend: Backend, shape: Shape, dtype: DType, value: number): Tensor {
  const t = emptyTensor(backend, shape, dtype);
  backend.fill(t, value);
  return t;
}

export const zeros = (backend: Backend, shape: Shape, dtype: DType) => full(backend, shape, dtype, 0);

/** A tensor holding host numbers (converted and, for bf16, rounded to nearest even). */
export function fromHost(backend: Backend, values: ArrayLike<number>, shape: Shape, dtype: DType): Tensor {
  if (values.length !== numel(shape)) throw new Error(`internal: ${values.length} values for shape [${shape}]`);
  const t = emptyTensor(backend, shape, dtype);
  backend.write(t, hostArrayOf(values, dtype));
  return t;
}

export function hostArrayOf(values: ArrayLike<number>, dtype: DType): HostArray {
  switch (dtype) {
    case 'f32': return values instanceof Float32Array ? values : Float32Array.from(values);
    case 'bf16': return f32ArrayToBf16(values instanceof Float32Array ? values : Float32Array.from(values));
    case 'i32': return values instanceof Int32Array ? values : Int32Array.from(values);
    default: return dtype satisfies never;
  }
}

/** The elements of t as f32 numbers on the host (waits for the device). */
export function toHostF32(t: Tensor): Float32Array {
  const h = backendOf(t).read(t);
  if (h instanceof Float32Array) return h;
  if (h instanceof Int32Array) return Float32Array.from(h);
  const out = new Float32Array(h.length);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < h.length; i++) u[i] = h[i]! << 16;
  return out;
}

export function toHostI32(t: Tensor): Int32Array {
  const h = backendOf(t).read(t);
  if (!(h instanceof Int32Array)) throw new Error(`internal: toHostI32 of ${t.dtype}`);
  return h;
}

export function item(t: Tensor): number {
  if (t.size !== 1) throw new Error(`internal: item() of a tensor with ${t.size} elements`);
  return toHostF32(t)[0]!;
}
