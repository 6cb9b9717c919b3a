// Device choice: CUDA when a GPU is present (or asked for), otherwise the CPU backend. The CUDA
// backend is imported lazily so a CPU-only run never loads the FFI bindings.
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu_backend.js';

export type DeviceChoice = 'auto' | 'cpu' | 'cuda';

export async function selectBackend(device: DeviceChoice): Promise<Backend> {
  switch (device) {
    case 'cpu':
      return new CpuBackend();
    case 'cuda': {
      const { createCudaBackend } = await import('./cuda/create.js');
      return createCudaBackend();
    }
    case 'auto': {
      const { cudaAvailable } = await import('./cuda/library.js');
      if (!cudaAvailable()) return new CpuBackend();
      const { createCudaBackend } = await import('./cuda/create.js');
      return createCudaBackend();
    }
    default:
      return device satisfies never;
  }
}
