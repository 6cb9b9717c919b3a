// Packed token shards: one file of uint32 token ids behind a fixed 32-byte header. Readers take
// byte ranges by offset (fs.readSync on a descriptor) and never load a whole shard, so a data
// set may be far larger than memory. Writers stream to `<path>.partial` and rename to `<path>`
// only once the header holds the final count, so a file with the final name is complete.
//
// Header, little-endian:
//   0  8 bytes  magic "MTTOKENS"
//   8  u32      version (1)
//   12 u32      dtype (1 = uint32; the only one)
//   16 u32      header size in bytes (32)
//   20 u32      vocabulary size (every token id is below it)
//   24 u64      token count
//   32 ...      token count × u32 token ids
//
// Usage:
//   const w = ShardWriter.create('out/a-00000.tokens', { vocabSize: 257 });
//   w.append(ids); w.append(moreIds);
//   const { tokens } = w.finish();                       // renames .partial → final name
//   const r = openShard('out/a-00000.tokens');
//   const window = r.read(1000, 513);                    // Uint32Array of 513 tokens
//   r.close();
import fs from 'node:fs';
import os from 'node:os';

export const SHARD_MAGIC = 'MTTOKENS';
export const SHARD_VERSION = 1;
export const SHARD_DTYPE_UINT32 = 1;
export const SHARD_HEADER_BYTES = 32;
/** Suffix of a shard still being written (or left behind by an interrupted run). */
export const PARTIAL_SUFFIX = '.partial';

function assertLittleEndianHost(): void {
  // Token bytes are written and read as the host's Uint32Array memory.
  if (os.endianness() !== 'LE') throw new Error('token shards need a little-endian host');
}

function encodeHeader(vocabSize: number, tokenCount: number): Buffer {
  const header = Buffer.alloc(SHARD_HEADER_BYTES);
  header.write(SHARD_MAGIC, 0, 'latin1');
  header.writeUInt32LE(SHARD_VERSION, 8);
  header.writeUInt32LE(SHARD_DTYPE_UINT32, 12);
  header.writeUInt32LE(SHARD_HEADER_BYTES, 16);
  header.writeUInt32LE(vocabSize, 20);
  header.writeBigUInt64LE(BigInt(tokenCount), 24);
  return header;
}

export interface ShardWriterOptions {
  /** Every token id must be below it; recorded in the header. */
  vocabSize: number;
  /** Tokens buffered before a write (default 1 Mi tokens = 4 MiB). */
  bufferTokens?: number;
}

export class ShardWriter {
  private buffer: Uint32Array;
  private buffered = 0;
  private written = 0;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly tempPath: string,
    private fd: number,
    readonly vocabSize: number,
    bufferTokens: number,
  ) {
    this.buffer = new Uint32Array(bufferTokens);
  }

  static create(path: string, options: ShardWriterOptions): ShardWriter {
    assertLittleEndianHost();
    if (!(Number.isInteger(options.vocabSize) && options.vocabSize > 0 && options.vocabSize <= 0xffffffff)) {
      throw new Error(`shard ${path}: vocabSize ${options.vocabSize} must be an integer in 1..2^32-1`);
    }
    const tempPath = path + PARTIAL_SUFFIX;
    const fd = fs.openSync(tempPath, 'w');
    fs.writeSync(fd, encodeHeader(options.vocabSize, 0), 0, SHARD_HEADER_BYTES, 0);
    return new ShardWriter(path, tempPath, fd, options.vocabSize, options.bufferTokens ?? 1 << 20);
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
    const bytes = new Uint8Array(this.buffer.buffer, 0, this.buffered * 4);
    writeFully(this.fd, bytes, SHARD_HEADER_BYTES + this.written * 4);
    this.written += this.buffered;
    this.buffered = 0;
  }

  /** Writes the final header, syncs, and renames the file to its final name. */
  finish(): { path: string; tokens: number } {
    this.flush();
    fs.writeSync(this.fd, encodeHeader(this.vocabSize, this.written), 0, SHARD_HEADER_BYTES, 0);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.closed = true;
    fs.renameSync(this.tempPath, this.path);
    return { path: this.path, tokens: this.written };
  }

  /** Closes and deletes the partial file (after an error). */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
    fs.rmSync(this.tempPath, { force: true });
  }
}

