// Bindings to NVRTC, CUDA's run-time compiler: CUDA C++ source in, CUBIN for one GPU
// architecture out. Compilation is not on any hot path (module.ts caches the results), so these
// bindings favour plainness over call cost.
import { loadLibrary } from './library.js';

type Fn = (...args: unknown[]) => number;

interface RawNvrtc {
  nvrtcVersion: Fn;
  nvrtcCreateProgram: Fn;
  nvrtcCompileProgram: Fn;
  nvrtcGetProgramLogSize: Fn;
  nvrtcGetProgramLog: Fn;
  nvrtcGetCUBINSize: Fn;
  nvrtcGetCUBIN: Fn;
  nvrtcDestroyProgram: Fn;
  nvrtcGetErrorString: (code: number) => string;
}

let raw: RawNvrtc | undefined;

function bind(): RawNvrtc {
  if (raw) return raw;
  const lib = loadLibrary('nvrtc');
  const f = (name: string, args: string[]): Fn => lib.func(name, 'int', args) as Fn;
  raw = {
    nvrtcVersion: f('nvrtcVersion', ['void *', 'void *']),
    nvrtcCreateProgram: f('nvrtcCreateProgram', ['void *', 'str', 'str', 'int', 'void *', 'void *']),
    nvrtcCompileProgram: f('nvrtcCompileProgram', ['void *', 'int', 'const char **']),
    nvrtcGetProgramLogSize: f('nvrtcGetProgramLogSize', ['void *', 'void *']),
    nvrtcGetProgramLog: f('nvrtcGetProgramLog', ['void *', 'void *']),
    nvrtcGetCUBINSize: f('nvrtcGetCUBINSize', ['void *', 'void *']),
    nvrtcGetCUBIN: f('nvrtcGetCUBIN', ['void *', 'void *']),
    nvrtcDestroyProgram: f('nvrtcDestroyProgram', ['void *']),
    nvrtcGetErrorString: lib.func('nvrtcGetErrorString', 'const char *', ['int']) as (code: number) => string,
  };
  return raw;
}

function check(call: string, code: number, detail = ''): void {
  if (code !== 0) throw new Error(`${call} failed: ${bind().nvrtcGetErrorString(code)} (nvrtcResult ${code})${detail ? `; ${detail}` : ''}`);
}

/** NVRTC's version, e.g. "13.0". */
export function nvrtcVersion(): string {
  const major = new Int32Array(1);
  const minor = new Int32Array(1);
  check('nvrtcVersion', bind().nvrtcVersion(major, minor));
  return `${major[0]}.${minor[0]}`;
}

/** NVRTC_ERROR_COMPILATION: the source did not compile (the log says why). */
const NVRTC_ERROR_COMPILATION = 6;

/**
 * Compiles CUDA C++ `source` (shown in messages as `name`) with NVRTC `options`, which must
 * include a real `--gpu-architecture=sm_XY[a]` so that a CUBIN comes out. Throws an Error
 * holding the compiler's log when the source does not compile.
 */
export function compileToCubin(source: string, name: string, options: readonly string[]): Uint8Array {
  const nv = bind();
  const prog = new BigUint64Array(1);
  check('nvrtcCreateProgram', nv.nvrtcCreateProgram(prog, source, name, 0, null, null), name);
  try {
    const status = nv.nvrtcCompileProgram(prog[0], options.length, [...options]);
    if (status !== 0) {
      const log = programLog(nv, prog[0]!);
      if (status === NVRTC_ERROR_COMPILATION) {
        throw new Error(`NVRTC could not compile ${name} (options: ${options.join(' ')}):\n${log}`);
      }
      check('nvrtcCompileProgram', status, `${name}\n${log}`);
    }
    const size = new BigUint64Array(1);
    check('nvrtcGetCUBINSize', nv.nvrtcGetCUBINSize(prog[0], size), name);
    if (size[0] === 0n) throw new Error(`NVRTC produced no CUBIN for ${name}: pass a real architecture (sm_90a), not a virtual one (compute_90a)`);
    const cubin = new Uint8Array(Number(size[0]));
    check('nvrtcGetCUBIN', nv.nvrtcGetCUBIN(prog[0], cubin), name);
    return cubin;
  } finally {
    nv.nvrtcDestroyProgram(prog);
  }
}

function programLog(nv: RawNvrtc, prog: bigint): string {
  const size = new BigUint64Array(1);
  if (nv.nvrtcGetProgramLogSize(prog, size) !== 0 || size[0]! <= 1n) return '(no log)';
  const log = Buffer.alloc(Number(size[0]));
  if (nv.nvrtcGetProgramLog(prog, log) !== 0) return '(no log)';
  const end = log.indexOf(0);
  return log.toString('utf8', 0, end < 0 ? log.length : end).trimEnd();
}
