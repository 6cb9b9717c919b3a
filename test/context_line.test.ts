// The start-up line of a context-parallel run: the zigzag chunks and which ring-attention path a
// chunk allows (a multiple of 128 tokens: one launch per rank on Hopper).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatContextLine } from '../src/train/context_line.js';

test('the context-parallel line names the chunks and the ring path the chunk allows', () => {
  assert.equal(formatContextLine(2, 2048),
    'moetrain: context parallel cp 2: rank r holds zigzag chunks r and 3 − r of 512 tokens (seq_len 2048); ring attention: one launch per rank on Hopper GPUs (the chunk is a multiple of 128 tokens), one per ring step elsewhere');
  assert.equal(formatContextLine(4, 1600),
    'moetrain: context parallel cp 4: rank r holds zigzag chunks r and 7 − r of 200 tokens (seq_len 1600); ring attention: one launch per ring step (one launch per rank on Hopper GPUs needs a chunk that is a multiple of 128 tokens: seq_len a multiple of 1024)');
});
