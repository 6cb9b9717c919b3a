// CUtensorMap kernel arguments: the descriptors Hopper's copy engine (TMA) reads to move a box
// of a tensor between device memory and shared memory (cp.async.bulk.tensor in the kernels).
// A map is encoded by the driver straight into a 128-byte KernelArgs slot; when only the base
// address changes between launches (the usual case: same shapes, new tensors), the cheaper
// cuTensorMapReplaceAddress rewrites it in place.
import type { CudaDriver } from '../ffi/driver.js';
import type { KernelArgs } from './kernel_args.js';

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
    const fns = this.driver.tensorMapFunctions();
    if (map.address % 16n !== 0n || map.strides.some((s) => s % 16 !== 0)) {
      throw new Error(`${what}: the copy engine needs 16-byte-aligned addresses and row strides (address ${map.address}, strides [${map.strides}] bytes)`);
    }
    if (this.geometry.get(i) === key) {
      this.driver.check('cuTensorMapReplaceAddress', fns.replace(out, map.address), what);
      return;
    }
    const rank = map.dims.length;
    if (rank < 1 || rank > 5 || map.strides.length !== rank - 1 || map.box.length !== rank) {
      throw new Error(`internal: tensor map for ${what}: dims [${map.dims}], strides [${map.strides}], box [${map.box}]`);
    }
    const elem = map.dtype === 'bf16' ? 2 : 4;
    this.geometry.delete(i);
    this.driver.check('cuTensorMapEncodeTiled', fns.encode(
      out, map.dtype === 'bf16' ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32, rank, map.address,
      BigUint64Array.from(map.dims, BigInt), BigUint64Array.from(map.strides.length ? map.strides : [0], BigInt),
      Uint32Array.from(map.box), Uint32Array.from(map.dims, () => 1),
      CU_TENSOR_MAP_INTERLEAVE_NONE, map.swizzle128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
    ), `${what}: dims [${map.dims}], strides [${map.strides}] B, box [${map.box}], ${elem}-byte elements`);
    this.geometry.set(i, key);
  }
}
