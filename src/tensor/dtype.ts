// Element types. bf16 is stored as raw 16-bit patterns (the top half of an f32) on every backend;
// the CPU backend widens it to f32 to compute and rounds back to nearest-even on store.

export type DType = 'f32' | 'bf16' | 'i32';

export function bytesPerElement(dtype: DType): number {
  switch (dtype) {
    case 'f32': return 4;
    case 'bf16': return 2;
    case 'i32': return 4;
    default: return dtype satisfies never;
  }
}

/** The host array that holds a tensor's elements when it is read back or written. */
export type HostArray = Float32Array | Uint16Array | Int32Array;

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** f32 → bf16 bits, round to nearest even; NaN stays a quiet NaN. */
export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16ArrayToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const u = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) u[i] = src[i]! << 16;
  return dst;
}

export function f32ArrayToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const x = u[i]!;
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x007fffff) !== 0) { dst[i] = ((x >>> 16) | 0x40) & 0xffff; continue; }
    dst[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return dst;
}
