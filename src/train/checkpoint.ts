// Checkpoints: <run>/checkpoints/step-00000100/ holding model.safetensors (f32 master weights
// under their HF names), optimizer.safetensors (Adam moments as exp_avg.<name> /
// exp_avg_sq.<name>) and state.json (step, optimizer step, config). A checkpoint is written
// into a temporary folder and renamed when complete, so a folder with the final name is always
// whole; resume picks the highest complete step. Names (models/deepseek_v2_names.ts; experts by
// global id), not layouts, identify tensors, so any parallel layout can load any other.
import fs from 'node:fs';
import path from 'node:path';
import { backendOf } from '../backend/backend.js';
import type { DeepseekV2 } from '../models/deepseek_v2.js';
import { namedParameters } from '../models/deepseek_v2_names.js';
import type { Adam } from '../optim/adam.js';
import type { Tensor } from '../tensor/tensor.js';
import { toHostF32 } from '../ops/create.js';
import { openSafetensors, SafetensorsWriter } from '../io/safetensors.js';

const PREFIX = 'step-';
const STATE = 'state.json';

export function checkpointName(step: number): string { return `${PREFIX}${String(step).padStart(8, '0')}`; }

/** The newest complete checkpoint folder under dir, or null. */
export function latestCheckpoint(dir: string): string | null {
  if (!fs.existsSync(dir)) return null;
  const steps = fs.readdirSync(dir)
    .filter((n) => /^step-\d{8}$/.test(n) && fs.existsSync(path.join(dir, n, STATE)))
    .sort();
  const last = steps[steps.length - 1];
  return last ? path.join(dir, last) : null;
}

/** Streams f32 tensors into one safetensors file, one device read at a time. */
function writeF32File(file: string, entries: readonly { name: string; t: Tensor }[]): void {
  const w = SafetensorsWriter.create(file, entries.map((e) => ({ name: e.name, dtype: 'F32', shape: [...e.t.shape] })), { format: 'moetrain' });
  try {
    for (const e of entries) w.write(e.name, toHostF32(e.t));
    w.finish();
  } catch (err) {
    w.abort();
    throw err;
  }
}

export interface SaveOptions {
  /** Complete checkpoints to keep (0: all). */
  keep: number;
  /** Recorded in state.json for reference. */
  config: unknown;
  /** Identifies the data order (shards, sequence length, seed); checked on resume. */
  dataFingerprint?: string;
}

export function saveCheckpoint(dir: string, step: number, model: DeepseekV2, optimizer: Adam, opts: SaveOptions): string {
  fs.mkdirSync(dir, { recursive: true });
  const final = path.join(dir, checkpointName(step));
  const tmp = `${final}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  const named = namedParameters(model);
  writeF32File(path.join(tmp, 'model.safetensors'), named.map(({ name, param }) => ({ name, t: param.master })));
  writeF32File(path.join(tmp, 'optimizer.safetensors'), named.flatMap(({ name, param }) => {
    const { m, v } = optimizer.moments(param);
    return [{ name: `exp_avg.${name}`, t: m }, { name: `exp_avg_sq.${name}`, t: v }];
  }));
  const state = {
    format: 'moetrain-checkpoint', version: 1, step, optimizer_step: optimizer.step, data_fingerprint: opts.dataFingerprint ?? null,
    time: new Date().toISOString(), config: opts.config,
  };
  fs.writeFileSync(path.join(tmp, STATE), JSON.stringify(state, null, 2));
  if (fs.existsSync(final)) fs.rmSync(final, { recursive: true, force: true });
  fs.renameSync(tmp, final);
  if (opts.keep > 0) {
    const all = fs.readdirSync(dir).filter((n) => /^step-\d{8}$/.test(n)).sort();
    for (const old of all.slice(0, Math.max(0, all.length - opts.keep))) fs.rmSync(path.join(dir, old), { recursive: true, force: true });
  }
  return final;
}

function loadInto(file: string, names: readonly string[], targets: readonly Tensor[]): void {
  const st = openSafetensors(file);
  try {
    names.forEach((name, i) => {
      const t = targets[i]!;
      const info = st.tensors.get(name);
      if (!info) throw new Error(`${file}: missing tensor ${name}; the checkpoint does not match this model config`);
      if (info.shape.join(',') !== t.shape.join(',')) {
        throw new Error(`${file}: tensor ${name} has shape [${info.shape}] but the model expects [${t.shape}]; the checkpoint does not match this model config`);
      }
      if (info.dtype !== 'F32') throw new Error(`${file}: tensor ${name} is ${info.dtype}, expected F32 (a moetrain checkpoint)`);
      backendOf(t).write(t, st.readTensor(name).data as Float32Array);
    });
  } finally {
    st.close();
  }
}

/**
 * Loads weights and optimizer state; returns the step to continue from. A data fingerprint that
 * differs from the one saved means the batches after resume would not be the ones the run would
 * have seen, so it is refused.
 */
export function loadCheckpoint(folder: string, model: DeepseekV2, optimizer: Adam, dataFingerprint?: string): number {
  let state: { step: number; optimizer_step: number; data_fingerprint?: string | null };
  try { state = JSON.parse(fs.readFileSync(path.join(folder, STATE), 'utf8')); } catch (e) {
    throw new Error(`${folder}: unreadable ${STATE} (${(e as Error).message}); delete this checkpoint folder to resume from the previous one`);
  }
  if (dataFingerprint && state.data_fingerprint && state.data_fingerprint !== dataFingerprint) {
    throw new Error(`${folder}: this checkpoint was trained on other data or another seed/sequence length (data fingerprint ${state.data_fingerprint}, now ${dataFingerprint}); use the run's original data and settings, or a new --run_dir`);
  }
  const named = namedParameters(model);
  loadInto(path.join(folder, 'model.safetensors'), named.map((e) => e.name), named.map((e) => e.param.master));
  for (const { param } of named) param.syncValue();
  const moments = named.map((e) => optimizer.moments(e.param));
  loadInto(path.join(folder, 'optimizer.safetensors'), [...named.map((e) => `exp_avg.${e.name}`), ...named.map((e) => `exp_avg_sq.${e.name}`)],
    [...moments.map((s) => s.m), ...moments.map((s) => s.v)]);
  optimizer.step = state.optimizer_step;
  return state.step;
}
