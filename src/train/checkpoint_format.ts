// The files of one checkpoint folder, independent of the parallel layout that wrote it:
//   rank-00000.safetensors …  one per rank: the ranges of the flattened f32 tensors that rank
//                             held, each a 1-D tensor under the parameter's HF name (experts by
//                             global id) or exp_avg.<name> / exp_avg_sq.<name> for Adam's
//                             moments; its metadata "moetrain.ranges" gives each one's full shape
//                             and start, so the file describes itself.
//   index.json                name → { shape, parts: [{ file, start, end }] } (ranges of the
//                             flattened tensor, in elements), built by rank 0 from the rank
//                             files' headers; a range a rank asks for may span several parts.
//   state.json                step, optimizer step, schedule, data fingerprint, world size, config.
//   config.json               the model's HF config (optional), so the folder exports on its own.
//   manifest.json             size and XXH32 of every other file, written last (checkpoint_manifest.ts).
// The format before this one (model.safetensors + optimizer.safetensors with whole tensors, and
// state.json) is read as if its two files were parts covering each tensor whole.
import fs from 'node:fs';
import path from 'node:path';
import { encodeSafetensorsHeader, openSafetensors, SafetensorsWriter, type SafetensorsFile } from '../io/safetensors.js';
import { Xxh32 } from '../io/xxhash32.js';
import { toHostF32 } from '../ops/create.js';
import type { ScheduleConfig } from '../optim/schedule.js';
import type { Tensor } from '../tensor/tensor.js';

export const INDEX_FILE = 'index.json';
export const STATE_FILE = 'state.json';
export const MANIFEST_FILE = 'manifest.json';
export const CONFIG_FILE = 'config.json';
export const LEGACY_MODEL_FILE = 'model.safetensors';
export const LEGACY_OPTIMIZER_FILE = 'optimizer.safetensors';
const RANGES_KEY = 'moetrain.ranges';

export function rankFileName(rank: number): string { return `rank-${String(rank).padStart(5, '0')}.safetensors`; }

/**
 * This rank's range [start, end) of the flattened full tensor `name` of `shape`, held in
 * `tensor` (f32, or bf16 in the lean recipe, end − start elements; stored as F32 either way, so
 * bf16 values widen and narrow back exactly). A process holding whole tensors passes start 0, end numel.
 */
export interface CheckpointEntry {
  name: string;
  shape: readonly number[];
  start: number;
  end: number;
  tensor: Tensor;
}

/** What a run needs to continue its learning-rate schedule. */
export interface ScheduleRecord {
  steps: number;
  lr: number;
  schedule: ScheduleConfig;
}

export interface CheckpointState {
  format: 'moetrain-checkpoint';
  /** 1: model.safetensors + optimizer.safetensors; 2: rank files + index + manifest. */
  version: number;
  /** Optimizer steps completed; training continues with step `step + 1`. */
  step: number;
  optimizer_step: number;
  data_fingerprint: string | null;
  /** Absent in version 1. */
  schedule?: ScheduleRecord;
  world_size?: number;
  /** The parallel layout that wrote it, for reference (any layout reads any other). */
  mesh?: unknown;
  time: string;
  config: unknown;
}

/** A checkpoint that is incomplete or whose bytes are wrong: resume skips it for an older one. */
export class CheckpointDamage extends Error {
  constructor(readonly folder: string, readonly kind: 'incomplete' | 'damaged', readonly reason: string) {
    super(`${folder} is ${kind}: ${reason}`);
  }
}

export interface IndexPart { file: string; start: number; end: number }
export interface CheckpointIndex {
  format: 'moetrain-checkpoint-index';
  version: 2;
  world_size: number;
  tensors: Record<string, { shape: number[]; parts: IndexPart[] }>;
}

function numel(shape: readonly number[]): number { return shape.reduce((a, b) => a * b, 1); }

/** The first non-finite element of a, or -1. */
export function firstNonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return i;
  return -1;
}

export class NonFiniteError extends Error {}

/**
 * Writes this rank's file into `folder` (through `<file>.partial`, renamed when complete) and
 * returns its size and XXH32, hashed from the bytes as they are written. Each entry is read from
 * its device once; a non-finite value anywhere stops the write (NonFiniteError), so no
 * checkpoint ever holds one. `afterHalf` runs once half of the entries are written (a test hook).
 */
