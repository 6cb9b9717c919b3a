// The learning-rate schedule on resume: the run follows the settings it is given now, and a
// change from the checkpoint's settings (steps, peak rate, schedule fields) is said in one line
// with the next step's rate under both; no change, no line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { learningRate } from '../src/optim/schedule.js';
import { packageRoot } from '../src/package_root.js';
import { formatExp } from '../src/train/log_line.js';
import { savedSchedule, scheduleChangeLine } from '../src/train/schedule_on_resume.js';

const cosine = { type: 'cosine' as const, warmup_steps: 10, min_lr_ratio: 0.1, decay_fraction: 0.2 };

test('scheduleChangeLine names each change and the next step\'s rate under the old and the new settings', () => {
  const saved = { steps: 100, lr: 4e-3, schedule: cosine };
  assert.equal(scheduleChangeLine(saved, { ...saved, schedule: { ...cosine } }, 50), null);
  assert.equal(scheduleChangeLine(null, saved, 50), null);
  const line = scheduleChangeLine(saved, { steps: 200, lr: 4e-3, schedule: { ...cosine, type: 'wsd' } }, 50)!;
  const now = learningRate({ ...cosine, type: 'wsd' }, 4e-3, 50, 200), before = learningRate(cosine, 4e-3, 50, 100);
  assert.notEqual(now, before);
  assert.equal(line, `moetrain: the learning-rate schedule differs from the checkpoint's (steps 100 → 200, schedule.type cosine → wsd); the new settings apply: step 51 runs at ${formatExp(now, 6)} (the checkpoint's settings give ${formatExp(before, 6)})`);
  // A checkpoint from before schedule records: its training config has the same fields.
  assert.deepEqual(savedSchedule({ config: { steps: 100, optimizer: { lr: 4e-3 }, schedule: cosine } }), saved);
  assert.equal(savedSchedule({ config: {} }), null);
});

test('raising --steps on resume prints the line, and the next step runs at the rate it names', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-sched-'));
  try {
    const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
    const run = (steps: string) => spawnSync(process.execPath, [cli, 'train', '--device', 'cpu', '--seq_len', '16', '--micro_batch_size', '2', '--global_batch_size', '2',
      '--schedule.warmup_steps', '1', '--checkpoint_every', '2', '--steps', steps, '--run_dir', dir], { encoding: 'utf8' });
    assert.equal(run('4').status, 0);
    const same = run('4');
    assert.doesNotMatch(same.stdout, /schedule differs/, 'nothing to train, nothing changed');
    const longer = run('8');
    assert.equal(longer.status, 0, longer.stderr);
    const m = /the learning-rate schedule differs from the checkpoint's \(steps 4 → 8\); the new settings apply: step 5 runs at (\S+) \(the checkpoint's settings give (\S+)\)/.exec(longer.stdout);
    assert.ok(m, longer.stdout);
    assert.notEqual(m[1], m[2]);
    assert.match(longer.stdout, new RegExp(`step 00000005/00000008 .*\\| learning-rate ${m[1]!.replace('.', '\\.')} \\|`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
