// `moetrain tokenize`: text corpora (.txt, .txt.zst, .jsonl, .jsonl.zst) → packed token shards.
import os from 'node:os';
import type { CommandSpec } from './args.js';
import { tokenizeCorpus, DEFAULT_SHARD_TOKENS } from '../data/tokenize.js';
import type { TokenizerSpec } from '../data/tokenizer.js';

export const TOKENIZE_COMMAND: CommandSpec = {
  name: 'tokenize',
  summary: 'Tokenize text corpora (.txt, .txt.zst, .jsonl, .jsonl.zst with a "text" field) into packed token shards and manifest.json; an EOS token follows every document.',
  positionals: [],
  options: [
    { name: 'inputs', value: 'PATHS', required: true, help: 'files or folders (scanned recursively), comma-separated' },
    { name: 'output', value: 'DIR', required: true, help: 'output folder for the shards and manifest.json; running again resumes (files already done are skipped)' },
    { name: 'tokenizer', value: 'bytes|PATH', default: 'bytes', help: 'bytes (256 byte ids + EOS), or an HF tokenizer.json or the folder holding it' },
    { name: 'eos_token', value: 'TEXT', help: 'the EOS token of an HF tokenizer (default: eos_token of tokenizer_config.json beside it)' },
    { name: 'workers', value: 'N', default: `the cores (${os.availableParallelism()} here)`, help: 'worker threads, one file each at a time; 0 tokenizes in the main thread' },
    { name: 'skip_bad_lines', value: null, help: 'skip JSONL lines that are not JSON or have no string "text" (the summary names the first five) instead of stopping' },
    { name: 'shard_tokens', value: 'N', default: String(DEFAULT_SHARD_TOKENS), help: 'most tokens per shard file' },
  ],
  notes: [
    'Tokens are stored as uint16 when the vocabulary has at most 65,536 ids, else uint32. Progress goes to',
    'stderr (every second on a terminal); the summary names skipped lines (file:line) and ignored files.',
  ],
};

export async function tokenizeCommand(flags: Record<string, string>): Promise<void> {
  const inputs = flags['inputs'], output = flags['output'];
  if (!inputs || !output) throw new Error('tokenize needs --inputs FILE[,FILE|DIR...] and --output DIR');
  const tok = flags['tokenizer'] ?? 'bytes';
  if (tok === 'bytes' && flags['eos_token'] !== undefined) throw new Error('--eos_token applies to an HF tokenizer; the byte tokenizer\'s EOS is id 256 (drop --eos_token, or pass --tokenizer path/to/tokenizer.json)');
  const spec: TokenizerSpec = tok === 'bytes' ? { kind: 'bytes' } : { kind: 'hf', path: tok, ...(flags['eos_token'] ? { eosToken: flags['eos_token'] } : {}) };
  const int = (name: string) => {
    const v = flags[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got ${v}`);
    return n;
  };
  const workers = int('workers'), shardTokens = int('shard_tokens');
  if (shardTokens === 0) throw new Error('--shard_tokens must be a positive integer, got 0');
  await tokenizeCorpus({
    inputs: inputs.split(','), output, tokenizer: spec, skipBadLines: flags['skip_bad_lines'] === 'true',
    ...(workers !== undefined ? { workers } : {}), ...(shardTokens !== undefined ? { shardTokens } : {}),
  });
}
