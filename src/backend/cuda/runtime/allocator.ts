// A caching allocator for device memory. cuMemAlloc/cuMemFree cost tens of microseconds and
// cuMemFree synchronises the device, so blocks are allocated once and kept: a freed block goes
// to a free list and the next request of a fitting size takes it back.
//
// Size classes:
// - requests up to 1 MiB round up to a multiple of 512 B: every block is then 512-B aligned
//   (16-B vector loads, TMA and cuBLASLt's preferred 256-B alignment all hold for a block's
//   start), and the rounding wastes under 512 B per tensor;
// - larger requests round up to a multiple of 2 MiB, the driver's page size for large
//   allocations, so the rounding costs no device memory the driver would not spend anyway.
// Small blocks are reused only by requests of exactly their class. A large request may take a
// cached block up to 1/8 larger than itself (at least 2 MiB), so sizes that drift between steps
// (MoE expert loads vary with routing) reuse blocks instead of allocating new ones.
//
// Reuse is in stream order: every op runs on the context's one compute stream, so a block freed
// by the host after queueing its last use can be handed to the next op at once: that op is
// queued behind the last use. Work on any other stream that touches a block must be fenced
// back onto the compute stream before the block is freed.
import type { CudaContext } from './context.js';
import { CUDA_ERROR_OUT_OF_MEMORY, CudaError } from '../ffi/driver.js';

const SMALL_LIMIT = 1 << 20;
const SMALL_GRANULE = 512;
const LARGE_GRANULE = 2 << 20;

/** The capacity of the block that serves a request of `bytes` (0 bytes gets the smallest block). */
export function roundAllocation(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new Error(`internal: allocation of ${bytes} bytes`);
  const n = Math.max(bytes, 1);
  if (n <= SMALL_LIMIT) return Math.ceil(n / SMALL_GRANULE) * SMALL_GRANULE;
  return Math.ceil(n / LARGE_GRANULE) * LARGE_GRANULE;
}

/** A block of device memory handed out by the allocator. */
export interface GpuBlock {
  /** Device address of the block's first byte. */
  readonly ptr: bigint;
  /** Bytes the caller asked for. */
  readonly bytes: number;
  /** Bytes the block really has (≥ bytes). */
  readonly capacity: number;
}

class Block implements GpuBlock {
  bytes = 0;
  live = false;
  constructor(readonly ptr: bigint, readonly capacity: number) {}
}

export interface AllocatorStats {
  /** Capacity of the blocks handed out and not yet freed. */
  liveBytes: number;
  /** Highest liveBytes since the last resetPeak(). */
  peakBytes: number;
  /** Capacity of every block held from the driver (live plus cached). */
  reservedBytes: number;
  /** Number of cuMemAlloc calls made so far. */
  deviceAllocations: number;
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

export class CachingAllocator {
  private readonly smallFree = new Map<number, Block[]>();
  /** Cached large blocks, sorted by capacity (ascending). */
  private readonly largeFree: Block[] = [];
  private live = 0;
  private peak = 0;
  private reserved = 0;
  private deviceAllocations = 0;

  constructor(private readonly ctx: CudaContext) {}

  alloc(bytes: number): GpuBlock {
    const capacity = roundAllocation(bytes);
    const block = this.takeCached(capacity) ?? this.allocateNew(bytes, capacity);
    block.bytes = bytes;
    block.live = true;
    this.live += block.capacity;
    if (this.live > this.peak) this.peak = this.live;
    return block;
  }

  free(handle: GpuBlock): void {
    const block = handle as Block;
    if (!(block instanceof Block) || !block.live) throw new Error('internal: freeing a GPU block that is not live (double free?)');
    block.live = false;
    this.live -= block.capacity;
    if (block.capacity <= SMALL_LIMIT) {
      let list = this.smallFree.get(block.capacity);
      if (!list) this.smallFree.set(block.capacity, (list = []));
      list.push(block);
    } else {
      this.largeFree.splice(this.firstLargeAtLeast(block.capacity), 0, block);
    }
  }

  get liveBytes(): number { return this.live; }
  get peakBytes(): number { return this.peak; }
  get reservedBytes(): number { return this.reserved; }

  stats(): AllocatorStats {
    return { liveBytes: this.live, peakBytes: this.peak, reservedBytes: this.reserved, deviceAllocations: this.deviceAllocations };
  }

  resetPeak(): void { this.peak = this.live; }

  /** Returns every cached (free) block to the driver, after the device has finished with them. */
  releaseCached(): void {
    this.ctx.synchronize();
    for (const list of this.smallFree.values()) for (const b of list) this.release(b);
    this.smallFree.clear();
    for (const b of this.largeFree) this.release(b);
    this.largeFree.length = 0;
  }

  private release(b: Block): void {
    this.ctx.driver.memFree(b.ptr);
    this.reserved -= b.capacity;
  }

  private firstLargeAtLeast(capacity: number): number {
    let lo = 0;
    let hi = this.largeFree.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.largeFree[mid]!.capacity < capacity) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private takeCached(capacity: number): Block | undefined {
    if (capacity <= SMALL_LIMIT) return this.smallFree.get(capacity)?.pop();
    const i = this.firstLargeAtLeast(capacity);
    const b = this.largeFree[i];
    if (!b || b.capacity > capacity + Math.max(LARGE_GRANULE, capacity / 8)) return undefined;
    this.largeFree.splice(i, 1);
    return b;
  }

  private allocateNew(bytes: number, capacity: number): Block {
    let ptr: bigint;
    try {
      ptr = this.ctx.driver.memAlloc(capacity);
    } catch (e) {
      if (!(e instanceof CudaError) || e.code !== CUDA_ERROR_OUT_OF_MEMORY) throw e;
      // Cached blocks are memory the driver could give us: return them and try once more.
      const cached = this.reserved - this.live;
      this.releaseCached();
      try {
        ptr = this.ctx.driver.memAlloc(capacity);
      } catch (e2) {
        if (!(e2 instanceof CudaError) || e2.code !== CUDA_ERROR_OUT_OF_MEMORY) throw e2;
        const { free, total } = this.ctx.memoryInfo();
        throw new Error(
          `out of GPU memory: requested ${bytes} bytes (${gib(capacity)} block) with ${gib(this.live)} live, ` +
            `${gib(this.reserved)} reserved by moetrain (${gib(cached)} of cache released and retried), ` +
            `${gib(free)} free of ${gib(total)} on ${this.ctx.name}; reduce the micro-batch or sequence length, ` +
            `or spread the model over more GPUs`,
        );
      }
    }
    this.deviceAllocations++;
    this.reserved += capacity;
    return new Block(ptr, capacity);
  }
}
