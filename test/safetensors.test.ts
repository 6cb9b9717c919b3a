// safetensors: bit-exact round trip for every dtype (random bytes, NaN payloads included),
// scalar and empty shapes, metadata, header padding to 8 bytes with spaces, byte-range reads,
// tensors written in pieces and out of order, a hand-made file as other writers lay it out, and
// every lie or damage in a file as an Error naming the file and the problem.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  openSafetensors, writeSafetensors, SafetensorsWriter, safetensorsDTypeBytes, safetensorsDTypeOf, tensorDTypeOf,
  type SafetensorsDType, type SafetensorsTensorData,
} from '../src/io/safetensors.js';

const DTYPES: SafetensorsDType[] = ['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2', 'I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL'];

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-st-'));
  made.push(d);
  return d;
}

function bytesOf(v: ArrayBufferView): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

/** A file with exactly this header text and data (for damaged-file cases). */
function rawFile(file: string, header: string | object, data: Uint8Array, lengthOverride?: bigint): string {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const json = Buffer.from(text);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
  return file;
}

test('safetensors: bit-exact round trip for every dtype, scalar and empty shapes', () => {
  const file = path.join(tempDir(), 'all.safetensors');
  const shapes = [[3, 5], [7], [], [0, 4], [2, 1, 3]];
  const tensors: SafetensorsTensorData[] = [];
  DTYPES.forEach((dtype, i) => {
    const shape = shapes[i % shapes.length]!;
    const count = shape.reduce((a, b) => a * b, 1);
    tensors.push({ name: `layer.${i}.${dtype.toLowerCase()}`, dtype, shape, data: randomBytes(count * safetensorsDTypeBytes(dtype)) });
  });
  // NaN payloads and signed zeros survive: the file holds bytes, not numbers.
  const f32 = new Uint32Array([0x7fc00001, 0xffa00000, 0x80000000, 0x3f800000]);
  tensors.push({ name: 'nan.f32', dtype: 'F32', shape: [4], data: f32 });
  writeSafetensors(file, tensors, { format: 'pt', note: 'ünïcode' });

  const raw = fs.readFileSync(file);
  const headerLength = Number(raw.readBigUInt64LE(0));
  assert.equal((8 + headerLength) % 8, 0, 'data starts 8-byte aligned');
  assert.match(raw.toString('utf8', 8, 8 + headerLength), /^\{.*\} *$/s);

  const f = openSafetensors(file);
  assert.deepEqual(f.metadata, { format: 'pt', note: 'ünïcode' });
  assert.deepEqual([...f.tensors.keys()], tensors.map((t) => t.name));
  for (const t of tensors) {
    const info = f.tensors.get(t.name)!;
    assert.equal(info.dtype, t.dtype);
    assert.deepEqual(info.shape, t.shape);
    assert.ok(bytesOf(f.readBytes(t.name)).equals(bytesOf(t.data)), t.name);
    const typed = f.readTensor(t.name);
    assert.ok(bytesOf(typed.data).equals(bytesOf(t.data)), `${t.name} typed`);
  }
  assert.ok(f.readTensor('layer.1.f32').data instanceof Float32Array);
  assert.ok(f.readTensor('layer.3.bf16').data instanceof Uint16Array);
  assert.ok(f.readTensor('layer.6.i64').data instanceof BigInt64Array);
  assert.ok(f.readTensor('layer.7.i32').data instanceof Int32Array);
  const part = f.readBytes('layer.0.f64', { start: 16, length: 24 });
  assert.ok(bytesOf(part).equals(bytesOf(tensors[0]!.data).subarray(16, 40)));
  assert.throws(() => f.readBytes('nope'), /has no tensor named "nope"/);
  f.close();
});

test('safetensors: streamed writes in pieces and in any order; unfinished files never appear', () => {
  const dir = tempDir();
  const file = path.join(dir, 'stream.safetensors');
  const a = Float32Array.from({ length: 1000 }, (_, i) => i * 0.5);
  const b = Int32Array.from({ length: 10 }, (_, i) => -i);
  const w = SafetensorsWriter.create(file, [{ name: 'a', dtype: 'F32', shape: [10, 100] }, { name: 'b', dtype: 'I32', shape: [10] }]);
  w.write('b', b);
  for (let i = 0; i < 1000; i += 300) w.write('a', a.subarray(i, i + 300));
  assert.ok(!fs.existsSync(file));
  assert.throws(() => w.write('b', b), /got 80 bytes/);
  w.finish();
  const f = openSafetensors(file);
  assert.deepEqual(f.readTensor('a').data, a);
  assert.deepEqual(f.readTensor('b').data, b);
  f.close();

  const half = path.join(dir, 'half.safetensors');
  const h = SafetensorsWriter.create(half, [{ name: 'a', dtype: 'F32', shape: [4] }]);
  h.write('a', new Float32Array(2));
  assert.throws(() => h.finish(), /closed before tensors a were fully written/);
  assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('half')), []);

  assert.throws(() => SafetensorsWriter.create(path.join(dir, 'dup'), [{ name: 'x', dtype: 'U8', shape: [1] }, { name: 'x', dtype: 'U8', shape: [1] }]), /x appears twice/);
  assert.throws(() => SafetensorsWriter.create(path.join(dir, 'neg'), [{ name: 'x', dtype: 'U8', shape: [-1] }]), /shape \[-1\]/);
});

