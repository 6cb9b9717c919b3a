// Training batches from a token data folder (tokenize.ts output). The shards listed in
// manifest.json are one concatenated token stream, cut into windows of S+1 tokens at fixed,
// non-overlapping offsets (window w = tokens [w·(S+1), (w+1)·(S+1))); a window's first S
// tokens are the inputs and its last S the labels (the same tokens shifted by one).
// Windows are visited in a seeded pseudo-random order, one permutation per epoch
// (permutation.ts), so the batch of step k is a pure function of (data, S, seed, k): any rank
// computes its own share without talking to the others, and a resumed run reads exactly what
// an uninterrupted one would. Shards are read by byte range, never whole.
//
// Slot order: step k uses global slots p = k·G + j for j in 0..G-1 (G = global batch in
// sequences); slot p is window perm_e(p mod n) with e = floor(p / n) (n windows). Data-parallel
// rank r of W takes j in [r·G/W, (r+1)·G/W), split into micro-batches of `microBatch` rows.
//
// Usage:
//   const data = TokenDataset.open({ dir: 'data/tok', seqLen: 512, seed: 1234 });
//   data.checkRun({ steps: 1000, globalBatch: 64, maxEpochs: 1 });   // Error if too small (null: no cap)
//   const { inputs, labels } = data.batch({ step, globalBatch: 64, microBatch: 8, microIndex: m,
//                                           dpRank, dpSize });      // Int32Array [8·512] each
//   checkpoint.dataFingerprint = data.fingerprint;                   // compare when resuming
//   data.close();
//
// The fingerprint identifies the data by content, never by where it lies: the tokenizer's
// fingerprint, S, the seed, and each shard's content hash (manifest sha256) and token count in
// stream order. So a data folder or a run folder may be moved or copied and still resume.
// Folders tokenized before shards carried a hash use the shard's file name in its place (the
// name holds a hash of the source path at tokenize time, fixed in the manifest).
import path from 'node:path';
import { createHash } from 'node:crypto';
import { readManifest, MANIFEST_FILE } from './manifest.js';
import { openShard, type ShardReader } from './shards.js';
import { FeistelPermutation } from './permutation.js';

export interface TokenDatasetOptions {
  /** Folder holding manifest.json and the shards. */
  dir: string;
  /** S: tokens per training sequence (each window holds S+1). */
  seqLen: number;
  /** Seed of the window order; a non-negative integer below 2^53. */
  seed: number;
  /** Shards kept open at once (default 64). */
  maxOpenShards?: number;
}

export interface BatchRequest {
  /** Optimizer step, from 0. */
  step: number;
  /** G: sequences per step over all data-parallel ranks. */
  globalBatch: number;
  /** Sequences per micro-batch on one rank. */
  microBatch: number;
  /** Which of this rank's G/(W·microBatch) micro-batches (default 0). */
  microIndex?: number;
  /** Data-parallel rank and size (defaults 0 and 1). */
  dpRank?: number;
  dpSize?: number;
}

export interface Batch {
  /** [microBatch, S] row-major. */
  inputs: Int32Array;
  /** [microBatch, S]: inputs shifted left by one token. */
  labels: Int32Array;
  /** Window index of each row (for logs and tests). */
  windows: number[];
  /** Epoch of each row. */
  epochs: number[];
}

export interface RunCheck {
  steps: number;
  globalBatch: number;
  /** Most passes over the data the run may make (default 1); null or 0: no cap. */
  maxEpochs?: number | null;
}

export class TokenDataset {
  /** Tokens in the concatenated stream. */
  readonly tokens: number;
  /** Windows of S+1 tokens (the tail shorter than a window is unused). */
  readonly windows: number;
  readonly vocabSize: number;
  readonly eosId: number;
  /** Identifies (shard contents, S, seed): store it in a checkpoint and compare it on resume. */
  readonly fingerprint: string;

  private readonly shardFiles: string[];
  /** shardStart[i] = tokens before shard i; one extra entry = total. */
  private readonly shardStart: number[];
  private readonly open = new Map<number, ShardReader>();
  private readonly maxOpen: number;
  private readonly permutations = new Map<number, FeistelPermutation>();
  private readonly scratch: Uint32Array;

