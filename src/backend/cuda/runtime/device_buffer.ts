// Tensors on the GPU: the DeviceBuffer that CudaBackend.alloc hands out (a block of the caching
// allocator) and the device address of a tensor's first element, which every launcher passes
// to its kernels.
import { bytesPerElement } from '../../../tensor/dtype.js';
import type { Tensor } from '../../../tensor/tensor.js';
import type { DeviceBuffer } from '../../backend.js';
import type { GpuBlock } from './allocator.js';

/** Device memory handed out by CudaBackend.alloc. */
export class CudaDeviceBuffer implements DeviceBuffer {
  constructor(readonly block: GpuBlock) {}
  get bytes(): number { return this.block.bytes; }
  get ptr(): bigint { return this.block.ptr; }
}

/** Device address of a tensor's first element. */
export function devicePtr(t: Tensor): bigint {
  const buf = t.storage.buffer;
  if (!(buf instanceof CudaDeviceBuffer)) throw new Error(`internal: ${t} is not CUDA memory`);
  return buf.ptr + BigInt(t.offset * bytesPerElement(t.dtype));
}
