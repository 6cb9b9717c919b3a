// Checkpoints: <run>/checkpoints/step-00000100/ in the layout-free format of
// checkpoint_format.ts (one safetensors file per rank holding the ranges it owns, an index, the
// run's state, a manifest of sizes and checksums). Any parallel layout, or a single process,
// reads a checkpoint written by any other: each rank asks for the ranges it holds.
//
// Writing is atomic for the whole checkpoint: every rank writes its file into
// step-XXXXXXXX.tmp-<job id>; after a barrier rank 0 writes the index, state.json and, last, the
// manifest, then renames the folder to step-XXXXXXXX. A crash at any point leaves the previous
// complete checkpoint as the latest. Only then are checkpoints beyond the newest `keep` deleted
// (renamed to .deleting-* first, so a half-deleted folder never has a final name), with any
// leftovers of interrupted writes.
import fs from 'node:fs';
import path from 'node:path';
import { backendOf } from '../backend/backend.js';
import type { DeepseekV2 } from '../models/deepseek_v2.js';
import { namedParameters } from '../models/deepseek_v2_names.js';
import type { Adam } from '../optim/adam.js';
import type { LeanAdam } from '../optim/lean_adam.js';
import { f32ArrayToBf16 } from '../tensor/dtype.js';
import {
  buildIndex, CheckpointDamage, CheckpointReader, CONFIG_FILE, firstNonFinite, fsyncFolder, INDEX_FILE, NonFiniteError, rankFileName,
  readCheckpointState, STATE_FILE, writeJsonFile, writeRankFile, type CheckpointEntry, type CheckpointState, type ScheduleRecord,
} from './checkpoint_format.js';
import { SINGLE_PROCESS, type CheckpointGroup } from './checkpoint_group.js';
import { hashFile, writeManifest, type ManifestFile } from './checkpoint_manifest.js';

export type { CheckpointEntry, CheckpointState } from './checkpoint_format.js';

const FINAL = /^step-(\d{8})$/;
const LEFTOVER = /^step-\d{8}\.(tmp|deleting)-/;

export function checkpointName(step: number): string { return `step-${String(step).padStart(8, '0')}`; }

/** Checkpoint folders with a final name under dir, newest first (complete when written; verify before use). */
export function listCheckpoints(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((n) => FINAL.test(n)).sort().reverse().map((n) => path.join(dir, n));
}

export interface WriteOptions {
  /** Complete checkpoints to keep, this one included (0: all). */
  keep: number;
  /** The training config, recorded in state.json for reference. */
  config: unknown;
  /** Adam updates taken so far. */
  optimizerStep: number;
  /** Identifies the data order (shards, sequence length, seed); checked on resume. */
  dataFingerprint?: string;
  /** The learning-rate schedule the run follows (compared on resume). */
  schedule?: ScheduleRecord;
  /** The parallel layout, recorded for reference. */
  mesh?: unknown;
  /** The model's HF config.json text, stored in the folder so that it exports on its own. */
  modelConfigJson?: string;
  /** The ranks writing together (default: this process alone). */
  group?: CheckpointGroup;
  /** The same on every rank of the job; names the temporary folder (default: this process's id). */
  jobId?: string;
}

/**
 * Test hook: MOETRAIN_TEST_CHECKPOINT_HOOK="<step or *>:<point>:kill" makes this process SIGKILL
 * itself at that point of writing that checkpoint, and "…:sleep<ms>" pauses it there, so the
 * kill and signal tests can hit every stage of the writer. Points: rank-file-half, rank-file,
 * index, state, manifest, rename, prune.
 */
function testHook(step: number): (point: string) => void {
  const spec = process.env['MOETRAIN_TEST_CHECKPOINT_HOOK'];
  if (!spec) return () => {};
  const [s, at, action] = spec.split(':');
  return (point) => {
    if ((s !== '*' && Number(s) !== step) || at !== point) return;
    if (action === 'kill') process.kill(process.pid, 'SIGKILL');
    const ms = /^sleep(\d+)$/.exec(action ?? '');
    if (ms) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(ms[1]));
  };
}

