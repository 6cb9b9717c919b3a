// Launcher of kernels/swiglu.cu: out = silu(gate)·up and its backward, grid-stride.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, assertSameDType, gridFor, THREADS } from './common.js';

export class SwigluLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(4);
  private readonly bwdArgs = new KernelArgs(6);

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'swiglu.cu');
  }

  swiglu(out: Tensor, gate: Tensor, up: Tensor): void {
    for (const [t, what] of [[out, 'out'], [gate, 'gate'], [up, 'up']] as const) assertContiguous(t, `swiglu ${what}`);
    assertSameDType(gate, up, 'swiglu gate and up');
    assertFloat(gate, 'swiglu gate');
    assertFloat(out, 'swiglu output');
    const n = out.size;
    if (n === 0) return;
    const args = this.fwdArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(gate)).ptr(2, devicePtr(up)).i64(3, BigInt(n));
    this.file.kernel(`swiglu_fwd_${out.dtype}_${gate.dtype}`).launch([gridFor(this.ctx, n), 1, 1], [THREADS, 1, 1], 0, args);
  }

  swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void {
    for (const [t, what] of [[dgate, 'dgate'], [dup, 'dup'], [dout, 'dout'], [gate, 'gate'], [up, 'up']] as const) assertContiguous(t, `swigluBackward ${what}`);
    assertSameDType(gate, up, 'swigluBackward gate and up');
    assertSameDType(dgate, dup, 'swigluBackward dgate and dup');
    assertFloat(gate, 'swigluBackward gate');
    assertFloat(dgate, 'swigluBackward dgate');
    assertFloat(dout, 'swigluBackward dout');
    const n = gate.size;
    if (n === 0) return;
    const args = this.bwdArgs.ptr(0, devicePtr(dgate)).ptr(1, devicePtr(dup)).ptr(2, devicePtr(dout)).ptr(3, devicePtr(gate))
      .ptr(4, devicePtr(up)).i64(5, BigInt(n));
    this.file.kernel(`swiglu_bwd_${dgate.dtype}_${dout.dtype}_${gate.dtype}`).launch([gridFor(this.ctx, n), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
