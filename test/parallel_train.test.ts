// Sharded training on CPU processes started by `moetrain launch` gives the single process's
// numbers: after 3 optimizer steps of the tiny model (f32), the losses and gradient norms of
// every step and the final parameters, assembled from the ranks' shards (each element held by
// exactly one rank), under dp2, dp4, ep2 and dp2·ep2. The global-batch load-balance loss sums
// its expert counts over the replicas (dp2 and ep2). Then the command
// line: `moetrain launch … -- train` prints the single process's step lines from rank 0 alone,
// with the mesh and per-rank bytes, and a launched world of one (the sharded path with one
// shard, the path the GPU acceptance measures through NCCL) matches the plain run.
//
// Tolerances. Sharding changes only the order of f32 additions: gradients of micro-batches
// summed on different ranks and then across ranks (and the norm's Σg² summed per shard and then
// across ranks), against one running sum. Each sum has a relative rounding error of a few 1e-7,
// which reaches the losses of later steps through the updates: losses and norms agree within
// 1e-5 relative (seen: a few 1e-7). Parameters: Adam divides each gradient by its running RMS,
// so an element whose gradient sits near the rounding noise may move by a visible part of the
// learning rate: each tensor's ‖Δ‖/‖w‖ stays below 1e-5 and every element within 1e-2·lr (each
// test reports what it saw: ~1e-6 and ~1e-3·lr).
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { StepMetrics } from '../src/train/log_line.js';
import { layoutConfig, trainLayout, type TrainLayout } from './helpers/parallel_train_rank.js';
import { assertEquivalent, launchedLayout, type LayoutResult, jsonl, resumeToStep3, runCli } from './helpers/launched_layout.js';


const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
const tmp = (): string => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-fsdp-'));
  made.push(d);
  return d;
};

type Result = LayoutResult;

/** Runs the layout under the launcher and assembles every full tensor from the ranks' ranges. */
const launched = (layout: TrainLayout): Result => launchedLayout(layout, tmp());

const singles = new Map<string, Promise<Result>>();
/** The same training in this process, without a launcher (whole parameters); cached per batch shape. */
function single(layout: TrainLayout): Promise<Result> {
  const key = JSON.stringify({ ...layout, dp: 1, ep: 1 });
  let r = singles.get(key);
  if (!r) {
    r = trainLayout({ ...layout, dp: 1, ep: 1 }).then((x) => ({ metrics: x.metrics, params: new Map(x.entries.map((e) => [e.name, e.values])) }));
    singles.set(key, r);
  }
  return r;
}

const f32 = (over: Partial<TrainLayout>): TrainLayout => ({ dp: 1, ep: 1, precision: 'f32', form: 'sequence', microBatch: 2, globalBatch: 8, steps: 3, ...over });

describe('sharded training equals the single process (3 steps, tiny model, f32)', () => {
  const cases: [string, TrainLayout][] = [
    ['dp2, sequence load balance, 2 micro-batches per replica', f32({ dp: 2 })],
    ['dp4, micro-batch load balance, 2 micro-batches per replica', f32({ dp: 4, form: 'micro-batch', microBatch: 1 })],
    ['ep2, sequence load balance', f32({ ep: 2 })],
    ['dp2·ep2, micro-batch load balance, 2 micro-batches per replica', f32({ dp: 2, ep: 2, form: 'micro-batch', microBatch: 1 })],
  ];
  for (const [name, layout] of cases) {
    test(name, async (t) => {
      assertEquivalent(await single(layout), launched(layout), layoutConfig(layout).optimizer.lr, (l) => t.diagnostic(l));
    });
  }

  // One micro-batch per replica: the replicas' summed counts are the counts of the global batch,
  // which a single process sees in one micro-batch of all 8 sequences.
  for (const [name, mesh] of [['dp2', { dp: 2 }], ['ep2', { ep: 2 }]] as const) {
    test(`global-batch load balance: counts summed over ${name} replicas equal one micro-batch of the whole batch`, async (t) => {
      const layout = f32({ ...mesh, form: 'global-batch', microBatch: 4 });
      assertEquivalent(await single({ ...layout, microBatch: 8 }), launched(layout), layoutConfig(layout).optimizer.lr, (l) => t.diagnostic(l));
    });
  }
});


