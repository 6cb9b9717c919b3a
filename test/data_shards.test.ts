// Token shards: streamed write (many small appends across the write buffer), reads by range,
// the .partial → final rename, uint16 storage when the vocabulary fits (uint32 otherwise, and
// uint32 shards written before uint16 existed still read), the content hash (the same for both
// widths), and every damaged-file case as an Error naming file and problem.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ShardWriter, openShard, shardDTypeFor, SHARD_HEADER_BYTES, PARTIAL_SUFFIX } from '../src/data/shards.js';

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-shards-'));
  made.push(d);
  return d;
}

function writeShard(file: string, tokens: Uint32Array, vocabSize = 1000): void {
  const w = ShardWriter.create(file, { vocabSize, bufferTokens: 7 });
  for (let i = 0; i < tokens.length; i += 5) w.append(tokens.subarray(i, i + 5));
  w.finish();
}

test('shards: write in pieces, read any range', () => {
  const file = path.join(tempDir(), 'a.tokens');
  const tokens = Uint32Array.from({ length: 103 }, (_, i) => (i * 37) % 1000);
  const w = ShardWriter.create(file, { vocabSize: 1000, bufferTokens: 7 });
  for (let i = 0; i < tokens.length; i += 5) w.append(tokens.subarray(i, i + 5));
  w.append([]);
  assert.ok(!fs.existsSync(file), 'no final name before finish');
  assert.ok(fs.existsSync(file + PARTIAL_SUFFIX));
  const sha256 = createHash('sha256').update(new Uint8Array(tokens.buffer)).digest('hex');
  assert.deepEqual(w.finish(), { path: file, tokens: 103, sha256 });
  assert.ok(!fs.existsSync(file + PARTIAL_SUFFIX));
  assert.equal(fs.statSync(file).size, SHARD_HEADER_BYTES + 2 * 103, 'a vocabulary of 1000 is stored as uint16');
  assert.equal(fs.readFileSync(file).readUInt32LE(12), 2);
  assert.equal(fs.readFileSync(file).toString('latin1', 0, 8), 'MTTOKENS');

  const r = openShard(file);
  assert.equal(r.tokenCount, 103);
  assert.equal(r.vocabSize, 1000);
  assert.equal(r.dtype, 'uint16');
  assert.deepEqual(r.read(0, 103), tokens);
  assert.deepEqual(r.read(50, 13), tokens.subarray(50, 63));
  const out = new Uint32Array(20).fill(7);
  r.read(100, 3, out.subarray(4));
  assert.deepEqual(Array.from(out.subarray(3, 8)), [7, tokens[100], tokens[101], tokens[102], 7]);
  assert.equal(r.read(103, 0).length, 0);
  assert.throws(() => r.read(100, 4), /outside shard/);
  r.close();
});

