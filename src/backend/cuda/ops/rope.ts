// Launcher of kernels/rope.cu: rotary embedding in DeepSeek's interleaved-pair layout and its
// adjoint, one thread per pair over a grid-stride loop.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, assertFloat, gridFor, THREADS } from './common.js';

export class RopeLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(8);

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'rope.cu');
  }

  rope(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void { this.launch('rope_fwd', out, x, cos, sin); }

  ropeBackward(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): void { this.launch('rope_bwd', dx, dout, cos, sin); }

  private launch(name: 'rope_fwd' | 'rope_bwd', out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void {
    for (const [t, what] of [[out, 'output'], [x, 'input'], [cos, 'cos'], [sin, 'sin']] as const) assertContiguous(t, `rope ${what}`);
    if (x.rank !== 4) throw new Error(`internal: rope input [${x.shape}] must be [B,S,H,D]`);
    if (cos.dtype !== 'f32' || sin.dtype !== 'f32') throw new Error('internal: rope tables must be f32');
    assertFloat(x, 'rope input');
    assertFloat(out, 'rope output');
    const [, S, H, D] = x.shape as [number, number, number, number];
    if (D % 2 !== 0) throw new Error(`internal: rope width ${D} is odd`);
    const pairs = x.size / 2;
    if (pairs === 0) return;
    assertCount(x.size, 'rope');
    const args = this.args.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).ptr(2, devicePtr(cos)).ptr(3, devicePtr(sin))
      .i64(4, BigInt(pairs)).i32(5, S).i32(6, H).i32(7, D / 2);
    this.file.kernel(`${name}_${out.dtype}_${x.dtype}`).launch([gridFor(this.ctx, pairs), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
