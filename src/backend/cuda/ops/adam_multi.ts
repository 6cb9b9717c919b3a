// Launcher of kernels/adam_multi.cu: the Adam/AdamW step of every slot of a TensorList in one
// launch, writing the compute copies and zeroing the gradients in the same pass (or leaving them:
// GradsAfter 'keep'). The list's device table (multi_tensor_table.ts) is built on the first call
// and reused after.
import type { DType } from '../../../tensor/dtype.js';
import type { AdamHyper, GradsAfter } from '../../backend.js';
import type { AdamSlot, TensorList } from '../../tensor_list.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, THREADS } from './common.js';
import { MULTI_TENSOR_DEFINES, MultiTensorTable, type TableRow } from './multi_tensor_table.js';

export class AdamMultiLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(13);

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator) {
    this.file = new KernelFile(ctx, 'adam_multi.cu', MULTI_TENSOR_DEFINES);
  }

  adamMulti(list: TensorList<AdamSlot>, h: AdamHyper, grads: GradsAfter): void {
    const table = this.tableOf(list);
    if (table.chunks === 0) return;
    const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
    const args = this.args.ptr(0, table.entries).ptr(1, table.chunkEntry).i32(2, table.chunks)
      .f32(3, h.lr).f32(4, h.beta1).f32(5, h.beta2).f32(6, h.eps).f32(7, h.weightDecay).i32(8, h.decoupled ? 1 : 0)
      .f32(9, bc1).f32(10, bc2).f32(11, h.gradScale).i32(12, grads === 'zero' ? 1 : 0);
    const [gradType, lowpType] = table.dtypes;
    this.file.kernel(`adam_multi_${gradType}_${lowpType}`).launch([table.grid, 1, 1], [THREADS, 1, 1], 0, args);
  }

  /** The list's table, built and attached on first use. */
  private tableOf(list: TensorList<AdamSlot>): MultiTensorTable {
    const have = list.table;
    if (have instanceof MultiTensorTable && have.ctx === this.ctx && have.kind === 'adam') return have;
    if (have) throw new Error('internal: adamMulti on a list whose table was built for another op or GPU');
    let gradType: DType | null = null, lowpType: DType | null = null;
    const rows: TableRow[] = list.entries.map((s, i) => {
      const what = `adamMulti slot ${i}`;
      for (const [t, name] of [[s.param, 'param'], [s.grad, 'grad'], [s.m, 'm'], [s.v, 'v']] as const) {
        assertContiguous(t, `${what} ${name}`);
        if (t.size !== s.param.size) throw new Error(`internal: ${what}: ${name} has ${t.size} elements, param ${s.param.size}`);
      }
      if (s.param.dtype !== 'f32' || s.m.dtype !== 'f32' || s.v.dtype !== 'f32') throw new Error(`internal: ${what}: param, m and v must be f32`);
      assertFloat(s.grad, `${what} grad`);
      if ((gradType ??= s.grad.dtype) !== s.grad.dtype) throw new Error(`internal: ${what}: grads of dtypes ${gradType} and ${s.grad.dtype} in one list`);
      if (s.lowp) {
        assertContiguous(s.lowp, `${what} lowp`);
        assertFloat(s.lowp, `${what} lowp`);
        if (s.lowp.size !== s.param.size) throw new Error(`internal: ${what}: lowp has ${s.lowp.size} elements, param ${s.param.size}`);
        if ((lowpType ??= s.lowp.dtype) !== s.lowp.dtype) throw new Error(`internal: ${what}: compute copies of dtypes ${lowpType} and ${s.lowp.dtype} in one list`);
      }
      return {
        ptrs: [devicePtr(s.param), devicePtr(s.grad), devicePtr(s.m), devicePtr(s.v), s.lowp ? devicePtr(s.lowp) : 0n],
        n: s.param.size, decay: s.decay,
      };
    });
    const table = new MultiTensorTable(this.ctx, this.allocator, 'adam', rows, [gradType ?? 'f32', lowpType ?? 'bf16']);
    list.table = table;
    return table;
  }
}
