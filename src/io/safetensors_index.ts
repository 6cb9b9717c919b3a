// Sharded safetensors checkpoints as Hugging Face writes them: `model-00001-of-0000N.safetensors`
// files plus `model.safetensors.index.json` = { metadata: { total_size }, weight_map: { tensor
// name: file name } }. The writer assigns tensors to shards up front (at most maxShardBytes of
// tensor data each; a bigger tensor gets a shard of its own), streams every tensor into its
// shard, and writes the index last (temp name + rename): a folder whose index exists is complete.
// The reader opens a folder (index, or a lone model.safetensors), an index file or a single
// .safetensors file, and presents one name → tensor view over all shards.
//
// Usage:
//   const w = ShardedSafetensorsWriter.create('ckpt/step-100', specs, { maxShardBytes: 5e9 });
//   for (const s of specs) w.write(s.name, bytesOf(s.name));   // any order; pieces in order
//   w.finish();
//   const m = openShardedSafetensors('ckpt/step-100');
//   const { data } = m.readTensor('model.embed_tokens.weight');
//   m.close();
import fs from 'node:fs';
import path from 'node:path';
import {
  openSafetensors, SafetensorsWriter, encodeSafetensorsHeader, safetensorsDTypeBytes,
  type SafetensorsFile, type SafetensorsTensorInfo, type SafetensorsTensorSpec, type ReadRange, type SafetensorsArray, type SafetensorsDType,
} from './safetensors.js';
import { writeJsonAtomic } from './files.js';

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

export interface SafetensorsIndex {
  metadata: { total_size: number; [key: string]: unknown };
  weight_map: Record<string, string>;
}

export function readSafetensorsIndex(file: string): SafetensorsIndex {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`safetensors index ${file} cannot be read as JSON: ${(e as Error).message}`);
  }
  const index = json as Partial<SafetensorsIndex> | null;
  if (index === null || typeof index !== 'object' || index.weight_map === null || typeof index.weight_map !== 'object' || Array.isArray(index.weight_map)) {
    throw new Error(`safetensors index ${file} has no weight_map object`);
  }
  for (const [name, shard] of Object.entries(index.weight_map)) {
    if (typeof shard !== 'string' || shard === '' || shard.includes('/') || shard.includes('\\') || shard === '..') {
      throw new Error(`safetensors index ${file}: tensor ${name} maps to ${JSON.stringify(shard)}, not a file name in the same folder`);
    }
  }
  const metadata = index.metadata !== null && typeof index.metadata === 'object' ? index.metadata : { total_size: NaN };
  return { metadata: metadata as SafetensorsIndex['metadata'], weight_map: index.weight_map };
}

export function writeSafetensorsIndex(file: string, index: SafetensorsIndex): void {
  writeJsonAtomic(file, index);
}

export interface ShardPlan {
  file: string;
  specs: SafetensorsTensorSpec[];
  dataBytes: number;
}

function tensorBytes(s: SafetensorsTensorSpec): number {
  let n = safetensorsDTypeBytes(s.dtype);
  for (const d of s.shape) n *= d;
  return n;
}

/** Greedy in the given order: a shard closes when the next tensor would take it past the limit
 * (an empty tensor never opens a shard). */
export function planSafetensorsShards(specs: readonly SafetensorsTensorSpec[], maxShardBytes: number, prefix = 'model'): ShardPlan[] {
  if (!(maxShardBytes > 0)) throw new Error(`maximum shard size ${maxShardBytes} must be positive`);
  const groups: { specs: SafetensorsTensorSpec[]; dataBytes: number }[] = [];
  let current: { specs: SafetensorsTensorSpec[]; dataBytes: number } | null = null;
  for (const s of specs) {
    const bytes = tensorBytes(s);
    if (current === null || (current.specs.length > 0 && bytes > 0 && current.dataBytes + bytes > maxShardBytes)) {
      current = { specs: [], dataBytes: 0 };
      groups.push(current);
    }
    current.specs.push(s);
    current.dataBytes += bytes;
  }
  if (groups.length === 0) groups.push({ specs: [], dataBytes: 0 });
  const width = 5;
  const n = String(groups.length).padStart(width, '0');
  return groups.map((g, i) => ({ file: `${prefix}-${String(i + 1).padStart(width, '0')}-of-${n}.safetensors`, ...g }));
}

export interface ShardedWriterOptions {
  /** Most tensor bytes per shard file. */
  maxShardBytes: number;
  /** Written into every shard's __metadata__ (e.g. { format: 'pt' }). */
  metadata?: Record<string, string>;
  /** File name prefix (default 'model'). */
  prefix?: string;
  /** Extra keys for the index's metadata (total_size is always set). */
  indexMetadata?: Record<string, unknown>;
}

export class ShardedSafetensorsWriter {
  private readonly writers: SafetensorsWriter[];
  private readonly shardOf = new Map<string, number>();
  private readonly remaining: number[];
  private finishedShards: boolean[];
  private closed = false;

  private constructor(readonly dir: string, readonly plan: ShardPlan[], private readonly options: ShardedWriterOptions) {
    this.writers = [];
    try {
      for (const p of plan) this.writers.push(SafetensorsWriter.create(path.join(dir, p.file), p.specs, options.metadata));
    } catch (e) {
      for (const w of this.writers) w.abort();
      throw e;
    }
    plan.forEach((p, i) => p.specs.forEach((s) => this.shardOf.set(s.name, i)));
    this.remaining = plan.map((p) => p.dataBytes);
    this.finishedShards = plan.map(() => false);
  }

