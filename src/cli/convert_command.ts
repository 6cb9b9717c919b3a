// `moetrain convert`: HF checkpoint ⇄ moetrain weights (see train/hf_checkpoint.ts).
import { configBeside, exportHf, importHf } from '../train/hf_checkpoint.js';

export async function convertCommand(flags: Record<string, string>): Promise<void> {
  const known = ['from', 'to', 'format', 'config', 'dtype', 'max-shard-gb'];
  for (const k of Object.keys(flags)) if (!known.includes(k)) throw new Error(`unknown convert option --${k} (known: ${known.map((x) => `--${x}`).join(', ')})`);
  const from = flags['from'], to = flags['to'], format = flags['format'];
  if (!from || !to || (format !== 'hf' && format !== 'moetrain')) {
    throw new Error('convert needs --from DIR --to DIR --format hf|moetrain (hf: export to Hugging Face layout; moetrain: import from it)');
  }
  if (format === 'moetrain') {
    importHf(from, to, flags['config']);
    console.log(`moetrain: imported ${from} → ${to} (f32 weights; train with --init_from ${to} --model ${to}/config.json)`);
    return;
  }
  const dtype = flags['dtype'] ?? 'bf16';
  if (dtype !== 'bf16' && dtype !== 'f32') throw new Error(`--dtype must be bf16 or f32, got ${dtype}`);
  const gb = Number(flags['max-shard-gb'] ?? '5');
  if (!(gb > 0)) throw new Error(`--max-shard-gb must be a positive number, got ${flags['max-shard-gb']}`);
  exportHf(from, to, { dtype, maxShardBytes: Math.floor(gb * 1e9), configPath: flags['config'] ?? configBeside(from) });
  console.log(`moetrain: exported ${from} → ${to} (${dtype}, HF DeepseekV2 layout)`);
}
