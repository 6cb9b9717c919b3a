// The CUDA backend on this process's GPU (LOCAL_RANK picks the ordinal), with a clear error
// when there is none.
import type { Backend } from '../backend.js';
import { CudaBackend, type CudaBackendOptions } from './cuda_backend.js';
import { cudaAvailable } from './ffi/library.js';
import { defaultCudaContext } from './runtime/context.js';

export function createCudaBackend(options: CudaBackendOptions = {}): Backend {
  if (!cudaAvailable()) {
    throw new Error('--device cuda was asked for, but no CUDA GPU is usable here (libcuda did not load, or cuInit found no device); use --device cpu or auto');
  }
  return new CudaBackend(defaultCudaContext(), options);
}
