// Byte tokenizer: exact round trip of any text (ASCII, multi-byte UTF-8, empty), EOS handling,
// and the async TextTokenizer form that tokenize uses.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeBytes, decodeBytes, BYTE_EOS_ID, BYTE_VOCAB_SIZE } from '../src/data/byte_tokenizer.js';
import { loadTokenizer } from '../src/data/tokenizer.js';

test('byte tokenizer: vocab is 256 bytes + EOS', () => {
  assert.equal(BYTE_VOCAB_SIZE, 257);
  assert.equal(BYTE_EOS_ID, 256);
});

test('byte tokenizer: round trip is exact for ASCII, multi-byte UTF-8 and empty text', () => {
  for (const text of ['', 'hello', 'Grüße, 世界! 🙂\n\ttabs', '\u0000\u007f', 'a'.repeat(1000)]) {
    const ids = encodeBytes(text);
    assert.ok(ids instanceof Uint32Array);
    assert.deepEqual(Array.from(ids), Array.from(Buffer.from(text, 'utf8')));
    assert.equal(decodeBytes(ids), text);
  }
  assert.deepEqual(Array.from(encodeBytes('é')), [0xc3, 0xa9]);
});

test('byte tokenizer: EOS decodes to nothing; ids above 256 are an error', () => {
  assert.equal(decodeBytes([104, 105, BYTE_EOS_ID, 33]), 'hi!');
  assert.throws(() => decodeBytes([104, 300]), /id 300 at position 1/);
});

test('byte tokenizer through loadTokenizer', async () => {
  const tok = await loadTokenizer({ kind: 'bytes' });
  assert.equal(tok.vocabSize, 257);
  assert.equal(tok.eosId, 256);
  const [a, b] = await tok.encodeBatch(['ab', 'ü']);
  assert.deepEqual(Array.from(a!), [97, 98]);
  assert.deepEqual(Array.from(b!), [0xc3, 0xbc]);
  assert.equal(await tok.decode(b!), 'ü');
});