test('shards: uint16 when every id fits, uint32 otherwise; both read back as uint32 with the same content hash', () => {
  assert.equal(shardDTypeFor(257), 'uint16');
  assert.equal(shardDTypeFor(65536), 'uint16');
  assert.equal(shardDTypeFor(65537), 'uint32');
  assert.equal(shardDTypeFor(102400), 'uint32');
  const dir = tempDir();
  const small = Uint32Array.from({ length: 1001 }, (_, i) => (i * 7919) % 65536);
  const write = (name: string, tokens: Uint32Array, vocabSize: number, dtype?: 'uint16' | 'uint32') => {
    const w = ShardWriter.create(path.join(dir, name), { vocabSize, bufferTokens: 100, ...(dtype ? { dtype } : {}) });
    w.append(tokens.subarray(0, 500)); w.append(tokens.subarray(500));
    return w.finish();
  };
  const narrow = write('n.tokens', small, 65536);
  // The layout moetrain wrote before uint16 existed (dtype code 1, 4 bytes a token).
  const wide = write('w.tokens', small, 65536, 'uint32');
  assert.equal(narrow.sha256, wide.sha256, 'the hash is of the ids, not of the stored bytes');
  assert.equal(fs.statSync(path.join(dir, 'n.tokens')).size, SHARD_HEADER_BYTES + 2 * 1001);
  assert.equal(fs.statSync(path.join(dir, 'w.tokens')).size, SHARD_HEADER_BYTES + 4 * 1001);
  for (const [name, dtype] of [['n.tokens', 'uint16'], ['w.tokens', 'uint32']] as const) {
    const r = openShard(path.join(dir, name));
    assert.equal(r.dtype, dtype);
    assert.deepEqual(r.read(0, 1001), small);
    assert.deepEqual(r.read(999, 2), small.subarray(999));
    const out = new Uint32Array(5).fill(9);
    r.read(3, 3, out.subarray(1));
    assert.deepEqual(Array.from(out), [9, small[3], small[4], small[5], 9]);
    r.close();
  }
  const big = Uint32Array.from({ length: 50 }, (_, i) => 100000 + i);
  write('b.tokens', big, 102400);
  const r = openShard(path.join(dir, 'b.tokens'));
  assert.equal(r.dtype, 'uint32');
  assert.deepEqual(r.read(0, 50), big);
  r.close();
  assert.throws(() => ShardWriter.create(path.join(dir, 'x.tokens'), { vocabSize: 70000, dtype: 'uint16' }), /a vocabulary of 70000 does not fit uint16/);
  const other = write('o.tokens', Uint32Array.from(small, (t, i) => (i === 1000 ? t ^ 1 : t)), 65536);
  assert.notEqual(other.sha256, narrow.sha256);
});

test('shards: empty shard and out-of-vocabulary token', () => {
  const dir = tempDir();
  const empty = path.join(dir, 'e.tokens');
  ShardWriter.create(empty, { vocabSize: 5 }).finish();
  assert.equal(openShard(empty).tokenCount, 0);
  const w = ShardWriter.create(path.join(dir, 'x.tokens'), { vocabSize: 5 });
  assert.throws(() => w.append([1, 5]), /token id 5 is outside the vocabulary 0\.\.4/);
  w.abort();
  assert.ok(!fs.existsSync(path.join(dir, 'x.tokens' + PARTIAL_SUFFIX)));
});

test('shards: damaged files are Errors that name the file and the problem', () => {
  const dir = tempDir();
  const good = path.join(dir, 'good.tokens');
  writeShard(good, Uint32Array.from({ length: 10 }, (_, i) => i), 100000);
  const bytes = fs.readFileSync(good);
  const variant = (name: string, edit: (b: Buffer) => Buffer): string => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, edit(Buffer.from(bytes)));
    return file;
  };
  const cases: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['truncated.tokens', (b) => b.subarray(0, b.length - 3), /is truncated: header says 10 tokens \(72 bytes\) but the file has 69 bytes/],
    ['long.tokens', (b) => Buffer.concat([b, Buffer.alloc(4)]), /longer than its header says/],
    ['tiny.tokens', (b) => b.subarray(0, 10), /truncated: 10 bytes, shorter than the 32-byte header/],
    ['magic.tokens', (b) => { b.write('NOTTOKEN', 0, 'latin1'); return b; }, /not a moetrain token shard: magic "NOTTOKEN"/],
    ['version.tokens', (b) => { b.writeUInt32LE(9, 8); return b; }, /version 9/],
    ['dtype.tokens', (b) => { b.writeUInt32LE(3, 12); return b; }, /dtype code 3; only 1 \(uint32\) and 2 \(uint16\) exist/],
    ['narrowed.tokens', (b) => { b.writeUInt32LE(2, 12); return b; }, /longer than its header says: header says 10 tokens \(52 bytes\) but the file has 72 bytes/],
    ['count.tokens', (b) => { b.writeBigUInt64LE(11n, 24); return b; }, /truncated: header says 11 tokens/],
  ];
  for (const [name, edit, pattern] of cases) {
    const file = variant(name, edit);
    assert.throws(() => openShard(file), (e: Error) => e.message.includes(file) && pattern.test(e.message), name);
  }
  assert.throws(() => openShard(path.join(dir, 'absent.tokens')), /cannot open token shard .*absent\.tokens/);
});
