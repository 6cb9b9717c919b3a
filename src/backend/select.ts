// Device choice: CUDA when a GPU is present (or asked for), otherwise the CPU backend. The CUDA
// backend is imported lazily so a CPU-only run never loads the FFI bindings.
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu_backend.js';
import type { MlaKernelsRequest } from './cuda/ops/mla_kernel_choice.js';
import type { GroupedGemmRequest } from './cuda/ops/grouped_gemm.js';

export type DeviceChoice = 'auto' | 'cpu' | 'cuda';

export interface BackendOptions {
  /** MLA attention kernels on CUDA (backend/cuda/ops/mla_kernel_choice.ts); default "auto". */
  mlaKernels?: MlaKernelsRequest;
  /** Routed-expert GEMM kernels on CUDA (backend/cuda/ops/grouped_gemm.ts); default "auto". */
  groupedGemm?: GroupedGemmRequest;
}

/** Every request, checked complete against the type (the CUDA module itself loads lazily). */
const MLA_KERNELS_REQUESTS = Object.keys({ auto: 0, hopper: 0, mma: 0, generic: 0 } satisfies Record<MlaKernelsRequest, 0>) as MlaKernelsRequest[];

/**
 * The MLA kernel request of a run: MOETRAIN_MLA_KERNELS, when set, overrides the option (side-
 * by-side checks of the kernel sets without editing a config). The one place it is read.
 */
export function mlaKernelsRequest(options: BackendOptions, env: NodeJS.ProcessEnv = process.env): MlaKernelsRequest {
  const override = env.MOETRAIN_MLA_KERNELS;
  if (override === undefined || override === '') return options.mlaKernels ?? 'auto';
  const request = MLA_KERNELS_REQUESTS.find((r) => r === override);
  if (!request) throw new Error(`MOETRAIN_MLA_KERNELS=${override} is not one of ${MLA_KERNELS_REQUESTS.join(', ')}; unset it or pick one`);
  return request;
}

export async function selectBackend(device: DeviceChoice, options: BackendOptions = {}): Promise<Backend> {
  switch (device) {
    case 'cpu':
      return new CpuBackend();
    case 'cuda': {
      const { createCudaBackend } = await import('./cuda/create.js');
      return createCudaBackend({ mlaKernels: mlaKernelsRequest(options), groupedGemm: options.groupedGemm });
    }
    case 'auto': {
      const { cudaAvailable } = await import('./cuda/ffi/library.js');
      if (!cudaAvailable()) return new CpuBackend();
      const { createCudaBackend } = await import('./cuda/create.js');
      return createCudaBackend({ mlaKernels: mlaKernelsRequest(options), groupedGemm: options.groupedGemm });
    }
    default:
      return device satisfies never;
  }
}
