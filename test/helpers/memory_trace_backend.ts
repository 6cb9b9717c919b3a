// A backend that computes nothing and allocates through the CUDA caching allocator's own size
// classes and reuse rule (backend/cuda/runtime/allocator.ts, over a fake driver), so the live
// and peak device bytes of a training step at the bench's shapes (4 layers of DeepSeek-V2-Lite,
// 4×2048 tokens) can be measured on a machine without a GPU in a second. Every numeric method is
// a no-op; reads return zeros, except the expert offsets of expertOrder, which the trace fills
// with a routing drawn from a seeded multinomial (as random tokens route at initialisation), so
// the MoE layers see realistic per-expert row counts. `peakAt` names where the peak happened.
import type { Backend, DeviceBuffer, MemoryStats } from '../../src/backend/backend.js';
import { CachingAllocator, type GpuBlock } from '../../src/backend/cuda/runtime/allocator.js';
import type { CudaContext } from '../../src/backend/cuda/runtime/context.js';
import type { HostArray } from '../../src/tensor/dtype.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import { Rng } from '../../src/nn/rng.js';

class TraceBuffer implements DeviceBuffer {
  constructor(readonly block: GpuBlock, readonly bytes: number) {}
}

export interface MemoryTrace extends Backend {
  /** Where (a short stack of src/ frames) liveBytes last reached peakBytes. */
  readonly peakAt: string;
  /** Live bytes of the allocator's blocks: capacity (rounded) or the bytes asked for. */
  requestedLiveBytes(): number;
  /** At the last peak: live block capacity by allocation site (the nearest src/ frames), largest first. */
  readonly peakBySite: readonly [string, number][];
}

/** A Backend that only allocates; see the file header. `seed` draws the routing. */
export function memoryTraceBackend(seed = 1): MemoryTrace {
  let next = 1n << 32n;
  const fakeCtx = {
    driver: { memAlloc: (bytes: number) => { const p = next; next += BigInt(bytes); return p; }, memFree: () => {} },
    synchronize: () => {},
    memoryInfo: () => ({ free: 0, total: 0 }),
    name: 'memory trace',
  } as unknown as CudaContext;
  const alloc = new CachingAllocator(fakeCtx);
  const rng = new Rng(seed);
  const offsets = new WeakMap<object, Int32Array>();
  let requested = 0, peakAt = '';
  const live = new Map<TraceBuffer, string>();
  let peakBySite: [string, number][] = [];
  const site = (): string => (new Error().stack ?? '').split('\n').filter((l) => l.includes('/src/') && !l.includes('memory_trace') && !l.includes('tensor.js') && !l.includes('storage.js'))
    .slice(0, 2).map((l) => l.trim().replace(/^at /, '').replace(/\(.*\/dist\/src\//, '(').replace(/:\d+\)$/, ')')).join(' < ');
  const where = (): string => (new Error().stack ?? '').split('\n').filter((l) => l.includes('/src/') && !l.includes('memory_trace'))
    .slice(0, 6).map((l) => l.trim().replace(/^at /, '').replace(/\(.*\/dist\//, '(')).join(' < ');
  const core = {
    kind: 'cuda' as const,
    description: 'memory trace (CUDA allocator, no arithmetic)',
    alloc(bytes: number): DeviceBuffer {
      const before = alloc.peakBytes;
      const b = new TraceBuffer(alloc.alloc(bytes), bytes);
      requested += bytes;
      live.set(b, site());
      if (alloc.peakBytes > before) {
        peakAt = where();
        const by = new Map<string, number>();
        for (const [buf, at] of live) by.set(at, (by.get(at) ?? 0) + buf.block.capacity);
        peakBySite = [...by].sort((x, y) => y[1] - x[1]);
      }
      return b;
    },
    free(buffer: DeviceBuffer): void { alloc.free((buffer as TraceBuffer).block); requested -= buffer.bytes; live.delete(buffer as TraceBuffer); },
    memoryStats(): MemoryStats { const s = alloc.stats(); return { liveBytes: s.liveBytes, peakBytes: s.peakBytes, reservedBytes: s.reservedBytes }; },
    resetPeak(): void { alloc.resetPeak(); },
    synchronize(): void {},
    write(): void {},
    read(src: Tensor): HostArray {
      const o = offsets.get(src.storage);
      if (o) return o.slice();
      return src.dtype === 'i32' ? new Int32Array(src.size) : src.dtype === 'bf16' ? new Uint16Array(src.size) : new Float32Array(src.size);
    },
    expertOrder(_order: Tensor, off: Tensor, expertOfSlot: Tensor, numExperts: number): void {
      // Multinomial counts of M slots over E experts, as cumulative offsets [E+1].
      const counts = new Int32Array(numExperts);
      for (let m = 0; m < expertOfSlot.size; m++) counts[Math.min(numExperts - 1, Math.floor(rng.uniform() * numExperts))]!++;
      const o = new Int32Array(numExperts + 1);
      for (let e = 0; e < numExperts; e++) o[e + 1] = o[e]! + counts[e]!;
      offsets.set(off.storage, o);
    },
    get peakAt() { return peakAt; },
    get peakBySite() { return peakBySite; },
    requestedLiveBytes: () => requested,
  };
  return new Proxy(core, {
    get(target, prop, receiver) {
      if (prop in target) return Reflect.get(target, prop, receiver);
      return () => {}; // every numeric method: nothing to compute
    },
  }) as unknown as MemoryTrace;
}
