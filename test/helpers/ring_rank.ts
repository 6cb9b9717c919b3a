// One rank of the ring-attention tests (test/ring_attention.test.ts), started by `moetrain launch
// --nproc-per-node N`; the N processes form the context-parallel group. Without arguments
// (node --test imports every file under dist/test) it does nothing.
//   attention   ringMlaAttention on this rank's zigzag share of seeded q/k/v against
//               mlaAttention over the whole sequences (computed here too): o, lse and the five
//               input gradients, for a few shapes (odd chunk lengths, B = 2, H = 3)
//   model       the tiny model's loss and every parameter gradient for one micro-batch with the
//               "sequence" load balance, its tokens split over the ranks, against one process
// The part-1 mesh check refuses cp > 1 until the trainer runs context parallelism, so the
// processes join as dp = N and the world communicator serves as the cp group.
import assert from 'node:assert/strict';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { backward } from '../../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../../src/ops/create.js';
import { add } from '../../src/ops/elementwise.js';
import { mlaAttention } from '../../src/ops/mla_attention.js';
import { tidy } from '../../src/tensor/scope.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import { DeepseekV2, type LoadBalance } from '../../src/models/deepseek_v2.js';
import { parseDeepseekV2Config } from '../../src/models/deepseek_v2_config.js';
import { namedParameters } from '../../src/models/deepseek_v2_names.js';
import { TINY_CONFIG_JSON } from '../../src/models/tiny_config.js';
import type { Communicator } from '../../src/parallel/communicator.js';
import { ContextParallelAttention } from '../../src/parallel/context_parallel.js';
import { initDistributed } from '../../src/parallel/init_distributed.js';
import { ringMlaAttention } from '../../src/parallel/ring_attention.js';
import { zigzagSplit } from '../../src/parallel/zigzag.js';

/** Seeded values in [-2, 2) (a cheap hash of index and salt). */
function values(n: number, salt: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => {
    let h = Math.imul(i + 0x9e3779b9, 0x85ebca6b) ^ Math.imul(salt + 7, 0x27d4eb2f);
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
    h ^= h >>> 13;
    return ((h >>> 0) / 2 ** 32) * 4 - 2;
  });
}

/** max |got − want| / max |want| (asserts want is not all zero, so the check is not empty). */
function relDiff(got: Float32Array, want: Float32Array, what: string): number {
  assert.equal(got.length, want.length, `${what}: length`);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) { num = Math.max(num, Math.abs(got[i]! - want[i]!)); den = Math.max(den, Math.abs(want[i]!)); }
  assert.ok(den > 0, `${what}: the reference is zero`);
  return num / den;
}

/** fp32 tolerance, max |Δ| / max |reference| (sums in another order; the peaked case reaches ~1e-5). */
const TOL = 3e-5;

function attentionCase(comm: Communicator, be: CpuBackend, B: number, S: number, H: number, scale: number): string {
  const cp = comm.size, r = comm.rank, Dn = 16, Dr = 8, Dv = 16;
  const widths = { qNope: H * Dn, qPe: H * Dr, kNope: H * Dn, kPe: Dr, v: H * Dv, dout: H * Dv };
  const host = Object.fromEntries(Object.entries(widths).map(([k, w], i) => [k, values(B * S * w, S * 100 + i)])) as Record<keyof typeof widths, Float32Array>;
  const shape = (k: keyof typeof widths, s: number): number[] => [B, s, k === 'kPe' ? 1 : H, k === 'qPe' || k === 'kPe' ? Dr : k === 'v' || k === 'dout' ? Dv : Dn];
  const names = ['qNope', 'qPe', 'kNope', 'kPe', 'v'] as const;
  const leaves = (s: number, data: (k: keyof typeof widths) => Float32Array): Tensor[] => names.map((k) => {
    const t = fromHost(be, data(k), shape(k, s), 'f32');
    t.requiresGrad = true;
    return t;
  });
  return tidy(() => {
    // The whole sequences in one piece.
    const whole = leaves(S, (k) => host[k]);
    const ref = mlaAttention(whole[0]!, whole[1]!, whole[2]!, whole[3]!, whole[4]!, { causal: true, scale });
    backward(ref.o, fromHost(be, host.dout, shape('dout', S), 'f32'));
    // This rank's share, through the ring.
    const L = S / cp;
    const split = (x: Float32Array, k: keyof typeof widths) => zigzagSplit(x, B, S, cp, r, widths[k]);
    const mine = leaves(L, (k) => split(host[k], k));
    const ring = ringMlaAttention(mine[0]!, mine[1]!, mine[2]!, mine[3]!, mine[4]!, { scale }, comm);
    backward(ring.o, fromHost(be, split(host.dout, 'dout'), shape('dout', L), 'f32'));
    const diffs: [string, number][] = [
      ['o', relDiff(toHostF32(ring.o), split(toHostF32(ref.o), 'v'), 'o')],
      // lse [B,H,S] split along its last dimension.
      ['lse', relDiff(toHostF32(ring.lse), zigzagSplit(toHostF32(ref.lse), B * H, S, cp, r), 'lse')],
      ...names.map((k, i): [string, number] => [`d${k}`, relDiff(toHostF32(mine[i]!.grad!), split(toHostF32(whole[i]!.grad!), k), `d${k}`)]),
    ];
    for (const [what, d] of diffs) assert.ok(d <= TOL, `cp${cp} B${B} S${S} H${H}: ${what} differs by ${d} (relative to its largest value)`);
    for (const t of [...whole, ...mine]) t.grad?.dispose();
    return `B${B} S${S} H${H} ` + diffs.map(([w, d]) => `${w} ${d.toExponential(1)}`).join(' ');
  });
}

