// Context parallelism: the zigzag layout (src/parallel/zigzag.ts), the lse merge and ring MLA
// attention (src/parallel/ring_attention.ts), and the model with its tokens split over cp
// ranks (src/parallel/context_parallel.ts). The multi-process cases run test/helpers/ring_rank.ts
// under `moetrain launch`; their fp32 tolerance is max |Δ| / max |reference| ≤ 3e-5.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { packageRoot } from '../src/package_root.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { mlaAttention } from '../src/ops/mla_attention.js';
import { tidy } from '../src/tensor/scope.js';
import { LocalCommunicator } from '../src/parallel/local_communicator.js';
import { ringMlaAttention } from '../src/parallel/ring_attention.js';
import { blockKind, ringBlocks, ringStep, zigzagChunk, zigzagJoin, zigzagPositions, zigzagSplit } from '../src/parallel/zigzag.js';

const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const rankScript = path.join(packageRoot(), 'dist', 'test', 'helpers', 'ring_rank.js');

function launch(n: number, mode: string): string {
  const r = spawnSync(process.execPath, [cli, 'launch', '--nproc-per-node', String(n), '--', rankScript, mode], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  for (let rank = 0; rank < n; rank++) assert.match(r.stdout, new RegExp(`rank ${rank} ok ${mode} cp${n}`), r.stdout);
  return r.stdout;
}

test('zigzag: positions, split and join of a batch', () => {
  assert.deepEqual(zigzagPositions(8, 2, 0), [0, 1, 6, 7]);
  assert.deepEqual(zigzagPositions(8, 2, 1), [2, 3, 4, 5]);
  assert.deepEqual(zigzagPositions(16, 4, 1), [2, 3, 12, 13]);
  // Every position exactly once over the ranks.
  const all = [0, 1, 2, 3].flatMap((r) => zigzagPositions(24, 4, r)).sort((a, b) => a - b);
  assert.deepEqual(all, [...Array(24).keys()]);
  const batch = Int32Array.from({ length: 2 * 8 }, (_, i) => i);
  assert.deepEqual([...zigzagSplit(batch, 2, 8, 2, 0)], [0, 1, 6, 7, 8, 9, 14, 15]);
  const rows = Float32Array.from({ length: 2 * 8 * 3 }, (_, i) => i);
  assert.deepEqual([...zigzagSplit(rows, 2, 8, 2, 1, 3)].slice(0, 6), [6, 7, 8, 9, 10, 11]);
  const parts = [0, 1, 2].map((r) => zigzagSplit(rows, 2, 12, 3, r, 2));
  assert.deepEqual([...zigzagJoin(parts, 2, 12, 2)], [...rows]);
  assert.throws(() => zigzagChunk(12, 4), /--parallel\.cp 4 does not divide seq_len \/ 2 = 6/);
});

test('ring blocks: every causal chunk pair exactly once, and the same work on every rank', () => {
  for (const cp of [1, 2, 3, 4, 8]) {
    const seen = new Map<string, string>();
    const work: number[] = [];
    for (let r = 0; r < cp; r++) {
      let w = 0;
      for (let j = 0; j < cp; j++) {
        const source = (r - j + cp) % cp;
        for (const b of ringBlocks(cp, r, source)) {
          const q = [r, 2 * cp - 1 - r][b.q]!, k = [source, 2 * cp - 1 - source][b.k]!;
          assert.equal(b.kind, blockKind(q, k));
          const key = `${q},${k}`;
          assert.ok(!seen.has(key), `cp${cp}: block ${key} twice`);
          seen.set(key, b.kind);
          w += b.kind === 'diagonal' ? 0.5 : 1;
        }
      }
      work.push(w);
    }
    for (let q = 0; q < 2 * cp; q++) for (let k = 0; k <= q; k++) assert.equal(seen.get(`${q},${k}`), q === k ? 'diagonal' : 'full', `cp${cp}: block ${q},${k}`);
    assert.equal(seen.size, cp * (2 * cp + 1));
    assert.deepEqual(work, new Array(cp).fill(2 * cp), `cp${cp}: causal work per rank`);
  }
});

test('ring steps: one launch per step covers exactly the causal pairs of its blocks, with the local causal mask or none', () => {
  const c = 3;
  for (const cp of [1, 2, 3, 4, 5]) {
    const S = 2 * cp * c;
    for (let r = 0; r < cp; r++) {
      const qPos = zigzagPositions(S, cp, r);
      const seen = new Set<string>();
      for (let j = 0; j < cp; j++) {
        const source = (r - j + cp) % cp, kPos = zigzagPositions(S, cp, source), step = ringStep(cp, r, source);
        const qIdx = step.q === 'both' ? [...Array(2 * c).keys()] : [...Array(c).keys()].map((i) => c + i);
        const kIdx = step.kv === 'both' ? [...Array(2 * c).keys()] : [...Array(c).keys()];
        if (step.causal) assert.equal(qIdx.length, kIdx.length, `cp${cp} r${r} step ${j}: a causal launch is square`);
        // Inside the launch, its mask (launch-local indices) is the global causal mask.
        qIdx.forEach((qi, a) => kIdx.forEach((ki, b) => {
          const sees = step.causal ? b <= a : true, want = kPos[ki]! <= qPos[qi]!;
          assert.equal(sees, want, `cp${cp} r${r} step ${j}: q ${qPos[qi]} k ${kPos[ki]}`);
          if (sees) seen.add(`${qPos[qi]},${kPos[ki]}`);
        }));
        // The same chunk pairs as the step's blocks.
        const chunks = (side: 'both' | 0 | 1, of: number) => (side === 'both' ? [0, 1] : [side]).map((x) => [of, 2 * cp - 1 - of][x]!);
        const fromStep = chunks(step.q, r).flatMap((qc) => chunks(step.kv, source).filter((kc) => blockKind(qc, kc) !== 'skip').map((kc) => `${qc},${kc}`)).sort();
        const fromBlocks = ringBlocks(cp, r, source).map((b) => `${[r, 2 * cp - 1 - r][b.q]},${[source, 2 * cp - 1 - source][b.k]}`).sort();
        assert.deepEqual(fromStep, fromBlocks, `cp${cp} r${r} step ${j}`);
      }
      // Over the steps: every (query, key ≤ query) pair of this rank's queries.
      const want = qPos.reduce((n, q) => n + q + 1, 0);
      assert.equal(seen.size, want, `cp${cp} r${r}: causal pairs covered`);
    }
  }
});

test('attentionMerge (ring attention\'s merge): exact log-sum-exp merge, finite for lse gaps far past exp overflow', () => {
  const be = new CpuBackend();
  tidy(() => {
    // B=1, c=2, H=1, Dv=2; lse gaps 0, ±1000 (exp(1000) overflows f32), 3.
    const cases: [number, number][] = [[0.5, 0.5], [-500, 500], [700, -300], [1, 4]];
    for (const [la, lb] of cases) {
      const acc = { o: fromHost(be, [1, 2, 3, 4], [1, 2, 1, 2], 'f32'), lse: fromHost(be, [la, la], [1, 1, 2], 'f32') };
      be.attentionMerge(acc.o, acc.lse, fromHost(be, [5, 6, 7, 8], [1, 2, 1, 2], 'f32'), fromHost(be, [lb, lb], [1, 1, 2], 'f32'));
      const m = Math.max(la, lb), lse = m + Math.log(Math.exp(la - m) + Math.exp(lb - m));
      const wa = Math.exp(la - lse), wb = Math.exp(lb - lse);
      const o = toHostF32(acc.o), l = toHostF32(acc.lse);
      for (let i = 0; i < 2; i++) assert.ok(Math.abs(l[i]! - lse) <= 1e-6 * Math.max(1, Math.abs(lse)), `lse ${l[i]} vs ${lse}`);
      [1, 2, 3, 4].forEach((a, i) => {
        const want = a * wa + [5, 6, 7, 8][i]! * wb;
        assert.ok(Math.abs(o[i]! - want) <= 1e-6 * Math.abs(want), `gap ${lb - la}: o[${i}] ${o[i]} vs ${want}`);
      });
    }
  });
});

test('ring attention with cp = 1 equals mlaAttention', () => {
  const be = new CpuBackend();
  tidy(() => {
    const B = 2, S = 6, H = 2, Dn = 4, Dr = 2, Dv = 3;
    const val = (n: number, s: number) => Array.from({ length: n }, (_, i) => Math.sin(i * 1.3 + s));
    const t = (shape: number[], s: number) => fromHost(be, val(shape.reduce((a, b) => a * b), s), shape, 'f32');
    const xs = [t([B, S, H, Dn], 1), t([B, S, H, Dr], 2), t([B, S, H, Dn], 3), t([B, S, 1, Dr], 4), t([B, S, H, Dv], 5)] as const;
    const ref = mlaAttention(...xs, { causal: true, scale: 0.7 });
    const ring = ringMlaAttention(...xs, { scale: 0.7 }, new LocalCommunicator());
    const a = toHostF32(ring.o), b = toHostF32(ref.o);
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= 1e-6, `o[${i}] ${a[i]} vs ${b[i]}`);
    const la = toHostF32(ring.lse), lb = toHostF32(ref.lse);
    for (let i = 0; i < la.length; i++) assert.ok(Math.abs(la[i]! - lb[i]!) <= 1e-6, `lse[${i}] ${la[i]} vs ${lb[i]}`);
  });
});

test('cp2 and cp4: ring attention forward and backward equal whole-sequence attention', () => {
  console.log(launch(2, 'attention').trim());
  console.log(launch(4, 'attention').trim());
});

test('cp2: the tiny model loss and every gradient equal the single process (sequence load balance)', () => {
  console.log(launch(2, 'model').trim());
});
