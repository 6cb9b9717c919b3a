// Pre-encoded kernel parameter buffers: what cuLaunchKernel takes as `void **kernelParams`,
// built once per call site and rewritten in place for each launch (≈4.4 µs a launch from
// TypeScript), so no launch allocates.
import koffi from 'koffi';

const argMemory = new FinalizationRegistry<bigint>((mem) => koffi.free(mem));

/** Bytes of a CUtensorMap kernel parameter (passed by value, 64-byte aligned). */
export const TENSOR_MAP_BYTES = 128;

/**
 * A reusable, pre-encoded kernel parameter buffer: one 8-byte slot per argument (128 bytes,
 * 64-byte aligned, for the `wide` ones: CUtensorMap parameters) in memory that never moves,
 * plus the array of pointers to the slots that cuLaunchKernel takes. Set the
 * values with the typed setters (chainable), then pass it to CudaKernel.launch; the driver
 * copies the values at launch, so the buffer may be rewritten for the next launch at once.
 */
export class KernelArgs {
  /** Address of the `void *kernelParams[count]` array. */
  readonly pointer: bigint;
  private readonly view: DataView;
  private readonly offsets: number[] = [];
  private readonly base: bigint;

  constructor(readonly count: number, readonly wide: readonly number[] = []) {
    if (!Number.isInteger(count) || count < 0 || wide.some((i) => !Number.isInteger(i) || i < 0 || i >= count)) {
      throw new Error(`internal: KernelArgs(${count}, [${wide}])`);
    }
    const slots = Math.max(count, 1);
    // Layout: [wide slots, 128 B each][narrow slots, 8 B each][&slot 0 … &slot count-1], from a
    // 64-byte-aligned base.
    let at = 0;
    for (let i = 0; i < slots; i++) if (wide.includes(i)) { this.offsets[i] = at; at += TENSOR_MAP_BYTES; }
    for (let i = 0; i < slots; i++) if (!wide.includes(i)) { this.offsets[i] = at; at += 8; }
    const pointersAt = at;
    const bytes = pointersAt + 8 * slots;
    const mem = koffi.alloc('uint8_t', bytes + 64) as bigint;
    argMemory.register(this, mem);
    this.base = (mem + 63n) & ~63n;
    this.view = new DataView(koffi.view(this.base, bytes));
    for (let i = 0; i < slots; i++) this.view.setBigUint64(pointersAt + 8 * i, this.base + BigInt(this.offsets[i]!), true);
    this.pointer = this.base + BigInt(pointersAt);
  }

  private slot(i: number): number {
    if (i >= this.count || i < 0) throw new Error(`internal: kernel argument ${i} of ${this.count}`);
    return this.offsets[i]!;
  }

  /** Host address of wide slot i (where a CUtensorMap is encoded in place). */
  wideAddress(i: number): bigint {
    if (!this.wide.includes(i)) throw new Error(`internal: kernel argument ${i} is not a 128-byte slot`);
    return this.base + BigInt(this.slot(i));
  }

  /** A device pointer (T* parameter). */
  ptr(i: number, devicePtr: bigint): this {
    this.view.setBigUint64(this.slot(i), devicePtr, true);
    return this;
  }
  i32(i: number, v: number): this {
    this.view.setInt32(this.slot(i), v, true);
    return this;
  }
  u32(i: number, v: number): this {
    this.view.setUint32(this.slot(i), v, true);
    return this;
  }
  f32(i: number, v: number): this {
    this.view.setFloat32(this.slot(i), v, true);
    return this;
  }
  i64(i: number, v: bigint): this {
    this.view.setBigInt64(this.slot(i), v, true);
    return this;
  }
}
