// The device-side table of a multi-tensor op (kernels/multi_tensor.cuh reads it): built once per
// TensorList on first use, uploaded into one allocator block and kept with the list until the
// list is disposed. Layout of the block:
//   [entries: MtEntry × count][chunk_entry: i32 × chunks][partials: f32 × grid]
// MtEntry is MT_ENTRY_PTRS u64 addresses (0 when absent), i64 n, i32 first_chunk, i32 flags.
// The grid is fixed with the table, so a reduction over it always has the same order.
import type { DType } from '../../../tensor/dtype.js';
import type { TensorListTable } from '../../tensor_list.js';
import type { CachingAllocator, GpuBlock } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';

/** Elements per chunk: one block's unit of work (64 KiB of each f32 array). */
const CHUNK = 16384;
const ENTRY_PTRS = 5;
const ENTRY_BYTES = 8 * ENTRY_PTRS + 8 + 4 + 4;
const FLAG_DECAY = 1;
const FLAG_VEC16 = 2;
/** Blocks per SM of the grid-stride walk over chunks: all of them resident at once (≤ 6 of 256 threads fit). */
const BLOCKS_PER_SM = 4;

/** The -D defines of every kernel file that includes multi_tensor.cuh. */
export const MULTI_TENSOR_DEFINES = {
  MT_CHUNK: CHUNK, MT_ENTRY_PTRS: ENTRY_PTRS, MT_ENTRY_BYTES: ENTRY_BYTES, MT_FLAG_DECAY: FLAG_DECAY, MT_FLAG_VEC16: FLAG_VEC16,
} as const;

/** One tensor's row of the table: its arrays' addresses (0n when absent), element count, decay. */
export interface TableRow {
  ptrs: readonly bigint[];
  n: number;
  decay: boolean;
}

/** Which op a table was built for (a list's table serves that op only). */
export type TableKind = 'adam' | 'adamLean' | 'sumSquares';

export class MultiTensorTable implements TensorListTable {
  readonly chunks: number;
  readonly grid: number;
  readonly entries: bigint;
  readonly chunkEntry: bigint;
  /** f32 × grid: one partial per block (reductions). */
  readonly partials: bigint;
  private block: GpuBlock | null;

  /** dtypes: what the op's kernel name needs to know of the tensors (checked uniform by the launcher). */
  constructor(readonly ctx: CudaContext, private readonly allocator: CachingAllocator, readonly kind: TableKind,
              rows: readonly TableRow[], readonly dtypes: readonly DType[]) {
    const firstChunk: number[] = [];
    let chunks = 0;
    for (const r of rows) {
      if (r.ptrs.length > ENTRY_PTRS) throw new Error(`internal: a multi-tensor table row has ${r.ptrs.length} addresses (at most ${ENTRY_PTRS})`);
      firstChunk.push(chunks);
      chunks += Math.ceil(r.n / CHUNK);
    }
    if (chunks >= 2 ** 31) throw new Error(`internal: a multi-tensor list of ${chunks} chunks; the kernels count chunks in i32`);
    this.chunks = chunks;
    this.grid = Math.max(1, Math.min(chunks, ctx.smCount * BLOCKS_PER_SM));
    const entriesBytes = rows.length * ENTRY_BYTES;
    const chunkAt = Math.ceil(entriesBytes / 16) * 16;
    const partialsAt = Math.ceil((chunkAt + 4 * chunks) / 16) * 16;
    const bytes = partialsAt + 4 * this.grid;
    const host = new ArrayBuffer(partialsAt);
    const view = new DataView(host);
    rows.forEach((r, i) => {
      const at = i * ENTRY_BYTES;
      let aligned = true;
      for (let p = 0; p < ENTRY_PTRS; p++) {
        const ptr = r.ptrs[p] ?? 0n;
        if (ptr % 16n !== 0n) aligned = false;
        view.setBigUint64(at + 8 * p, ptr, true);
      }
      view.setBigInt64(at + 8 * ENTRY_PTRS, BigInt(r.n), true);
      view.setInt32(at + 8 * ENTRY_PTRS + 8, firstChunk[i]!, true);
      view.setInt32(at + 8 * ENTRY_PTRS + 12, (r.decay ? FLAG_DECAY : 0) | (aligned ? FLAG_VEC16 : 0), true);
    });
    const chunkEntry = new Int32Array(host, chunkAt, chunks);
    rows.forEach((r, i) => chunkEntry.fill(i, firstChunk[i]!, firstChunk[i]! + Math.ceil(r.n / CHUNK)));
    this.block = allocator.alloc(bytes);
    this.entries = this.block.ptr;
    this.chunkEntry = this.block.ptr + BigInt(chunkAt);
    this.partials = this.block.ptr + BigInt(partialsAt);
    if (partialsAt > 0) ctx.upload(this.block.ptr, new Uint8Array(host), partialsAt);
  }

  dispose(): void {
    if (this.block) this.allocator.free(this.block);
    this.block = null;
  }
}
