// Bindings to the CUDA driver API (libcuda) through koffi, with the `_v2` symbols that cuda.h
// maps the plain names to. Every non-zero status becomes a CudaError naming the call and the
// driver's error string.
//
// FFI habits that keep calls cheap (DESIGN.md, "GPU access from TypeScript"): handles and
// device pointers travel as bigint; out-parameters are typed arrays reused across calls (a
// plain JS array as an out-parameter once cost ~600 µs per call); nothing here is async.
import koffi from 'koffi';
import { loadLibrary } from './library.js';

/** A failed driver call; `code` is the CUresult (2 = CUDA_ERROR_OUT_OF_MEMORY). */
export class CudaError extends Error {
  constructor(readonly call: string, readonly code: number, message: string) {
    super(message);
    this.name = 'CudaError';
  }
}

export const CUDA_ERROR_INVALID_VALUE = 1;
export const CUDA_ERROR_OUT_OF_MEMORY = 2;

/** CUdevice_attribute values used here (cuda.h). */
export const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
export const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
/** CUfunction_attribute: opt-in above 48 KiB of dynamic shared memory. */
export const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
/** CUevent_flags: an event only for ordering (no timestamps: cheaper to record and wait on). */
export const CU_EVENT_DISABLE_TIMING = 2;

type Fn = (...args: unknown[]) => number;

/** The raw koffi functions; each returns a CUresult. Use through CudaDriver unless on a hot path. */
export interface RawDriver {
  cuInit: Fn; cuDriverGetVersion: Fn;
  cuDeviceGetCount: Fn; cuDeviceGet: Fn; cuDeviceGetName: Fn; cuDeviceGetAttribute: Fn;
  cuDevicePrimaryCtxRetain: Fn; cuCtxSetCurrent: Fn; cuCtxSynchronize: Fn;
  cuMemAlloc_v2: Fn; cuMemFree_v2: Fn; cuMemGetInfo_v2: Fn;
  cuMemcpyHtoD_v2: Fn; cuMemcpyDtoH_v2: Fn; cuMemcpyDtoD_v2: Fn;
  cuMemcpyHtoDAsync_v2: Fn; cuMemcpyDtoHAsync_v2: Fn; cuMemcpyDtoDAsync_v2: Fn;
  cuMemsetD8_v2: Fn; cuMemsetD32_v2: Fn; cuMemsetD8Async: Fn; cuMemsetD32Async: Fn;
  cuStreamCreate: Fn; cuStreamSynchronize: Fn; cuStreamDestroy_v2: Fn; cuStreamWaitEvent: Fn;
  cuEventCreate: Fn; cuEventRecord: Fn; cuEventSynchronize: Fn; cuEventElapsedTime_v2: Fn; cuEventDestroy_v2: Fn;
  cuModuleLoadData: Fn; cuModuleGetFunction: Fn; cuModuleUnload: Fn; cuFuncSetAttribute: Fn;
  cuLaunchKernel: Fn;
  cuGetErrorName: Fn; cuGetErrorString: Fn;
}

