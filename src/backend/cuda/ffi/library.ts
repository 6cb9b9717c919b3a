// Finding and loading NVIDIA's shared libraries (driver, NVRTC, cuBLASLt, NCCL) through koffi.
// The search order is: the library's override variable, $CUDA_HOME, /usr/local/cuda, the
// loader's paths (LD_LIBRARY_PATH, `ldconfig -p`, the usual system folders), then the layouts
// of NVIDIA's Python wheels (site-packages/nvidia/*/lib). A library that is not found is one
// Error that lists what was searched and names the variable that fixes it.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import koffi from 'koffi';

export type LibraryHandle = ReturnType<typeof koffi.load>;

export type NvidiaLibrary = 'cuda' | 'nvrtc' | 'cublasLt' | 'nccl';

interface LibrarySpec {
  /** The variable that names the file directly, skipping the search. */
  overrideVar: string;
  /** File names in order of preference (newest ABI first). */
  fileNames: readonly string[];
  /** What a user installs to get it, for the error message. */
  installHint: string;
}

function specOf(lib: NvidiaLibrary): LibrarySpec {
  switch (lib) {
    case 'cuda':
      return { overrideVar: 'MOETRAIN_LIBCUDA', fileNames: ['libcuda.so.1', 'libcuda.so'], installHint: 'the NVIDIA driver' };
    case 'nvrtc':
      return {
        overrideVar: 'MOETRAIN_LIBNVRTC',
        fileNames: ['libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so'],
        installHint: 'the CUDA toolkit or the nvidia-cuda-nvrtc wheel',
      };
    case 'cublasLt':
      return {
        overrideVar: 'MOETRAIN_LIBCUBLASLT',
        fileNames: ['libcublasLt.so.13', 'libcublasLt.so.12', 'libcublasLt.so'],
        installHint: 'the CUDA toolkit or the nvidia-cublas wheel',
      };
    case 'nccl':
      return { overrideVar: 'MOETRAIN_LIBNCCL', fileNames: ['libnccl.so.2', 'libnccl.so'], installHint: 'NCCL or the nvidia-nccl wheel' };
    default:
      return lib satisfies never;
  }
}

/** Library folders named by `ldconfig -p`, in its order; empty when ldconfig is missing. */
function ldconfigDirs(): string[] {
  for (const exe of ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig']) {
    try {
      const text = execFileSync(exe, ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 });
      const dirs: string[] = [];
      for (const line of text.split('\n')) {
        const arrow = line.lastIndexOf('=> ');
        if (arrow < 0) continue;
        const file = line.slice(arrow + 3).trim();
        const dir = file.slice(0, file.lastIndexOf('/'));
        if (dir && !dirs.includes(dir)) dirs.push(dir);
      }
      return dirs;
    } catch {
      // try the next spelling
    }
  }
  return [];
}

function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory() || d.isSymbolicLink()).map((d) => join(dir, d.name));
  } catch {
    return [];
  }
}

/** site-packages/nvidia/<package>/lib folders under the usual Python prefixes. */
function pythonWheelDirs(): string[] {
  const prefixes = ['/usr/lib', '/usr/local/lib', '/usr/lib64', '/opt/conda/lib', join(homedir(), '.local/lib')];
  for (const v of ['VIRTUAL_ENV', 'CONDA_PREFIX']) {
    const p = process.env[v];
    if (p) prefixes.unshift(join(p, 'lib'));
  }
  const out: string[] = [];
  for (const prefix of prefixes) {
    for (const py of subdirs(prefix)) {
      if (!/\/python3[^/]*$/.test(py)) continue;
      for (const sp of ['site-packages', 'dist-packages']) {
        for (const pkg of subdirs(join(py, sp, 'nvidia'))) out.push(join(pkg, 'lib'));
      }
    }
  }
  return out;
}

/** Every folder to look in, in order; ldconfig and the wheel scan run only if reached. */
function* searchDirs(): Generator<string> {
  const cudaHome = process.env.CUDA_HOME ?? process.env.CUDA_PATH;
  if (cudaHome) yield* [join(cudaHome, 'lib64'), join(cudaHome, 'lib')];
  yield '/usr/local/cuda/lib64';
  for (const d of (process.env.LD_LIBRARY_PATH ?? '').split(delimiter)) if (d) yield d;
  yield* ldconfigDirs();
  yield* ['/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/lib', '/usr/local/nvidia/lib64', '/usr/lib/wsl/lib'];
  yield* pythonWheelDirs();
}

/**
 * The path of one of NVIDIA's libraries, or an Error that says what was searched and which
 * variable to set. Looks at the file system only; loading is loadLibrary's.
 */
export function findLibrary(lib: NvidiaLibrary): string {
  const spec = specOf(lib);
  const override = process.env[spec.overrideVar];
  if (override) {
    if (existsSync(override)) return override;
    throw new Error(`${spec.overrideVar}=${override}: no such file; point ${spec.overrideVar} at ${spec.fileNames[0]} (it comes with ${spec.installHint}) or unset it to search the usual places`);
  }
  const searched: string[] = [];
  for (const dir of searchDirs()) {
    if (searched.includes(dir)) continue;
    searched.push(dir);
    for (const name of spec.fileNames) {
      const file = join(dir, name);
      if (existsSync(file)) return file;
    }
  }
  throw new Error(
    `${spec.fileNames[0]} not found (it comes with ${spec.installHint}): searched ${searched.join(', ')} for ${spec.fileNames.join(' / ')}; ` +
      `set ${spec.overrideVar} to the library's path (or CUDA_HOME to the toolkit folder)`,
  );
}

const loaded = new Map<NvidiaLibrary, LibraryHandle>();

/** Loads one of NVIDIA's libraries, once per process (see findLibrary for the search). */
export function loadLibrary(lib: NvidiaLibrary): LibraryHandle {
  const cached = loaded.get(lib);
  if (cached) return cached;
  const file = findLibrary(lib);
  let handle: LibraryHandle;
  try {
    handle = koffi.load(file);
  } catch (e) {
    const spec = specOf(lib);
    throw new Error(`${file} could not be loaded (${(e as Error).message}); set ${spec.overrideVar} to a working copy of ${spec.fileNames[0]}`);
  }
  loaded.set(lib, handle);
  return handle;
}

let available: boolean | undefined;

/**
 * True when libcuda loads, cuInit succeeds and at least one device is visible. Never throws;
 * the answer is computed once per process.
 */
export function cudaAvailable(): boolean {
  if (available !== undefined) return available;
  try {
    const lib = loadLibrary('cuda');
    const cuInit = lib.func('int cuInit(unsigned int flags)');
    const cuDeviceGetCount = lib.func('int cuDeviceGetCount(void *count)');
    const count = new Int32Array(1);
    available = cuInit(0) === 0 && cuDeviceGetCount(count) === 0 && count[0]! > 0;
  } catch {
    available = false;
  }
  return available;
}
