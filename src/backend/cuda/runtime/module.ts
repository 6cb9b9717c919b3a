// Kernel modules: a .cu file from src/backend/cuda/kernels/ compiled by NVRTC for the device's
// own architecture, specialised by -D defines, cached on disk and in memory, and launched
// through pre-encoded parameter buffers (kernel_args.ts).
//
// Compile options, and why:
// - --gpu-architecture=sm_XY[a] (sm_90a on Hopper): a CUBIN for exactly this GPU, with the
//   arch-specific instructions (wgmma, TMA, setmaxnreg) available; no PTX JIT at load time.
// - -std=c++17: the dialect the kernels are written in (and nvcc compile-checks them with).
// - -lineinfo: source lines in profiles; changes no generated instruction.
// - no --use_fast_math: it would also flush denormals and approximate every division and
//   sqrt, silently changing f32 reductions checked against the CPU oracle; kernels call the
//   fast intrinsics (__expf, exp2f, __frcp_rn, …) by name where they have measured the gain.
// - no -default-device: kernels mark device functions explicitly, so the same file compiles
//   unchanged with nvcc (the CPU machines' compile check).
//
// Disk cache: ~/.cache/moetrain/kernels (MOETRAIN_KERNEL_CACHE overrides), one file per
// sha256 of (source, its local headers, options, arch, NVRTC version).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { packageRoot } from '../../../package_root.js';
import { CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, type CudaDriver, type RawDriver } from '../ffi/driver.js';
import { compileToCubin, nvrtcVersion } from '../ffi/nvrtc.js';
import type { CudaContext } from './context.js';
import { TENSOR_MAP_BYTES, type KernelArgs } from './kernel_args.js';
import { launchTiming } from './launch_timer.js';

/** Where the .cu sources live; they are read from the source tree, never copied into dist/. */
export function kernelsDir(): string {
  return join(packageRoot(), 'src', 'backend', 'cuda', 'kernels');
}

export function kernelCacheDir(): string {
  const override = process.env.MOETRAIN_KERNEL_CACHE;
  if (override) return override;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'moetrain', 'kernels');
}

function cudaIncludeDirs(): string[] {
  const home = process.env.CUDA_HOME ?? process.env.CUDA_PATH;
  for (const root of [home, '/usr/local/cuda'].filter((d): d is string => !!d)) {
    const inc = join(root, 'include');
    if (existsSync(inc)) return existsSync(join(inc, 'cccl')) ? [inc, join(inc, 'cccl')] : [inc];
  }
  return [];
}