  /** Plans the shards and opens every shard file (as `.partial`) in `dir` (created). */
  static create(dir: string, specs: readonly SafetensorsTensorSpec[], options: ShardedWriterOptions): ShardedSafetensorsWriter {
    const names = new Set<string>();
    for (const s of specs) {
      if (names.has(s.name)) throw new Error(`tensor name ${s.name} appears twice`);
      names.add(s.name);
      encodeSafetensorsHeader([s]); // validates name, dtype and shape now, before any file is made
    }
    fs.mkdirSync(dir, { recursive: true });
    return new ShardedSafetensorsWriter(dir, planSafetensorsShards(specs, options.maxShardBytes, options.prefix), options);
  }

  /** Appends bytes to tensor `name` (whole or the next piece); a shard is renamed to its final
   * name as soon as all its tensors are complete. */
  write(name: string, data: ArrayBufferView): void {
    const i = this.shardOf.get(name);
    if (i === undefined) throw new Error(`internal: tensor ${name} was not declared for ${this.dir}`);
    this.writers[i]!.write(name, data);
    this.remaining[i]! -= data.byteLength;
    if (this.remaining[i] === 0 && !this.finishedShards[i]) {
      this.writers[i]!.finish();
      this.finishedShards[i] = true;
    }
  }

  /** Finishes the shards and writes the index; returns the index path. */
  finish(): string {
    if (this.closed) throw new Error('internal: sharded writer finished twice');
    this.closed = true;
    this.writers.forEach((w, i) => { if (!this.finishedShards[i]) w.finish(); });
    const weightMap: Record<string, string> = {};
    let total = 0;
    for (const p of this.plan) {
      for (const s of p.specs) weightMap[s.name] = p.file;
      total += p.dataBytes;
    }
    const indexPath = path.join(this.dir, this.options.prefix === undefined || this.options.prefix === 'model' ? INDEX_FILE : `${this.options.prefix}.safetensors.index.json`);
    writeSafetensorsIndex(indexPath, { metadata: { ...this.options.indexMetadata, total_size: total }, weight_map: weightMap });
    return indexPath;
  }

  abort(): void {
    if (this.closed) return;
    this.closed = true;
    this.writers.forEach((w, i) => { if (!this.finishedShards[i]) w.abort(); });
  }
}

export interface ShardedTensorInfo extends SafetensorsTensorInfo {
  /** The shard file holding it. */
  file: string;
}

export interface ShardedSafetensors {
  /** The index file, or the single .safetensors file. */
  readonly path: string;
  /** The index's metadata (empty for a single file). */
  readonly indexMetadata: Readonly<Record<string, unknown>>;
  readonly tensors: ReadonlyMap<string, ShardedTensorInfo>;
  readBytes(name: string, range?: ReadRange): Uint8Array;
  readTensor(name: string): { dtype: SafetensorsDType; shape: number[]; data: SafetensorsArray };
  close(): void;
}

/** Opens a checkpoint folder (index or lone model.safetensors), an index file, or one .safetensors file. */
export function openShardedSafetensors(target: string): ShardedSafetensors {
  let st: fs.Stats;
  try {
    st = fs.statSync(target);
  } catch {
    throw new Error(`checkpoint ${target} does not exist`);
  }
  let indexPath: string | null = null;
  let singlePath: string | null = null;
  if (st.isDirectory()) {
    if (fs.existsSync(path.join(target, INDEX_FILE))) indexPath = path.join(target, INDEX_FILE);
    else if (fs.existsSync(path.join(target, SINGLE_FILE))) singlePath = path.join(target, SINGLE_FILE);
    else throw new Error(`checkpoint folder ${target} has neither ${INDEX_FILE} nor ${SINGLE_FILE} (an unfinished save?)`);
  } else if (target.endsWith('.json')) {
    indexPath = target;
  } else {
    singlePath = target;
  }

  const files = new Map<string, SafetensorsFile>();
  const tensors = new Map<string, ShardedTensorInfo>();
  let indexMetadata: Record<string, unknown> = {};
  const closeAll = (): void => { for (const f of files.values()) f.close(); };
  try {
    if (singlePath !== null) {
      const f = openSafetensors(singlePath);
      files.set(path.basename(singlePath), f);
      for (const t of f.tensors.values()) tensors.set(t.name, { ...t, file: path.basename(singlePath) });
    } else {
      const index = readSafetensorsIndex(indexPath!);
      indexMetadata = index.metadata;
      const dir = path.dirname(indexPath!);
      for (const [name, file] of Object.entries(index.weight_map)) {
        let f = files.get(file);
        if (f === undefined) {
          if (!fs.existsSync(path.join(dir, file))) throw new Error(`safetensors index ${indexPath} names shard ${file}, which does not exist in ${dir}`);
          f = openSafetensors(path.join(dir, file));
          files.set(file, f);
        }
        const t = f.tensors.get(name);
        if (t === undefined) throw new Error(`safetensors index ${indexPath} puts tensor ${name} in ${file}, but that file has no such tensor`);
        tensors.set(name, { ...t, file });
      }
    }
  } catch (e) {
    closeAll();
    throw e;
  }
  const fileOf = (name: string): SafetensorsFile => {
    const t = tensors.get(name);
    if (t === undefined) throw new Error(`checkpoint ${indexPath ?? singlePath} has no tensor named ${JSON.stringify(name)}`);
    return files.get(t.file)!;
  };
  return {
    path: (indexPath ?? singlePath)!,
    indexMetadata,
    tensors,
    readBytes: (name, range) => fileOf(name).readBytes(name, range),
    readTensor: (name) => fileOf(name).readTensor(name),
    close: closeAll,
  };
}
