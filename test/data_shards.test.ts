// Token shards: streamed write (many small appends across the write buffer), reads by range,
// the .partial → final rename, and every damaged-file case as an Error naming file and problem.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ShardWriter, openShard, SHARD_HEADER_BYTES, PARTIAL_SUFFIX } from '../src/data/shards.js';

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-shards-'));
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
  assert.deepEqual(w.finish(), { path: file, tokens: 103 });
  assert.ok(!fs.existsSync(file + PARTIAL_SUFFIX));
  assert.equal(fs.statSync(file).size, SHARD_HEADER_BYTES + 4 * 103);
  assert.equal(fs.readFileSync(file).toString('latin1', 0, 8), 'MTTOKENS');

  const r = openShard(file);
  assert.equal(r.tokenCount, 103);
  assert.equal(r.vocabSize, 1000);
  assert.deepEqual(r.read(0, 103), tokens);
  assert.deepEqual(r.read(50, 13), tokens.subarray(50, 63));
  const out = new Uint32Array(20).fill(7);
  r.read(100, 3, out.subarray(4));
  assert.deepEqual(Array.from(out.subarray(3, 8)), [7, tokens[100], tokens[101], tokens[102], 7]);
  assert.equal(r.read(103, 0).length, 0);
  assert.throws(() => r.read(100, 4), /outside shard/);
  r.close();
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
  writeShard(good, Uint32Array.from({ length: 10 }, (_, i) => i));
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
    ['dtype.tokens', (b) => { b.writeUInt32LE(2, 12); return b; }, /dtype code 2/],
    ['count.tokens', (b) => { b.writeBigUInt64LE(11n, 24); return b; }, /truncated: header says 11 tokens/],
  ];
  for (const [name, edit, pattern] of cases) {
    const file = variant(name, edit);
    assert.throws(() => openShard(file), (e: Error) => e.message.includes(file) && pattern.test(e.message), name);
  }
  assert.throws(() => openShard(path.join(dir, 'absent.tokens')), /cannot open token shard .*absent\.tokens/);
});
