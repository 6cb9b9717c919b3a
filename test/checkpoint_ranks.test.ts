// Checkpoints across real processes started by `moetrain launch` (test/helpers/checkpoint_rank.ts):
// 3 ranks write FSDP-style flat shards into one checkpoint that 2 ranks and a single process
// read back bit for bit; damage found by rank 1's share of the checksums moves every rank to
// the checkpoint before; SIGINT to the launcher stops every rank after the same step with one
// checkpoint, and 3 ranks resume it to the losses of a run that was never stopped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';
import { verifyCheckpoint } from '../src/train/checkpoint_manifest.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const rankScript = path.join(packageRoot(), 'dist', 'test', 'helpers', 'checkpoint_rank.js');

function launch(nproc: number, args: string[]) {
  const r = spawnSync(process.execPath, [cli, 'launch', '--nproc-per-node', String(nproc), '--', rankScript, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function alone(args: string[]) {
  const env = { ...process.env };
  for (const k of ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']) delete env[k];
  const r = spawnSync(process.execPath, [rankScript, ...args], { encoding: 'utf8', env, timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-ckranks-'));

test('3 ranks write flat shards; 2 ranks and one process read them bit for bit; damage found by rank 1 moves all to the one before', () => {
  const dir = tmp();
  try {
    for (const step of ['5', '7']) {
      const w = launch(3, ['write', dir, step]);
      assert.equal(w.code, 0, w.err);
      for (const r of [0, 1, 2]) assert.match(w.out, new RegExp(`rank ${r} wrote \\S+step-0000000${step}`));
    }
    const v = verifyCheckpoint(path.join(dir, 'step-00000005'));
    assert.equal(v.state.world_size, 3);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['step-00000005', 'step-00000007']);

    const two = launch(2, ['resume', dir]);
    assert.equal(two.code, 0, two.err);
    assert.match(two.out, /^rank 0 resumed step 7 ok/m);
    assert.match(two.out, /^\[rank 1\] rank 1 resumed step 7 ok/m);
    const one = alone(['resume', dir]);
    assert.equal(one.code, 0, one.err);
    assert.match(one.out, /^rank 0 resumed step 7 ok/m);

    // Same size, other bytes: only the checksum sees it. Of the six files in name order, 2
    // ranks hash every other one: rank-00001.safetensors (the fourth) is rank 1's.
    const file = path.join(dir, 'step-00000007', 'rank-00001.safetensors');
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 9]! ^= 0x10;
    fs.writeFileSync(file, bytes);
    const damaged = launch(2, ['resume', dir]);
    assert.equal(damaged.code, 0, damaged.err);
    const skips = damaged.out.split('\n').filter((l) => l.includes('skipping checkpoint'));
    assert.equal(skips.length, 1, damaged.out);
    assert.match(skips[0]!, /^\[rank 1\] moetrain: skipping checkpoint \S+step-00000007: damaged: rank-00001\.safetensors does not match its checksum/);
    assert.match(damaged.out, /^rank 0 resumed step 5 ok/m);
    assert.match(damaged.out, /^\[rank 1\] rank 1 resumed step 5 ok/m);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const records = (out: string) => out.split('\n').filter((l) => /^record /.test(l)).map((l) => l.split(' ').slice(1).map(Number));

test('SIGINT to the launcher: every rank stops after the same step with one checkpoint (exit 130); 3 ranks resume it exactly', async () => {
  const straightDir = tmp(), dir = tmp();
  try {
    const steps = '14';
    const straight = alone(['train', straightDir, steps]);
    assert.equal(straight.code, 0, straight.err);
    const want = records(straight.out);
    assert.equal(want.length, 14);

    const stopped = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const child = spawn(process.execPath, [cli, 'launch', '--nproc-per-node', '2', '--', rankScript, 'train', dir, steps]);
      let out = '', err = '', sent = false;
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (!sent && /step 00000005\//.test(out)) { sent = true; child.kill('SIGINT'); }
      });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('close', (code) => resolve({ code, out, err }));
    });
    assert.equal(stopped.code, 130, stopped.err);
    assert.match(stopped.err, /moetrain launch: SIGINT, passed on to the ranks/);
    assert.match(stopped.err, /moetrain launch: the ranks stopped on SIGINT \(exit status 130\)/);
    const n0 = /^rank 0 stopped by SIGINT after step (\d+); checkpoint (step-\d+)/m.exec(stopped.out);
    const n1 = /^\[rank 1\] rank 1 stopped by SIGINT after step (\d+); checkpoint (step-\d+)/m.exec(stopped.out);
    assert.ok(n0 && n1, stopped.out);
    assert.equal(n0[1], n1[1], 'both ranks stopped after the same step');
    const step = Number(n0[1]);
    assert.ok(step >= 5 && step < 14);
    const v = verifyCheckpoint(path.join(dir, 'checkpoints', n0[2]!));
    assert.deepEqual([v.state.step, v.state.world_size], [step, 2]);
    assert.deepEqual(records(stopped.out), want.slice(0, step));

    const resumed = launch(3, ['train', dir, steps]);
    assert.equal(resumed.code, 0, resumed.err);
    assert.match(resumed.out, new RegExp(`resuming from \\S+${n0[2]} \\(step ${step}\\)`));
    assert.deepEqual(records(resumed.out), want.slice(step));
    for (const r of [0, 1, 2]) assert.match(resumed.out, new RegExp(`rank ${r} finished step 14`));
    const jsonl = (d: string) => fs.readFileSync(path.join(d, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => {
      const x = JSON.parse(l) as { step: number; crossEntropy: number; gradientNorm: number };
      return [x.step, x.crossEntropy, x.gradientNorm];
    });
    assert.deepEqual(jsonl(dir), jsonl(straightDir));
  } finally {
    fs.rmSync(straightDir, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a second SIGINT to the launcher kills the ranks at once, mid-checkpoint, leaving no complete checkpoint', async () => {
  const dir = tmp();
  try {
    const r = await new Promise<{ code: number | null; out: string; err: string; afterSecondMs: number }>((resolve) => {
      // Every checkpoint write pauses 4 s halfway through the rank files.
      const child = spawn(process.execPath, [cli, 'launch', '--nproc-per-node', '2', '--', rankScript, 'train', dir, '40'],
        { env: { ...process.env, MOETRAIN_TEST_CHECKPOINT_HOOK: '*:rank-file-half:sleep4000' } });
      let out = '', err = '', sent = 0, secondAt = 0;
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (sent === 0 && /step 00000002\//.test(out)) { sent = 1; child.kill('SIGINT'); }
        if (sent === 1 && /SIGINT received/.test(out)) { sent = 2; secondAt = performance.now(); child.kill('SIGINT'); }
      });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('close', (code) => resolve({ code, out, err, afterSecondMs: performance.now() - secondAt }));
    });
    assert.equal(r.code, 130, r.err);
    assert.match(r.err, /moetrain launch: SIGINT again, killing the ranks/);
    assert.match(r.err, /moetrain launch: the ranks were killed on the second SIGINT/);
    assert.ok(r.afterSecondMs < 3000, `the job ended ${r.afterSecondMs.toFixed(0)} ms after the second SIGINT`);
    assert.doesNotMatch(r.out, /stopped by SIGINT/);
    const ckpts = path.join(dir, 'checkpoints');
    for (const f of fs.existsSync(ckpts) ? fs.readdirSync(ckpts) : []) assert.match(f, /^step-\d{8}\.tmp-\d+$/, 'only a temporary folder may be left');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
