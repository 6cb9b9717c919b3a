// Launcher of kernels/sum_squares_multi.cu: out[0] = Σ x² over every tensor of a TensorList in
// two launches (one f32 partial per block, then one block adds the partials in a fixed order),
// so the result is bitwise reproducible. The list's device table (multi_tensor_table.ts) is
// built on the first call and reused after.
import type { DType } from '../../../tensor/dtype.js';
import type { Tensor } from '../../../tensor/tensor.js';
import type { TensorList } from '../../tensor_list.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, THREADS } from './common.js';
import { MULTI_TENSOR_DEFINES, MultiTensorTable, type TableRow } from './multi_tensor_table.js';

/** Threads of the final reduction (one block: at most smCount·4 partials here, ~50K from a weight product's squares). */
const FINAL_THREADS = 512;

export class SumSquaresMultiLauncher {
  private readonly file: KernelFile;
  private readonly partialArgs = new KernelArgs(4);
  private readonly finalArgs = new KernelArgs(3);

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator) {
    this.file = new KernelFile(ctx, 'sum_squares_multi.cu', MULTI_TENSOR_DEFINES);
  }

  sumSquaresMulti(out: Tensor, list: TensorList<Tensor>): void {
    if (out.dtype !== 'f32' || out.size !== 1) throw new Error(`internal: sumSquaresMulti output is ${out}, expected f32 [1]`);
    const table = this.tableOf(list);
    if (table.chunks === 0) {
      this.ctx.fillWords(devicePtr(out), 0, 1);
      return;
    }
    const [dtype] = table.dtypes;
    this.file.kernel(`sum_squares_multi_${dtype}`).launch([table.grid, 1, 1], [THREADS, 1, 1], 0,
      this.partialArgs.ptr(0, table.entries).ptr(1, table.chunkEntry).i32(2, table.chunks).ptr(3, table.partials));
    this.sumPartials(out, table.partials, table.grid);
  }

  /**
   * out (f32 [1]) = Σ of `count` f32 partials at `partials`, in a fixed order (one block): the
   * second half of sumSquaresMulti, also what the tma weight product's squares end with.
   */
  sumPartials(out: Tensor, partials: bigint, count: number): void {
    this.file.kernel('sum_squares_multi_final').launch([1, 1, 1], [FINAL_THREADS, 1, 1], 0,
      this.finalArgs.ptr(0, devicePtr(out)).ptr(1, partials).i32(2, count));
  }

  /** The list's table, built and attached on first use. */
  private tableOf(list: TensorList<Tensor>): MultiTensorTable {
    const have = list.table;
    if (have instanceof MultiTensorTable && have.ctx === this.ctx && have.kind === 'sumSquares') return have;
    if (have) throw new Error('internal: sumSquaresMulti on a list whose table was built for another op or GPU');
    let dtype: DType | null = null;
    const rows: TableRow[] = list.entries.map((x, i) => {
      assertContiguous(x, `sumSquaresMulti tensor ${i}`);
      assertFloat(x, `sumSquaresMulti tensor ${i}`);
      if ((dtype ??= x.dtype) !== x.dtype) throw new Error(`internal: sumSquaresMulti of dtypes ${dtype} and ${x.dtype} in one list`);
      return { ptrs: [devicePtr(x)], n: x.size, decay: false };
    });
    const table = new MultiTensorTable(this.ctx, this.allocator, 'sumSquares', rows, [dtype ?? 'f32']);
    list.table = table;
    return table;
  }
}
