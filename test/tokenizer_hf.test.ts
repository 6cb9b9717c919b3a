// HF tokenizer.json through the `tokenizers` package, on byte-level BPE files this test writes
// itself: ids equal a hand-checked case and a plain reference BPE encoder; EOS resolution
// (tokenizer_config.json string or object form, explicit option) and every error a user can cause.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadHfTokenizer } from '../src/data/hf_tokenizer.js';
import { demoCorpus } from '../src/data/demo_corpus.js';
import { buildByteLevelBpe, byteLevelBpeFromMerges, referenceBpeEncode } from './fixtures/data/bpe_tokenizer_json.js';

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-hf-'));
  made.push(d);
  return d;
}

function writeTokenizer(dir: string, json: unknown, config?: unknown): string {
  const file = path.join(dir, 'tokenizer.json');
  fs.writeFileSync(file, JSON.stringify(json));
  if (config !== undefined) fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return file;
}

test('hf tokenizer: hand-checked merges', async () => {
  const dir = tempDir();
  // 'Ġ' is the byte-level symbol of a space. Vocab: bytes 0..255, then th=256, the=257, Ġc=258, Ġca=259, Ġcat=260, EOS=261.
  const built = byteLevelBpeFromMerges([['t', 'h'], ['th', 'e'], ['Ġ', 'c'], ['Ġc', 'a'], ['Ġca', 't']], ['<|endoftext|>']);
  const file = writeTokenizer(dir, built.json, { eos_token: '<|endoftext|>' });
  const tok = await loadHfTokenizer(file);
  assert.equal(tok.eosId, 261);
  assert.equal(tok.vocabSize, 262);
  const [a, b, c] = await tok.encodeBatch(['the cat', 'thee cats', 'a']);
  assert.deepEqual(Array.from(a!), [257, 260]);
  assert.deepEqual(Array.from(b!), [257, 101, 260, 115]);
  assert.deepEqual(Array.from(c!), [97]);
  assert.equal(await tok.decode(b!), 'thee cats');
  // The EOS text inside a document is the special token (the library's added-token rule).
  const [d] = await tok.encodeBatch(['the<|endoftext|>']);
  assert.deepEqual(Array.from(d!), [257, 261]);
});

test('hf tokenizer: ids equal a reference BPE encoder on learned merges', async () => {
  const dir = tempDir();
  const text = demoCorpus({ seed: 3, targetBytes: 20_000 }).text;
  const built = buildByteLevelBpe({ text, merges: 80, specialTokens: ['</s>'] });
  const file = writeTokenizer(dir, built.json, { eos_token: { content: '</s>', special: true } });
  const tok = await loadHfTokenizer(dir); // a folder works too
  assert.equal(tok.eosId, tok.vocabSize - 1);
  const samples = [text.slice(0, 2000), 'Grüße  aus   Köln!\n\n  x 🙂 12345 it\'s', '', '   ', 'The brave wolves chase 17 plus 5 is 22.'];
  const encoded = await tok.encodeBatch(samples);
  for (let i = 0; i < samples.length; i++) {
    assert.deepEqual(Array.from(encoded[i]!), referenceBpeEncode(samples[i]!, built), `sample ${i}`);
    assert.equal(await tok.decode(encoded[i]!), samples[i]);
  }
  assert.equal(tok.tokenToId('</s>'), tok.eosId);
  assert.ok(fs.existsSync(file));
});

test('hf tokenizer: EOS option, missing EOS, EOS not in vocab', async () => {
  const dir = tempDir();
  const built = byteLevelBpeFromMerges([['a', 'b']], ['<eos>']);
  const file = writeTokenizer(dir, built.json);
  await assert.rejects(loadHfTokenizer(file), (e: Error) => e.message.includes(file) && e.message.includes('--eos-token'));
  assert.equal((await loadHfTokenizer(file, { eosToken: '<eos>' })).eosId, 257);
  await assert.rejects(loadHfTokenizer(file, { eosToken: '<nope>' }), /"<nope>" is not in the vocabulary/);
  fs.writeFileSync(path.join(dir, 'special_tokens_map.json'), JSON.stringify({ eos_token: '<eos>' }));
  assert.equal((await loadHfTokenizer(file)).eosId, 257);
});

test('hf tokenizer: unreadable files are Errors naming the file', async () => {
  const dir = tempDir();
  const bad = path.join(dir, 'tokenizer.json');
  fs.writeFileSync(bad, '{"model": {');
  await assert.rejects(loadHfTokenizer(bad), (e: Error) => e.message.includes(bad) && /not valid JSON/.test(e.message));
  fs.writeFileSync(bad, '{"model": {"type": "NoSuchModel"}}');
  await assert.rejects(loadHfTokenizer(bad, { eosToken: 'x' }), (e: Error) => e.message.includes(bad) && /can load/.test(e.message));
  await assert.rejects(loadHfTokenizer(path.join(dir, 'missing.json')), /missing\.json does not exist/);
  const empty = tempDir();
  await assert.rejects(loadHfTokenizer(empty), /has no tokenizer\.json/);
});
