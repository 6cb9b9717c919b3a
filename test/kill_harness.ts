// Kill harness: trains the tiny model on the CPU and kills it with SIGKILL at random points, then
// starts it again, over and over, and finally lets it finish. Points are drawn from three kinds:
//   startup  — at a random time before the first step (data preparation, resume, set-up);
//   timed    — at a random time within the next ~10 steps (a step, a metrics line, a checkpoint);
//   writer   — inside the checkpoint writer at one of its stages, through the test hook
//              MOETRAIN_TEST_CHECKPOINT_HOOK (half of the rank file, rank file, index, state,
//              manifest, rename, prune), taken in turn.
// After every kill, each checkpoint folder with a final name must verify (the write is atomic),
// and the next start must resume from the newest of them: the harness finds that one on its own,
// by listing the folders. At the end, every step's losses and the final checkpoint's tensors must
// equal those of a run that was never killed, bit for bit.
//
// Usage: node dist/test/kill_harness.js [points] [seed]      (default 20 points, seed 1)
// test/kill.test.ts runs a 5-point version.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { packageRoot } from '../src/package_root.js';
import { CheckpointReader } from '../src/train/checkpoint_format.js';
import { verifyCheckpoint } from '../src/train/checkpoint_manifest.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const STAGES = ['rank-file-half', 'rank-file', 'index', 'state', 'manifest', 'rename', 'prune'] as const;
const CHECKPOINT_EVERY = 3;

export interface KillReport {
  points: number;
  /** Kills by kind (writer kills by stage); a writer point whose stage did not come is a timed kill. */
  kills: Record<string, number>;
  /** Starts whose resume step was checked against the harness's own choice. */
  resumesChecked: number;
  /** Every way the run differed from the rules above (empty when it passed). */
  mismatches: string[];
  steps: number;
}

/** mulberry32: a small seeded generator for the kill points. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Attempt {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  /** The harness sent the SIGKILL (else the process killed itself through the hook, or ended). */
  killedByHarness: boolean;
  firstStepMs: number | null;
  endMs: number;
}

/**
 * Runs one training process. `killAt` is consulted on every stdout chunk and once at the start:
 * it returns a delay in ms after which to SIGKILL the process, or null.
 */
function attempt(args: readonly string[], env: NodeJS.ProcessEnv, killAt: (out: string, sinceStartMs: number) => number | null): Promise<Attempt> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, MOETRAIN_DEBUG: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', firstStepMs: number | null = null, armed = false, killedByHarness = false;
    const consider = (): void => {
      if (armed) return;
      const delay = killAt(out, performance.now() - t0);
      if (delay === null) return;
      armed = true;
      setTimeout(() => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        killedByHarness = true;
        child.kill('SIGKILL');
      }, delay);
    };
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (firstStepMs === null && out.includes('| INFO |')) firstStepMs = performance.now() - t0;
      consider();
    });
    child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('close', (code, signal) => resolve({ code, signal, out, killedByHarness, firstStepMs, endMs: performance.now() - t0 }));
    consider();
  });
}

const FINAL = /^step-(\d{8})$/;

/** The newest checkpoint with a final name, found by listing (independently of the trainer's resume code). */
function newestFinal(ckpts: string): number | null {
  if (!fs.existsSync(ckpts)) return null;
  const steps = fs.readdirSync(ckpts).map((n) => FINAL.exec(n)).filter((m) => m !== null).map((m) => Number(m[1]));
  return steps.length ? Math.max(...steps) : null;
}

interface StepRecord { step: number; crossEntropy: number; loadBalance: number; learningRate: number; gradientNorm: number }
function records(runDir: string): StepRecord[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => {
    const r = JSON.parse(l) as StepRecord;
    return { step: r.step, crossEntropy: r.crossEntropy, loadBalance: r.loadBalance, learningRate: r.learningRate, gradientNorm: r.gradientNorm };
  });
}