  private constructor(readonly dir: string, readonly seqLen: number, readonly seed: number, maxOpen: number) {
    if (!(Number.isInteger(seqLen) && seqLen >= 1)) throw new Error(`sequence length ${seqLen} must be a positive integer`);
    if (!(Number.isSafeInteger(seed) && seed >= 0)) throw new Error(`data seed ${seed} must be a non-negative integer below 2^53`);
    const manifest = readManifest(dir);
    if (manifest === null) throw new Error(`data folder ${dir} has no ${MANIFEST_FILE}; create it with moetrain tokenize --output ${dir}`);
    this.vocabSize = manifest.tokenizer.vocabSize;
    this.eosId = manifest.tokenizer.eosId;
    this.shardFiles = [];
    this.shardStart = [0];
    const hash = createHash('sha256').update(`${manifest.tokenizer.fingerprint}|S=${seqLen}|seed=${seed}`);
    for (const source of manifest.sources) {
      for (const sh of source.shards) {
        if (sh.tokens === 0) continue;
        this.shardFiles.push(path.join(dir, sh.file));
        this.shardStart.push(this.shardStart[this.shardStart.length - 1]! + sh.tokens);
        hash.update(`|${sh.sha256 ?? sh.file}:${sh.tokens}`);
      }
    }
    this.tokens = this.shardStart[this.shardStart.length - 1]!;
    this.windows = Math.floor(this.tokens / (seqLen + 1));
    this.fingerprint = hash.digest('hex').slice(0, 16);
    this.maxOpen = maxOpen;
    this.scratch = new Uint32Array(seqLen + 1);
    if (this.windows === 0) {
      throw new Error(`data folder ${dir} holds ${this.tokens} tokens, less than one window of S+1 = ${seqLen + 1}; tokenize more text or use a shorter sequence length`);
    }
  }

  static open(options: TokenDatasetOptions): TokenDataset {
    return new TokenDataset(options.dir, options.seqLen, options.seed, options.maxOpenShards ?? 64);
  }

  /** Passes over the data that `steps` steps of `globalBatch` sequences make (1.5: one and a half). */
  epochsFor(steps: number, globalBatch: number): number {
    return (steps * globalBatch) / this.windows;
  }

  /** Throws an Error that says what to change when the run needs more windows than allowed. */
  checkRun(run: RunCheck): void {
    const maxEpochs = run.maxEpochs === undefined ? 1 : run.maxEpochs === null || run.maxEpochs === 0 ? Infinity : run.maxEpochs;
    const required = run.steps * run.globalBatch;
    const where = `data folder ${this.dir} has ${this.windows.toLocaleString('en-US')} windows of S+1 = ${this.seqLen + 1} tokens (${this.tokens.toLocaleString('en-US')} tokens)`;
    if (run.globalBatch > this.windows) {
      throw new Error(`${where}, fewer than one global batch of ${run.globalBatch} sequences; tokenize more text, or lower the batch size or the sequence length`);
    }
    if (required > this.windows * maxEpochs) {
      throw new Error(`${where}; the run needs steps × global batch = ${run.steps} × ${run.globalBatch} = ${required.toLocaleString('en-US')} windows ` +
        `(${(required / this.windows).toFixed(2)} epochs), more than the ${maxEpochs} epoch(s) allowed; tokenize more text, ` +
        `lower the steps, batch size or sequence length, or allow more epochs (--max_epochs ${Math.ceil(required / this.windows)}, or 0 for no cap)`);
    }
  }

  private permutation(epoch: number): FeistelPermutation {
    let p = this.permutations.get(epoch);
    if (p === undefined) {
      if (this.permutations.size > 4) this.permutations.clear();
      p = new FeistelPermutation(this.windows, this.seed, epoch);
      this.permutations.set(epoch, p);
    }
    return p;
  }

  /** The window read at global slot p (see the file comment). */
  windowAtSlot(p: number): { window: number; epoch: number } {
    const epoch = Math.floor(p / this.windows);
    return { window: this.permutation(epoch).at(p - epoch * this.windows), epoch };
  }

