// Hugging Face tokenizer.json support through the npm package `tokenizers` (the Rust library's
// native Node binding; prebuilt binaries ship inside the npm package).
//
// Chosen by measured encode rate on this project's 2-core build machine (Node 20, a byte-level
// BPE tokenizer.json of 1,257 tokens built by test/fixtures/data/bpe_tokenizer_json.ts, 4 MB
// of English licence text in 4 KB documents, 1.75 M tokens):
//   tokenizers 0.23.2 (native)           encodeBatch of 256 docs: 1.9-2.2 MB/s, 0.83-0.95 M tokens/s
//                                        one encode at a time:    0.95 MB/s, 0.41 M tokens/s
//   @huggingface/tokenizers 0.2.0 (JS)   1 thread: 0.46 MB/s, 0.20 M tokens/s
//                                        2 worker threads: 0.67 MB/s, 0.29 M tokens/s
// Rerun while another process held ~1 core: native batch 0.9-1.3 MB/s, JS 0.4-0.6 MB/s (1 or 2
// threads). End to end, tokenizeCorpus on 8.9 MB of JSONL (4 KB documents) with this tokenizer
// ran at ~1.0-1.1 MB/s (~0.5 M tokens/s) under that load; with the byte tokenizer at ~20 MB/s.
// Both gave identical ids on the 200 documents compared. The native package is ~64 MB on disk
// (binaries for every platform), so it is a devDependency, kept out of the GPU machines' kit
// (.devicekit, 64 MiB carry limit), and loaded lazily, only when an HF tokenizer is used.
//
// Usage:
//   const tok = await loadHfTokenizer('path/to/tokenizer.json');          // EOS from tokenizer_config.json
//   const tok = await loadHfTokenizer('path/to/dir', { eosToken: '</s>' });
//   const [ids] = await tok.encodeBatch(['hello world']);
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import type { Tokenizer } from 'tokenizers';
import type { TextTokenizer } from './text_tokenizer.js';

export interface HfTokenizerOptions {
  /** EOS token text (e.g. '</s>'); when absent, eos_token of tokenizer_config.json (or
   * special_tokens_map.json) beside the tokenizer.json. */
  eosToken?: string;
}

export interface HfTokenizer extends TextTokenizer {
  tokenToId(token: string): number | null;
  idToToken(id: number): string | null;
}

type TokenizersModule = typeof import('tokenizers');
let tokenizersModule: TokenizersModule | null = null;
function tokenizersLibrary(): TokenizersModule {
  if (tokenizersModule === null) {
    try {
      tokenizersModule = createRequire(import.meta.url)('tokenizers') as TokenizersModule;
    } catch (e) {
      throw new Error(`cannot load the npm package 'tokenizers' (needed for HF tokenizer.json files): ${(e as Error).message}; run npm install (without --omit=dev) in the moetrain folder; GPU-machine kits leave it out, so tokenize on the build machine`);
    }
  }
  return tokenizersModule;
}

/** Resolves a tokenizer.json path from a file or a folder holding one. */
export function resolveTokenizerJson(fileOrDir: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(fileOrDir);
  } catch {
    throw new Error(`tokenizer ${fileOrDir} does not exist; give the path of a tokenizer.json or of the folder that holds it`);
  }
  if (!st.isDirectory()) return fileOrDir;
  const inside = path.join(fileOrDir, 'tokenizer.json');
  if (!fs.existsSync(inside)) throw new Error(`tokenizer folder ${fileOrDir} has no tokenizer.json`);
  return inside;
}

/** The eos_token named by tokenizer_config.json or special_tokens_map.json beside the file, if any. */
export function eosTokenBeside(tokenizerJsonPath: string): string | null {
  const dir = path.dirname(tokenizerJsonPath);
  for (const name of ['tokenizer_config.json', 'special_tokens_map.json']) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) continue;
    let config: unknown;
    try {
      config = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new Error(`${file} is not valid JSON: ${(e as Error).message}`);
    }
    const eos = (config as { eos_token?: unknown } | null)?.eos_token;
    if (typeof eos === 'string') return eos;
    // Newer configs store AddedToken objects: { content: '</s>', ... }.
    if (eos !== null && typeof eos === 'object' && typeof (eos as { content?: unknown }).content === 'string') {
      return (eos as { content: string }).content;
    }
  }
  return null;
}

export async function loadHfTokenizer(fileOrDir: string, options: HfTokenizerOptions = {}): Promise<HfTokenizer> {
  const file = resolveTokenizerJson(fileOrDir);
  const text = fs.readFileSync(file, 'utf8');
  // Parse here first: the library's own message does not name the file.
  try {
    JSON.parse(text);
  } catch (e) {
    throw new Error(`tokenizer file ${file} is not valid JSON: ${(e as Error).message}`);
  }
  let tok: Tokenizer;
  try {
    tok = tokenizersLibrary().Tokenizer.fromString(text);
  } catch (e) {
    throw new Error(`tokenizer file ${file} is not a tokenizer.json the tokenizers library can load: ${(e as Error).message}`);
  }

  const eosToken = options.eosToken ?? eosTokenBeside(file);
  if (eosToken === null) {
    throw new Error(`no EOS token for tokenizer ${file}: no tokenizer_config.json or special_tokens_map.json beside it names eos_token; pass the EOS token text explicitly (--eos-token, e.g. '</s>' or '<|endoftext|>')`);
  }
  const eosId = tok.tokenToId(eosToken);
  if (eosId === null || eosId === undefined) {
    throw new Error(`EOS token ${JSON.stringify(eosToken)} is not in the vocabulary of ${file}; pass the right one with --eos-token`);
  }

  return {
    name: file,
    vocabSize: tok.getVocabSize(true),
    eosId,
    async encodeBatch(texts: string[]): Promise<Uint32Array[]> {
      if (texts.length === 0) return [];
      const encodings = await tok.encodeBatch(texts, { addSpecialTokens: false });
      return encodings.map((e) => Uint32Array.from(e.getIds()));
    },
    decode: (ids) => tok.decode(Array.from(ids), false),
    tokenToId: (token) => tok.tokenToId(token) ?? null,
    idToToken: (id) => tok.idToToken(id) ?? null,
  };
}