describe('moetrain launch -- train', () => {
  const common = ['--device', 'cpu', '--precision', 'f32', '--steps', '3', '--seq_len', '32', '--micro_batch_size', '2', '--global_batch_size', '8', '--schedule.warmup_steps', '1'];
  let plain: { dir: string; out: string } | null = null;
  const plainRun = () => {
    if (!plain) {
      const dir = tmp();
      const r = runCli(['train', ...common, '--run_dir', dir]);
      assert.equal(r.code, 0, r.err);
      plain = { dir, out: r.out };
    }
    return plain;
  };
  const sameSteps = (want: StepMetrics[], got: StepMetrics[]) => {
    assert.equal(got.length, want.length);
    want.forEach((a, s) => {
      for (const k of ['crossEntropy', 'loadBalance', 'gradientNorm'] as const) {
        assert.ok(Math.abs(a[k] - got[s]![k]) <= 1e-5 * Math.abs(a[k]), `step ${s + 1} ${k}: ${got[s]![k]} vs ${a[k]}`);
      }
    });
  };

  test('dp2 on the demo data: rank 0 alone prints the single process\'s step lines, the mesh and per-rank bytes', () => {
    const want = plainRun();
    const dir = tmp();
    const r = runCli(['launch', '--nproc-per-node', '2', '--', 'train', ...common, '--parallel.dp', '2', '--run_dir', dir]);
    assert.equal(r.code, 0, r.err);
    assert.doesNotMatch(r.out, /\[rank 1\]/, 'rank 1 prints nothing');
    assert.doesNotMatch(r.err, /\[rank 1\]/, 'rank 1 reports no error');
    assert.equal(r.out.split('\n').filter((l) => l.includes('| INFO | step ')).length, 3);
    assert.match(r.out, /^moetrain: mesh pp1·dp2·cp1·ep1 \(2 ranks; 2 replicas read different sequences\): dense parameters sharded over 2 ranks, routed experts over 2$/m);
    assert.match(r.out, /^moetrain: per rank 0\.\d\dM parameters held: persistent \d+\.\d\d MB \(weights .*\) = 16\.00 bytes per held element \(f32 compute; \d+\.\d% padding\)/m);
    sameSteps(jsonl(want.dir), jsonl(dir));
    // What stays between steps (weights, gradients, moments) is halved on each of 2 ranks.
    const kept = (d: string) => jsonl(d).at(-1)!.liveMemoryBytes;
    assert.ok(kept(dir) < 0.55 * kept(want.dir), `rank 0 keeps ${kept(dir)} bytes between steps, the single process ${kept(want.dir)}`);
  });

  test('a launched world of one takes the sharded path and matches the plain run', () => {
    const want = plainRun();
    const dir = tmp();
    const r = runCli(['launch', '--nproc-per-node', '1', '--', 'train', ...common, '--run_dir', dir]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^moetrain: mesh pp1·dp1·cp1·ep1 \(1 ranks;/m);
    sameSteps(jsonl(want.dir), jsonl(dir));
  });

  test('a global batch the replicas cannot split evenly is one line with the numbers', () => {
    const r = runCli(['launch', '--nproc-per-node', '2', '--', 'train', ...common, '--global_batch_size', '6', '--parallel.dp', '2', '--run_dir', tmp()]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /moetrain: error: micro-batches % \(dp·ep\) = \(6\/2\) % \(2·1\) = 3 % 2 = 1 ≠ 0; .*make global_batch_size \/ micro_batch_size a multiple of 2/);
  });

  test('a checkpoint saved under dp2·ep2 resumes under one process and under ep2 with the same next-step loss', () => {
    // 2 steps under dp2·ep2 (4 ranks) write a sharded checkpoint at step 2; step 3 then runs
    // from it under three layouts. Only the order of f32 additions differs between them.
    const saved = tmp();
    const first = runCli(['launch', '--nproc-per-node', '4', '--', 'train', ...common, '--steps', '2', '--parallel.dp', '2', '--parallel.ep', '2', '--run_dir', saved]);
    assert.equal(first.code, 0, first.err);
    assert.ok(fs.existsSync(path.join(saved, 'checkpoints', 'step-00000002', 'manifest.json')), 'a complete sharded checkpoint at step 2');
    const resume = (launch: string[], mesh: string[]) => resumeToStep3(saved, tmp(), launch, [...common, ...mesh]);
    const alone = resume([], []);
    const ep2 = resume(['launch', '--nproc-per-node', '2', '--'], ['--parallel.ep', '2']);
    const dp2ep2 = resume(['launch', '--nproc-per-node', '4', '--'], ['--parallel.dp', '2', '--parallel.ep', '2']);
    for (const [name, got] of [['ep2', ep2], ['dp2·ep2', dp2ep2]] as const) {
      for (const k of ['crossEntropy', 'gradientNorm'] as const) {
        assert.ok(Math.abs(got[k] - alone[k]) <= 1e-5 * Math.abs(alone[k]), `${name} step 3 ${k}: ${got[k]} vs one process ${alone[k]}`);
      }
    }
  });
});
