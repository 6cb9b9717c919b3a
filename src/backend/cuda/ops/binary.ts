// Launcher of kernels/binary.cu: out = a op b over out's shape, a and b views already broadcast
// to it. The op is a run-time code; the codes are this file's and reach the kernel as -D defines.
import type { Tensor } from '../../../tensor/tensor.js';
import type { BinaryOp } from '../../backend.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, gridFor, THREADS } from './common.js';
import { collapseViews, setViewArgs, STRIDED_VIEWS_DEFINES, vectorViews, VEC, viewArgCount } from './strided_views.js';

export const BINARY_DEFINES = { ...STRIDED_VIEWS_DEFINES, OP_ADD: 0, OP_SUB: 1, OP_MUL: 2, OP_DIV: 3 } as const;

function opCode(op: BinaryOp): number {
  switch (op) {
    case 'add': return BINARY_DEFINES.OP_ADD;
    case 'sub': return BINARY_DEFINES.OP_SUB;
    case 'mul': return BINARY_DEFINES.OP_MUL;
    case 'div': return BINARY_DEFINES.OP_DIV;
    default: return op satisfies never;
  }
}

export class BinaryLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(5 + viewArgCount(2));

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'binary.cu', BINARY_DEFINES);
  }

  binary(op: BinaryOp, out: Tensor, a: Tensor, b: Tensor): void {
    assertContiguous(out, 'binary output');
    const n = out.size;
    if (n === 0) return;
    assertCount(n, 'binary');
    const ints = [out, a, b].filter((t) => t.dtype === 'i32').length;
    if (ints !== 0 && ints !== 3) throw new Error(`internal: binary ${op} mixes i32 with floats (${out.dtype} = ${a.dtype} ${op} ${b.dtype})`);
    const v = collapseViews(out.shape, [a.strides, b.strides], `binary ${op}`);
    // out is contiguous (its index is the element's), so only its base's alignment is asked for.
    const vec = ints === 0 ? vectorViews(v, [devicePtr(out), devicePtr(a), devicePtr(b)]) : null;
    const count = vec ? n / VEC : n;
    const args = this.args.ptr(0, devicePtr(out)).ptr(1, devicePtr(a)).ptr(2, devicePtr(b)).i64(3, BigInt(count)).i32(4, opCode(op));
    setViewArgs(args, 5, vec ?? v);
    const name = `binary_${vec ? 'vec8_' : ''}${out.dtype}_${a.dtype}_${b.dtype}`;
    this.file.kernel(name).launch([gridFor(this.ctx, count), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
