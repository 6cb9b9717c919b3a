// Packed token shards: one file of token ids behind a fixed 32-byte header, stored as uint16
// when every id fits (a vocabulary of at most 65,536) and as uint32 otherwise. Readers take
// byte ranges by offset (fs.readSync on a descriptor) and never load a whole shard, so a data
// set may be far larger than memory; they return uint32 ids whatever the stored width. Writers
// stream to `<path>.partial` and rename to `<path>` only once the header holds the final count,
// so a file with the final name is complete. A writer also hashes what it writes: the sha256 of
// the ids as little-endian uint32 (the same for either stored width) identifies the content.
//
// Header, little-endian:
//   0  8 bytes  magic "MTTOKENS"
//   8  u32      version (1)
//   12 u32      dtype (1 = uint32, 2 = uint16)
//   16 u32      header size in bytes (32)
//   20 u32      vocabulary size (every token id is below it)
//   24 u64      token count
//   32 ...      token count × the dtype's bytes
//
// Usage:
//   const w = ShardWriter.create('out/a-00000.tokens', { vocabSize: 257 });   // uint16 on disk
//   w.append(ids); w.append(moreIds);
//   const { tokens, sha256 } = w.finish();               // renames .partial → final name
//   const r = openShard('out/a-00000.tokens');
//   const window = r.read(1000, 513);                    // Uint32Array of 513 tokens
//   r.close();
import fs from 'node:fs';
import { createHash, type Hash } from 'node:crypto';
import { assertLittleEndianHost, readFully, writeFully } from '../io/files.js';

export const SHARD_MAGIC = 'MTTOKENS';
export const SHARD_VERSION = 1;
export const SHARD_DTYPE_UINT32 = 1;
export const SHARD_DTYPE_UINT16 = 2;
export const SHARD_HEADER_BYTES = 32;
/** Suffix of a shard still being written (or left behind by an interrupted run). */
export const PARTIAL_SUFFIX = '.partial';

/** How token ids are stored in a shard. */
export type ShardDType = 'uint16' | 'uint32';

/** The narrowest storage that holds every id of a vocabulary of this size. */
export function shardDTypeFor(vocabSize: number): ShardDType {
  return vocabSize <= 0x10000 ? 'uint16' : 'uint32';
}

export function shardTokenBytes(dtype: ShardDType): number {
  switch (dtype) {
    case 'uint16': return 2;
    case 'uint32': return 4;
    default: return dtype satisfies never;
  }
}

function dtypeCode(dtype: ShardDType): number {
  switch (dtype) {
    case 'uint16': return SHARD_DTYPE_UINT16;
    case 'uint32': return SHARD_DTYPE_UINT32;
    default: return dtype satisfies never;
  }
}

function encodeHeader(dtype: ShardDType, vocabSize: number, tokenCount: number): Buffer {
  const header = Buffer.alloc(SHARD_HEADER_BYTES);
  header.write(SHARD_MAGIC, 0, 'latin1');
  header.writeUInt32LE(SHARD_VERSION, 8);
  header.writeUInt32LE(dtypeCode(dtype), 12);
  header.writeUInt32LE(SHARD_HEADER_BYTES, 16);
  header.writeUInt32LE(vocabSize, 20);
  header.writeBigUInt64LE(BigInt(tokenCount), 24);
  return header;
}

export interface ShardWriterOptions {
  /** Every token id must be below it; recorded in the header. */
  vocabSize: number;
  /** Tokens buffered before a write (default 1 Mi tokens). */
  bufferTokens?: number;
  /** Storage width (default: shardDTypeFor(vocabSize)). */
  dtype?: ShardDType;
}

export class ShardWriter {
  private buffer: Uint32Array;
  /** The uint16 copy of the buffer written to disk (uint16 shards only). */
  private narrow: Uint16Array | null;
  private buffered = 0;
  private written = 0;
  private closed = false;
  private readonly hash: Hash = createHash('sha256');

