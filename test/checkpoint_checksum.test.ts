// The checkpoint checksum (XXH32): the published test vectors, the same hash whatever the
// streaming pieces and their alignment, and a single changed bit changes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Xxh32, xxh32 } from '../src/io/xxhash32.js';

const text = (s: string) => new TextEncoder().encode(s);

test('XXH32 matches the published vectors (xxhsum -H0)', () => {
  assert.equal(xxh32(text('')), 0x02cc5d05);
  assert.equal(xxh32(text('a')), 0x550d7456);
  assert.equal(xxh32(text('abc')), 0x32d153ff);
  // 39 bytes: two 16-byte stripes, then a 4-byte word and three single bytes.
  assert.equal(xxh32(text('Nobody inspects the spammish repetition')), 0xe2293b2f);
  assert.equal(new Xxh32().update(text('abc')).hex(), '32d153ff');
});

test('XXH32 streamed in pieces of any size and alignment equals the one-shot hash', () => {
  const n = 5000;
  const data = new Uint8Array(n + 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 17) & 255;
  for (const shift of [0, 1, 2, 3]) {
    const bytes = data.subarray(shift, shift + n);
    const whole = xxh32(bytes);
    // The one-shot hash of an unaligned view goes through the aligned copy; it must agree with an aligned copy.
    assert.equal(whole, xxh32(bytes.slice()));
    for (const piece of [1, 3, 7, 16, 17, 64, 1000]) {
      const h = new Xxh32();
      for (let at = 0; at < n; at += piece) h.update(bytes.subarray(at, Math.min(n, at + piece)));
      assert.equal(h.digest(), whole, `pieces of ${piece} bytes at shift ${shift}`);
    }
  }
  const flipped = data.slice(0, n);
  flipped[2500]! ^= 4;
  assert.notEqual(xxh32(flipped), xxh32(data.subarray(0, n)));
});
