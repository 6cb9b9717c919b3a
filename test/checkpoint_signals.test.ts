// Signals: SIGINT (Ctrl-C) or SIGTERM mid-run finishes the step, writes a checkpoint, prints where
// it is and the command to resume, and exits 130 / 143; resuming ends with the losses of a run
// that was never stopped. A second SIGINT while the checkpoint is being written ends the process
// at once and leaves nothing that passes for a complete checkpoint.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';
import { listCheckpoints } from '../src/train/checkpoint.js';
import { verifyCheckpoint } from '../src/train/checkpoint_manifest.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-sig-'));
const small = ['--device', 'cpu', '--seq_len', '16', '--micro_batch_size', '2', '--global_batch_size', '2', '--schedule.warmup_steps', '2', '--checkpoint_every', '10'];

interface Ended { code: number | null; signal: NodeJS.Signals | null; out: string; err: string; sentAt: number[]; endedAt: number }

/** Runs the CLI; each time stdout first matches when[i].after, sends when[i].signal. */
function runSignalled(args: string[], when: { after: RegExp; signal: NodeJS.Signals }[], env: NodeJS.ProcessEnv = {}): Promise<Ended> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, MOETRAIN_DEBUG: '', ...env } });
    let out = '', err = '', next = 0;
    const sentAt: number[] = [];
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      while (next < when.length && when[next]!.after.test(out)) {
        child.kill(when[next]!.signal);
        sentAt.push(performance.now());
        next++;
      }
    });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('close', (code, signal) => resolve({ code, signal, out, err, sentAt, endedAt: performance.now() }));
  });
}

const losses = (runDir: string) => fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n')
  .map((l) => JSON.parse(l) as { step: number; crossEntropy: number; gradientNorm: number }).map((r) => [r.step, r.crossEntropy, r.gradientNorm]);

test('SIGINT mid-run: a checkpoint, one line with the resume command, exit 130; resuming ends as an unstopped run', async () => {
  const straight = tmp(), stopped = tmp();
  try {
    const args = (dir: string) => ['train', ...small, '--steps', '24', '--run_dir', dir];
    const full = spawnSync(process.execPath, [cli, ...args(straight)], { encoding: 'utf8' });
    assert.equal(full.status, 0, full.stderr);
    const r = await runSignalled(args(stopped), [{ after: /step 00000005\//, signal: 'SIGINT' }]);
    assert.equal(r.code, 130, r.err);
    assert.match(r.out, /moetrain: SIGINT received: stopping after the current step, with a checkpoint \(Ctrl-C again quits at once, without it\)/);
    const m = /moetrain: stopped by SIGINT after step (\d+); checkpoint (\S+); resume with: moetrain (.*)\n/.exec(r.out);
    assert.ok(m, r.out);
    const step = Number(m[1]);
    assert.ok(step >= 5 && step < 24, `stopped after step ${step}`);
    assert.equal(path.basename(m[2]!), `step-${String(step).padStart(8, '0')}`);
    assert.equal(verifyCheckpoint(m[2]!).state.step, step);
    assert.equal(m[3], args(stopped).join(' '));
    // The printed command, run again, continues from there.
    const resumed = spawnSync(process.execPath, [cli, ...m[3]!.split(' ')], { encoding: 'utf8' });
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.match(resumed.stdout, new RegExp(`resuming from \\S+step-${String(step).padStart(8, '0')} \\(step ${step}\\)`));
    assert.deepEqual(losses(stopped), losses(straight));
  } finally {
    fs.rmSync(straight, { recursive: true, force: true });
    fs.rmSync(stopped, { recursive: true, force: true });
  }
});

test('SIGTERM mid-run: a checkpoint and exit 143', async () => {
  const dir = tmp();
  try {
    const r = await runSignalled(['train', ...small, '--steps', '200', '--run_dir', dir], [{ after: /step 00000003\//, signal: 'SIGTERM' }]);
    assert.equal(r.code, 143, r.err);
    const step = Number(/stopped by SIGTERM after step (\d+); checkpoint/.exec(r.out)![1]);
    assert.equal(path.basename(listCheckpoints(path.join(dir, 'checkpoints'))[0]!), `step-${String(step).padStart(8, '0')}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a second SIGINT while the checkpoint is written ends the process at once, leaving no complete checkpoint', async () => {
  const dir = tmp();
  try {
    // The writer pauses 4 s halfway through its file, so the second signal lands mid-write.
    const r = await runSignalled(['train', ...small, '--steps', '200', '--checkpoint_every', '0', '--run_dir', dir], [
      { after: /step 00000003\//, signal: 'SIGINT' },
      { after: /SIGINT received/, signal: 'SIGINT' },
    ], { MOETRAIN_TEST_CHECKPOINT_HOOK: '*:rank-file-half:sleep4000' });
    assert.equal(r.signal, 'SIGINT', `ended with code ${r.code}: ${r.out}${r.err}`);
    assert.ok(r.endedAt - r.sentAt[1]! < 2000, `ended ${(r.endedAt - r.sentAt[1]!).toFixed(0)} ms after the second signal`);
    assert.doesNotMatch(r.out, /stopped by SIGINT/);
    const ckpts = path.join(dir, 'checkpoints');
    assert.deepEqual(listCheckpoints(ckpts), []);
    for (const f of fs.existsSync(ckpts) ? fs.readdirSync(ckpts) : []) assert.match(f, /^step-\d{8}\.tmp-\d+$/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
