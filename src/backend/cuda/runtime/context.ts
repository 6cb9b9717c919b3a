// CudaContext: one GPU as this process sees it. It initialises the driver, picks the device
// (the ordinal is LOCAL_RANK, counted among the devices CUDA_VISIBLE_DEVICES leaves visible),
// makes the device's primary context current, and owns the one compute stream every kernel,
// GEMM and copy of the backend is queued on. One stream keeps ordering simple: the allocator may
// hand a freed block to the next op without any synchronisation. The one exception is the
// communication stream that NCCL collectives run on so that FSDP's gathers and gradient
// reductions overlap compute (parallel/nccl_communicator.ts): work reaches it only through
// onCommStream(), which orders it after the compute stream's work and hands back the wait the
// compute stream does before reading its results (events; the host never waits).
import {
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
  CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
  CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
  CU_EVENT_DISABLE_TIMING,
  cudaDriver,
  type CudaDriver,
  type HostBytes,
} from '../ffi/driver.js';

/** A device event; `elapsedMs` needs both events recorded and the later one complete. */
export class CudaEvent {
  constructor(private readonly driver: CudaDriver, readonly handle: bigint, private readonly defaultStream: bigint) {}
  record(stream: bigint = this.defaultStream): this {
    this.driver.eventRecord(this.handle, stream);
    return this;
  }
  synchronize(): void { this.driver.eventSynchronize(this.handle); }
  /** Milliseconds from `start` to this event (waits for this event first). */
  elapsedSince(start: CudaEvent): number {
    this.driver.eventSynchronize(this.handle);
    return this.driver.eventElapsedMs(start.handle, this.handle);
  }
  destroy(): void { this.driver.eventDestroy(this.handle); }
}

/** Which visible device LOCAL_RANK selects (0 when unset). */
export function localRankOrdinal(env: NodeJS.ProcessEnv = process.env): number {
  const text = env.LOCAL_RANK;
  if (text === undefined || text === '') return 0;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`LOCAL_RANK=${text} is not a device ordinal; set it to 0, 1, … (one process per GPU)`);
  return n;
}

/** "sm_90a" for Hopper: the arch-specific target that enables wgmma, TMA and setmaxnreg. */
export function nvrtcArch(major: number, minor: number): string {
  // 9.x and later have features only the "a" (arch-specific) target exposes.
  return major >= 9 ? `sm_${major}${minor}a` : `sm_${major}${minor}`;
}

export class CudaContext {
  readonly driver: CudaDriver;
  /** Ordinal among the visible devices. */
  readonly ordinal: number;
  /** The CUdevice handle. */
  readonly device: number;
  /** The device's primary context (shared with any other library in this process). */
  readonly context: bigint;
  /** The compute stream (the communication stream while onCommStream's callback runs). */
  get stream(): bigint { return this.current; }
  private current: bigint;
  private comm: bigint | null = null;
  readonly name: string;
  readonly smCount: number;
  readonly computeCapability: readonly [number, number];
  /** NVRTC target, e.g. "sm_90a". */
  readonly arch: string;
  /** Largest dynamic shared memory a kernel may opt in to, in bytes. */
  readonly maxSharedBytesOptin: number;
  readonly totalMemoryBytes: number;
  /**
   * Calls that blocked the host until the GPU caught up (synchronize, download) and the
   * milliseconds spent in them; the rest of a step's wall time is host work (bench train).
   */
  readonly waits = { count: 0, ms: 0 };

