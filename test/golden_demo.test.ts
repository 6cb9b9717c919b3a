// The golden loss curve: the 100-step CPU demo (`moetrain train --device cpu`, built-in tiny
// model, demo corpus, default config) must print, step by step, the same cross-entropy,
// load-balance loss, learning rate and gradient norm as test/fixtures/golden_demo_100.json,
// to the last printed digit. A refactor that changes any arithmetic (an op order, a seed, a
// parameter's place in the initialisation order) changes some digit of this curve.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';

const FIELDS = ['cross-entropy-loss', 'load-balance-loss', 'learning-rate', 'gradient-norm'] as const;
type StepFields = { step: number } & Record<(typeof FIELDS)[number], string>;

/** The step number and the four numeric fields of each step log line, as printed. */
function parseStepLines(out: string): StepFields[] {
  return out.split('\n').filter((l) => l.includes('| INFO | step ')).map((l) => {
    const step = Number(/\| step (\d{8})\//.exec(l)![1]);
    const fields = Object.fromEntries(FIELDS.map((f) => [f, new RegExp(`\\| ${f} (\\S+) `).exec(l)![1]!]));
    return { step, ...fields } as StepFields;
  });
}

test('the 100-step CPU demo prints the golden loss curve digit for digit', () => {
  const golden = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'test', 'fixtures', 'golden_demo_100.json'), 'utf8')) as { steps: StepFields[] };
  assert.equal(golden.steps.length, 100);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-golden-'));
  try {
    const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
    const r = spawnSync(process.execPath, [cli, 'train', '--device', 'cpu', '--run_dir', dir], {
      cwd: packageRoot(), encoding: 'utf8', env: { ...process.env, MOETRAIN_DEBUG: '' },
    });
    assert.equal(r.status, 0, r.stderr);
    const got = parseStepLines(r.stdout);
    assert.equal(got.length, golden.steps.length, `expected ${golden.steps.length} step lines, got ${got.length}`);
    golden.steps.forEach((want, i) => assert.deepEqual(got[i], want, `step ${want.step} differs from the golden curve`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