function bindRaw(): RawDriver {
  const lib = loadLibrary('cuda');
  const f = (name: string, args: string[]): Fn => lib.func(name, 'int', args) as Fn;
  // Handles (CUcontext, CUstream, …) and host pointers are `void *`; CUdeviceptr is uint64_t.
  return {
    cuInit: f('cuInit', ['uint']),
    cuDriverGetVersion: f('cuDriverGetVersion', ['void *']),
    cuDeviceGetCount: f('cuDeviceGetCount', ['void *']),
    cuDeviceGet: f('cuDeviceGet', ['void *', 'int']),
    cuDeviceGetName: f('cuDeviceGetName', ['void *', 'int', 'int']),
    cuDeviceGetAttribute: f('cuDeviceGetAttribute', ['void *', 'int', 'int']),
    cuDevicePrimaryCtxRetain: f('cuDevicePrimaryCtxRetain', ['void *', 'int']),
    cuCtxSetCurrent: f('cuCtxSetCurrent', ['void *']),
    cuCtxSynchronize: f('cuCtxSynchronize', []),
    cuMemAlloc_v2: f('cuMemAlloc_v2', ['void *', 'size_t']),
    cuMemFree_v2: f('cuMemFree_v2', ['uint64_t']),
    cuMemGetInfo_v2: f('cuMemGetInfo_v2', ['void *', 'void *']),
    cuMemcpyHtoD_v2: f('cuMemcpyHtoD_v2', ['uint64_t', 'void *', 'size_t']),
    cuMemcpyDtoH_v2: f('cuMemcpyDtoH_v2', ['void *', 'uint64_t', 'size_t']),
    cuMemcpyDtoD_v2: f('cuMemcpyDtoD_v2', ['uint64_t', 'uint64_t', 'size_t']),
    cuMemcpyHtoDAsync_v2: f('cuMemcpyHtoDAsync_v2', ['uint64_t', 'void *', 'size_t', 'void *']),
    cuMemcpyDtoHAsync_v2: f('cuMemcpyDtoHAsync_v2', ['void *', 'uint64_t', 'size_t', 'void *']),
    cuMemcpyDtoDAsync_v2: f('cuMemcpyDtoDAsync_v2', ['uint64_t', 'uint64_t', 'size_t', 'void *']),
    cuMemsetD8_v2: f('cuMemsetD8_v2', ['uint64_t', 'uint8_t', 'size_t']),
    cuMemsetD32_v2: f('cuMemsetD32_v2', ['uint64_t', 'uint32_t', 'size_t']),
    cuMemsetD8Async: f('cuMemsetD8Async', ['uint64_t', 'uint8_t', 'size_t', 'void *']),
    cuMemsetD32Async: f('cuMemsetD32Async', ['uint64_t', 'uint32_t', 'size_t', 'void *']),
    cuStreamCreate: f('cuStreamCreate', ['void *', 'uint']),
    cuStreamSynchronize: f('cuStreamSynchronize', ['void *']),
    cuStreamDestroy_v2: f('cuStreamDestroy_v2', ['void *']),
    cuStreamWaitEvent: f('cuStreamWaitEvent', ['void *', 'void *', 'uint']),
    cuEventCreate: f('cuEventCreate', ['void *', 'uint']),
    cuEventRecord: f('cuEventRecord', ['void *', 'void *']),
    cuEventSynchronize: f('cuEventSynchronize', ['void *']),
    cuEventElapsedTime_v2: f('cuEventElapsedTime_v2', ['void *', 'void *', 'void *']),
    cuEventDestroy_v2: f('cuEventDestroy_v2', ['void *']),
    cuModuleLoadData: f('cuModuleLoadData', ['void *', 'void *']),
    cuModuleGetFunction: f('cuModuleGetFunction', ['void *', 'void *', 'str']),
    cuModuleUnload: f('cuModuleUnload', ['void *']),
    cuFuncSetAttribute: f('cuFuncSetAttribute', ['void *', 'int', 'int']),
    cuLaunchKernel: f('cuLaunchKernel', ['void *', 'uint', 'uint', 'uint', 'uint', 'uint', 'uint', 'uint', 'void *', 'void *', 'void *']),
    cuGetErrorName: f('cuGetErrorName', ['int', 'void *']),
    cuGetErrorString: f('cuGetErrorString', ['int', 'void *']),
  };
}

/** A host buffer the driver reads from or writes to. */
export type HostBytes = ArrayBufferView;

/**
 * The driver API as methods that throw CudaError. Out-parameters go through scratch typed
 * arrays owned by this object, so no call allocates JS objects beyond its result.
 */
export class CudaDriver {
  readonly raw: RawDriver;
  private readonly u64 = new BigUint64Array(2);
  private readonly i32 = new Int32Array(1);
  private readonly f32 = new Float32Array(1);

  constructor() {
    this.raw = bindRaw();
  }

