// Expert parallelism in real processes started by `moetrain launch` (CPU communicator): the
// all-to-all op moving f32 and bf16 rows exactly both ways; the dispatcher (f32 and bf16) and one
// MoE decoder layer (f32) against the single-process computation of the same tokens, which every
// rank computes itself, and the whole model's losses and gradients likewise
// (test/helpers/parallel_ep_rank.ts says what is compared: outputs, input and router-weight
// gradients, every owned expert's gradients, rows sent per unique (token, rank) pair, a rank that
// receives nothing, a rank with no tokens). Then 3 optimizer steps of the
// trainer under ep2 and dp2·ep2 against a single process, once the distributed trainer is built
// (see trainerIsDistributed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const rankScript = path.join(packageRoot(), 'dist', 'test', 'helpers', 'parallel_ep_rank.js');

function run(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 240_000, env: { ...process.env, MOETRAIN_DEBUG: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function launchRanks(nproc: number, args: string[]): void {
  const r = run(['launch', '--nproc-per-node', String(nproc), '--', rankScript, ...args]);
  assert.equal(r.code, 0, r.err);
  for (let rank = 0; rank < nproc; rank++) {
    const prefix = rank === 0 ? '' : `\\[rank ${rank}\\] `;
    assert.match(r.out, new RegExp(`^${prefix}rank ${rank} ok \\d+ checks, max rel err \\S+ \\(bf16 \\S+\\)$`, 'm'));
  }
}

test('ep2: the all-to-all op, the dispatcher, one MoE layer and the whole model equal the single-process computation', () => {
  launchRanks(2, ['a2a,dispatch,layer,model', '1']);
});

test('dp2·ep2: the same over the two ep sub-groups', () => {
  launchRanks(4, ['a2a,dispatch,layer,model', '2']);
});

test('ep4: the all-to-all, the dispatcher and the whole model with two experts per rank (a token\'s 3 experts on up to 3 ranks)', () => {
  launchRanks(4, ['a2a,dispatch,model', '1']);
});

/**
 * Whether `moetrain train` runs a mesh (the FSDP trainer of the parallel work, src/parallel/fsdp.ts,
 * wires ExpertDispatch into the model). Until it is built, the equivalence test below is skipped.
 */
function trainerIsDistributed(): boolean {
  return fs.existsSync(path.join(packageRoot(), 'dist', 'src', 'parallel', 'fsdp.js'));
}

interface Step { crossEntropy: number; loadBalance: number; gradientNorm: number }

function metrics(runDir: string): Step[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Step);
}

test('3 optimizer steps under ep2 and dp2·ep2 give the single-process losses and gradient norms', { skip: !trainerIsDistributed() && 'the distributed trainer (src/parallel/fsdp.ts) is not built yet' }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-ep-train-'));
  try {
    const common = ['train', '--device', 'cpu', '--precision', 'f32', '--steps', '3', '--seq_len', '32', '--micro_batch_size', '2',
      '--global_batch_size', '8', '--schedule.warmup_steps', '1', '--checkpoint_every', '0'];
    const single = run([...common, '--run_dir', path.join(dir, 'single')]);
    assert.equal(single.code, 0, single.err);
    const want = metrics(path.join(dir, 'single'));
    assert.equal(want.length, 3);
    for (const [name, nproc, dp] of [['ep2', 2, 1], ['dp2·ep2', 4, 2]] as const) {
      const runDir = path.join(dir, `dp${dp}ep2`);
      const r = run(['launch', '--nproc-per-node', String(nproc), '--', ...common, '--parallel.dp', String(dp), '--parallel.ep', '2', '--run_dir', runDir]);
      assert.equal(r.code, 0, `${name}: ${r.err}`);
      assert.match(r.out, /ep2/, `${name}: the start-up lines name the mesh`);
      const got = metrics(runDir);
      assert.equal(got.length, 3, name);
      // f32 with the same data and initial values: only the order of additions differs (expert
      // outputs combined per rank, gradients reduce-scattered), ~1e-7 relative per step; 3 Adam
      // steps amplify it where gradients are near zero, hence 2e-5.
      got.forEach((s, i) => {
        for (const key of ['crossEntropy', 'loadBalance', 'gradientNorm'] as const) {
          const a = s[key], b = want[i]![key];
          assert.ok(Math.abs(a - b) <= 2e-5 * Math.max(Math.abs(b), 1e-3), `${name} step ${i + 1} ${key}: ${a} vs single-process ${b}`);
        }
      });
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