/** Every rank calls this with the entries it holds; returns the checkpoint's final folder. */
export function writeCheckpoint(dir: string, step: number, entries: readonly CheckpointEntry[], opts: WriteOptions): string {
  const group = opts.group ?? SINGLE_PROCESS;
  const hook = testHook(step);
  const final = path.join(dir, checkpointName(step));
  const tmp = `${final}.tmp-${opts.jobId ?? process.pid}`;
  fs.mkdirSync(dir, { recursive: true });
  if (group.size === 1) fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  let mine: ManifestFile & { file: string };
  try {
    mine = writeRankFile(tmp, group.rank, entries, () => hook('rank-file-half'));
  } catch (e) {
    if (!(e instanceof NonFiniteError)) throw e;
    if (group.size === 1) fs.rmSync(tmp, { recursive: true, force: true });
    throw new Error(`step ${step}: the weights or optimizer state hold a non-finite value (${e.message}), so no checkpoint was written; lower optimizer.lr or check the data`);
  }
  // Rank 0 collects every rank's size and checksum from these small files.
  writeJsonFile(path.join(tmp, `${mine.file}.xxh32.json`), { bytes: mine.bytes, xxh32: mine.xxh32 });
  hook('rank-file');
  group.barrier();
  if (group.rank === 0) finishCheckpoint(dir, tmp, final, step, group.size, opts, hook);
  group.barrier();
  return final;
}

/** Rank 0, once every rank file is written: index, state, config, manifest, rename, pruning. */
function finishCheckpoint(dir: string, tmp: string, final: string, step: number, worldSize: number, opts: WriteOptions, hook: (point: string) => void): void {
  const files: Record<string, ManifestFile> = {};
  for (let r = 0; r < worldSize; r++) {
    const sum = path.join(tmp, `${rankFileName(r)}.xxh32.json`);
    files[rankFileName(r)] = JSON.parse(fs.readFileSync(sum, 'utf8')) as ManifestFile;
  }
  writeJsonFile(path.join(tmp, INDEX_FILE), buildIndex(tmp, worldSize));
  hook('index');
  const state: CheckpointState = {
    format: 'moetrain-checkpoint', version: 2, step, optimizer_step: opts.optimizerStep, data_fingerprint: opts.dataFingerprint ?? null,
    ...(opts.schedule ? { schedule: opts.schedule } : {}), world_size: worldSize, ...(opts.mesh !== undefined ? { mesh: opts.mesh } : {}),
    time: new Date().toISOString(), config: opts.config,
  };
  writeJsonFile(path.join(tmp, STATE_FILE), state);
  hook('state');
  if (opts.modelConfigJson !== undefined) fs.writeFileSync(path.join(tmp, CONFIG_FILE), opts.modelConfigJson);
  for (const f of [INDEX_FILE, STATE_FILE, ...(opts.modelConfigJson !== undefined ? [CONFIG_FILE] : [])]) files[f] = hashFile(path.join(tmp, f));
  for (let r = 0; r < worldSize; r++) fs.rmSync(path.join(tmp, `${rankFileName(r)}.xxh32.json`));
  writeManifest(tmp, files);
  fsyncFolder(tmp);
  hook('manifest');
  const job = path.basename(tmp).split('.tmp-')[1]!;
  if (fs.existsSync(final)) fs.renameSync(final, `${final}.deleting-${job}`);
  fs.renameSync(tmp, final);
  fsyncFolder(dir);
  hook('rename');
  prune(dir, step, opts.keep, job, hook);
}

/** Deletes complete checkpoints older than the newest `keep` (counting `step`'s) and leftovers of interrupted writes. */
function prune(dir: string, step: number, keep: number, job: string, hook: (point: string) => void): void {
  if (keep > 0) {
    const older = listCheckpoints(dir).filter((f) => Number(FINAL.exec(path.basename(f))![1]) < step);
    for (const f of older.slice(keep - 1)) {
      fs.renameSync(f, `${f}.deleting-${job}`);
      hook('prune');
    }
  }
  for (const n of fs.readdirSync(dir)) if (LEFTOVER.test(n)) fs.rmSync(path.join(dir, n), { recursive: true, force: true });
}

