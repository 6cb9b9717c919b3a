// `moetrain tokenize`: text files → packed token shards + manifest.json in an output folder.
// Files are tokenized in parallel by worker threads (one file per worker at a time); each
// input file maps to its own shard(s), and its manifest entry is written once all its shards
// are complete. Running again over the same folder skips files already listed (same size and
// mtime) and redoes files that were interrupted (their `.partial` shards are deleted first).
// Formats and document rules: tokenize_file.ts. EOS is appended after every document.
// Progress on stderr: the first line half a second in, then a \r-updated line every second on a
// TTY or a line every 10 s otherwise, and a final line; then a summary that names the first
// skipped lines (file:line) and the files of other types that folders held and were ignored.
// Shards store uint16 ids when the vocabulary fits, else uint32 (shards.ts).
//
// Usage:
//   const summary = await tokenizeCorpus({
//     inputs: ['corpus/', 'extra.jsonl.zst'], output: 'data/tok',
//     tokenizer: { kind: 'hf', path: 'tok/tokenizer.json' },   // or { kind: 'bytes' }
//     workers: 2, skipBadLines: false, shardTokens: 1 << 28 });
//   // summary.documents, summary.tokens, summary.tokensPerSecond, summary.skippedLines,
//   // summary.skippedExamples ('a.jsonl:12'), summary.ignoredFiles
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { loadTokenizer, type TokenizerSpec, type TextTokenizer } from './tokenizer.js';
import { resolveTokenizerJson } from './hf_tokenizer.js';
import { tokenizeFile, inputFormatOf, INPUT_SUFFIXES, SKIPPED_EXAMPLES, type FileJob, type FileProgress, type FileResult } from './tokenize_file.js';
import { readManifest, writeManifest, MANIFEST_FORMAT, MANIFEST_VERSION, type ManifestSource, type ManifestTokenizer } from './manifest.js';
import { PARTIAL_SUFFIX, openShard } from './shards.js';
import type { ToWorker, FromWorker } from './tokenize_worker.js';

export interface TokenizeOptions {
  /** Files (.txt, .txt.zst, .jsonl, .jsonl.zst) or folders, scanned recursively for those. */
  inputs: string[];
  /** Output folder (created); holds the shards and manifest.json. */
  output: string;
  tokenizer: TokenizerSpec;
  /** Worker threads (default: the number of cores); 0 tokenizes in the calling thread. */
  workers?: number;
  /** Count and skip bad JSONL lines instead of stopping with an Error. */
  skipBadLines?: boolean;
  /** Most tokens per shard (default 2^28: 512 MiB as uint16, 1 GiB as uint32). */
  shardTokens?: number;
  /** Progress and summary lines on stderr (default true). */
  progress?: boolean;
}

export interface TokenizeSummary {
  /** Input files named by `inputs`. */
  files: number;
  /** Of those, already complete in the output folder and skipped. */
  filesAlreadyDone: number;
  /** Counts for the files tokenized by this call. */
  documents: number;
  tokens: number;
  skippedLines: number;
  /** file:line of the first skipped lines (at most SKIPPED_EXAMPLES), in input order. */
  skippedExamples: string[];
  /** Files inside the input folders that are not of a tokenizable type. */
  ignoredFiles: string[];
  bytes: number;
  seconds: number;
  tokensPerSecond: number;
  /** Tokens in the whole output folder afterwards. */
  totalTokens: number;
}

export const DEFAULT_SHARD_TOKENS = 1 << 28;

