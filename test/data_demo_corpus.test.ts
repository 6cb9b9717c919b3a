// Demo corpus: deterministic per seed, near the asked size, the fixed world stays consistent,
// the arithmetic is right; unigram entropy on known distributions.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { demoCorpus, unigramEntropyNats } from '../src/data/demo_corpus.js';
import { encodeBytes } from '../src/data/byte_tokenizer.js';

test('demo corpus: deterministic, sized, consistent facts, correct sums', () => {
  const a = demoCorpus({ seed: 5, targetBytes: 200_000 });
  assert.equal(demoCorpus({ seed: 5, targetBytes: 200_000 }).text, a.text);
  assert.notEqual(demoCorpus({ seed: 6, targetBytes: 200_000 }).text, a.text);
  assert.ok(a.text.length >= 200_000 && a.text.length < 202_000, `${a.text.length} bytes`);
  assert.equal(a.text, a.documents.join('\n\n'));
  assert.ok(/^[\x20-\x7e\n]*$/.test(a.text), 'plain ASCII');
  const homes = new Map<string, Set<string>>();
  for (const [, name, city] of a.text.matchAll(/([A-Z][a-z]+) lives in ([A-Z][a-z]+)\./g)) {
    if (!homes.has(name!)) homes.set(name!, new Set());
    homes.get(name!)!.add(city!);
  }
  assert.ok(homes.size >= 10);
  for (const [name, cities] of homes) assert.equal(cities.size, 1, `${name} lives in one city`);
  let sums = 0;
  for (const [, x, op, y, z] of a.text.matchAll(/(\d+) (plus|minus|times) (\d+) is (\d+)\./g)) {
    const [p, q, r] = [Number(x), Number(y), Number(z)];
    assert.equal(op === 'plus' ? p + q : op === 'minus' ? p - q : p * q, r);
    sums++;
  }
  assert.ok(sums > 500);
  const h = unigramEntropyNats(encodeBytes(a.text));
  assert.ok(h > 2.5 && h < 3.5, `byte entropy ${h}`);
});

test('unigram entropy in nats', () => {
  assert.equal(unigramEntropyNats([7, 7, 7]), 0);
  assert.ok(Math.abs(unigramEntropyNats([0, 1, 0, 1]) - Math.LN2) < 1e-12);
  assert.ok(Math.abs(unigramEntropyNats(Uint32Array.of(0, 1, 2, 3)) - Math.log(4)) < 1e-12);
});