  /** The error for a non-zero CUresult of `call` (detail: extra words for the message). */
  error(call: string, code: number, detail = ''): CudaError {
    const name = this.lookupString(this.raw.cuGetErrorName, code) ?? `CUresult ${code}`;
    const text = this.lookupString(this.raw.cuGetErrorString, code) ?? 'unknown error';
    return new CudaError(call, code, `${call} failed: ${name} (${text})${detail ? `; ${detail}` : ''}`);
  }

  check(call: string, code: number, detail = ''): void {
    if (code !== 0) throw this.error(call, code, detail);
  }

  private lookupString(fn: Fn, code: number): string | undefined {
    this.u64[0] = 0n;
    if (fn(code, this.u64) !== 0 || this.u64[0] === 0n) return undefined;
    return koffi.decode(this.u64[0], 'char', -1) as string;
  }

  init(): void { this.check('cuInit', this.raw.cuInit(0)); }

  driverVersion(): number {
    this.check('cuDriverGetVersion', this.raw.cuDriverGetVersion(this.i32));
    return this.i32[0]!;
  }

  deviceCount(): number {
    this.check('cuDeviceGetCount', this.raw.cuDeviceGetCount(this.i32));
    return this.i32[0]!;
  }

  /** The CUdevice handle of a visible ordinal. */
  deviceGet(ordinal: number): number {
    this.check('cuDeviceGet', this.raw.cuDeviceGet(this.i32, ordinal), `ordinal ${ordinal}`);
    return this.i32[0]!;
  }

  deviceName(dev: number): string {
    const buf = Buffer.alloc(256);
    this.check('cuDeviceGetName', this.raw.cuDeviceGetName(buf, buf.length, dev));
    const end = buf.indexOf(0);
    return buf.toString('utf8', 0, end < 0 ? buf.length : end);
  }

  deviceAttribute(attr: number, dev: number): number {
    this.check('cuDeviceGetAttribute', this.raw.cuDeviceGetAttribute(this.i32, attr, dev), `attribute ${attr}`);
    return this.i32[0]!;
  }

  primaryCtxRetain(dev: number): bigint {
    this.check('cuDevicePrimaryCtxRetain', this.raw.cuDevicePrimaryCtxRetain(this.u64, dev));
    return this.u64[0]!;
  }

  ctxSetCurrent(ctx: bigint): void { this.check('cuCtxSetCurrent', this.raw.cuCtxSetCurrent(ctx)); }
  ctxSynchronize(): void { this.check('cuCtxSynchronize', this.raw.cuCtxSynchronize()); }

  memAlloc(bytes: number): bigint {
    this.check('cuMemAlloc_v2', this.raw.cuMemAlloc_v2(this.u64, bytes), `${bytes} bytes`);
    return this.u64[0]!;
  }

  memFree(ptr: bigint): void { this.check('cuMemFree_v2', this.raw.cuMemFree_v2(ptr)); }

  /** Free and total bytes of device memory. */
  memGetInfo(): { free: number; total: number } {
    const free = new BigUint64Array(1);
    const total = new BigUint64Array(1);
    this.check('cuMemGetInfo_v2', this.raw.cuMemGetInfo_v2(free, total));
    return { free: Number(free[0]), total: Number(total[0]) };
  }

  memcpyHtoD(dst: bigint, src: HostBytes, bytes = src.byteLength): void {
    this.check('cuMemcpyHtoD_v2', this.raw.cuMemcpyHtoD_v2(dst, src, bytes), `${bytes} bytes`);
  }
  memcpyDtoH(dst: HostBytes, src: bigint, bytes = dst.byteLength): void {
    this.check('cuMemcpyDtoH_v2', this.raw.cuMemcpyDtoH_v2(dst, src, bytes), `${bytes} bytes`);
  }
  memcpyDtoD(dst: bigint, src: bigint, bytes: number): void {
    this.check('cuMemcpyDtoD_v2', this.raw.cuMemcpyDtoD_v2(dst, src, bytes), `${bytes} bytes`);
  }
  /** From pageable host memory the driver stages the data before returning, so src may be reused at once. */
  memcpyHtoDAsync(dst: bigint, src: HostBytes, bytes: number, stream: bigint): void {
    this.check('cuMemcpyHtoDAsync_v2', this.raw.cuMemcpyHtoDAsync_v2(dst, src, bytes, stream), `${bytes} bytes`);
  }
  /** Into pageable host memory this returns only when the copy (and earlier work on the stream) is done. */
  memcpyDtoHAsync(dst: HostBytes, src: bigint, bytes: number, stream: bigint): void {
    this.check('cuMemcpyDtoHAsync_v2', this.raw.cuMemcpyDtoHAsync_v2(dst, src, bytes, stream), `${bytes} bytes`);
  }
  memcpyDtoDAsync(dst: bigint, src: bigint, bytes: number, stream: bigint): void {
    this.check('cuMemcpyDtoDAsync_v2', this.raw.cuMemcpyDtoDAsync_v2(dst, src, bytes, stream), `${bytes} bytes`);
  }

