// The default tiny run on the GPU against the same run on the CPU backend (the oracle), and
// device memory that does not grow from step to step. Skipped without CUDA.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const skip = cudaAvailable() ? false : 'skipped: no CUDA';

interface Row { step: number; crossEntropy: number; gradientNorm: number; liveMemoryBytes: number }

function trainRun(device: string, steps: number): Row[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `moetrain-${device}-`));
  const r = spawnSync(process.execPath, [cli, 'train', '--device', device, '--steps', String(steps), '--run_dir', dir, '--checkpoint_every', '0'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  process.stdout.write(r.stdout.split('\n').filter((l) => l.includes('| INFO |')).map((l) => `# ${device}: ${l}\n`).join(''));
  const rows = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Row);
  fs.rmSync(dir, { recursive: true, force: true });
  return rows;
}

test('tiny model: GPU losses follow the CPU backend for 20 steps', { skip }, () => {
  const steps = 20;
  const gpu = trainRun('cuda', steps), cpu = trainRun('cpu', steps);
  let worst = 0;
  for (let i = 0; i < steps; i++) {
    const rel = Math.abs(gpu[i]!.crossEntropy - cpu[i]!.crossEntropy) / cpu[i]!.crossEntropy;
    worst = Math.max(worst, rel);
  }
  console.log(`# worst relative cross-entropy difference over ${steps} steps: ${worst.toExponential(2)}`);
  // Both runs compute in bf16 with f32 accumulation, but in different orders (cuBLAS tiles,
  // atomics, __expf), so each step's bf16 roundings differ by ~2^-8 relative and feed into the
  // next step's weights. 2% over 20 steps allows that drift and still catches any wrong kernel,
  // which moves the loss by far more within a few steps.
  assert.ok(worst < 0.02, `GPU and CPU losses differ by ${worst} (relative)`);
  // Memory: live device bytes after step 5 equal those after step 15 and 20.
  assert.equal(gpu[14]!.liveMemoryBytes, gpu[4]!.liveMemoryBytes);
  assert.equal(gpu[19]!.liveMemoryBytes, gpu[4]!.liveMemoryBytes);
});