export async function tokenizeCorpus(options: TokenizeOptions): Promise<TokenizeSummary> {
  const start = performance.now();
  const { files, ignored } = listInputs(options.inputs);
  const shardTokens = options.shardTokens ?? DEFAULT_SHARD_TOKENS;
  if (!(Number.isInteger(shardTokens) && shardTokens > 0)) throw new Error(`shardTokens ${shardTokens} must be a positive integer`);
  const workers = options.workers ?? os.availableParallelism();
  if (!(Number.isInteger(workers) && workers >= 0)) throw new Error(`workers ${workers} must be a whole number (0 = no worker threads)`);
  const showProgress = options.progress ?? true;

  const tokenizer = await loadTokenizer(options.tokenizer);
  const tokenizerEntry = describeTokenizer(options.tokenizer, tokenizer);

  const outDir = options.output;
  fs.mkdirSync(outDir, { recursive: true });
  let manifest = readManifest(outDir);
  if (manifest !== null && manifest.tokenizer.fingerprint !== tokenizerEntry.fingerprint) {
    throw new Error(`output folder ${outDir} was tokenized with a different tokenizer (${manifest.tokenizer.name}, ${manifest.tokenizer.fingerprint}); use a new output folder, or the same tokenizer to resume`);
  }
  manifest ??= { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, tokenizer: tokenizerEntry, sources: [] };
  // Shards of an interrupted run: never listed in the manifest, always redone.
  for (const name of fs.readdirSync(outDir)) {
    if (name.endsWith(PARTIAL_SUFFIX)) fs.rmSync(path.join(outDir, name), { force: true });
  }

  const bySource = new Map(manifest.sources.map((s) => [s.source, s]));
  const todo: { file: string; stat: fs.Stats; job: FileJob }[] = [];
  let alreadyDone = 0;
  for (const file of files) {
    const stat = fs.statSync(file);
    const prior = bySource.get(file);
    if (prior !== undefined && prior.bytes === stat.size && prior.mtimeMs === stat.mtimeMs && shardsIntact(outDir, prior)) {
      alreadyDone++;
      continue;
    }
    if (prior !== undefined) {
      for (const sh of prior.shards) fs.rmSync(path.join(outDir, sh.file), { force: true });
      bySource.delete(file);
    }
    const job: FileJob = { file, outputPrefix: path.join(outDir, outputStem(file)), shardTokens, skipBadLines: options.skipBadLines ?? false };
    todo.push({ file, stat, job });
  }
  manifest.sources = [...bySource.values()];
  writeManifest(outDir, manifest);

  // Largest first: the pool finishes closer together and the ETA is honest sooner.
  todo.sort((a, b) => b.stat.size - a.stat.size);
  const progress = new ProgressLine(todo.reduce((s, t) => s + t.stat.size, 0), showProgress);
  const totals = { documents: 0, tokens: 0, skippedLines: 0, bytes: 0 };
  const skippedAt = new Map<string, number[]>();
  const complete = (item: (typeof todo)[number], r: FileResult): void => {
    if (r.skippedLineNumbers.length > 0) skippedAt.set(item.file, r.skippedLineNumbers);
    // Shard names in the manifest are relative to the data folder; tokenizeFile gives them so.
    manifest!.sources.push({
      source: item.file, bytes: item.stat.size, mtimeMs: item.stat.mtimeMs,
      documents: r.documents, tokens: r.tokens, skippedLines: r.skippedLines, shards: r.shards,
    });
    writeManifest(outDir, manifest!);
    totals.documents += r.documents; totals.tokens += r.tokens; totals.skippedLines += r.skippedLines; totals.bytes += r.bytes;
  };

  try {
    if (workers === 0) {
      for (const item of todo) complete(item, await tokenizeFile(item.job, tokenizer, (p) => progress.add(p)));
    } else {
      await runPool(Math.min(workers, todo.length), options.tokenizer, todo.map((t) => t.job),
        (i, r) => complete(todo[i]!, r), (p) => progress.add(p));
    }
  } finally {
    progress.end();
  }

  const seconds = (performance.now() - start) / 1000;
  const skippedExamples = files.flatMap((f) => (skippedAt.get(f) ?? []).map((line) => `${f}:${line}`)).slice(0, SKIPPED_EXAMPLES);
  const summary: TokenizeSummary = {
    files: files.length, filesAlreadyDone: alreadyDone, ...totals, skippedExamples, ignoredFiles: ignored, seconds,
    tokensPerSecond: totals.tokens / Math.max(seconds, 1e-9),
    totalTokens: manifest.sources.reduce((s, x) => s + x.tokens, 0),
  };
  if (showProgress) {
    process.stderr.write(
      `tokenize: ${todo.length} file(s) tokenized, ${alreadyDone} already done; ${fmt(summary.documents)} documents, ` +
      `${fmt(summary.tokens)} tokens in ${seconds.toFixed(1)} s (${fmt(Math.round(summary.tokensPerSecond))} tokens/s)` +
      `${summary.skippedLines > 0 ? `; skipped ${fmt(summary.skippedLines)} bad line(s)` : ''}; ${outDir} now holds ${fmt(summary.totalTokens)} tokens\n`);
    if (summary.skippedLines > 0) {
      const more = summary.skippedLines > skippedExamples.length ? ` (the first ${skippedExamples.length} of ${fmt(summary.skippedLines)})` : '';
      process.stderr.write(`tokenize: skipped lines${more}: ${skippedExamples.map(shortPath).join(', ')}\n`);
    }
    if (ignored.length > 0) {
      const shown = ignored.slice(0, 5).map(shortPath).join(', ');
      process.stderr.write(`tokenize: ignored ${ignored.length} file(s) in the input folders that are not ${INPUT_SUFFIXES.join(', ')}: ${shown}${ignored.length > 5 ? `, and ${ignored.length - 5} more` : ''}\n`);
    }
  }
  return summary;
}