  memsetD8(ptr: bigint, value: number, count: number): void {
    this.check('cuMemsetD8_v2', this.raw.cuMemsetD8_v2(ptr, value, count));
  }
  memsetD32(ptr: bigint, value: number, count: number): void {
    this.check('cuMemsetD32_v2', this.raw.cuMemsetD32_v2(ptr, value >>> 0, count));
  }
  memsetD8Async(ptr: bigint, value: number, count: number, stream: bigint): void {
    this.check('cuMemsetD8Async', this.raw.cuMemsetD8Async(ptr, value, count, stream));
  }
  /** count is in 32-bit words; value is the word's bit pattern (e.g. 0x7fc00000 for NaN). */
  memsetD32Async(ptr: bigint, value: number, count: number, stream: bigint): void {
    this.check('cuMemsetD32Async', this.raw.cuMemsetD32Async(ptr, value >>> 0, count, stream));
  }

  /** flags 0: a blocking stream, ordered with the legacy default stream that synchronous copies use. */
  streamCreate(flags = 0): bigint {
    this.check('cuStreamCreate', this.raw.cuStreamCreate(this.u64, flags));
    return this.u64[0]!;
  }
  streamSynchronize(stream: bigint): void { this.check('cuStreamSynchronize', this.raw.cuStreamSynchronize(stream)); }
  streamDestroy(stream: bigint): void { this.check('cuStreamDestroy_v2', this.raw.cuStreamDestroy_v2(stream)); }
  /** Work queued on `stream` after this call waits for `event`'s recorded work (no host wait). */
  streamWaitEvent(stream: bigint, event: bigint): void { this.check('cuStreamWaitEvent', this.raw.cuStreamWaitEvent(stream, event, 0)); }

  /** flags 0 keeps timing on (CU_EVENT_DISABLE_TIMING = 2 turns it off). */
  eventCreate(flags = 0): bigint {
    this.check('cuEventCreate', this.raw.cuEventCreate(this.u64, flags));
    return this.u64[0]!;
  }
  eventRecord(event: bigint, stream: bigint): void { this.check('cuEventRecord', this.raw.cuEventRecord(event, stream)); }
  eventSynchronize(event: bigint): void { this.check('cuEventSynchronize', this.raw.cuEventSynchronize(event)); }
  /** Milliseconds between two recorded events. */
  eventElapsedMs(start: bigint, end: bigint): number {
    this.check('cuEventElapsedTime_v2', this.raw.cuEventElapsedTime_v2(this.f32, start, end));
    return this.f32[0]!;
  }
  eventDestroy(event: bigint): void { this.check('cuEventDestroy_v2', this.raw.cuEventDestroy_v2(event)); }

  /** Loads a CUBIN (or PTX/fatbin) image; the image is only read during the call. */
  moduleLoadData(image: Uint8Array, what: string): bigint {
    this.check('cuModuleLoadData', this.raw.cuModuleLoadData(this.u64, image), what);
    return this.u64[0]!;
  }
  moduleGetFunction(mod: bigint, name: string, what: string): bigint {
    this.check('cuModuleGetFunction', this.raw.cuModuleGetFunction(this.u64, mod, name), what);
    return this.u64[0]!;
  }
  moduleUnload(mod: bigint): void { this.check('cuModuleUnload', this.raw.cuModuleUnload(mod)); }
  funcSetAttribute(fn: bigint, attr: number, value: number, what: string): void {
    this.check('cuFuncSetAttribute', this.raw.cuFuncSetAttribute(fn, attr, value), what);
  }

