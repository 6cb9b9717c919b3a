// Tokenizes one input file into one or more token shards. tokenize.ts runs this in worker
// threads, one file per worker at a time; it also runs in-process (tests, debugging).
//
// Input formats (chosen by file name):
//   .txt, .txt.zst       the whole file is ONE document (EOS after it). Text is encoded in ~4 MB
//                        pieces cut after a newline that is followed by a non-space character;
//                        byte-level BPE pre-tokenizers (GPT-2, Llama-3 style) never join tokens
//                        across such a point, so this equals encoding the whole file at once.
//                        Put one document per line in a .jsonl to get many documents.
//   .jsonl, .jsonl.zst   one JSON object per line with a string field `text`; each is a document.
//                        Blank lines are ignored. A line that is not JSON or has no string
//                        `text` is an Error naming file:line, or is counted and skipped.
// Compressed inputs are decompressed as a stream by the pure-JS `fzstd` (no native build, no
// zstd CLI needed); fzstd does not check zstd's optional content checksum.
//
// Usage:
//   const result = await tokenizeFile(
//     { file: 'a.jsonl', outputPrefix: 'out/a-1f2e3d4c5b', shardTokens: 1 << 28, skipBadLines: false },
//     await loadTokenizer({ kind: 'bytes' }),
//     (p) => console.log(p.bytes, p.tokens));
//   // result.shards: [{ file: 'a-1f2e3d4c5b-00000.tokens', tokens: 1234 }], result.documents, ...
import fs from 'node:fs';
import path from 'node:path';
import { Decompress } from 'fzstd';
import { ShardWriter } from './shards.js';
import type { TextTokenizer } from './tokenizer.js';

export type InputFormat = 'txt' | 'jsonl';

/** Suffixes tokenize accepts, for directory scans and messages. */
export const INPUT_SUFFIXES = ['.txt', '.txt.zst', '.jsonl', '.jsonl.zst'] as const;

export function inputFormatOf(file: string): { format: InputFormat; zstd: boolean } | null {
  const lower = file.toLowerCase();
  if (lower.endsWith('.jsonl.zst')) return { format: 'jsonl', zstd: true };
  if (lower.endsWith('.txt.zst')) return { format: 'txt', zstd: true };
  if (lower.endsWith('.jsonl')) return { format: 'jsonl', zstd: false };
  if (lower.endsWith('.txt')) return { format: 'txt', zstd: false };
  return null;
}

export interface FileJob {
  /** Input file. */
  file: string;
  /** Shards are `${outputPrefix}-00000.tokens`, `-00001`, ... */
  outputPrefix: string;
  /** Most tokens per shard. */
  shardTokens: number;
  skipBadLines: boolean;
}

/** The most skipped line numbers a file reports (the summary names the first ones). */
export const SKIPPED_EXAMPLES = 5;

export interface FileResult {
  /** Shard file names (relative to the output folder), token counts and content hashes, in order. */
  shards: { file: string; tokens: number; sha256: string }[];
  documents: number;
  tokens: number;
  skippedLines: number;
  /** Line numbers (1-based) of the first SKIPPED_EXAMPLES skipped lines. */
  skippedLineNumbers: number[];
  /** Input bytes as stored (compressed size for .zst). */
  bytes: number;
}

export interface FileProgress {
  /** Input bytes read since the previous report (compressed bytes for .zst). */
  bytes: number;
  tokens: number;
  documents: number;
}

export function shardPath(outputPrefix: string, part: number): string {
  return `${outputPrefix}-${String(part).padStart(5, '0')}.tokens`;
}

const READ_CHUNK_BYTES = 4 << 20;
/** Text handed to one encodeBatch call. */
const BATCH_CHARS = 1 << 20;