export async function killHarness(points: number, seed: number, log: (line: string) => void = () => {}): Promise<KillReport> {
  const steps = points <= 5 ? 24 : 3 * points;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-kill-'));
  const report: KillReport = { points, kills: {}, resumesChecked: 0, mismatches: [], steps };
  const count = (k: string): void => { report.kills[k] = (report.kills[k] ?? 0) + 1; };
  const mismatch = (m: string): void => { report.mismatches.push(m); log(`MISMATCH: ${m}`); };
  try {
    const args = (dir: string) => ['train', '--device', 'cpu', '--seq_len', '16', '--micro_batch_size', '2', '--global_batch_size', '2',
      '--schedule.warmup_steps', '2', '--steps', String(steps), '--checkpoint_every', String(CHECKPOINT_EVERY), '--keep_checkpoints', '2', '--run_dir', dir];
    const straightDir = path.join(root, 'straight'), killedDir = path.join(root, 'killed');
    const straight = await attempt(args(straightDir), {}, () => null);
    if (straight.code !== 0 || straight.firstStepMs === null) throw new Error(`the uninterrupted run failed:\n${straight.out}`);
    const startupMs = straight.firstStepMs;
    const stepMs = (straight.endMs - startupMs) / steps;
    log(`uninterrupted run: ${steps} steps, start-up ${startupMs.toFixed(0)} ms, ${stepMs.toFixed(1)} ms a step`);
    const random = rng(seed);
    // Writer points take the stages in turn from a random first one, so a few points cover them all.
    let writerPoints = Math.floor(random() * STAGES.length);
    const ckpts = path.join(killedDir, 'checkpoints');

    /** Checks one start's output: it resumed from `expected` (or started fresh when null) if it got that far. */
    const checkResume = (out: string, expected: number | null, what: string): void => {
      const m = /resuming from \S+step-(\d{8}) \(step (\d+)\)/.exec(out);
      const started = m !== null || out.includes('| INFO |');
      if (!started) return;
      report.resumesChecked++;
      const got = m ? Number(m[2]) : null;
      if (got !== expected) mismatch(`${what}: resumed from ${got ?? 'nothing'} but the newest complete checkpoint was ${expected ?? 'none'}`);
    };
    const checkFinals = (what: string): void => {
      if (!fs.existsSync(ckpts)) return;
      for (const n of fs.readdirSync(ckpts).filter((x) => FINAL.test(x))) {
        try { verifyCheckpoint(path.join(ckpts, n)); } catch (e) { mismatch(`after ${what}: ${n} has a final name but does not verify (${(e as Error).message})`); }
      }
    };

    for (let p = 1; p <= points; p++) {
      const expected = newestFinal(ckpts);
      const r = random();
      let kind: string, env: NodeJS.ProcessEnv = {}, killAt: (out: string, ms: number) => number | null;
      if (r < 0.1) {
        kind = 'startup';
        const at = random() * startupMs;
        killAt = () => at;
      } else if (r < 0.55) {
        const next = Math.min(steps, (Math.floor((expected ?? 0) / CHECKPOINT_EVERY) + 1) * CHECKPOINT_EVERY);
        const stage = STAGES[writerPoints++ % STAGES.length]!;
        kind = `writer:${stage}`;
        env = { MOETRAIN_TEST_CHECKPOINT_HOOK: `${next}:${stage}:kill` };
        // A stage that does not come (pruning with nothing to prune) falls back to a kill two steps later.
        const fallback = new RegExp(`step ${String(Math.min(steps, next + 2)).padStart(8, '0')}/`);
        killAt = (out) => (fallback.test(out) ? 0 : null);
      } else {
        kind = 'timed';
        const at = random() * 10 * stepMs;
        killAt = (out) => (out.includes('| INFO |') ? at : null);
      }
      const a = await attempt(args(killedDir), env, killAt);
      const actual = kind.startsWith('writer') && a.killedByHarness ? 'timed (writer stage did not come)' : kind;
      const last = /step (\d{8})\/\d{8}/g;
      let lastStep = 0;
      for (let m = last.exec(a.out); m; m = last.exec(a.out)) lastStep = Number(m[1]);
      log(`point ${p}: ${actual}; newest complete checkpoint before: ${expected ?? 'none'}; last step logged ${lastStep}; ended by ${a.signal ?? `exit ${a.code}`}`);
      checkResume(a.out, expected, `point ${p}`);
      checkFinals(`point ${p}`);
      if (a.signal !== 'SIGKILL') {
        if (a.code === 0) { log(`point ${p}: the run finished before the kill; no more points`); count('none (run finished)'); break; }
        mismatch(`point ${p}: the process ended by ${a.signal ?? `exit ${a.code}`} instead of SIGKILL:\n${a.out.slice(-2000)}`);
        break;
      }
      count(actual);
    }

    const expected = newestFinal(ckpts);
    const end = await attempt(args(killedDir), {}, () => null);
    if (end.code !== 0) mismatch(`the final start failed:\n${end.out.slice(-2000)}`);
    checkResume(end.out, expected, 'the final start');

    const want = records(straightDir), got = records(killedDir);
    if (got.length !== want.length) mismatch(`metrics.jsonl holds ${got.length} records, the uninterrupted run's ${want.length}`);
    want.forEach((w, i) => {
      const g = got[i];
      if (!g || JSON.stringify(g) !== JSON.stringify(w)) mismatch(`step ${w.step}: ${JSON.stringify(g)} vs uninterrupted ${JSON.stringify(w)}`);
    });
    const name = `step-${String(steps).padStart(8, '0')}`;
    const a = CheckpointReader.open(path.join(straightDir, 'checkpoints', name)), b = CheckpointReader.open(path.join(ckpts, name));
    try {
      for (const n of a.names()) {
        const size = a.shape(n)!.reduce((x, y) => x * y, 1);
        const shape = b.shape(n);
        if (!shape || shape.join() !== a.shape(n)!.join()) { mismatch(`final checkpoint: ${n} is missing or reshaped`); continue; }
        if (!Buffer.from(a.readRange(n, 0, size).buffer).equals(Buffer.from(b.readRange(n, 0, size).buffer))) mismatch(`final checkpoint: ${n} differs`);
      }
    } finally {
      a.close(); b.close();
    }
    const sa = JSON.parse(fs.readFileSync(path.join(straightDir, 'checkpoints', name, 'state.json'), 'utf8')) as { step: number; optimizer_step: number };
    const sb = JSON.parse(fs.readFileSync(path.join(ckpts, name, 'state.json'), 'utf8')) as { step: number; optimizer_step: number };
    if (sa.step !== sb.step || sa.optimizer_step !== sb.optimizer_step) mismatch(`final state: step ${sb.step}/${sb.optimizer_step} vs ${sa.step}/${sa.optimizer_step}`);
    return report;
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

// As a script (node --test also runs this file, without arguments: then it does nothing).
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] !== undefined) {
  const points = Number(process.argv[2]);
  const seed = Number(process.argv[3] ?? '1');
  const r = await killHarness(points, seed, (l) => console.log(l));
  console.log(`kill harness: ${r.points} points tried over a ${r.steps}-step run; kills ${JSON.stringify(r.kills)}; ${r.resumesChecked} resumes checked; ${r.mismatches.length} mismatches`);
  process.exitCode = r.mismatches.length === 0 ? 0 : 1;
}
