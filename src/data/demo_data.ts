// The demo run's data folder: the generated corpus (demo_corpus.ts) written as one .txt under
// the run folder and byte-tokenized beside it. It is made once; later starts read the tokens
// back and compare them with the corpus, and reuse the folder when they are equal. So a moved
// or copied run folder keeps its data as it is (the manifest still names the path where it was
// made, which identifies nothing: the loader's fingerprint is the content), and resumes.
// Anything else (missing, damaged, or another seed's tokens) is made again from scratch.
//
// Usage:
//   const demo = await prepareDemoData({ runDir: 'runs/default', seed: 1234 });
//   TokenDataset.open({ dir: demo.dir, seqLen: 64, seed: 1234 });
//   console.log(demo.entropy);   // byte-unigram entropy of the corpus, nats per token
import fs from 'node:fs';
import path from 'node:path';
import { demoCorpus, unigramEntropyNats } from './demo_corpus.js';
import { encodeBytes, BYTE_EOS_ID } from './byte_tokenizer.js';
import { readManifest } from './manifest.js';
import { openShard } from './shards.js';
import { tokenizeCorpus } from './tokenize.js';

/** Size of the demo corpus. */
export const DEMO_CORPUS_BYTES = 600_000;

export interface DemoDataOptions {
  runDir: string;
  seed: number;
  /** Corpus size in bytes (default DEMO_CORPUS_BYTES). */
  bytes?: number;
}

export interface DemoData {
  /** The token data folder. */
  dir: string;
  /** Byte-unigram entropy of the corpus in nats per token. */
  entropy: number;
  /** Whether the folder was made by this call (false: an existing one was reused). */
  made: boolean;
}

export async function prepareDemoData(options: DemoDataOptions): Promise<DemoData> {
  const root = path.join(options.runDir, 'demo-data');
  const textFile = path.join(root, `demo-seed${options.seed}.txt`);
  const tokensDir = path.join(root, 'tokens');
  const corpus = demoCorpus({ seed: options.seed, targetBytes: options.bytes ?? DEMO_CORPUS_BYTES });
  const bytes = encodeBytes(corpus.text);
  const entropy = unigramEntropyNats(bytes);
  const expected = new Uint32Array(bytes.length + 1);
  expected.set(bytes);
  expected[bytes.length] = BYTE_EOS_ID;
  if (holdsExactly(tokensDir, expected)) return { dir: tokensDir, entropy, made: false };

  fs.rmSync(tokensDir, { recursive: true, force: true });
  fs.mkdirSync(root, { recursive: true });
  fs.writeFileSync(`${textFile}.partial`, corpus.text);
  fs.renameSync(`${textFile}.partial`, textFile);
  await tokenizeCorpus({ inputs: [textFile], output: tokensDir, tokenizer: { kind: 'bytes' }, workers: 0, progress: false });
  return { dir: tokensDir, entropy, made: true };
}

/** Whether the byte-tokenized folder's token stream equals `expected` (false when anything is off). */
function holdsExactly(dir: string, expected: Uint32Array): boolean {
  try {
    const m = readManifest(dir);
    if (m === null || m.tokenizer.fingerprint !== 'bytes') return false;
    let at = 0;
    for (const source of m.sources) {
      for (const sh of source.shards) {
        const r = openShard(path.join(dir, sh.file));
        try {
          if (r.tokenCount !== sh.tokens || at + sh.tokens > expected.length) return false;
          const got = r.read(0, sh.tokens);
          for (let i = 0; i < got.length; i++) if (got[i] !== expected[at + i]) return false;
          at += sh.tokens;
        } finally {
          r.close();
        }
      }
    }
    return at === expected.length;
  } catch {
    return false;
  }
}