/** Yields the file's (decompressed) bytes in chunks, with the stored bytes each chunk took. */
function* inputChunks(file: string, zstd: boolean): Generator<{ data: Uint8Array; storedBytes: number }> {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = new Uint8Array(READ_CHUNK_BYTES);
    const decompressed: Uint8Array[] = [];
    const decompressor = zstd ? new Decompress((chunk) => { decompressed.push(chunk.slice()); }) : null;
    let position = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, position);
      position += n;
      if (decompressor === null) {
        if (n === 0) return;
        yield { data: buf.subarray(0, n), storedBytes: n };
        continue;
      }
      try {
        decompressor.push(buf.subarray(0, n), n === 0);
      } catch (e) {
        throw new Error(`${file}: zstd data is corrupt or truncated near compressed byte ${position}: ${(e as Error).message}`);
      }
      let first = true;
      for (const data of decompressed.splice(0)) { yield { data, storedBytes: first ? n : 0 }; first = false; }
      if (first && n > 0) yield { data: new Uint8Array(0), storedBytes: n };
      if (n === 0) return;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes tokens to consecutive shards of at most shardTokens each. */
class ShardSequence {
  private writer: ShardWriter | null = null;
  readonly shards: { file: string; tokens: number; sha256: string }[] = [];
  constructor(private job: FileJob, private vocabSize: number) {}

  append(ids: Uint32Array): void {
    let from = 0;
    while (from < ids.length) {
      if (this.writer === null) {
        this.writer = ShardWriter.create(shardPath(this.job.outputPrefix, this.shards.length), { vocabSize: this.vocabSize });
      }
      const room = this.job.shardTokens - this.writer.tokenCount;
      const n = Math.min(room, ids.length - from);
      this.writer.append(ids.subarray(from, from + n));
      from += n;
      if (this.writer.tokenCount === this.job.shardTokens) this.close();
    }
  }

  private close(): void {
    const { path: p, tokens, sha256 } = this.writer!.finish();
    this.shards.push({ file: path.basename(p), tokens, sha256 });
    this.writer = null;
  }

  finish(): void { if (this.writer !== null) this.close(); }
  abort(): void { this.writer?.abort(); }
}

