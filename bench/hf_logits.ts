// moetrain's logits for an HF-layout checkpoint, for the parity check against transformers
// (bench/hf_parity.py): loads <dir>/config.json and its safetensors into DeepseekV2 on the CPU
// backend in f32, runs fixed token ids, and writes { ids, logits } as JSON.
//
//   node dist/bench/hf_logits.js <hf-dir> <out.json> [--seq 16] [--batch 2]
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { loadDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { loadWeightsInto } from '../src/train/hf_checkpoint.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { noGrad } from '../src/autograd/tape.js';
import { tidy } from '../src/tensor/scope.js';
import { Rng } from '../src/nn/rng.js';

export function hfLogits(dir: string, B: number, S: number): { ids: number[][]; logits: number[] } {
  const config = loadDeepseekV2Config(path.join(dir, 'config.json'));
  const be = new CpuBackend();
  const model = new DeepseekV2(config, be, 'f32');
  loadWeightsInto(model, dir);
  const rng = new Rng(99);
  const ids = Array.from({ length: B }, () => Array.from({ length: S }, () => rng.below(config.vocab_size)));
  const logits = noGrad(() => tidy(() => Array.from(toHostF32(model.logits(fromHost(be, ids.flat(), [B, S], 'i32'))))));
  model.dispose();
  return { ids, logits };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [dir, out] = process.argv.slice(2);
  if (!dir || !out) throw new Error('usage: node dist/bench/hf_logits.js <hf-dir> <out.json>');
  fs.writeFileSync(out, JSON.stringify(hfLogits(dir, 2, 16)));
}