  private tensorMapFns: { encode: Fn; replace: Fn } | undefined;

  /** cuTensorMapEncodeTiled and cuTensorMapReplaceAddress (CUDA 12.0+), bound on first use. */
  tensorMapFunctions(): { encode: Fn; replace: Fn } {
    if (!this.tensorMapFns) {
      const lib = loadLibrary('cuda');
      this.tensorMapFns = {
        // (CUtensorMap *out, dataType, rank, void *globalAddress, const cuuint64_t *globalDim,
        //  const cuuint64_t *globalStrides, const cuuint32_t *boxDim, const cuuint32_t *elementStrides,
        //  interleave, swizzle, l2Promotion, oobFill)
        encode: lib.func('cuTensorMapEncodeTiled', 'int',
          ['void *', 'int', 'uint', 'uint64_t', 'void *', 'void *', 'void *', 'void *', 'int', 'int', 'int', 'int']) as Fn,
        replace: lib.func('cuTensorMapReplaceAddress', 'int', ['void *', 'uint64_t']) as Fn,
      };
    }
    return this.tensorMapFns;
  }

  private maxActiveClustersFn: Fn | undefined;

  /**
   * How many clusters of fn (its cluster shape fixed at compile time by __cluster_dims__) can be
   * resident at once with this block size and dynamic shared memory (cuOccupancyMaxActiveClusters,
   * CUDA 11.8+): a persistent grid of more clusters than this would run its last ones after the
   * others. fn must already allow sharedBytes (funcSetAttribute).
   */
  maxActiveClusters(fn: bigint, grid: number, block: number, sharedBytes: number, what: string): number {
    this.maxActiveClustersFn ??= loadLibrary('cuda').func('cuOccupancyMaxActiveClusters', 'int', ['void *', 'void *', 'void *']) as Fn;
    // CUlaunchConfig: gridDim x, y, z, blockDim x, y, z, sharedMemBytes (7 × u32), 4 bytes of
    // padding, hStream (8), attrs (8), numAttrs (u32), 4 bytes of padding: 56 bytes. No
    // attributes: the kernel's own cluster shape applies.
    const config = new ArrayBuffer(56);
    new Uint32Array(config).set([grid, 1, 1, block, 1, 1, sharedBytes]);
    this.check('cuOccupancyMaxActiveClusters', this.maxActiveClustersFn(this.i32, fn, new Uint8Array(config)), what);
    return this.i32[0]!;
  }

  private getParamInfo: Fn | null | undefined;

  /**
   * The byte size of each of a kernel's parameters, or undefined when the driver predates
   * cuFuncGetParamInfo (CUDA 12.4).
   */
  funcParamSizes(fn: bigint): number[] | undefined {
    if (this.getParamInfo === undefined) {
      try {
        this.getParamInfo = loadLibrary('cuda').func('cuFuncGetParamInfo', 'int', ['void *', 'size_t', 'void *', 'void *']) as Fn;
      } catch {
        this.getParamInfo = null;
      }
    }
    if (this.getParamInfo === null) return undefined;
    const offset = new BigUint64Array(1);
    const size = new BigUint64Array(1);
    const sizes: number[] = [];
    for (;;) {
      const status = this.getParamInfo(fn, sizes.length, offset, size);
      if (status === 0) sizes.push(Number(size[0]));
      // CUDA_ERROR_INVALID_VALUE marks the first index past the last parameter; any other
      // answer means the driver cannot tell, and launches go unchecked.
      else return status === CUDA_ERROR_INVALID_VALUE ? sizes : undefined;
    }
  }
}

let shared: CudaDriver | undefined;

/** The process's driver binding (libcuda is loaded on first use). */
export function cudaDriver(): CudaDriver {
  shared ??= new CudaDriver();
  return shared;
}