export async function tokenizeFile(job: FileJob, tokenizer: TextTokenizer, onProgress: (p: FileProgress) => void): Promise<FileResult> {
  const kind = inputFormatOf(job.file);
  if (kind === null) throw new Error(`input ${job.file}: unsupported file type; use one of ${INPUT_SUFFIXES.join(', ')}`);
  if (!(Number.isInteger(job.shardTokens) && job.shardTokens > 0)) throw new Error(`shardTokens ${job.shardTokens} must be a positive integer`);
  const out = new ShardSequence(job, tokenizer.vocabSize);
  const eos = Uint32Array.of(tokenizer.eosId);
  const result: FileResult = { shards: out.shards, documents: 0, tokens: 0, skippedLines: 0, skippedLineNumbers: [], bytes: 0 };
  let pending: FileProgress = { bytes: 0, tokens: 0, documents: 0 };
  let lastReport = Date.now();
  const report = (force: boolean): void => {
    if (!force && Date.now() - lastReport < 200) return;
    onProgress(pending);
    pending = { bytes: 0, tokens: 0, documents: 0 };
    lastReport = Date.now();
  };

  // Progress counts input bytes as their text is encoded, not as it is read (a read is 4 MB
  // ahead): the stored bytes read so far times the fraction of the decoded text consumed.
  let storedRead = 0, storedReported = 0, decodedChars = 0, consumedChars = 0, batchConsumed = 0;
  const reportBytes = (): void => {
    const target = decodedChars > 0 ? Math.floor(storedRead * Math.min(1, consumedChars / decodedChars)) : 0;
    pending.bytes += target - storedReported;
    storedReported = target;
  };

  // Texts wait here until ~BATCH_CHARS are ready, then go to the tokenizer in one call.
  // endsDocument[i]: whether EOS follows texts[i] (false for the pieces of a long .txt).
  // batchConsumed: input characters (lines with their newline, or .txt pieces) behind the batch.
  let texts: string[] = [];
  let endsDocument: boolean[] = [];
  let batchChars = 0;
  const encodePending = async (): Promise<void> => {
    consumedChars += batchConsumed;
    batchConsumed = 0;
    if (texts.length === 0) return;
    const encoded = await tokenizer.encodeBatch(texts);
    for (let i = 0; i < encoded.length; i++) {
      out.append(encoded[i]!);
      pending.tokens += encoded[i]!.length;
      result.tokens += encoded[i]!.length;
      if (endsDocument[i]) {
        out.append(eos);
        pending.tokens++; result.tokens++;
        pending.documents++; result.documents++;
      }
    }
    texts = []; endsDocument = []; batchChars = 0;
    reportBytes();
    report(false);
  };
  const add = async (text: string, endDocument: boolean): Promise<void> => {
    texts.push(text); endsDocument.push(endDocument); batchChars += text.length;
    if (batchChars >= BATCH_CHARS) await encodePending();
  };

  try {
    const decoder = new TextDecoder('utf-8');
    let carry = '';
    let lineNumber = 0;
    const takeLines = async (text: string, atEnd: boolean): Promise<void> => {
      let start = 0;
      for (;;) {
        const nl = text.indexOf('\n', start);
        if (nl < 0 && !atEnd) { carry = text.slice(start); return; }
        const line = text.slice(start, nl < 0 ? text.length : nl);
        lineNumber++;
        batchConsumed += line.length + 1;
        if (line.trim().length > 0) {
          const doc = parseJsonlText(line);
          if (typeof doc === 'string') await add(doc, true);
          else if (job.skipBadLines) {
            result.skippedLines++;
            if (result.skippedLineNumbers.length < SKIPPED_EXAMPLES) result.skippedLineNumbers.push(lineNumber);
          }
          else throw new Error(`${job.file}:${lineNumber}: ${doc.problem}; fix or remove the line, or pass --skip-bad-lines to skip such lines`);
        }
        if (nl < 0) { carry = ''; return; }
        start = nl + 1;
      }
    };
    const takeText = async (text: string, atEnd: boolean): Promise<void> => {
      if (atEnd) { batchConsumed += text.length; await add(text, true); carry = ''; return; }
      if (text.length < READ_CHUNK_BYTES) { carry = text; return; }
      const cut = cutPoint(text);
      if (cut < 0) { carry = text; return; }
      batchConsumed += cut;
      await add(text.slice(0, cut), false);
      carry = text.slice(cut);
    };
    for (const { data, storedBytes } of inputChunks(job.file, kind.zstd)) {
      result.bytes += storedBytes;
      storedRead += storedBytes;
      const decoded = decoder.decode(data, { stream: true });
      decodedChars += decoded.length;
      const text = carry + decoded;
      if (kind.format === 'jsonl') await takeLines(text, false);
      else await takeText(text, false);
    }
    const rest = carry + decoder.decode();
    if (kind.format === 'jsonl') { if (rest.length > 0) await takeLines(rest, true); } else await takeText(rest, true);
    await encodePending();
    out.finish();
    pending.bytes += storedRead - storedReported;
    report(true);
    return result;
  } catch (e) {
    out.abort();
    throw e;
  }
}

/** Where to cut a long text: after the last newline followed by a non-space character, or
 * anywhere once the text is 16 times the read size (a file without such newlines). */
function cutPoint(text: string): number {
  for (let i = text.length - 2; i >= 0; i--) {
    if (text.charCodeAt(i) === 10 && !/\s/.test(text[i + 1]!)) return i + 1;
  }
  if (text.length < 16 * READ_CHUNK_BYTES) return -1;
  // Never split a surrogate pair.
  const code = text.charCodeAt(text.length - 1);
  return code >= 0xd800 && code <= 0xdbff ? text.length - 1 : text.length;
}

/** The `text` of one JSONL line, or what is wrong with the line. */
export function parseJsonlText(line: string): string | { problem: string } {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    return { problem: `not valid JSON (${(e as Error).message})` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return { problem: 'not a JSON object' };
  const text = (value as { text?: unknown }).text;
  if (typeof text !== 'string') return { problem: text === undefined ? 'no "text" field' : `"text" is ${typeof text}, not a string` };
  return text;
}