function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) {
    done += fs.writeSync(fd, bytes, done, bytes.length - done, position + done);
  }
}

export interface ShardReader {
  readonly path: string;
  readonly tokenCount: number;
  readonly vocabSize: number;
  /** Reads tokens [start, start+count) into `out` (or a new array) and returns it. */
  read(start: number, count: number, out?: Uint32Array): Uint32Array;
  close(): void;
}

/** Reads and checks only the header and the file size. */
export function readShardHeader(path: string, fd: number): { tokenCount: number; vocabSize: number } {
  const size = fs.fstatSync(fd).size;
  if (size < SHARD_HEADER_BYTES) {
    throw new Error(`token shard ${path} is truncated: ${size} bytes, shorter than the ${SHARD_HEADER_BYTES}-byte header; re-run tokenize for it`);
  }
  const header = Buffer.alloc(SHARD_HEADER_BYTES);
  readFully(path, fd, header, 0);
  const magic = header.toString('latin1', 0, 8);
  if (magic !== SHARD_MAGIC) {
    throw new Error(`${path} is not a moetrain token shard: magic ${JSON.stringify(magic)}, expected "${SHARD_MAGIC}"`);
  }
  const version = header.readUInt32LE(8);
  if (version !== SHARD_VERSION) throw new Error(`token shard ${path} has version ${version}; this moetrain reads version ${SHARD_VERSION}`);
  const dtype = header.readUInt32LE(12);
  if (dtype !== SHARD_DTYPE_UINT32) throw new Error(`token shard ${path} has dtype code ${dtype}; only ${SHARD_DTYPE_UINT32} (uint32) exists`);
  const headerBytes = header.readUInt32LE(16);
  if (headerBytes !== SHARD_HEADER_BYTES) throw new Error(`token shard ${path} declares a ${headerBytes}-byte header; expected ${SHARD_HEADER_BYTES}`);
  const vocabSize = header.readUInt32LE(20);
  if (vocabSize === 0) throw new Error(`token shard ${path} has vocabulary size 0 in its header`);
  const count = header.readBigUInt64LE(24);
  const expected = BigInt(SHARD_HEADER_BYTES) + count * 4n;
  if (BigInt(size) !== expected) {
    const what = BigInt(size) < expected ? 'truncated' : 'longer than its header says';
    throw new Error(`token shard ${path} is ${what}: header says ${count} tokens (${expected} bytes) but the file has ${size} bytes; re-run tokenize for it`);
  }
  return { tokenCount: Number(count), vocabSize };
}

function readFully(path: string, fd: number, into: Uint8Array, position: number): void {
  let done = 0;
  while (done < into.length) {
    const n = fs.readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw new Error(`token shard ${path} ended early at byte ${position + done} (was it truncated while open?)`);
    done += n;
  }
}

export function openShard(path: string): ShardReader {
  assertLittleEndianHost();
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot open token shard ${path}: ${(e as Error).message}`);
  }
  let header: { tokenCount: number; vocabSize: number };
  try {
    header = readShardHeader(path, fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  const { tokenCount, vocabSize } = header;
  return {
    path,
    tokenCount,
    vocabSize,
    read(start: number, count: number, out?: Uint32Array): Uint32Array {
      if (!(Number.isInteger(start) && Number.isInteger(count) && start >= 0 && count >= 0 && start + count <= tokenCount)) {
        throw new Error(`internal: read of tokens [${start}, ${start + count}) outside shard ${path} of ${tokenCount} tokens`);
      }
      const dst = out ?? new Uint32Array(count);
      if (dst.length < count) throw new Error(`internal: output of ${dst.length} tokens for a read of ${count}`);
      readFully(path, fd, new Uint8Array(dst.buffer, dst.byteOffset, count * 4), SHARD_HEADER_BYTES + start * 4);
      return dst;
    },
    close(): void { fs.closeSync(fd); },
  };
}