/** A path relative to the working directory when it lies inside it (shorter messages). */
function shortPath(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}

/** Expands the inputs into absolute file paths (folders recursively), sorted and deduplicated;
 * `ignored`: the other files the folders hold (absolute, sorted). */
export function listInputs(inputs: string[]): { files: string[]; ignored: string[] } {
  if (inputs.length === 0) throw new Error('tokenize: no inputs given; name files or folders of .txt, .jsonl or .jsonl.zst');
  const found = new Set<string>();
  const ignored = new Set<string>();
  for (const input of inputs) {
    let st: fs.Stats;
    try {
      st = fs.statSync(input);
    } catch {
      throw new Error(`input ${input} does not exist`);
    }
    if (st.isDirectory()) {
      const before = found.size;
      for (const entry of fs.readdirSync(input, { recursive: true, withFileTypes: true })) {
        if (!entry.isFile()) continue;
        const full = path.resolve(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name);
        if (inputFormatOf(full) !== null) found.add(full);
        else ignored.add(full);
      }
      if (found.size === before) throw new Error(`input folder ${input} holds no ${INPUT_SUFFIXES.join(', ')} files`);
    } else {
      if (inputFormatOf(input) === null) throw new Error(`input ${input}: unsupported file type; use one of ${INPUT_SUFFIXES.join(', ')}`);
      found.add(path.resolve(input));
    }
  }
  return { files: [...found].sort(), ignored: [...ignored].sort() };
}

/** A shard file stem that a person can recognise and that cannot collide between inputs. */
function outputStem(absFile: string): string {
  const base = path.basename(absFile).replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 48);
  return `${base}-${createHash('sha256').update(absFile).digest('hex').slice(0, 10)}`;
}

/** Every shard of the source opens (its header agrees with its size) and holds the listed count. */
function shardsIntact(dir: string, source: ManifestSource): boolean {
  return source.shards.every((sh) => {
    try {
      const r = openShard(path.join(dir, sh.file));
      r.close();
      return r.tokenCount === sh.tokens;
    } catch {
      return false;
    }
  });
}

function describeTokenizer(spec: TokenizerSpec, tok: TextTokenizer): ManifestTokenizer {
  switch (spec.kind) {
    case 'bytes':
      return { name: 'bytes', vocabSize: tok.vocabSize, eosId: tok.eosId, fingerprint: 'bytes' };
    case 'hf': {
      const file = resolveTokenizerJson(spec.path);
      const hash = createHash('sha256').update(fs.readFileSync(file)).update(`eos=${tok.eosId}`).digest('hex');
      return { name: path.resolve(file), vocabSize: tok.vocabSize, eosId: tok.eosId, fingerprint: `sha256:${hash}` };
    }
    default:
      return spec satisfies never;
  }
}

