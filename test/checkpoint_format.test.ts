// The layout-free checkpoint format, with ranks simulated in one process (each rank's call with
// its own entries, barriers as no-ops called in rank order: ranks 1… write first, then rank 0
// writes and finishes). A checkpoint written under one layout loads bit for bit under others
// and under a single process; HF export reads it; the format before it still loads; the writer
// refuses non-finite values; pruning keeps the newest complete checkpoints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { formatHfConfig, parseDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import { Adam } from '../src/optim/adam.js';
import { toHostF32 } from '../src/ops/create.js';
import { emptyTensor } from '../src/tensor/tensor.js';
import {
  listCheckpoints, loadCheckpoint, modelEntries, modelTarget, readEntries, saveCheckpoint, writeCheckpoint, type CheckpointEntry,
} from '../src/train/checkpoint.js';
import { CheckpointReader } from '../src/train/checkpoint_format.js';
import type { CheckpointGroup } from '../src/train/checkpoint_group.js';
import { verifyCheckpoint } from '../src/train/checkpoint_manifest.js';
import { resumeFromLatest } from '../src/train/checkpoint_resume.js';
import { exportHf } from '../src/train/hf_checkpoint.js';

const be = new CpuBackend();
const config = parseDeepseekV2Config(TINY_CONFIG_JSON, 'tiny');
const adamConfig = { type: 'adamw' as const, lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0 };

