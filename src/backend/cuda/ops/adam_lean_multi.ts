// Launcher of kernels/adam_lean_multi.cu: the lean recipe's step (bf16 weights and moments,
// stochastic rounding) over every slot of a TensorList in one launch, zeroing the gradients in
// the same pass (or leaving them: GradsAfter 'keep'). The list's device table
// (multi_tensor_table.ts) is built on the first call.
import type { DType } from '../../../tensor/dtype.js';
import type { GradsAfter, LeanAdamHyper } from '../../backend.js';
import type { LeanAdamSlot, TensorList } from '../../tensor_list.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, THREADS } from './common.js';
import { MULTI_TENSOR_DEFINES, MultiTensorTable, type TableRow } from './multi_tensor_table.js';

export class AdamLeanMultiLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(16);

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator) {
    this.file = new KernelFile(ctx, 'adam_lean_multi.cu', MULTI_TENSOR_DEFINES);
  }

  adamLeanMulti(list: TensorList<LeanAdamSlot>, h: LeanAdamHyper, grads: GradsAfter): void {
    const table = this.tableOf(list);
    if (table.chunks === 0) return;
    const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
    const args = this.args.ptr(0, table.entries).ptr(1, table.chunkEntry).i32(2, table.chunks)
      .f32(3, h.lr).f32(4, h.beta1).f32(5, h.beta2).f32(6, h.eps).f32(7, h.weightDecay).i32(8, h.decoupled ? 1 : 0)
      .f32(9, bc1).f32(10, bc2).f32(11, h.gradScale).u32(12, h.seed >>> 0).u32(13, h.step >>> 0).u32(14, h.firstStream >>> 0)
      .i32(15, grads === 'zero' ? 1 : 0);
    this.file.kernel(`adam_lean_multi_${table.dtypes[0]}`).launch([table.grid, 1, 1], [THREADS, 1, 1], 0, args);
  }

  /** The list's table, built and attached on first use. */
  private tableOf(list: TensorList<LeanAdamSlot>): MultiTensorTable {
    const have = list.table;
    if (have instanceof MultiTensorTable && have.ctx === this.ctx && have.kind === 'adamLean') return have;
    if (have) throw new Error('internal: adamLeanMulti on a list whose table was built for another op or GPU');
    let gradType: DType | null = null;
    const rows: TableRow[] = list.entries.map((s, i) => {
      const what = `adamLeanMulti slot ${i}`;
      for (const [t, name] of [[s.weights, 'weights'], [s.grad, 'grad'], [s.m, 'm'], [s.v, 'v']] as const) {
        assertContiguous(t, `${what} ${name}`);
        if (t.size !== s.weights.size) throw new Error(`internal: ${what}: ${name} has ${t.size} elements, weights ${s.weights.size}`);
      }
      if (s.weights.dtype !== 'bf16' || s.m.dtype !== 'bf16' || s.v.dtype !== 'bf16') throw new Error(`internal: ${what}: weights, m and v must be bf16`);
      assertFloat(s.grad, `${what} grad`);
      if ((gradType ??= s.grad.dtype) !== s.grad.dtype) throw new Error(`internal: ${what}: grads of dtypes ${gradType} and ${s.grad.dtype} in one list`);
      return { ptrs: [devicePtr(s.weights), devicePtr(s.grad), devicePtr(s.m), devicePtr(s.v)], n: s.weights.size, decay: s.decay };
    });
    const table = new MultiTensorTable(this.ctx, this.allocator, 'adamLean', rows, [gradType ?? 'f32']);
    list.table = table;
    return table;
  }
}
