// Runs a TrainLayout under `moetrain launch` (each rank: test/helpers/parallel_train_rank.ts) and
// assembles every full tensor from the ranks' ranges, checking that each element is held by
// exactly one rank and that every rank reports rank 0's losses and norms.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../../src/package_root.js';
import type { StepMetrics } from '../../src/train/log_line.js';
import { compareParams } from './compare_params.js';
import { layoutWorld, type RankOutput, type TrainLayout } from './parallel_train_rank.js';

const root = packageRoot();
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');
const rankScript = path.join(root, 'dist', 'test', 'helpers', 'parallel_train_rank.js');

export interface LayoutResult { metrics: StepMetrics[]; params: Map<string, Float32Array> }

/** `dir`: an empty folder for the ranks' files (the caller removes it). */
export function launchedLayout(layout: TrainLayout, dir: string): LayoutResult {
  const world = layoutWorld(layout);
  const r = spawnSync(process.execPath, [cli, 'launch', '--nproc-per-node', String(world), '--', rankScript, dir, JSON.stringify(layout)], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(r.status, 0, r.stderr);
  const full = new Map<string, { values: Float32Array; held: Uint8Array }>();
  let metrics: StepMetrics[] | null = null;
  for (let rank = 0; rank < world; rank++) {
    const name = path.join(dir, `rank-${String(rank).padStart(5, '0')}`);
    const index = JSON.parse(fs.readFileSync(`${name}.json`, 'utf8')) as RankOutput;
    const bytes = fs.readFileSync(`${name}.f32`);
    const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    if (rank === 0) metrics = index.metrics;
    else assert.deepEqual(index.metrics.map((m) => [m.crossEntropy, m.gradientNorm]), metrics!.map((m) => [m.crossEntropy, m.gradientNorm]), `rank ${rank} reports rank 0's numbers`);
    for (const e of index.entries) {
      const n = e.shape.reduce((a, b) => a * b, 1);
      let t = full.get(e.name);
      if (!t) { t = { values: new Float32Array(n), held: new Uint8Array(n) }; full.set(e.name, t); }
      t.values.set(data.subarray(e.at, e.at + e.end - e.start), e.start);
      for (let i = e.start; i < e.end; i++) t.held[i]!++;
    }
  }
  for (const [name, t] of full) assert.ok(t.held.every((h) => h === 1), `${name}: every element held by exactly one rank`);
  return { metrics: metrics!, params: new Map([...full].map(([k, v]) => [k, v.values])) };
}

/**
 * Checks test/parallel_train.test.ts's tolerances (losses and norms within 1e-5 relative; each
 * tensor's ‖Δ‖/‖w‖ < relL2Max, default 1e-5, and every element within 1e-2·lr); reports the
 * differences seen.
 */
export function assertEquivalent(want: LayoutResult, got: LayoutResult, lr: number, report: (line: string) => void, relL2Max = 1e-5): void {
  assert.equal(got.metrics.length, want.metrics.length);
  let worstMetric = 0;
  want.metrics.forEach((a, s) => {
    const b = got.metrics[s]!;
    for (const k of ['crossEntropy', 'loadBalance', 'gradientNorm', 'learningRate'] as const) {
      const rel = Math.abs(a[k] - b[k]) / Math.abs(a[k]);
      worstMetric = Math.max(worstMetric, rel);
      assert.ok(rel <= 1e-5, `step ${s + 1} ${k}: ${b[k]}, single process ${a[k]}`);
    }
  });
  assert.deepEqual([...got.params.keys()].sort(), [...want.params.keys()].sort(), 'the same tensors');
  const d = compareParams(want.params, got.params);
  report(`losses and norms within ${worstMetric.toExponential(1)} relative; parameters: ‖Δ‖/‖w‖ ≤ ${d.relL2.toExponential(1)} (${d.worst}), largest element difference ${(d.maxAbs / lr).toExponential(1)}·lr`);
  assert.ok(d.relL2 < relL2Max, `parameters: relative L2 difference ${d.relL2} in ${d.worst}`);
  assert.ok(d.maxAbs < 1e-2 * lr, `parameters: largest element difference ${d.maxAbs} (lr ${lr})`);
}

/** Runs the moetrain command line (a launch or a plain command) from the package root. */
export function runCli(args: string[], timeoutMs = 300_000): { code: number | null; out: string; err: string } {
  const root = packageRoot();
  const r = spawnSync(process.execPath, [path.join(root, 'dist', 'src', 'cli', 'main.js'), ...args], { cwd: root, encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, MOETRAIN_DEBUG: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A run folder's metrics.jsonl records. */
export function jsonl(dir: string): StepMetrics[] {
  return fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as StepMetrics);
}

/**
 * Copies the run folder `saved` (holding a checkpoint at step 2) to `dir`, runs `train` from it
 * to step 3 (under `launch`, e.g. ['launch', '--nproc-per-node', '2', '--'], or [] for one
 * process) and returns step 3's record.
 */
export function resumeToStep3(saved: string, dir: string, launch: string[], trainArgs: string[]): StepMetrics {
  fs.cpSync(saved, dir, { recursive: true });
  const r = runCli([...launch, 'train', ...trainArgs, '--steps', '3', '--run_dir', dir]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /resuming from .*step-00000002 \(step 2\)/);
  const m = jsonl(dir);
  assert.equal(m.at(-1)!.step, 3);
  return m.at(-1)!;
}