/** Runs jobs on `size` worker threads; rejects with the first file's Error and stops the rest. */
function runPool(size: number, spec: TokenizerSpec, jobs: FileJob[], onDone: (index: number, r: FileResult) => void, onProgress: (p: FileProgress) => void): Promise<void> {
  if (jobs.length === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const pool: Worker[] = [];
    let next = 0;
    let finished = 0;
    let failed = false;
    const retired = new Set<Worker>();
    const fail = (e: Error): void => {
      if (failed) return;
      failed = true;
      for (const w of pool) void w.terminate();
      reject(e);
    };
    const feed = (w: Worker): void => {
      if (next >= jobs.length) { retired.add(w); void w.terminate(); return; }
      const msg: ToWorker = { kind: 'job', index: next, job: jobs[next]! };
      next++;
      w.postMessage(msg);
    };
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL('./tokenize_worker.js', import.meta.url), { workerData: { tokenizer: spec } });
      pool.push(w);
      w.on('message', (m: FromWorker) => {
        if (failed) return;
        switch (m.kind) {
          case 'progress': onProgress(m.progress); return;
          case 'error': fail(new Error(m.message)); return;
          case 'done':
            try {
              onDone(m.index, m.result);
            } catch (e) {
              fail(e as Error);
              return;
            }
            if (++finished === jobs.length) {
              for (const x of pool) { retired.add(x); void x.terminate(); }
              resolve();
              return;
            }
            feed(w);
            return;
          default: m satisfies never;
        }
      });
      w.on('error', (e) => fail(new Error(`tokenize worker failed: ${e.message}`)));
      w.on('exit', (code) => { if (!retired.has(w)) fail(new Error(`tokenize worker stopped unexpectedly (exit code ${code})`)); });
      feed(w);
    }
  });
}

function fmt(n: number): string { return n.toLocaleString('en-US'); }

/** The progress line: MB/s of input bytes (as stored), tokens/s, and an ETA from the byte rate
 * measured since the first report (so the tokenizers' start-up does not skew it). A timer prints
 * it while the main thread is free (worker threads); add() prints it when due otherwise. */
class ProgressLine {
  private bytes = 0;
  private tokens = 0;
  private documents = 0;
  private readonly start = performance.now();
  private readonly tty = process.stderr.isTTY === true;
  /** When the next line is due: half a second in, then every second (TTY) or 10 s. */
  private due = this.start + 500;
  private first: { at: number; bytes: number } | null = null;
  private printed = false;
  private readonly timer: NodeJS.Timeout | null;

  constructor(private totalBytes: number, private enabled: boolean) {
    this.timer = enabled ? setInterval(() => this.maybePrint(), 100) : null;
    this.timer?.unref();
  }

  add(p: FileProgress): void {
    this.bytes += p.bytes; this.tokens += p.tokens; this.documents += p.documents;
    if (this.first === null && this.bytes > 0) this.first = { at: performance.now(), bytes: this.bytes };
    this.maybePrint();
  }

  private maybePrint(): void {
    const now = performance.now();
    if (!this.enabled || now < this.due) return;
    this.due = now + (this.tty ? 1000 : 10_000);
    this.print(now);
  }

  private print(now: number): void {
    const s = Math.max((now - this.start) / 1000, 1e-6);
    const mbps = this.bytes / 1e6 / s;
    const since = this.first === null ? 0 : (now - this.first.at) / 1000;
    const rate = since > 0.2 ? (this.bytes - this.first!.bytes) / since : 0;
    const left = this.totalBytes - this.bytes;
    const eta = left <= 0 ? 0 : rate > 0 ? left / rate : NaN;
    const pct = this.totalBytes > 0 ? (100 * this.bytes) / this.totalBytes : 100;
    const line = `tokenize: ${pct.toFixed(1)}% ${(this.bytes / 1e6).toFixed(1)}/${(this.totalBytes / 1e6).toFixed(1)} MB, ` +
      `${mbps.toFixed(2)} MB/s, ${fmt(Math.round(this.tokens / s))} tokens/s, ${fmt(this.documents)} docs, ETA ${formatEta(eta)}`;
    process.stderr.write(this.tty ? `\r${line}\x1b[K` : `${line}\n`);
    this.printed = true;
  }

  /** Stops the timer and prints the final line (when there was anything to tokenize). */
  end(): void {
    if (this.timer !== null) clearInterval(this.timer);
    if (!this.enabled || (this.totalBytes === 0 && !this.printed)) return;
    this.print(performance.now());
    if (this.tty) process.stderr.write('\n');
  }
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}