function attention(comm: Communicator, be: CpuBackend): void {
  const cp = comm.size;
  const before = be.memoryStats().liveBytes;
  // Chunk lengths 3 and 1, then 2 with two sequences (the scale makes the softmax peaked).
  const cases = [attentionCase(comm, be, 1, 6 * cp, 2, 0.2), attentionCase(comm, be, 2, 2 * cp, 3, 0.2), attentionCase(comm, be, 2, 4 * cp, 3, 1.5)];
  assert.equal(be.memoryStats().liveBytes, before, 'live bytes after the ring attention cases');
  console.log(`rank ${comm.rank} ok attention cp${cp}: ${cases.join('; ')}`);
}

function model(comm: Communicator, be: CpuBackend): void {
  const cp = comm.size, r = comm.rank, B = 2, S = 8 * cp;
  const config = parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: 3 }, 'ring test');
  const lb: LoadBalance = { form: 'sequence', alpha: 0.01 };
  const ids = new Int32Array(B * S), labels = new Int32Array(B * S);
  for (let i = 0; i < B * S; i++) {
    const h = Math.imul(1009 + i, 0x9e3779b1) >>> 0;
    ids[i] = h % config.vocab_size;
    labels[i] = i % 7 === 3 ? -100 : (h >>> 8) % config.vocab_size;
  }
  const count = labels.filter((l) => l >= 0).length;
  const run = (m: DeepseekV2, x: Int32Array, y: Int32Array, s: number) => tidy(() => {
    const out = m.forward(fromHost(be, x, [B, s], 'i32'), fromHost(be, y, [B, s], 'i32'), count, lb);
    const losses = [toHostF32(out.crossEntropy)[0]!, toHostF32(out.loadBalance)[0]!];
    backward(add(out.crossEntropy, out.loadBalance));
    return losses;
  });
  const single = new DeepseekV2(config, be, 'f32');
  single.initialize(5);
  const want = run(single, ids, labels, S);
  const part = new DeepseekV2(config, be, 'f32');
  part.initialize(5);
  part.attentionHook = new ContextParallelAttention(comm);
  const got = run(part, zigzagSplit(ids, B, S, cp, r), zigzagSplit(labels, B, S, cp, r), S / cp);
  const sums = fromHost(be, got, [2], 'f32');
  comm.allReduce(sums, 'sum');
  const [ce, lbLoss] = toHostF32(sums);
  sums.dispose();
  const ceRel = Math.abs(ce! - want[0]!) / want[0]!, lbRel = Math.abs(lbLoss! - want[1]!) / want[1]!;
  assert.ok(ceRel <= 1e-6 && lbRel <= 1e-6, `losses: cross-entropy ${ce} vs ${want[0]}, load balance ${lbLoss} vs ${want[1]}`);
  const wantGrads = new Map(namedParameters(single).map(({ name, param }) => [name, toHostF32(param.grad)]));
  let worst = 0, where = '', n = 0;
  for (const { name, param } of namedParameters(part)) {
    comm.allReduce(param.grad, 'sum');
    const d = relDiff(toHostF32(param.grad), wantGrads.get(name)!, name);
    if (d > worst) { worst = d; where = name; }
    n++;
  }
  assert.ok(worst <= TOL, `gradient of ${where} differs by ${worst} (relative to its largest value)`);
  console.log(`rank ${r} ok model cp${cp}: cross-entropy ${ce!.toFixed(6)} rel ${ceRel.toExponential(1)}, load balance rel ${lbRel.toExponential(1)}, ${n} gradients, max |Δ|/max|g| ${worst.toExponential(1)} (${where})`);
  single.dispose();
  part.dispose();
}

async function main(): Promise<void> {
  const [mode] = process.argv.slice(2);
  if (!mode) return;
  const be = new CpuBackend();
  const world = Number(process.env.WORLD_SIZE ?? 1);
  const d = await initDistributed({ parallel: { pp: 1, dp: world, cp: 1, ep: 1, collective_timeout_sec: 60 }, global_batch_size: world, micro_batch_size: 1 },
    { num_hidden_layers: 2, n_routed_experts: 8 }, be);
  if (mode === 'attention') attention(d.comm, be);
  else if (mode === 'model') model(d.comm, be);
  else throw new Error(`unknown mode ${mode}`);
  d.comm.barrier();
  await d.close();
}

main().catch((e: unknown) => {
  console.error(`moetrain: error: ${(e as Error).message}`);
  process.exit(1);
});