export function writeRankFile(folder: string, rank: number, entries: readonly CheckpointEntry[], afterHalf?: () => void): { file: string; bytes: number; xxh32: string } {
  const file = rankFileName(rank);
  const specs = entries.map((e) => {
    const len = e.end - e.start;
    if (!(Number.isInteger(e.start) && e.start >= 0 && e.end <= numel(e.shape) && len >= 0 && len === e.tensor.size && (e.tensor.dtype === 'f32' || e.tensor.dtype === 'bf16'))) {
      throw new Error(`internal: checkpoint entry ${e.name} [${e.start}, ${e.end}) of [${e.shape}] does not match its tensor ${e.tensor}`);
    }
    return { name: e.name, dtype: 'F32' as const, shape: [len] };
  });
  const ranges: Record<string, { shape: number[]; start: number }> = {};
  for (const e of entries) {
    if (ranges[e.name]) throw new Error(`internal: checkpoint entry ${e.name} appears twice on rank ${rank}`);
    ranges[e.name] = { shape: [...e.shape], start: e.start };
  }
  const metadata = { format: 'moetrain-checkpoint-part', [RANGES_KEY]: JSON.stringify(ranges) };
  const hash = new Xxh32().update(encodeSafetensorsHeader(specs, metadata).header);
  const w = SafetensorsWriter.create(path.join(folder, file), specs, metadata);
  try {
    entries.forEach((e, i) => {
      const data = toHostF32(e.tensor);
      const bad = firstNonFinite(data);
      if (bad >= 0) throw new NonFiniteError(`${e.name} holds ${data[bad]} at element ${e.start + bad}`);
      hash.update(data);
      w.write(e.name, data);
      if (afterHalf && i + 1 === Math.ceil(entries.length / 2)) afterHalf();
    });
    w.finish();
  } catch (err) {
    w.abort();
    throw err;
  }
  return { file, bytes: fs.statSync(path.join(folder, file)).size, xxh32: hash.hex() };
}

/** Builds the index of a folder holding rank files 0 … worldSize−1 (rank 0, once every rank has written). */
export function buildIndex(folder: string, worldSize: number): CheckpointIndex {
  const tensors: CheckpointIndex['tensors'] = {};
  for (let r = 0; r < worldSize; r++) {
    const file = rankFileName(r);
    const st = openSafetensors(path.join(folder, file));
    try {
      const ranges = JSON.parse(st.metadata[RANGES_KEY] ?? '{}') as Record<string, { shape: number[]; start: number }>;
      for (const info of st.tensors.values()) {
        const range = ranges[info.name];
        if (!range) throw new Error(`internal: ${file} holds ${info.name} without its range`);
        const t = (tensors[info.name] ??= { shape: range.shape, parts: [] });
        if (t.shape.join(',') !== range.shape.join(',')) throw new Error(`internal: ranks disagree on the shape of ${info.name} ([${t.shape}] and [${range.shape}] in ${file})`);
        t.parts.push({ file, start: range.start, end: range.start + info.shape[0]! });
      }
    } finally {
      st.close();
    }
  }
  for (const [name, t] of Object.entries(tensors)) {
    t.parts.sort((a, b) => a.start - b.start || a.end - b.end);
    let covered = 0;
    for (const p of t.parts) {
      if (p.start > covered) break;
      covered = Math.max(covered, p.end);
    }
    if (covered < numel(t.shape)) throw new Error(`internal: the ranks' checkpoint entries leave ${name} uncovered from element ${covered} of ${numel(t.shape)}`);
  }
  return { format: 'moetrain-checkpoint-index', version: 2, world_size: worldSize, tensors };
}

