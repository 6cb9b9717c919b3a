// Damaged checkpoints: each kind of damage to the latest checkpoint is skipped with one line that
// names it and why, and the next older intact one is loaded; none intact is an error with the
// way to start over; `moetrain check-checkpoint` says the same with exit status 0/1; a run whose
// gradient norm turns non-finite names the checkpoint it verified as intact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { packageRoot } from '../src/package_root.js';
import { openSafetensors } from '../src/io/safetensors.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { parseDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import { Adam } from '../src/optim/adam.js';
import { modelTarget, saveCheckpoint } from '../src/train/checkpoint.js';
import { hashFile, writeManifest, type ManifestFile } from '../src/train/checkpoint_manifest.js';
import { resumeFromLatest } from '../src/train/checkpoint_resume.js';

const be = new CpuBackend();
const config = parseDeepseekV2Config(TINY_CONFIG_JSON, 'tiny');
const adamConfig = { type: 'adamw' as const, lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0 };
const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');

function tmp(): string { return fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-ckpt-')); }

function run(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, MOETRAIN_DEBUG: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Checkpoints at steps 2, 4 and 6 under <dir>/checkpoints, each of different weights. */
function threeCheckpoints(dir: string): string {
  const ckpts = path.join(dir, 'checkpoints');
  const model = new DeepseekV2(config, be, 'f32');
  const adam = new Adam(model.params, adamConfig, be);
  for (const step of [2, 4, 6]) {
    model.initialize(step);
    adam.step = step;
    saveCheckpoint(ckpts, step, model, adam, { keep: 0, config: {} });
  }
  model.dispose(); adam.dispose();
  return ckpts;
}

/** Resumes from dir into a fresh model; returns the step loaded and the lines printed. */
function resume(dir: string): { step: number | null; lines: string[] } {
  const model = new DeepseekV2(config, be, 'f32');
  const adam = new Adam(model.params, adamConfig, be);
  const lines: string[] = [];
  try {
    const got = resumeFromLatest(dir, modelTarget(model, adam), { backend: be, log: (l) => lines.push(l), startOver: 'mv checkpoints aside' });
    return { step: got?.state.step ?? null, lines };
  } finally {
    model.dispose(); adam.dispose();
  }
}

/** The manifest rewritten to match the folder's files as they are (damage that checksums cannot see). */
function remanifest(folder: string): void {
  const files: Record<string, ManifestFile> = {};
  for (const f of fs.readdirSync(folder)) if (f !== 'manifest.json') files[f] = hashFile(path.join(folder, f));
  writeManifest(folder, files);
}

/** Writes value into element `at` of tensor `name` in a safetensors file, in place. */
function poke(file: string, name: string, at: number, value: number): void {
  const st = openSafetensors(file);
  const offset = st.tensors.get(name)!.fileOffset + at * 4;
  st.close();
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, new Uint8Array(new Float32Array([value]).buffer), 0, 4, offset);
  fs.closeSync(fd);
}

const RANK0 = 'rank-00000.safetensors';

const damages: { what: string; damage: (folder: string) => void; line: RegExp }[] = [
  { what: 'a truncated rank file', damage: (f) => fs.truncateSync(path.join(f, RANK0), 1000), line: /step-00000006: damaged: rank-00000\.safetensors is 1000 bytes but the manifest says \d+ \(truncated\)/ },
  {
    what: 'one flipped bit in the weights (same size)',
    damage: (f) => { const b = fs.readFileSync(path.join(f, RANK0)); b[b.length >> 1]! ^= 1; fs.writeFileSync(path.join(f, RANK0), b); },
    line: /step-00000006: damaged: rank-00000\.safetensors does not match its checksum \(XXH32 [0-9a-f]{8}, the manifest says [0-9a-f]{8}\)/,
  },
  { what: 'a missing state.json', damage: (f) => fs.rmSync(path.join(f, 'state.json')), line: /step-00000006: incomplete: state\.json is missing/ },
  { what: 'a missing manifest', damage: (f) => fs.rmSync(path.join(f, 'manifest.json')), line: /step-00000006: incomplete: manifest\.json is missing \(the write did not finish\)/ },
  { what: 'a manifest that is not JSON', damage: (f) => fs.writeFileSync(path.join(f, 'manifest.json'), '{"files": '), line: /step-00000006: damaged: manifest\.json is not valid JSON/ },
  {
    what: 'NaN weights with checksums that match',
    damage: (f) => { poke(path.join(f, RANK0), 'model.layers.1.self_attn.o_proj.weight', 17, NaN); remanifest(f); },
    line: /step-00000006: damaged: model\.layers\.1\.self_attn\.o_proj\.weight holds NaN at element 17/,
  },
  {
    what: 'an infinite Adam moment with checksums that match',
    damage: (f) => { poke(path.join(f, RANK0), 'exp_avg_sq.lm_head.weight', 3, Infinity); remanifest(f); },
    line: /step-00000006: damaged: exp_avg_sq\.lm_head\.weight holds Infinity at element 3/,
  },
];

for (const { what, damage, line } of damages) {
  test(`resume skips a latest checkpoint with ${what}, with one line, and loads the one before`, () => {
    const dir = tmp();
    try {
      const ckpts = threeCheckpoints(dir);
      damage(path.join(ckpts, 'step-00000006'));
      const { step, lines } = resume(ckpts);
      assert.equal(step, 4);
      assert.equal(lines.length, 1, lines.join('\n'));
      assert.match(lines[0]!, /^moetrain: skipping checkpoint \S+step-00000006: /);
      assert.match(lines[0]!, line);
      assert.match(lines[0]!, /trying the one before it$/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('two damaged checkpoints give two lines; none intact is an error with the way to start over', () => {
  const dir = tmp();
  try {
    const ckpts = threeCheckpoints(dir);
    fs.rmSync(path.join(ckpts, 'step-00000006', 'state.json'));
    fs.truncateSync(path.join(ckpts, 'step-00000004', RANK0), 10);
    const two = resume(ckpts);
    assert.equal(two.step, 2);
    assert.equal(two.lines.length, 2);
    assert.match(two.lines[1]!, /step-00000004: damaged: rank-00000\.safetensors is 10 bytes/);
    fs.rmSync(path.join(ckpts, 'step-00000002', 'manifest.json'));
    assert.throws(() => resume(ckpts), /^Error: no intact checkpoint in \S+checkpoints \(3 skipped, see the lines above\); to start over: mv checkpoints aside$/);
    // A folder that holds only a temporary (unfinished) checkpoint has no checkpoint: a fresh start.
    const only = path.join(dir, 'only');
    fs.mkdirSync(path.join(only, 'step-00000008.tmp-77'), { recursive: true });
    assert.equal(resume(only).step, null);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('moetrain check-checkpoint: exit 0 with a line for an intact one, 1 with the reason for a damaged one', () => {
  const dir = tmp();
  try {
    const ckpts = threeCheckpoints(dir);
    const ok = run(['check-checkpoint', path.join(ckpts, 'step-00000004')]);
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /step-00000004: intact \(step 4, 3 files, [\d.]+ MB; sizes, checksums and values checked\)/);
    poke(path.join(ckpts, 'step-00000006', RANK0), 'lm_head.weight', 0, NaN);
    const bad = run(['check-checkpoint', path.join(ckpts, 'step-00000006')]);
    assert.equal(bad.code, 1);
    assert.match(bad.out, /step-00000006: damaged: rank-00000\.safetensors does not match its checksum/);
    remanifest(path.join(ckpts, 'step-00000006'));
    const nan = run(['check-checkpoint', path.join(ckpts, 'step-00000006')]);
    assert.equal(nan.code, 1);
    assert.match(nan.out, /step-00000006: damaged: lm_head\.weight holds NaN at element 0/);
    // A run folder: one line per checkpoint, newest first; exit 1 because one is damaged.
    const all = run(['check-checkpoint', dir]);
    assert.equal(all.code, 1);
    assert.deepEqual(all.out.trim().split('\n').map((l) => /(step-\d+): (\w+)/.exec(l)!.slice(1).join(' ')), ['step-00000006 damaged', 'step-00000004 intact', 'step-00000002 intact']);
    const missing = run(['check-checkpoint', path.join(dir, 'nope')]);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /^moetrain: error: \S+nope does not exist; usage: moetrain check-checkpoint DIR/);
    const help = run(['check-checkpoint', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.out, /usage: moetrain check-checkpoint DIR/);
    assert.match(run(['--help']).out, /\n  check-checkpoint +verify a checkpoint/);
    assert.match(run(['check-checkpoint']).err, /moetrain check-checkpoint needs DIR/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const small = ['--device', 'cpu', '--seq_len', '16', '--micro_batch_size', '2', '--global_batch_size', '2', '--schedule.warmup_steps', '0'];

test('a training run resumes past a truncated latest checkpoint and says so', () => {
  const dir = tmp();
  try {
    const args = ['train', ...small, '--steps', '4', '--checkpoint_every', '2', '--run_dir', dir];
    assert.equal(run(args).code, 0);
    fs.truncateSync(path.join(dir, 'checkpoints', 'step-00000004', RANK0), 100);
    const again = run([...args, '--steps', '6']);
    assert.equal(again.code, 0, again.err);
    assert.match(again.out, /moetrain: skipping checkpoint \S+step-00000004: damaged: rank-00000\.safetensors is 100 bytes .*\n.*resuming from \S+step-00000002 \(step 2\)/);
    assert.equal(again.out.split('\n').filter((l) => l.includes('| INFO |')).length, 4, 'steps 3-6 ran');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a non-finite gradient norm names the checkpoint it verified as intact', () => {
  const dir = tmp();
  try {
    // A learning rate of 1e30 takes the weights to ~1e30 at step 1 (finite, so saved); step 2's
    // loss and gradients overflow.
    const r = run(['train', ...small, '--steps', '5', '--checkpoint_every', '1', '--optimizer.lr', '1e30', '--run_dir', dir]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /^moetrain: error: step \d: the gradient norm is (NaN|Infinity); lower optimizer\.lr or check the data; the latest intact checkpoint is \S+step-0000000\d \(checksums verified\): the run resumes from it\n$/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
