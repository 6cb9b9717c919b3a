// Launcher of kernels/unary.cu: out = op(x), x any view, out contiguous. The op is a run-time
// code; the codes are this file's and reach the kernel as -D defines.
import type { Tensor } from '../../../tensor/tensor.js';
import type { UnaryOp } from '../../backend.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, gridFor, THREADS } from './common.js';
import { collapseViews, setViewArgs, STRIDED_VIEWS_DEFINES, viewArgCount } from './strided_views.js';

export const UNARY_DEFINES = {
  ...STRIDED_VIEWS_DEFINES,
  OP_NEG: 0, OP_EXP: 1, OP_LOG: 2, OP_SQRT: 3, OP_RSQRT: 4, OP_SQUARE: 5, OP_SILU: 6, OP_SCALE: 7, OP_ADD_SCALAR: 8,
} as const;

function opCode(op: UnaryOp): number {
  switch (op) {
    case 'neg': return UNARY_DEFINES.OP_NEG;
    case 'exp': return UNARY_DEFINES.OP_EXP;
    case 'log': return UNARY_DEFINES.OP_LOG;
    case 'sqrt': return UNARY_DEFINES.OP_SQRT;
    case 'rsqrt': return UNARY_DEFINES.OP_RSQRT;
    case 'square': return UNARY_DEFINES.OP_SQUARE;
    case 'silu': return UNARY_DEFINES.OP_SILU;
    case 'scale': return UNARY_DEFINES.OP_SCALE;
    case 'addScalar': return UNARY_DEFINES.OP_ADD_SCALAR;
    default: return op satisfies never;
  }
}

export class UnaryLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(5 + viewArgCount(1));

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'unary.cu', UNARY_DEFINES);
  }

  unary(op: UnaryOp, out: Tensor, x: Tensor, scalar: number): void {
    assertContiguous(out, 'unary output');
    const n = out.size;
    if (n === 0) return;
    assertCount(n, 'unary');
    const v = collapseViews(out.shape, [x.strides], `unary ${op}`);
    const args = this.args.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i64(2, BigInt(n)).i32(3, opCode(op)).f32(4, scalar);
    setViewArgs(args, 5, v);
    this.file.kernel(`unary_${out.dtype}_${x.dtype}`).launch([gridFor(this.ctx, n), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