/** The master weights (HF names; a lean run's bf16 weights) and Adam moments of a model that holds whole tensors. */
export function modelEntries(model: DeepseekV2, optimizer: Adam | LeanAdam): CheckpointEntry[] {
  const named = namedParameters(model);
  const whole = (name: string, shape: readonly number[], tensor: CheckpointEntry['tensor']): CheckpointEntry => ({ name, shape, start: 0, end: tensor.size, tensor });
  return [
    ...named.map(({ name, param }) => whole(name, param.shape, param.weights)),
    ...named.flatMap(({ name, param }) => {
      const { m, v } = optimizer.moments(param);
      return [whole(`exp_avg.${name}`, param.shape, m), whole(`exp_avg_sq.${name}`, param.shape, v)];
    }),
  ];
}

/** Fills every entry's tensor with its range. A non-finite value is CheckpointDamage; a missing or reshaped tensor means another model. */
export function readEntries(folder: string, entries: readonly CheckpointEntry[]): void {
  const reader = CheckpointReader.open(folder);
  try {
    for (const e of entries) {
      const shape = reader.shape(e.name);
      if (!shape) throw new Error(`${folder}: missing tensor ${e.name}; the checkpoint does not match this model config (pass the run's own --model, or a new --run_dir)`);
      if (shape.join(',') !== e.shape.join(',')) {
        throw new Error(`${folder}: tensor ${e.name} has shape [${shape}] but the model expects [${e.shape}]; the checkpoint does not match this model config (pass the run's own --model, or a new --run_dir)`);
      }
      const data = reader.readRange(e.name, e.start, e.end);
      const bad = firstNonFinite(data);
      if (bad >= 0) throw new CheckpointDamage(folder, 'damaged', `${e.name} holds ${data[bad]} at element ${e.start + bad}`);
      // A lean run's bf16 tensors were saved widened to f32: narrowing them back is exact.
      backendOf(e.tensor).write(e.tensor, e.tensor.dtype === 'bf16' ? f32ArrayToBf16(data) : data);
    }
  } finally {
    reader.close();
  }
}

/** Refuses a checkpoint whose data order differs from the run's (the batches after resume would differ). */
export function checkDataFingerprint(folder: string, state: CheckpointState, dataFingerprint: string | undefined): void {
  if (dataFingerprint && state.data_fingerprint && state.data_fingerprint !== dataFingerprint) {
    throw new Error(`${folder}: this checkpoint was trained on other data or another seed/sequence length (data fingerprint ${state.data_fingerprint}, now ${dataFingerprint}); use the run's original data and settings, or a new --run_dir`);
  }
}

/** Refuses a checkpoint written under another training recipe (config.recipe; absent: "default"). */
export function checkRecipe(folder: string, state: CheckpointState, recipe: string): void {
  const saved = (state.config as { recipe?: unknown } | null)?.recipe ?? 'default';
  if (saved !== recipe) {
    throw new Error(`${folder}: this checkpoint was written by a --recipe ${String(saved)} run, and this run asks for --recipe ${recipe}; a run keeps its recipe on resume (the optimizer state differs): pass --recipe ${String(saved)}, or start a new --run_dir`);
  }
}

/** What a run restores from a checkpoint: its entries, and what to do once they are loaded. */
export interface CheckpointTarget {
  entries: readonly CheckpointEntry[];
  loaded(state: CheckpointState): void;
}

/** A model holding whole tensors: refreshes the compute copies and the optimizer's step after loading. */
export function modelTarget(model: DeepseekV2, optimizer: Adam | LeanAdam): CheckpointTarget {
  return {
    entries: modelEntries(model, optimizer),
    loaded: (state) => {
      for (const p of model.params) p.syncValue();
      optimizer.step = state.optimizer_step;
    },
  };
}

export type SaveOptions = Omit<WriteOptions, 'optimizerStep'>;

/** writeCheckpoint of a whole model and its optimizer. */
export function saveCheckpoint(dir: string, step: number, model: DeepseekV2, optimizer: Adam | LeanAdam, opts: SaveOptions): string {
  return writeCheckpoint(dir, step, modelEntries(model, optimizer), { ...opts, optimizerStep: optimizer.step });
}

/** Loads a checkpoint folder into a model (whole or a part) and its optimizer; returns its step. */
export function loadCheckpoint(folder: string, model: DeepseekV2, optimizer: Adam | LeanAdam, dataFingerprint?: string): number {
  const state = readCheckpointState(folder);
  checkDataFingerprint(folder, state, dataFingerprint);
  const target = modelTarget(model, optimizer);
  readEntries(folder, target.entries);
  target.loaded(state);
  return state.step;
}
