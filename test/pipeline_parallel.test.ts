// The pipeline executor (src/parallel/pipeline.ts) in 2 CPU processes started by `moetrain
// launch`: the tiny model with 4 layers, pp2 with 1F1B (2 stages) and DualPipeV (4 virtual
// stages in a V), each rank running test/helpers/pipeline_rank.ts.
//   - One optimizer step with 4 micro-batches, in f32 and in bf16 compute (the activations and
//     their gradients travel in the compute dtype): the cross-entropy sum on the head's rank equals
//     the single-process sum bit for bit, the load-balance sum over both ranks within 1e-6
//     (f32 sums of other association), and every parameter gradient of each rank's parts equals
//     the single-process gradient of the parameter of the same HF name (|Δ|/max|g| ≤ 1e-6; the
//     passes run the same arithmetic in the same order, so it is 0 in practice).
//   - Idle time with 8 micro-batches: the measured idle fraction of a step is at least the
//     simulator's replay of the same passes (less idle than that is impossible) and, in the
//     closer of two steps, at most 0.2 above it (the communicator's per-message latency and, on
//     a loaded machine, the wake-ups of blocked ranks).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const rankScript = path.join(packageRoot(), 'dist', 'test', 'helpers', 'pipeline_rank.js');

function launch(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [cli, 'launch', '--nproc-per-node', '2', '--', rankScript, ...args], {
    encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env },
  });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

test('pp2, 1F1B and DualPipeV, 4 micro-batches, f32 and bf16: losses and every gradient equal the single-process step', () => {
  const out = launch(['equal', '1f1b,dualpipev', '4', 'global-batch', 'f32,bf16']);
  for (const dtype of ['f32', 'bf16']) {
    for (const kind of ['1f1b', 'dualpipev']) {
      for (const rank of [0, 1]) assert.match(out, new RegExp(`rank ${rank} ok ${kind} ${dtype} m4 global-batch: \\d+ gradients`), out);
      // Exactly one rank holds the head: the last stage (rank 1) in 1F1B, the V's end (rank 0) in DualPipeV.
      const head = kind === '1f1b' ? 1 : 0;
      assert.match(out, new RegExp(`rank ${head} ok ${kind} ${dtype} .*cross-entropy sum (\\S+) = single \\1`), out);
      assert.doesNotMatch(out, new RegExp(`rank ${1 - head} ok ${kind} ${dtype} .*cross-entropy`), out);
    }
  }
  console.log(out.trim());
});

test('pp2, 8 micro-batches: measured idle time against the simulator replaying the same passes', () => {
  const out = launch(['idle', '1f1b,dualpipev', '8']);
  for (const kind of ['1f1b', 'dualpipev']) {
    const m = new RegExp(`rank 0 idle ${kind} m8: measured (\\S+) simulated (\\S+) closest round (\\S+) `).exec(out);
    assert.ok(m, out);
    // Other processes on the machine only add idle time: the round closest to the replay is the check.
    const gap = Number(m[3]);
    assert.ok(gap >= -0.03, `${kind}: measured idle ${gap} below the replay's`);
    assert.ok(gap <= 0.2, `${kind}: measured idle ${gap} above the replay's`);
  }
  console.log(out.trim());
});
