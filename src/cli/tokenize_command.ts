// `moetrain tokenize`: text corpora (.txt, .jsonl, .jsonl.zst) → packed token shards.
import { tokenizeCorpus } from '../data/tokenize.js';
import type { TokenizerSpec } from '../data/tokenizer.js';

export async function tokenizeCommand(flags: Record<string, string>): Promise<void> {
  const known = ['inputs', 'output', 'tokenizer', 'eos-token', 'workers', 'skip-bad-lines', 'shard-tokens'];
  for (const k of Object.keys(flags)) if (!known.includes(k)) throw new Error(`unknown tokenize option --${k} (known: ${known.map((x) => `--${x}`).join(', ')})`);
  const inputs = flags['inputs'], output = flags['output'];
  if (!inputs || !output) throw new Error('tokenize needs --inputs FILE[,FILE|DIR...] and --output DIR');
  const tok = flags['tokenizer'] ?? 'bytes';
  const spec: TokenizerSpec = tok === 'bytes' ? { kind: 'bytes' } : { kind: 'hf', path: tok, ...(flags['eos-token'] ? { eosToken: flags['eos-token'] } : {}) };
  const int = (name: string) => {
    const v = flags[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got ${v}`);
    return n;
  };
  const workers = int('workers'), shardTokens = int('shard-tokens');
  await tokenizeCorpus({
    inputs: inputs.split(','), output, tokenizer: spec, skipBadLines: flags['skip-bad-lines'] === 'true',
    ...(workers !== undefined ? { workers } : {}), ...(shardTokens !== undefined ? { shardTokens } : {}),
  });
}
