// `moetrain convert`: HF checkpoint ⇄ moetrain weights (see train/hf_checkpoint.ts).
import fs from 'node:fs';
import type { CommandSpec } from './args.js';
import { configBeside, exportHf, importHf } from '../train/hf_checkpoint.js';
import { loadDeepseekV2Config } from '../models/deepseek_v2_config.js';

export const CONVERT_COMMAND: CommandSpec = {
  name: 'convert',
  summary: 'Convert weights: --format moetrain imports a Hugging Face DeepseekV2 folder as f32 moetrain weights (for --init_from); --format hf exports a moetrain checkpoint as an HF folder.',
  positionals: [],
  options: [
    { name: 'from', value: 'DIR', required: true, help: 'an HF folder (--format moetrain), or a moetrain checkpoint or weights folder (--format hf)' },
    { name: 'to', value: 'DIR', required: true, help: 'output folder (replaced when it exists)' },
    { name: 'format', value: 'hf|moetrain', required: true, help: 'the format to write' },
    { name: 'config', value: 'FILE', help: 'the model config.json (default: config.json in --from; for --format hf also the run folder two levels up)' },
    { name: 'dtype', value: 'bf16|f32', default: 'bf16', help: '--format hf: dtype of the exported weights' },
    { name: 'max_shard_gb', value: 'N', default: '5', help: '--format hf: most GB (1e9 bytes) of weights per safetensors shard' },
  ],
  notes: [
    'transformers\' DeepseekV2 ignores norm_topk_prob (it always scales by routed_scaling_factor): an export of a',
    'model with norm_topk_prob true computes other routing weights there, and convert says so.',
  ],
};

export async function convertCommand(flags: Record<string, string>): Promise<void> {
  const from = flags['from'], to = flags['to'], format = flags['format'];
  if (!from || !to || (format !== 'hf' && format !== 'moetrain')) {
    throw new Error('convert needs --from DIR --to DIR --format hf|moetrain (hf: export to Hugging Face layout; moetrain: import from it)');
  }
  if (!fs.existsSync(from)) throw new Error(`--from ${from} does not exist; pass the folder to convert`);
  if (format === 'moetrain') {
    importHf(from, to, flags['config']);
    console.log(`moetrain: imported ${from} → ${to} (f32 weights; train with --init_from ${to} --model ${to}/config.json)`);
    return;
  }
  const dtype = flags['dtype'] ?? 'bf16';
  if (dtype !== 'bf16' && dtype !== 'f32') throw new Error(`--dtype must be bf16 or f32, got ${dtype}`);
  const gb = Number(flags['max_shard_gb'] ?? '5');
  if (!(gb > 0)) throw new Error(`--max_shard_gb must be a positive number, got ${flags['max_shard_gb']}`);
  const configPath = flags['config'] ?? configBeside(from);
  if (loadDeepseekV2Config(configPath).norm_topk_prob) {
    console.warn(`moetrain: warning: ${configPath} has norm_topk_prob true; transformers' DeepseekV2 ignores it and scales the top-k weights by routed_scaling_factor instead of renormalising them, so the exported model's MoE routing differs from moetrain's`);
  }
  exportHf(from, to, { dtype, maxShardBytes: Math.floor(gb * 1e9), configPath });
  console.log(`moetrain: exported ${from} → ${to} (${dtype}, HF DeepseekV2 layout)`);
}
