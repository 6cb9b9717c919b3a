// A small model with DeepSeek-V2's MLA head widths (128/64/128 bf16), so the GPU run goes
// through the tensor-core attention kernels (the Hopper forward on sm_90a) rather than the
// generic ones the tiny demo uses: 20 steps on CUDA against the CPU backend. Sequence 384 gives
// more key tiles than the Hopper kernel's shared-memory ring has stages. Skipped without CUDA.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../src/backend/cuda/module.js';
import { cudaAvailable } from '../src/backend/cuda/library.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const skip = cudaAvailable() ? false : 'skipped: no CUDA';

function losses(device: string, config: string): number[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `moetrain-mla-${device}-`));
  const r = spawnSync(process.execPath, [cli, 'train', '--device', device, '--model', config, '--steps', '12', '--seq_len', '384',
    '--micro_batch_size', '2', '--global_batch_size', '2', '--schedule.warmup_steps', '4', '--checkpoint_every', '0', '--run_dir', dir], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { crossEntropy: number }).crossEntropy);
  fs.rmSync(dir, { recursive: true, force: true });
  return out;
}

test('MLA-width model: GPU (tensor-core attention) losses follow the CPU backend for 12 steps', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-mla-cfg-'));
  const config = path.join(dir, 'config.json');
  fs.writeFileSync(config, JSON.stringify({
    ...TINY_CONFIG_JSON, hidden_size: 256, num_attention_heads: 2, num_key_value_heads: 2,
    qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, kv_lora_rank: 64,
  }));
  const gpu = losses('cuda', config), cpu = losses('cpu', config);
  let worst = 0;
  gpu.forEach((g, i) => { worst = Math.max(worst, Math.abs(g - cpu[i]!) / cpu[i]!); });
  console.log(`# worst relative cross-entropy difference over 12 steps: ${worst.toExponential(2)}`);
  // Same reasoning as the tiny run (test/cuda_train.test.ts): bf16 roundings in different orders.
  assert.ok(worst < 0.02, `GPU and CPU losses differ by ${worst} (relative)`);
  fs.rmSync(dir, { recursive: true, force: true });
});