/** Writes a small JSON file durably (fsync, then rename from a temporary name). */
export function writeJsonFile(file: string, value: unknown): void {
  const temp = `${file}.partial`;
  const fd = fs.openSync(temp, 'w');
  try {
    fs.writeSync(fd, JSON.stringify(value, null, 2) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, file);
}

/** Flushes a folder's entries (new and renamed files) to disk; a no-op where folders cannot be opened. */
export function fsyncFolder(folder: string): void {
  let fd: number;
  try { fd = fs.openSync(folder, 'r'); } catch { return; }
  try { fs.fsyncSync(fd); } catch { /* some file systems refuse fsync of a folder */ } finally { fs.closeSync(fd); }
}

/** state.json of a checkpoint folder; a missing or unreadable one is CheckpointDamage. */
export function readCheckpointState(folder: string): CheckpointState {
  const file = path.join(folder, STATE_FILE);
  if (!fs.existsSync(file)) throw new CheckpointDamage(folder, 'incomplete', `${STATE_FILE} is missing`);
  let state: CheckpointState;
  try { state = JSON.parse(fs.readFileSync(file, 'utf8')) as CheckpointState; } catch (e) {
    throw new CheckpointDamage(folder, 'damaged', `${STATE_FILE} is not valid JSON (${(e as Error).message})`);
  }
  if (state === null || typeof state !== 'object' || !Number.isInteger(state.step) || !Number.isInteger(state.optimizer_step)) {
    throw new CheckpointDamage(folder, 'damaged', `${STATE_FILE} has no integer step and optimizer_step`);
  }
  return state;
}

/** Reads ranges of tensors from a checkpoint folder of either format, opening each file once. */
export class CheckpointReader {
  private readonly files = new Map<string, SafetensorsFile>();

  private constructor(readonly folder: string, readonly index: CheckpointIndex) {}

  /** Opens a folder; a missing or malformed index is CheckpointDamage. */
  static open(folder: string): CheckpointReader {
    const indexFile = path.join(folder, INDEX_FILE);
    if (fs.existsSync(indexFile)) {
      let index: CheckpointIndex;
      try { index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as CheckpointIndex; } catch (e) {
        throw new CheckpointDamage(folder, 'damaged', `${INDEX_FILE} is not valid JSON (${(e as Error).message})`);
      }
      if (index?.format !== 'moetrain-checkpoint-index' || typeof index.tensors !== 'object' || index.tensors === null) {
        throw new CheckpointDamage(folder, 'damaged', `${INDEX_FILE} is not a moetrain checkpoint index`);
      }
      return new CheckpointReader(folder, index);
    }
    if (fs.existsSync(path.join(folder, LEGACY_MODEL_FILE))) return CheckpointReader.legacy(folder);
    throw new CheckpointDamage(folder, 'incomplete', `it holds neither ${INDEX_FILE} nor ${LEGACY_MODEL_FILE}`);
  }

  /** Version 1: whole tensors in model.safetensors and optimizer.safetensors. */
  private static legacy(folder: string): CheckpointReader {
    const tensors: CheckpointIndex['tensors'] = {};
    const reader = new CheckpointReader(folder, { format: 'moetrain-checkpoint-index', version: 2, world_size: 1, tensors });
    try {
      for (const file of [LEGACY_MODEL_FILE, LEGACY_OPTIMIZER_FILE]) {
        if (!fs.existsSync(path.join(folder, file))) throw new CheckpointDamage(folder, 'incomplete', `${file} is missing`);
        for (const info of reader.file(file).tensors.values()) tensors[info.name] = { shape: [...info.shape], parts: [{ file, start: 0, end: numel(info.shape) }] };
      }
    } catch (e) {
      reader.close();
      throw e;
    }
    return reader;
  }

  /** Shape of a tensor, or null when the checkpoint has none of that name. */
  shape(name: string): number[] | null { return this.index.tensors[name]?.shape ?? null; }

  names(): string[] { return Object.keys(this.index.tensors); }

  /** Elements [start, end) of the flattened tensor `name`, from whichever files hold them. */
  readRange(name: string, start: number, end: number): Float32Array {
    const t = this.index.tensors[name];
    if (!t) throw new Error(`internal: readRange of ${name}, which the checkpoint does not hold`);
    const out = new Float32Array(end - start);
    const bytes = new Uint8Array(out.buffer);
    let covered = start;
    for (const p of t.parts) {
      const a = Math.max(covered, p.start), b = Math.min(end, p.end);
      if (a > covered) break;
      if (b <= a) continue;
      const st = this.file(p.file);
      const info = st.tensors.get(name);
      if (!info || info.dtype !== 'F32' || info.byteLength !== (p.end - p.start) * 4) {
        throw new CheckpointDamage(this.folder, 'damaged', `${p.file} does not hold ${name} as the index says (F32, ${p.end - p.start} elements)`);
      }
      st.readBytes(name, { start: (a - p.start) * 4, length: (b - a) * 4, into: bytes.subarray((a - start) * 4) });
      covered = b;
      if (covered >= end) break;
    }
    if (covered < end) throw new CheckpointDamage(this.folder, 'damaged', `no file holds elements [${covered}, ${end}) of ${name}`);
    return out;
  }

  private file(name: string): SafetensorsFile {
    let f = this.files.get(name);
    if (!f) {
      try { f = openSafetensors(path.join(this.folder, name)); } catch (e) {
        throw new CheckpointDamage(this.folder, 'damaged', (e as Error).message);
      }
      this.files.set(name, f);
    }
    return f;
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }
}