  private constructor(
    readonly path: string,
    readonly tempPath: string,
    private fd: number,
    readonly vocabSize: number,
    readonly dtype: ShardDType,
    bufferTokens: number,
  ) {
    this.buffer = new Uint32Array(bufferTokens);
    this.narrow = dtype === 'uint16' ? new Uint16Array(bufferTokens) : null;
  }

  static create(path: string, options: ShardWriterOptions): ShardWriter {
    assertLittleEndianHost('token shards');
    if (!(Number.isInteger(options.vocabSize) && options.vocabSize > 0 && options.vocabSize <= 0xffffffff)) {
      throw new Error(`shard ${path}: vocabSize ${options.vocabSize} must be an integer in 1..2^32-1`);
    }
    const dtype = options.dtype ?? shardDTypeFor(options.vocabSize);
    if (options.vocabSize > 2 ** (8 * shardTokenBytes(dtype))) throw new Error(`shard ${path}: a vocabulary of ${options.vocabSize} does not fit ${dtype}`);
    const tempPath = path + PARTIAL_SUFFIX;
    const fd = fs.openSync(tempPath, 'w');
    writeFully(fd, encodeHeader(dtype, options.vocabSize, 0), 0);
    return new ShardWriter(path, tempPath, fd, options.vocabSize, dtype, options.bufferTokens ?? 1 << 20);
  }

  /** Tokens appended so far. */
  get tokenCount(): number { return this.written + this.buffered; }

  append(tokens: ArrayLike<number>): void {
    if (this.closed) throw new Error(`internal: append to finished shard ${this.path}`);
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (!(t >= 0 && t < this.vocabSize)) {
        throw new Error(`shard ${this.path}: token id ${t} is outside the vocabulary 0..${this.vocabSize - 1}`);
      }
    }
    let from = 0;
    while (from < tokens.length) {
      const n = Math.min(tokens.length - from, this.buffer.length - this.buffered);
      if (ArrayBuffer.isView(tokens)) this.buffer.set((tokens as unknown as Uint32Array).subarray(from, from + n), this.buffered);
      else for (let i = 0; i < n; i++) this.buffer[this.buffered + i] = tokens[from + i]!;
      this.buffered += n;
      from += n;
      if (this.buffered === this.buffer.length) this.flush();
    }
  }

  private flush(): void {
    if (this.buffered === 0) return;
    const ids = this.buffer.subarray(0, this.buffered);
    this.hash.update(new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength));
    const width = shardTokenBytes(this.dtype);
    let stored: Uint8Array;
    if (this.narrow !== null) {
      const n = this.narrow.subarray(0, this.buffered);
      n.set(ids);
      stored = new Uint8Array(n.buffer, n.byteOffset, n.byteLength);
    } else {
      stored = new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength);
    }
    writeFully(this.fd, stored, SHARD_HEADER_BYTES + this.written * width);
    this.written += this.buffered;
    this.buffered = 0;
  }

  /** Writes the final header, syncs, and renames the file to its final name. sha256: hex digest
   * of the ids as little-endian uint32. */
  finish(): { path: string; tokens: number; sha256: string } {
    this.flush();
    writeFully(this.fd, encodeHeader(this.dtype, this.vocabSize, this.written), 0);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.closed = true;
    fs.renameSync(this.tempPath, this.path);
    return { path: this.path, tokens: this.written, sha256: this.hash.digest('hex') };
  }

  /** Closes and deletes the partial file (after an error). */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
    fs.rmSync(this.tempPath, { force: true });
  }
}

export interface ShardReader {
  readonly path: string;
  readonly tokenCount: number;
  readonly vocabSize: number;
  /** How the ids are stored; read() returns uint32 either way. */
  readonly dtype: ShardDType;
  /** Reads tokens [start, start+count) into `out` (or a new array) and returns it. */
  read(start: number, count: number, out?: Uint32Array): Uint32Array;
  close(): void;
}

export interface ShardHeader {
  tokenCount: number;
  vocabSize: number;
  dtype: ShardDType;
}

