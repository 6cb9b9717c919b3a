// CUtensorMap kernel arguments: the descriptors Hopper's copy engine (TMA) reads to move a box
// of a tensor between device memory and shared memory (cp.async.bulk.tensor in the kernels).
// A map is encoded by the driver straight into a 128-byte KernelArgs slot; when only the base
// address changes between launches (the usual case: same shapes, new tensors), the cheaper
// cuTensorMapReplaceAddress rewrites it in place. Maps a kernel reads from device memory (an
// array of them, one per tensor) are staged in host memory here and uploaded by their user.
import koffi from 'koffi';
import type { CudaDriver } from '../ffi/driver.js';
import { TENSOR_MAP_BYTES, type KernelArgs } from './kernel_args.js';

// CUtensorMap enums (cuda.h).
const CU_TENSOR_MAP_DATA_TYPE_FLOAT32 = 7;
const CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9;
const CU_TENSOR_MAP_INTERLEAVE_NONE = 0;
const CU_TENSOR_MAP_SWIZZLE_NONE = 0;
const CU_TENSOR_MAP_SWIZZLE_128B = 3;
const CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3;
const CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0; // out-of-range elements read as zeros

/** A tiled view of a tensor: extents and byte strides innermost first, and the box one copy moves. */
export interface TiledMap {
  dtype: 'bf16' | 'f32';
  /** Device address of element (0, …, 0); 16-byte aligned. */
  address: bigint;
  /** Extent of each dimension, innermost first (1 to 5 dimensions). */
  dims: readonly number[];
  /** Byte stride of dimensions 1… (dims.length − 1 values; multiples of 16). */
  strides: readonly number[];
  /** Box extent per dimension; box[0] × element size ≤ 128 bytes with the 128-byte swizzle. */
  box: readonly number[];
  /** Shared-memory layout: the 128-byte swizzle that wgmma operands use, or none. */
  swizzle128: boolean;
}

/** Remembers what each wide slot of one KernelArgs holds, so unchanged geometry is not re-encoded. */
export class TensorMapSlots {
  private readonly geometry = new Map<number, string>();

  constructor(private readonly driver: CudaDriver, private readonly args: KernelArgs) {}

  /** Encodes `map` into wide slot i of the arguments (or only swaps its address). */
  set(i: number, map: TiledMap, what: string): void {
    const key = `${map.dtype}|${map.dims}|${map.strides}|${map.box}|${map.swizzle128}`;
    const out = this.args.wideAddress(i);
    checkAligned(map, what);
    if (this.geometry.get(i) === key) {
      this.driver.check('cuTensorMapReplaceAddress', this.driver.tensorMapFunctions().replace(out, map.address), what);
      return;
    }
    this.geometry.delete(i);
    encodeTiledMap(this.driver, out, map, what);
    this.geometry.set(i, key);
  }
}

function checkAligned(map: TiledMap, what: string): void {
  if (map.address % 16n !== 0n || map.strides.some((s) => s % 16 !== 0)) {
    throw new Error(`${what}: the copy engine needs 16-byte-aligned addresses and row strides (address ${map.address}, strides [${map.strides}] bytes)`);
  }
}

/** cuTensorMapEncodeTiled of `map` into the 128 bytes at host address `out` (64-byte aligned). */
function encodeTiledMap(driver: CudaDriver, out: bigint, map: TiledMap, what: string): void {
  const rank = map.dims.length;
  if (rank < 1 || rank > 5 || map.strides.length !== rank - 1 || map.box.length !== rank) {
    throw new Error(`internal: tensor map for ${what}: dims [${map.dims}], strides [${map.strides}], box [${map.box}]`);
  }
  const elem = map.dtype === 'bf16' ? 2 : 4;
  driver.check('cuTensorMapEncodeTiled', driver.tensorMapFunctions().encode(
    out, map.dtype === 'bf16' ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32, rank, map.address,
    BigUint64Array.from(map.dims, BigInt), BigUint64Array.from(map.strides.length ? map.strides : [0], BigInt),
    Uint32Array.from(map.box), Uint32Array.from(map.dims, () => 1),
    CU_TENSOR_MAP_INTERLEAVE_NONE, map.swizzle128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
  ), `${what}: dims [${map.dims}], strides [${map.strides}] B, box [${map.box}], ${elem}-byte elements`);
}

const stagingMemory = new FinalizationRegistry<bigint>((mem) => koffi.free(mem));

/**
 * Host staging for an array of maps that a kernel reads from device memory (one map per expert
 * weight, say, when the tensors share no base address): encode each, then upload `bytes(n)`.
 * Grows as needed; the 64-byte alignment the driver writes maps at holds for every entry.
 */
export class TensorMapArray {
  private mem = 0n;
  private base = 0n;
  private capacity = 0;

  constructor(private readonly driver: CudaDriver) {}

  /** Encodes `map` as entry i (entries 0..i−1 are kept when the staging grows). */
  set(i: number, map: TiledMap, what: string): void {
    if (i >= this.capacity) this.grow(Math.max(i + 1, 2 * this.capacity));
    checkAligned(map, what);
    encodeTiledMap(this.driver, this.base + BigInt(i * TENSOR_MAP_BYTES), map, what);
  }

  /** The first n entries' bytes (a view of the staging memory: upload it before the next set). */
  bytes(n: number): Uint8Array {
    if (n > this.capacity) throw new Error(`internal: ${n} tensor maps staged, room for ${this.capacity}`);
    return new Uint8Array(koffi.view(this.base, n * TENSOR_MAP_BYTES) as ArrayBuffer);
  }

  private grow(capacity: number): void {
    const mem = koffi.alloc('uint8_t', capacity * TENSOR_MAP_BYTES + 64) as bigint;
    const base = (mem + 63n) & ~63n;
    if (this.capacity > 0) {
      new Uint8Array(koffi.view(base, this.capacity * TENSOR_MAP_BYTES) as ArrayBuffer).set(this.bytes(this.capacity));
      stagingMemory.unregister(this);
      koffi.free(this.mem);
    }
    stagingMemory.register(this, mem, this);
    this.mem = mem;
    this.base = base;
    this.capacity = capacity;
  }
}