test('safetensors: reads a file laid out as the reference writer does', () => {
  const file = path.join(tempDir(), 'ref.safetensors');
  const header = '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}';
  const padded = header + ' '.repeat((8 - ((header.length + 8) % 8)) % 8);
  const data = Buffer.alloc(16);
  data.writeFloatLE(1.5, 0);
  data.writeFloatLE(-2, 4);
  data.writeBigInt64LE(2n ** 40n + 3n, 8);
  rawFile(file, padded, data);
  const f = openSafetensors(file);
  assert.deepEqual(Array.from(f.readTensor('a').data as Float32Array), [1.5, -2]);
  assert.deepEqual(Array.from(f.readTensor('b').data as BigInt64Array), [2n ** 40n + 3n]);
  assert.equal(f.tensors.get('b')!.fileOffset, 8 + padded.length + 8);
  f.close();
});

test('safetensors: damaged or lying files are Errors naming the file and the problem', () => {
  const dir = tempDir();
  const t = (dtype: string, shape: number[], offsets: number[]): object => ({ dtype, shape, data_offsets: offsets });
  const cases: [string, () => string, RegExp][] = [
    ['tiny', () => { const f = path.join(dir, 'tiny'); fs.writeFileSync(f, Buffer.alloc(5)); return f; }, /truncated: 5 bytes, shorter than the 8-byte header length/],
    ['length past end', () => rawFile(path.join(dir, 'len'), { a: t('U8', [1], [0, 1]) }, new Uint8Array(1), 1000n), /header length 1000 runs past the end/],
    ['not json', () => rawFile(path.join(dir, 'json'), '{"a": ', new Uint8Array(0)), /header is not valid JSON/],
    ['no brace', () => rawFile(path.join(dir, 'brace'), ' {}', new Uint8Array(0)), /does not start with "\{"/],
    ['entry', () => rawFile(path.join(dir, 'entry'), { a: 5 }, new Uint8Array(0)), /tensor a: entry is not an object/],
    ['dtype', () => rawFile(path.join(dir, 'dtype'), { a: t('F12', [1], [0, 1]) }, new Uint8Array(1)), /tensor a: unknown dtype "F12"/],
    ['shape', () => rawFile(path.join(dir, 'shape'), { a: t('F32', [1.5], [0, 4]) }, new Uint8Array(4)), /tensor a: shape \[1\.5\]/],
    ['size', () => rawFile(path.join(dir, 'size'), { a: t('F32', [3], [0, 8]) }, new Uint8Array(8)), /tensor a: data_offsets \[0, 8\] hold 8 bytes, but F32 × shape \[3\] needs 12/],
    ['reversed', () => rawFile(path.join(dir, 'rev'), { a: t('U8', [0], [4, 2]) }, new Uint8Array(4)), /not \[begin, end\]/],
    ['overlap', () => rawFile(path.join(dir, 'overlap'), { a: t('U8', [4], [0, 4]), b: t('U8', [4], [2, 6]) }, new Uint8Array(6)), /tensor b: data_offsets \[2, 6\] overlap/],
    ['gap', () => rawFile(path.join(dir, 'gap'), { a: t('U8', [2], [0, 2]), b: t('U8', [2], [4, 6]) }, new Uint8Array(6)), /tensor b: .* leave a gap of 2 bytes/],
    ['past data', () => rawFile(path.join(dir, 'past'), { a: t('U8', [8], [0, 8]) }, new Uint8Array(5)), /run past the 5 bytes of data \(file truncated\?\)/],
    ['truncated', () => rawFile(path.join(dir, 'trunc'), { a: t('U8', [2], [0, 2]), b: t('U8', [3], [2, 5]) }, new Uint8Array(4)), /tensor b: .* run past the 4 bytes/],
    ['trailing', () => rawFile(path.join(dir, 'trail'), { a: t('U8', [2], [0, 2]) }, new Uint8Array(3)), /cover 2 bytes of data but the file holds 3; the file is longer than its header says/],
    ['metadata', () => rawFile(path.join(dir, 'meta'), { __metadata__: { n: 1 } }, new Uint8Array(0)), /__metadata__ must be an object of string values/],
    ['utf8', () => { const f = path.join(dir, 'utf8'); const len = Buffer.alloc(8); len.writeBigUInt64LE(2n); fs.writeFileSync(f, Buffer.concat([len, Buffer.from([0x7b, 0xff])])); return f; }, /header is not valid UTF-8/],
  ];
  for (const [name, make, pattern] of cases) {
    const file = make();
    assert.throws(() => openSafetensors(file), (e: Error) => e.message.includes(file) && pattern.test(e.message), name);
  }
  // A real file cut short.
  const good = path.join(dir, 'good.safetensors');
  writeSafetensors(good, [{ name: 'w', dtype: 'BF16', shape: [4, 4], data: new Uint16Array(16) }]);
  const cut = path.join(dir, 'cut.safetensors');
  fs.writeFileSync(cut, fs.readFileSync(good).subarray(0, fs.statSync(good).size - 1));
  assert.throws(() => openSafetensors(cut), /cut\.safetensors: tensor w: data_offsets \[0, 32\] run past the 31 bytes of data/);
  assert.throws(() => openSafetensors(path.join(dir, 'absent.safetensors')), /cannot open safetensors file .*absent/);
});

test('safetensors: dtype mapping to moetrain tensors', () => {
  assert.equal(safetensorsDTypeOf('bf16'), 'BF16');
  assert.equal(tensorDTypeOf('F32'), 'f32');
  assert.equal(tensorDTypeOf('F16'), null);
});