/** Reads and checks only the header and the file size. */
export function readShardHeader(path: string, fd: number): ShardHeader {
  const size = fs.fstatSync(fd).size;
  if (size < SHARD_HEADER_BYTES) {
    throw new Error(`token shard ${path} is truncated: ${size} bytes, shorter than the ${SHARD_HEADER_BYTES}-byte header; re-run tokenize for it`);
  }
  const header = Buffer.alloc(SHARD_HEADER_BYTES);
  readFully(fd, header, 0, `token shard ${path}`);
  const magic = header.toString('latin1', 0, 8);
  if (magic !== SHARD_MAGIC) {
    throw new Error(`${path} is not a moetrain token shard: magic ${JSON.stringify(magic)}, expected "${SHARD_MAGIC}"`);
  }
  const version = header.readUInt32LE(8);
  if (version !== SHARD_VERSION) throw new Error(`token shard ${path} has version ${version}; this moetrain reads version ${SHARD_VERSION}`);
  const code = header.readUInt32LE(12);
  let dtype: ShardDType;
  if (code === SHARD_DTYPE_UINT32) dtype = 'uint32';
  else if (code === SHARD_DTYPE_UINT16) dtype = 'uint16';
  else throw new Error(`token shard ${path} has dtype code ${code}; only ${SHARD_DTYPE_UINT32} (uint32) and ${SHARD_DTYPE_UINT16} (uint16) exist`);
  const headerBytes = header.readUInt32LE(16);
  if (headerBytes !== SHARD_HEADER_BYTES) throw new Error(`token shard ${path} declares a ${headerBytes}-byte header; expected ${SHARD_HEADER_BYTES}`);
  const vocabSize = header.readUInt32LE(20);
  if (vocabSize === 0) throw new Error(`token shard ${path} has vocabulary size 0 in its header`);
  const count = header.readBigUInt64LE(24);
  const expected = BigInt(SHARD_HEADER_BYTES) + count * BigInt(shardTokenBytes(dtype));
  if (BigInt(size) !== expected) {
    const what = BigInt(size) < expected ? 'truncated' : 'longer than its header says';
    throw new Error(`token shard ${path} is ${what}: header says ${count} tokens (${expected} bytes) but the file has ${size} bytes; re-run tokenize for it`);
  }
  return { tokenCount: Number(count), vocabSize, dtype };
}

export function openShard(path: string): ShardReader {
  assertLittleEndianHost('token shards');
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot open token shard ${path}: ${(e as Error).message}`);
  }
  let header: ShardHeader;
  try {
    header = readShardHeader(path, fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  const { tokenCount, vocabSize, dtype } = header;
  const width = shardTokenBytes(dtype);
  /** uint16 shards are read here, then widened into the caller's array. */
  let narrow = new Uint16Array(0);
  return {
    path,
    tokenCount,
    vocabSize,
    dtype,
    read(start: number, count: number, out?: Uint32Array): Uint32Array {
      if (!(Number.isInteger(start) && Number.isInteger(count) && start >= 0 && count >= 0 && start + count <= tokenCount)) {
        throw new Error(`internal: read of tokens [${start}, ${start + count}) outside shard ${path} of ${tokenCount} tokens`);
      }
      const dst = out ?? new Uint32Array(count);
      if (dst.length < count) throw new Error(`internal: output of ${dst.length} tokens for a read of ${count}`);
      const position = SHARD_HEADER_BYTES + start * width;
      if (dtype === 'uint32') {
        readFully(fd, new Uint8Array(dst.buffer, dst.byteOffset, count * 4), position, `token shard ${path}`);
        return dst;
      }
      if (narrow.length < count) narrow = new Uint16Array(count);
      readFully(fd, new Uint8Array(narrow.buffer, 0, count * 2), position, `token shard ${path}`);
      dst.set(narrow.subarray(0, count));
      return dst;
    },
    close(): void { fs.closeSync(fd); },
  };
}
