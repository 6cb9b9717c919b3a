// bench/attention.ts's combination of measurement rounds: medians per cell, cuDNN cells only
// where every round has them, the per-round ratio lines. Pure arithmetic: runs without a GPU.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { attentionFlops, combineRounds, type PeerRow } from '../bench/attention.js';

const timing = (ms: number, flops: number) => ({ ms, tflops: flops / ms / 1e9 });

function oursRound(seqs: number[], fwd: number[], bwd: number[], det: number[], agreement: number) {
  return seqs.map((s, i) => ({
    agreement,
    fwd: timing(fwd[i]!, attentionFlops(1, 16, s)),
    bwd: timing(bwd[i]!, attentionFlops(1, 16, s, true)),
    bwdDeterministic: timing(det[i]!, attentionFlops(1, 16, s, true)),
  }));
}

function peerRound(rows: [number, number, number][]): Map<number, PeerRow> {
  return new Map(rows.map(([s, f, b]) => [s, { s, fwd_ms: f, bwd_ms: b, fwd_tflops: 0, bwd_tflops: 0 }]));
}

test('each cell is the median over the rounds, TFLOPS from that median', () => {
  const seqs = [2048, 4096];
  const ours = [
    oursRound(seqs, [0.05, 0.15], [0.20, 0.60], [0.4, 1.2], 3e-3),
    oursRound(seqs, [0.04, 0.14], [0.18, 0.50], [0.3, 1.0], Number.NaN),
    oursRound(seqs, [0.09, 0.13], [0.19, 0.52], [0.5, 1.1], Number.NaN),
  ];
  const peers = [peerRound([[2048, 0.07, 0.24], [4096, 0.19, 0.62]]), peerRound([[2048, 0.06, 0.22], [4096, 0.18, 0.66]]),
    peerRound([[2048, 0.08, 0.23], [4096, 0.20, 0.64]])];
  const { rows, ratios } = combineRounds(1, 16, seqs, ours, peers);
  assert.equal(rows.length, 2);
  assert.equal(rows[0]!.fwd.ms, 0.05, 'the median, not the mean (0.06)');
  assert.equal(rows[0]!.bwd.ms, 0.19);
  assert.equal(rows[1]!.bwd.ms, 0.52, 'the median, not the mean (0.54)');
  assert.equal(rows[1]!.bwdDeterministic.ms, 1.1);
  assert.equal(rows[0]!.agreement, 3e-3, 'the agreement comes from the first round');
  assert.ok(Math.abs(rows[1]!.bwd.tflops - attentionFlops(1, 16, 4096, true) / 0.52 / 1e9) < 1e-9);
  assert.equal(rows[0]!.peerBwd?.ms, 0.23);
  assert.equal(rows[1]!.peerFwd?.ms, 0.19);
  assert.equal(ratios.length, 2);
  // Round 1 at s=4096: cuDNN 0.62 ms against our 0.60 → 1.03x.
  assert.match(ratios[1]!, /^s=4096: cuDNN\/ours by round: bwd 1\.03x 1\.32x 1\.23x, fwd /);
});

test('cuDNN cells are left empty unless every round measured that s', () => {
  const seqs = [2048, 4096];
  const ours = [oursRound(seqs, [1, 1], [1, 1], [1, 1], 0), oursRound(seqs, [1, 1], [1, 1], [1, 1], 0)];
  const peers = [peerRound([[2048, 1, 1], [4096, 1, 1]]), peerRound([[2048, 1, 1]])];
  const { rows, ratios } = combineRounds(1, 16, seqs, ours, peers);
  assert.ok(rows[0]!.peerBwd);
  assert.equal(rows[1]!.peerBwd, undefined);
  assert.equal(ratios.length, 1);
  const none = combineRounds(1, 16, seqs, ours, []);
  assert.equal(none.rows[0]!.peerFwd, undefined);
  assert.equal(none.ratios.length, 0);
});
