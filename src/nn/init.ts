// Initial weights: N(0, σ) values generated in chunks of 2^20 elements, each chunk from its own
// generator seeded by (seed, parameter index, chunk index). The values therefore do not depend on
// how many threads made them or which parameters were made together, and a large model (2-16B
// parameters) is filled by worker threads in seconds instead of minutes of single-threaded
// Box–Muller.
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { Rng } from './rng.js';

export const INIT_CHUNK = 1 << 20;
/** Parameters smaller than this are filled on the calling thread. */
const PARALLEL_MIN = 8 * INIT_CHUNK;

function mix(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d) >>> 0;
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** The generator seed of one chunk. */
export function chunkSeed(seed: number, param: number, chunk: number): number {
  return mix((seed >>> 0) ^ mix((Math.imul(param + 1, 0x9e3779b1) + mix(chunk + 0x51ed27)) >>> 0));
}

/** Fills chunks [first, first+stride, …) of out with N(0, std) values. */
export function fillNormalChunks(out: Float32Array, std: number, seed: number, param: number, first: number, stride: number): void {
  const chunks = Math.ceil(out.length / INIT_CHUNK);
  for (let c = first; c < chunks; c += stride) {
    const rng = new Rng(chunkSeed(seed, param, c));
    const end = Math.min(out.length, (c + 1) * INIT_CHUNK);
    for (let i = c * INIT_CHUNK; i < end; i++) out[i] = rng.normal() * std;
  }
}

/** One parameter's values within a job's shared buffer: `length` values from `offset`. */
export interface InitPart { offset: number; length: number; std: number; param: number }

/**
 * A worker's share of a job: the job's chunks (every part's, numbered part by part) first,
 * first + stride, …; `done` counts the workers that have finished.
 */
export interface InitJob { buffer: SharedArrayBuffer; parts: InitPart[]; seed: number; first: number; stride: number; done: SharedArrayBuffer }

/** Fills the job's chunks k ≡ first (mod stride), counting the chunks of every part in order. */
export function fillJobChunks(job: Omit<InitJob, 'done'>): void {
  let k = 0;
  for (const part of job.parts) {
    const chunks = Math.ceil(part.length / INIT_CHUNK);
    // This part's chunk indices c with (k + c) ≡ first (mod stride).
    const start = (((job.first - k) % job.stride) + job.stride) % job.stride;
    if (start < chunks) {
      fillNormalChunks(new Float32Array(job.buffer, part.offset * 4, part.length), part.std, job.seed, part.param, start, job.stride);
    }
    k += chunks;
  }
}

let pool: Worker[] | null = null;

function workers(): Worker[] {
  if (!pool) {
    const n = Math.max(1, Math.min(15, os.availableParallelism() - 1));
    pool = Array.from({ length: n }, () => {
      const w = new Worker(new URL('./init_worker.js', import.meta.url));
      w.unref();
      return w;
    });
  }
  return pool;
}

/** N(0, std) values for parameter `param` of a model seeded with `seed`. */
export function normalValues(length: number, std: number, seed: number, param: number): Float32Array {
  return normalValuesMany([{ length, std, param }], seed)[0]!;
}

/**
 * N(0, std) values for several parameters at once: each part's values are normalValues' for it.
 * Why together: one parameter below PARALLEL_MIN would be filled on the calling thread, and a
 * DeepSeek-V2-Lite layer is 192 such expert matrices of 2.9M values (most of the model: filled
 * one by one on one thread, its 2.3B values took over a minute); a batch of them spreads over the
 * workers as one job.
 */
export function normalValuesMany(parts: readonly { length: number; std: number; param: number }[], seed: number): Float32Array[] {
  const total = parts.reduce((n, p) => n + p.length, 0);
  if (total < PARALLEL_MIN) {
    return parts.map((p) => {
      const out = new Float32Array(p.length);
      fillNormalChunks(out, p.std, seed, p.param, 0, 1);
      return out;
    });
  }
  const ws = workers();
  const buffer = new SharedArrayBuffer(total * 4);
  const done = new SharedArrayBuffer(4);
  const counter = new Int32Array(done);
  let offset = 0;
  const placed: InitPart[] = parts.map((p) => { const q = { offset, length: p.length, std: p.std, param: p.param }; offset += p.length; return q; });
  ws.forEach((w, i) => w.postMessage({ buffer, parts: placed, seed, first: i, stride: ws.length, done } satisfies InitJob));
  // Block until every worker has finished its chunks (workers run on their own threads).
  for (let seen = Atomics.load(counter, 0); seen < ws.length; seen = Atomics.load(counter, 0)) Atomics.wait(counter, 0, seen, 60_000);
  // Plain (non-shared) copies: device uploads through FFI take ordinary array buffers.
  return placed.map((p) => new Float32Array(buffer, p.offset * 4, p.length).slice());
}

/** Stops the worker threads (they are unref'd, so a process exits without this). */
export function stopInitWorkers(): void {
  for (const w of pool ?? []) void w.terminate();
  pool = null;
}
