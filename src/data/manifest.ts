// manifest.json of a token data folder: which tokenizer made it and, for every input file
// tokenized into it, that file's shards, token counts and content hashes. tokenize.ts writes it (temp name +
// rename) after each input file completes, so a shard listed here is complete; loader.ts reads
// it to concatenate the shards, in the order listed (sources sorted by path).
//
// Usage:
//   const m = readManifest('data/tok');   // null when the folder has no manifest yet
//   writeManifest('data/tok', m);
import fs from 'node:fs';
import path from 'node:path';
import { writeJsonAtomic } from '../io/files.js';

export const MANIFEST_FILE = 'manifest.json';
export const MANIFEST_FORMAT = 'moetrain-tokens';
export const MANIFEST_VERSION = 1;

export interface ManifestTokenizer {
  /** 'bytes' or the tokenizer.json path that was used. */
  name: string;
  vocabSize: number;
  eosId: number;
  /** 'bytes', or 'sha256:<hex>' of the tokenizer.json text plus the EOS id: resuming with a
   * different tokenizer is refused. */
  fingerprint: string;
}

export interface ManifestShard {
  /** File name inside the data folder. */
  file: string;
  tokens: number;
  /** Hex sha256 of the shard's ids as little-endian uint32 (whatever the stored width): what
   * identifies the data (loader.ts). Folders tokenized before it existed lack it. */
  sha256?: string;
}

export interface ManifestSource {
  /** Absolute path of the input file. */
  source: string;
  /** Size and modification time when it was tokenized; a change makes tokenize redo it. */
  bytes: number;
  mtimeMs: number;
  documents: number;
  tokens: number;
  skippedLines: number;
  shards: ManifestShard[];
}

export interface TokenManifest {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  tokenizer: ManifestTokenizer;
  sources: ManifestSource[];
}

export function readManifest(dir: string): TokenManifest | null {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot read ${file}: ${(e as Error).message}`);
  }
  let m: TokenManifest;
  try {
    m = JSON.parse(text) as TokenManifest;
  } catch (e) {
    throw new Error(`${file} is not valid JSON (${(e as Error).message}); delete the data folder and tokenize again`);
  }
  const bad = (what: string): Error => new Error(`${file} is not a moetrain token manifest: ${what}`);
  if (m === null || typeof m !== 'object' || m.format !== MANIFEST_FORMAT) throw bad(`format is not "${MANIFEST_FORMAT}"`);
  if (m.version !== MANIFEST_VERSION) throw bad(`version ${String(m.version)}, this moetrain reads ${MANIFEST_VERSION}`);
  const t = m.tokenizer;
  if (t === null || typeof t !== 'object' || !Number.isInteger(t.vocabSize) || !Number.isInteger(t.eosId) || typeof t.fingerprint !== 'string') throw bad('tokenizer entry is incomplete');
  if (!Array.isArray(m.sources)) throw bad('sources is not a list');
  for (const s of m.sources) {
    if (typeof s?.source !== 'string' || !Array.isArray(s.shards)) throw bad('a source entry is incomplete');
    for (const sh of s.shards) {
      if (typeof sh?.file !== 'string' || !Number.isInteger(sh.tokens) || sh.tokens < 0 || sh.file.includes('/') || sh.file.includes('\\') ||
        (sh.sha256 !== undefined && !(typeof sh.sha256 === 'string' && /^[0-9a-f]{64}$/.test(sh.sha256)))) {
        throw bad(`shard entry ${JSON.stringify(sh)} of ${s.source} is invalid`);
      }
    }
  }
  return m;
}

export function writeManifest(dir: string, manifest: TokenManifest): void {
  const sorted: TokenManifest = { ...manifest, sources: [...manifest.sources].sort((a, b) => (a.source < b.source ? -1 : a.source > b.source ? 1 : 0)) };
  writeJsonAtomic(path.join(dir, MANIFEST_FILE), sorted);
}