  constructor(ordinal: number = localRankOrdinal()) {
    this.driver = cudaDriver();
    try {
      this.driver.init();
    } catch (e) {
      throw new Error(`CUDA could not start: ${(e as Error).message}; check the driver with nvidia-smi`);
    }
    const count = this.driver.deviceCount();
    const visible = process.env.CUDA_VISIBLE_DEVICES;
    const visibleNote = visible === undefined ? '' : ` (CUDA_VISIBLE_DEVICES=${visible})`;
    if (count === 0) throw new Error(`no CUDA device is visible${visibleNote}`);
    if (ordinal >= count) {
      throw new Error(`device ordinal ${ordinal} (from LOCAL_RANK) but only ${count} CUDA device(s) are visible${visibleNote}; run at most ${count} processes per node`);
    }
    this.ordinal = ordinal;
    this.device = this.driver.deviceGet(ordinal);
    this.context = this.driver.primaryCtxRetain(this.device);
    this.driver.ctxSetCurrent(this.context);
    this.current = this.driver.streamCreate(0);
    this.name = this.driver.deviceName(this.device);
    this.smCount = this.driver.deviceAttribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, this.device);
    const major = this.driver.deviceAttribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, this.device);
    const minor = this.driver.deviceAttribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, this.device);
    this.computeCapability = [major, minor];
    this.arch = nvrtcArch(major, minor);
    this.maxSharedBytesOptin = this.driver.deviceAttribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, this.device);
    this.totalMemoryBytes = this.driver.memGetInfo().total;
  }

  /** "NVIDIA H100 80GB HBM3, 132 SMs, sm_90a" */
  get description(): string {
    return `${this.name}, ${this.smCount} SMs, ${this.arch}`;
  }

  /** Makes this context current on the calling thread (the constructor already did for its own). */
  makeCurrent(): void { this.driver.ctxSetCurrent(this.context); }

  /** Waits for all queued work in the context (every stream). */
  synchronize(): void {
    const t0 = performance.now();
    this.driver.ctxSynchronize();
    this.countWait(t0);
  }

  memoryInfo(): { free: number; total: number } { return this.driver.memGetInfo(); }

  // ---- the communication stream ----

  /**
   * Queues `fn`'s work on the communication stream (created on first use), after the work queued
   * on the compute stream so far; while `fn` runs, `stream` is the communication stream, so the
   * backend's kernels and copies go there too (the loopback communicator's copies). `fn` must not
   * allocate or free device memory: the allocator's reuse follows the compute stream's order. The
   * returned wait() makes the compute stream's later work wait for it (once; no host wait).
   */
  onCommStream(fn: (stream: bigint) => void): { wait(): void } {
    this.comm ??= this.driver.streamCreate(0);
    const comm = this.comm, compute = this.current;
    this.waitFor(comm, this.mark(compute));
    this.current = comm;
    try {
      fn(comm);
    } finally {
      this.current = compute;
    }
    let done: bigint | null = this.mark(comm);
    return {
      wait: () => {
        if (done === null) return;
        this.waitFor(this.current, done);
        done = null;
      },
    };
  }

  /** An event after the work queued on `stream` so far (for waitFor, which frees it). */
  private mark(stream: bigint): bigint {
    const event = this.driver.eventCreate(CU_EVENT_DISABLE_TIMING);
    this.driver.eventRecord(event, stream);
    return event;
  }

  /** Work queued on `stream` from now on waits for `event`; the event is freed (the driver keeps it until it completes). */
  private waitFor(stream: bigint, event: bigint): void {
    this.driver.streamWaitEvent(stream, event);
    this.driver.eventDestroy(event);
  }

  // ---- stream-ordered copies and fills ----

  /** Host → device, queued on the compute stream; src may be reused as soon as this returns. */
  upload(dst: bigint, src: HostBytes, bytes: number = src.byteLength): void {
    this.driver.memcpyHtoDAsync(dst, src, bytes, this.stream);
  }

  /** Device → host after all earlier work on the compute stream; returns with dst filled. */
  download(dst: HostBytes, src: bigint, bytes: number = dst.byteLength): void {
    const t0 = performance.now();
    this.driver.memcpyDtoHAsync(dst, src, bytes, this.stream);
    this.driver.streamSynchronize(this.stream);
    this.countWait(t0);
  }

  private countWait(since: number): void {
    this.waits.count++;
    this.waits.ms += performance.now() - since;
  }

  copyDeviceToDevice(dst: bigint, src: bigint, bytes: number): void {
    this.driver.memcpyDtoDAsync(dst, src, bytes, this.stream);
  }

  /** Sets `count` 32-bit words to the bit pattern `value` (0x7fc00000 poisons f32 with NaN). */
  fillWords(ptr: bigint, value: number, count: number): void {
    this.driver.memsetD32Async(ptr, value, count, this.stream);
  }

  fillBytes(ptr: bigint, value: number, count: number): void {
    this.driver.memsetD8Async(ptr, value, count, this.stream);
  }

  // ---- timing ----

  createEvent(): CudaEvent {
    return new CudaEvent(this.driver, this.driver.eventCreate(0), this.stream);
  }

  /**
   * Device milliseconds of the work `fn` queues on the compute stream, measured by events
   * recorded before and after it (waits for the work to finish).
   */
  timeMs(fn: () => void): number {
    const start = this.createEvent();
    const end = this.createEvent();
    try {
      start.record();
      fn();
      end.record();
      return end.elapsedSince(start);
    } finally {
      start.destroy();
      end.destroy();
    }
  }
}

let defaultContext: CudaContext | undefined;

/** The context of this process's device (LOCAL_RANK), created on first use. */
export function defaultCudaContext(): CudaContext {
  defaultContext ??= new CudaContext();
  return defaultContext;
}