  batch(req: BatchRequest): Batch {
    const { step, globalBatch: G, microBatch: B } = req;
    const microIndex = req.microIndex ?? 0;
    const dpRank = req.dpRank ?? 0;
    const dpSize = req.dpSize ?? 1;
    if (!(Number.isSafeInteger(step) && step >= 0)) throw new Error(`internal: step ${step}`);
    if (!(Number.isInteger(dpSize) && dpSize >= 1 && Number.isInteger(dpRank) && dpRank >= 0 && dpRank < dpSize)) {
      throw new Error(`internal: data-parallel rank ${dpRank} of ${dpSize}`);
    }
    if (!(Number.isInteger(G) && Number.isInteger(B) && B >= 1 && G >= 1 && G % (dpSize * B) === 0)) {
      throw new Error(`global batch ${G} must equal data-parallel size × micro-batch × micro-batches per step (dp ${dpSize} × micro-batch ${B} × an integer); change one of them`);
    }
    const perRank = G / dpSize;
    const microBatches = perRank / B;
    if (!(Number.isInteger(microIndex) && microIndex >= 0 && microIndex < microBatches)) {
      throw new Error(`internal: micro-batch ${microIndex} of ${microBatches}`);
    }
    const S = this.seqLen;
    const inputs = new Int32Array(B * S);
    const labels = new Int32Array(B * S);
    const windows: number[] = [];
    const epochs: number[] = [];
    const first = step * G + dpRank * perRank + microIndex * B;
    for (let row = 0; row < B; row++) {
      const { window, epoch } = this.windowAtSlot(first + row);
      const w = this.readWindow(window, this.scratch);
      inputs.set(w.subarray(0, S), row * S);
      labels.set(w.subarray(1, S + 1), row * S);
      windows.push(window);
      epochs.push(epoch);
    }
    return { inputs, labels, windows, epochs };
  }

  /** Tokens of window w (S+1 of them), read from the shard(s) that hold it. */
  readWindow(w: number, out: Uint32Array = new Uint32Array(this.seqLen + 1)): Uint32Array {
    if (!(Number.isInteger(w) && w >= 0 && w < this.windows)) throw new Error(`internal: window ${w} outside 0..${this.windows - 1}`);
    const len = this.seqLen + 1;
    let pos = w * len;
    let done = 0;
    let shard = this.shardOf(pos);
    while (done < len) {
      const reader = this.reader(shard);
      const offset = pos - this.shardStart[shard]!;
      const n = Math.min(len - done, reader.tokenCount - offset);
      reader.read(offset, n, out.subarray(done, done + n));
      for (let i = done; i < done + n; i++) {
        if (out[i]! >= this.vocabSize) {
          throw new Error(`token shard ${reader.path} holds token id ${out[i]} at token ${offset + i - done}, outside the vocabulary of ${this.vocabSize}; the shard is corrupt: tokenize it again`);
        }
      }
      done += n;
      pos += n;
      shard++;
    }
    return out;
  }

  private shardOf(pos: number): number {
    let lo = 0;
    let hi = this.shardFiles.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.shardStart[mid]! <= pos) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  private reader(i: number): ShardReader {
    let r = this.open.get(i);
    if (r !== undefined) {
      this.open.delete(i); // re-insert: Map order is the LRU order
      this.open.set(i, r);
      return r;
    }
    const file = this.shardFiles[i]!;
    r = openShard(file);
    const expected = this.shardStart[i + 1]! - this.shardStart[i]!;
    if (r.tokenCount !== expected || r.vocabSize !== this.vocabSize) {
      r.close();
      throw new Error(`token shard ${file} holds ${r.tokenCount} tokens of vocabulary ${r.vocabSize}, but ${path.join(this.dir, MANIFEST_FILE)} says ${expected} tokens of vocabulary ${this.vocabSize}; tokenize the folder again`);
    }
    if (this.open.size >= this.maxOpen) {
      const [oldest, reader] = this.open.entries().next().value as [number, ShardReader];
      reader.close();
      this.open.delete(oldest);
    }
    this.open.set(i, r);
    return r;
  }

  close(): void {
    for (const r of this.open.values()) r.close();
    this.open.clear();
  }
}