/** Source of `file` followed by every local header it includes (recursively), for hashing. */
function sourceWithLocalHeaders(file: string, seen = new Set<string>()): string {
  if (seen.has(file)) return '';
  seen.add(file);
  const text = readFileSync(file, 'utf8');
  let all = `// ${file}\n${text}`;
  for (const m of text.matchAll(/^\s*#\s*include\s*"([^"]+)"/gm)) {
    for (const dir of [dirname(file), kernelsDir()]) {
      const header = resolve(dir, m[1]!);
      if (existsSync(header)) {
        all += sourceWithLocalHeaders(header, seen);
        break;
      }
    }
  }
  return all;
}

export type Defines = Readonly<Record<string, string | number>>;

/** `-DNAME=value` compiler options for `defines` (sorted by name; NVRTC and nvcc read them alike). */
export function defineOptions(defines: Defines): string[] {
  return Object.keys(defines).sort().map((k) => {
    if (!/^[A-Za-z_]\w*$/.test(k)) throw new Error(`kernel define "${k}" is not a C identifier`);
    return `-D${k}=${defines[k]}`;
  });
}

let cachedNvrtcVersion: string | undefined;

/**
 * A CUBIN for `file` (a name under kernels/ or an absolute path) on `arch`, from the disk cache
 * or freshly compiled. `fromCache` says which.
 */
export function compileKernelFile(arch: string, file: string, defines: Defines = {}): { cubin: Uint8Array; fromCache: boolean; path: string } {
  const path = isAbsolute(file) ? file : join(kernelsDir(), file);
  if (!existsSync(path)) throw new Error(`kernel source ${path} not found (kernels are read from the source tree: is src/ present beside dist/?)`);
  const options = [
    `--gpu-architecture=${arch}`,
    '-std=c++17',
    '-lineinfo',
    ...cudaIncludeDirs().map((d) => `-I${d}`),
    `-I${dirname(path)}`,
    `-I${kernelsDir()}`,
    ...defineOptions(defines),
  ];
  cachedNvrtcVersion ??= nvrtcVersion();
  const hash = createHash('sha256')
    .update('moetrain-cubin-1\0')
    .update(`${cachedNvrtcVersion}\0${arch}\0${options.join('\0')}\0`)
    .update(sourceWithLocalHeaders(path))
    .digest('hex');
  const cacheDir = kernelCacheDir();
  const cached = join(cacheDir, `${hash}.cubin`);
  if (existsSync(cached)) {
    try {
      return { cubin: new Uint8Array(readFileSync(cached)), fromCache: true, path };
    } catch {
      // unreadable cache entry: compile again below
    }
  }
  const cubin = compileToCubin(readFileSync(path, 'utf8'), path, options);
  try {
    mkdirSync(cacheDir, { recursive: true });
    const tmp = `${cached}.${process.pid}.tmp`;
    writeFileSync(tmp, cubin);
    renameSync(tmp, cached); // atomic: concurrent ranks never read half a file
  } catch {
    // a read-only cache folder only costs a compile next time
  }
  return { cubin, fromCache: false, path };
}

// ---- launching ----

/**
 * Work queued on the GPU so far, counted by kind: kernels launched through CudaKernel.launch and
 * cuBLASLt products (ops/matmul.ts). bench train reports the difference over a step.
 */
export const launchCounts = { kernels: 0, cublasLt: 0 };

/** Dynamic shared memory a kernel may use without opting in. */
const DEFAULT_DYNAMIC_SHARED = 48 * 1024;

export class CudaKernel {
  private readonly launchRaw: RawDriver['cuLaunchKernel'];
  private readonly driver: CudaDriver;
  /** Byte size of each parameter, when the driver can tell (CUDA ≥ 12.4). */
  readonly paramSizes: readonly number[] | undefined;
  /** Indices of the kernel's 128-byte (CUtensorMap) parameters, when the driver can tell. */
  private readonly wideParams: number[];
  /** Dynamic shared memory a launch may use so far (bytes). */
  private sharedLimit = DEFAULT_DYNAMIC_SHARED;

  constructor(private readonly ctx: CudaContext, readonly handle: bigint, readonly name: string, readonly file: string) {
    this.driver = ctx.driver;
    this.launchRaw = ctx.driver.raw.cuLaunchKernel;
    this.paramSizes = ctx.driver.funcParamSizes(handle);
    const odd = this.paramSizes?.findIndex((s) => s > 8 && s !== TENSOR_MAP_BYTES) ?? -1;
    if (odd >= 0) throw new Error(`internal: kernel ${name} (${file}) parameter ${odd} is ${this.paramSizes![odd]} bytes; KernelArgs slots hold 8 or ${TENSOR_MAP_BYTES} (a CUtensorMap)`);
    this.wideParams = (this.paramSizes ?? []).flatMap((s, i) => (s === TENSOR_MAP_BYTES ? [i] : []));
  }

  /**
   * Queues the kernel on `stream` (the context's compute stream unless given). Host cost is
   * one FFI call; `args` needs at least the kernel's parameter count (checked where the
   * driver can tell).
   */
  launch(
    grid: readonly [number, number, number],
    block: readonly [number, number, number],
    sharedBytes: number,
    args: KernelArgs,
    stream: bigint = this.ctx.stream,
  ): void {
    // Too few slots would hand the kernel whatever lies past the array; spare slots are unread.
    if (this.paramSizes !== undefined && args.count < this.paramSizes.length) {
      throw new Error(`internal: kernel ${this.name} takes ${this.paramSizes.length} arguments, KernelArgs has ${args.count}`);
    }
    for (const i of this.wideParams) {
      if (!args.wide.includes(i)) throw new Error(`internal: kernel ${this.name} parameter ${i} is a CUtensorMap; its KernelArgs slot is 8 bytes`);
    }
    const timer = launchTiming.timer;
    const status = timer
      ? timer.around(this.name, stream, () => this.launchRaw(this.handle, grid[0], grid[1], grid[2], block[0], block[1], block[2], sharedBytes, stream, args.pointer, null))
      : this.launchRaw(this.handle, grid[0], grid[1], grid[2], block[0], block[1], block[2], sharedBytes, stream, args.pointer, null);
    if (status !== 0) {
      throw this.driver.error('cuLaunchKernel', status, `kernel ${this.name} (${this.file}), grid [${grid}], block [${block}], ${sharedBytes} B dynamic shared memory`);
    }
    launchCounts.kernels++;
  }

  /** Allows up to `bytes` of dynamic shared memory (needed above 48 KiB). */
  setMaxDynamicShared(bytes: number): void {
    if (bytes > this.ctx.maxSharedBytesOptin) {
      throw new Error(`internal: kernel ${this.name} wants ${bytes} B of shared memory; ${this.ctx.name} allows ${this.ctx.maxSharedBytesOptin}`);
    }
    this.driver.funcSetAttribute(this.handle, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes, `kernel ${this.name}, ${bytes} bytes`);
    this.sharedLimit = bytes;
  }

  /**
   * Makes a launch with `bytes` of dynamic shared memory possible: raises the limit when it is
   * above what is allowed so far. `what` names the request in the error when the GPU has less.
   */
  allowDynamicShared(bytes: number, what: string): void {
    if (bytes <= this.sharedLimit) return;
    if (bytes > this.ctx.maxSharedBytesOptin) {
      throw new Error(`${what} needs ${bytes} bytes of shared memory; ${this.ctx.name} has ${this.ctx.maxSharedBytesOptin} per block`);
    }
    this.setMaxDynamicShared(bytes);
  }
}

export class CudaModule {
  private readonly kernels = new Map<string, CudaKernel>();

  constructor(private readonly ctx: CudaContext, readonly handle: bigint, readonly file: string) {}

  /** The `extern "C" __global__` function `name` (looked up once). */
  kernel(name: string): CudaKernel {
    let k = this.kernels.get(name);
    if (!k) {
      let fn: bigint;
      try {
        fn = this.ctx.driver.moduleGetFunction(this.handle, name, `kernel ${name} in ${this.file}`);
      } catch (e) {
        throw new Error(`${(e as Error).message} (is it declared extern "C" __global__?)`);
      }
      k = new CudaKernel(this.ctx, fn, name, this.file);
      this.kernels.set(name, k);
    }
    return k;
  }
}

const loadedModules = new WeakMap<CudaContext, Map<string, CudaModule>>();

/** How loadModule found its modules so far (tests and start-up logging read it). */
export const moduleLoadCounts = { compiled: 0, fromDiskCache: 0, fromMemory: 0 };

/**
 * The module compiled from `file` (under src/backend/cuda/kernels/, or an absolute path) with
 * `defines` as -D options, loaded into `ctx`. Cached per (file, defines) in memory and on disk.
 */
export function loadModule(ctx: CudaContext, file: string, defines: Defines = {}): CudaModule {
  let perContext = loadedModules.get(ctx);
  if (!perContext) loadedModules.set(ctx, (perContext = new Map()));
  const key = `${file}\0${defineOptions(defines).join('\0')}`;
  const hit = perContext.get(key);
  if (hit) {
    moduleLoadCounts.fromMemory++;
    return hit;
  }
  const { cubin, fromCache, path } = compileKernelFile(ctx.arch, file, defines);
  if (fromCache) moduleLoadCounts.fromDiskCache++;
  else moduleLoadCounts.compiled++;
  const handle = ctx.driver.moduleLoadData(cubin, path);
  const mod = new CudaModule(ctx, handle, path);
  perContext.set(key, mod);
  return mod;
}

/** One kernel source with its defines, compiled and loaded into `ctx` on the first kernel asked for. */
export class KernelFile {
  private module: CudaModule | undefined;

  constructor(private readonly ctx: CudaContext, readonly file: string, readonly defines: Defines = {}) {}

  kernel(name: string): CudaKernel {
    this.module ??= loadModule(this.ctx, this.file, this.defines);
    return this.module.kernel(name);
  }
}