function tmp(): string { return fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-ckpt-')); }

/** A model with seeded weights and moments filled with distinct values (zeros would hide swaps). */
function filledModel(seed: number) {
  const model = new DeepseekV2(config, be, 'f32');
  model.initialize(seed);
  const adam = new Adam(model.params, adamConfig, be);
  adam.step = 7;
  let k = seed;
  for (const t of [...adam.m, ...adam.v]) {
    const a = new Float32Array(t.size);
    for (let i = 0; i < a.length; i++) a[i] = Math.sin(++k * 0.7) * 1e-3;
    be.write(t, a);
  }
  return { model, adam };
}

/** name → values of every entry (master weights and moments). */
function valuesOf(entries: readonly CheckpointEntry[]): Map<string, Float32Array> {
  return new Map(entries.map((e) => [e.name, toHostF32(e.tensor)]));
}

type Ranges = (names: readonly { name: string; size: number }[], ranks: number) => [number, number][][];

/** FSDP's way: all tensors flattened into one buffer cut into `ranks` equal pieces; per rank, per tensor, its range. */
const flatSplit: Ranges = (names, ranks) => {
  const total = names.reduce((a, n) => a + n.size, 0);
  const out: [number, number][][] = Array.from({ length: ranks }, () => []);
  for (let r = 0; r < ranks; r++) {
    const lo = Math.floor((r * total) / ranks), hi = Math.floor(((r + 1) * total) / ranks);
    let at = 0;
    for (const n of names) {
      out[r]!.push([Math.min(n.size, Math.max(0, lo - at)), Math.max(0, Math.min(n.size, hi - at))]);
      at += n.size;
    }
  }
  return out;
};

/** Each tensor cut on its own: the first rank holds a third, the second the rest. */
const unevenTwo: Ranges = (names) => [names.map((n) => [0, Math.floor(n.size / 3)]), names.map((n) => [Math.floor(n.size / 3), n.size])];

/** Per rank, the entries of a layout, as new tensors holding that rank's slice of `values`. */
function layout(whole: readonly CheckpointEntry[], values: Map<string, Float32Array>, ranges: Ranges, ranks: number): CheckpointEntry[][] {
  const cuts = ranges(whole.map((e) => ({ name: e.name, size: e.tensor.size })), ranks);
  return cuts.map((perTensor) => whole.flatMap((e, i) => {
    const [start, end] = perTensor[i]!;
    if (end <= start) return [];
    const t = emptyTensor(be, [end - start], 'f32');
    be.write(t, values.get(e.name)!.slice(start, end));
    return [{ name: e.name, shape: e.shape, start, end, tensor: t }];
  }));
}

const group = (rank: number, size: number): CheckpointGroup => ({ rank, size, barrier: () => {}, allReduce: () => {} });

/** Writes a checkpoint as `ranks.length` ranks would: ranks 1… first, rank 0 last (it finishes the folder). */
function writeAsRanks(dir: string, step: number, ranks: CheckpointEntry[][]): string {
  const opts = { keep: 0, config: { note: 'test' }, optimizerStep: 7, jobId: 'job1', modelConfigJson: formatHfConfig(config) };
  for (let r = ranks.length - 1; r >= 1; r--) writeCheckpoint(dir, step, ranks[r]!, { ...opts, group: group(r, ranks.length) });
  return writeCheckpoint(dir, step, ranks[0]!, { ...opts, group: group(0, ranks.length) });
}

/** Reads a layout's ranges back from folder into fresh tensors and returns name → assembled values. */
function readAsLayout(folder: string, whole: readonly CheckpointEntry[], ranges: Ranges, ranks: number): Map<string, Float32Array> {
  const zeros = new Map(whole.map((e) => [e.name, new Float32Array(e.tensor.size)]));
  const out = new Map(whole.map((e) => [e.name, new Float32Array(e.tensor.size).fill(NaN)]));
  for (const entries of layout(whole, zeros, ranges, ranks)) {
    readEntries(folder, entries);
    for (const e of entries) out.get(e.name)!.set(toHostF32(e.tensor), e.start);
  }
  return out;
}

function assertSameValues(got: Map<string, Float32Array>, want: Map<string, Float32Array>, what: string): void {
  assert.equal(got.size, want.size);
  for (const [name, w] of want) {
    const g = got.get(name)!;
    assert.ok(Buffer.from(g.buffer).equals(Buffer.from(w.buffer)), `${what}: ${name} differs`);
  }
}

test('a checkpoint written by 5 ranks (flat shards) loads bit for bit under 2 uneven ranks, 4 flat ranks and one process', () => {
  const dir = tmp();
  try {
    const { model, adam } = filledModel(3);
    const whole = modelEntries(model, adam);
    const values = valuesOf(whole);
    const folder = writeAsRanks(dir, 12, layout(whole, values, flatSplit, 5));
    assert.equal(path.basename(folder), 'step-00000012');
    assert.deepEqual(fs.readdirSync(dir), ['step-00000012'], 'only the final folder is left');
    assert.deepEqual(fs.readdirSync(folder).sort(), ['config.json', 'index.json', 'manifest.json', 'rank-00000.safetensors', 'rank-00001.safetensors', 'rank-00002.safetensors', 'rank-00003.safetensors', 'rank-00004.safetensors', 'state.json']);
    const v = verifyCheckpoint(folder);
    assert.equal(v.state.step, 12);
    assert.equal(v.state.world_size, 5);
    // Some tensor is cut between two rank files, so a whole-tensor read spans files.
    const reader = CheckpointReader.open(folder);
    const spanning = Object.entries(reader.index.tensors).filter(([, t]) => t.parts.length > 1);
    reader.close();
    assert.ok(spanning.length >= 3, `a flat split over 5 ranks cuts tensors between files (${spanning.length} cut)`);

    assertSameValues(readAsLayout(folder, whole, unevenTwo, 2), values, 'two uneven ranks');
    assertSameValues(readAsLayout(folder, whole, flatSplit, 4), values, 'four flat ranks');
    const fresh = filledModel(99);
    assert.equal(loadCheckpoint(folder, fresh.model, fresh.adam), 12);
    assert.equal(fresh.adam.step, 7);
    assertSameValues(valuesOf(modelEntries(fresh.model, fresh.adam)), values, 'one process');
    model.dispose(); adam.dispose(); fresh.model.dispose(); fresh.adam.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('HF export of a 2-rank checkpoint equals the export of the same weights saved by one process', () => {
  const dir = tmp();
  try {
    const { model, adam } = filledModel(5);
    const whole = modelEntries(model, adam);
    const split = writeAsRanks(path.join(dir, 'split'), 3, layout(whole, valuesOf(whole), unevenTwo, 2));
    const single = saveCheckpoint(path.join(dir, 'single'), 3, model, adam, { keep: 0, config: {}, modelConfigJson: formatHfConfig(config) });
    const configPath = path.join(split, 'config.json');
    exportHf(split, path.join(dir, 'hf-split'), { dtype: 'f32', maxShardBytes: 200_000, configPath });
    exportHf(single, path.join(dir, 'hf-single'), { dtype: 'f32', maxShardBytes: 200_000, configPath });
    const files = fs.readdirSync(path.join(dir, 'hf-split')).sort();
    assert.deepEqual(files, fs.readdirSync(path.join(dir, 'hf-single')).sort());
    assert.ok(files.length > 2);
    for (const f of files) assert.ok(fs.readFileSync(path.join(dir, 'hf-split', f)).equals(fs.readFileSync(path.join(dir, 'hf-single', f))), f);
    // A damaged checkpoint is not exported.
    const rank1 = path.join(split, 'rank-00001.safetensors');
    const bytes = fs.readFileSync(rank1);
    bytes[bytes.length - 5]! ^= 0x40;
    fs.writeFileSync(rank1, bytes);
    assert.throws(() => exportHf(split, path.join(dir, 'hf-bad'), { dtype: 'f32', maxShardBytes: 200_000, configPath }), /rank-00001\.safetensors does not match its checksum.*check-checkpoint/);
    model.dispose(); adam.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the format before rank files (model.safetensors + optimizer.safetensors + state.json) still resumes', () => {
  const dir = tmp();
  try {
    const { model, adam } = filledModel(8);
    const whole = modelEntries(model, adam);
    const folder = path.join(dir, 'checkpoints', 'step-00000004');
    fs.mkdirSync(folder, { recursive: true });
    const spec = (e: CheckpointEntry) => ({ name: e.name, dtype: 'F32' as const, shape: [...e.shape], data: toHostF32(e.tensor) });
    writeSafetensors(path.join(folder, 'model.safetensors'), whole.filter((e) => !e.name.startsWith('exp_avg')).map(spec), { format: 'moetrain' });
    writeSafetensors(path.join(folder, 'optimizer.safetensors'), whole.filter((e) => e.name.startsWith('exp_avg')).map(spec), { format: 'moetrain' });
    fs.writeFileSync(path.join(folder, 'state.json'), JSON.stringify({ format: 'moetrain-checkpoint', version: 1, step: 4, optimizer_step: 4, data_fingerprint: null, config: {} }));
    assert.equal(verifyCheckpoint(folder).legacy, true);
    const fresh = filledModel(1);
    const lines: string[] = [];
    const got = resumeFromLatest(path.join(dir, 'checkpoints'), modelTarget(fresh.model, fresh.adam), { backend: be, log: (l) => lines.push(l), startOver: 'x' });
    assert.equal(got?.state.step, 4);
    assert.deepEqual(lines, []);
    assert.equal(fresh.adam.step, 4);
    assertSameValues(valuesOf(modelEntries(fresh.model, fresh.adam)), valuesOf(whole), 'legacy');
    model.dispose(); adam.dispose(); fresh.model.dispose(); fresh.adam.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the writer refuses a non-finite value and leaves no checkpoint; another model is refused by name', () => {
  const dir = tmp();
  try {
    const { model, adam } = filledModel(2);
    const p = model.params[3]!;
    const a = toHostF32(p.master);
    a[5] = NaN;
    be.write(p.master, a);
    assert.throws(() => saveCheckpoint(dir, 2, model, adam, { keep: 0, config: {} }), /step 2: the weights or optimizer state hold a non-finite value \(model\.\S+ holds NaN at element 5\), so no checkpoint was written/);
    assert.deepEqual(fs.readdirSync(dir), []);
    a[5] = 0.5;
    be.write(p.master, a);
    const folder = saveCheckpoint(dir, 2, model, adam, { keep: 0, config: {} });
    const bigger = new DeepseekV2({ ...config, num_hidden_layers: 3 }, be, 'f32');
    const biggerAdam = new Adam(bigger.params, adamConfig, be);
    assert.throws(() => loadCheckpoint(folder, bigger, biggerAdam), /missing tensor model\.layers\.2\..*does not match this model config/);
    model.dispose(); adam.dispose(); bigger.dispose(); biggerAdam.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('keep N deletes only older complete checkpoints, after the new one is in place, and clears leftovers', () => {
  const dir = tmp();
  try {
    const { model, adam } = filledModel(4);
    for (const s of [1, 2, 3]) saveCheckpoint(dir, s, model, adam, { keep: 2, config: {} });
    assert.deepEqual(listCheckpoints(dir).map((f) => path.basename(f)), ['step-00000003', 'step-00000002']);
    // Leftovers of interrupted writes and deletions, and a newer final folder (a damaged one
    // that resume skipped): the leftovers go at the next save, the newer folder stays.
    fs.mkdirSync(path.join(dir, 'step-00000004.tmp-123'));
    fs.mkdirSync(path.join(dir, 'step-00000001.deleting-9'));
    fs.mkdirSync(path.join(dir, 'step-00000009'));
    saveCheckpoint(dir, 4, model, adam, { keep: 2, config: {} });
    assert.deepEqual(fs.readdirSync(dir).sort(), ['step-00000003', 'step-00000004', 'step-00000009']);
    // Saving a step whose final folder exists replaces it whole.
    saveCheckpoint(dir, 9, model, adam, { keep: 0, config: {} });
    assert.equal(verifyCheckpoint(path.join(dir, 'step-00000009')).state.step, 9);
    model.dispose(); adam.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
