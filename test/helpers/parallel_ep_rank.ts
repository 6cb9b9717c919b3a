// One rank of test/parallel_ep.test.ts, started by `moetrain launch`. Every rank builds the
// expert-parallel model part it owns and, beside it, the whole MoE layer (all experts, same
// initial values), on which it computes the single-process reference for EVERY ep rank's tokens
// (the tokens are a pure function of the rank, so no rank needs another's data). Then it runs
// its own tokens through the ExpertDispatch and compares, in f32:
//   dispatch DP  the dispatcher alone on chosen routings (random, in f32 and with bf16 rows
//                and experts; one where the last ep rank receives nothing; one where ep rank 1
//                has no tokens): the routed output, the
//                gradients of x and of the router weights, each owned expert's parameter
//                gradients (the sum over every rank's tokens), and the rows sent (one per unique
//                (token, rank) pair) and received
//   layer DP     one decoder layer with an MoE block (attention, router, load-balance loss,
//                shared expert) through runLayers: output, input gradient, every dense
//                parameter's gradient (this rank's tokens) and every owned expert's (all tokens)
//   model DP     the whole model (embedding, dense layer, two MoE layers, head; cross-entropy
//                and the sequence load-balance loss): both losses, every dense parameter's
//                gradient and every owned expert's; two MoE layers check that the ranks run
//                the backward all-to-alls of several layers in one order; live bytes return
//                to where they were before the step
//   a2a          allToAllRows alone, f32 and bf16 rows, uneven and zero counts: rows arrive
//                exactly, and the backward returns each row's gradient to its sender exactly
// Modes may be joined by commas (dispatch,layer). DP is the mesh's dp; ep = WORLD_SIZE / DP; the
// dispatcher runs over the mesh's ep group (a sub-group when DP > 1). Each rank prints
// "rank R ok N checks, max rel err E (bf16 B)".
// Without a first argument (node --test imports every file under dist/test) it does nothing.
import assert from 'node:assert/strict';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { backward } from '../../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../../src/ops/create.js';
import { mul, add } from '../../src/ops/elementwise.js';
import { sumAll } from '../../src/ops/reduce.js';
import { reshape } from '../../src/ops/shape.js';
import { gatherRows, scatterAddRows } from '../../src/ops/rows.js';
import { tidy } from '../../src/tensor/scope.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import type { DType } from '../../src/tensor/dtype.js';
import { DeepseekV2 } from '../../src/models/deepseek_v2.js';
import { parseDeepseekV2Config, type DeepseekV2Config } from '../../src/models/deepseek_v2_config.js';
import { namedParameters } from '../../src/models/deepseek_v2_names.js';
import { TINY_CONFIG_JSON } from '../../src/models/tiny_config.js';
import { initDistributed } from '../../src/parallel/init_distributed.js';
import { ExpertDispatch, ownedExperts } from '../../src/parallel/expert_dispatch.js';
import { allToAllRows } from '../../src/parallel/all_to_all_op.js';
import type { Communicator } from '../../src/parallel/communicator.js';

const be = new CpuBackend();
/** 3 layers (dense, MoE, MoE), 8 routed experts top-3, one shared expert. */
const config: DeepseekV2Config = parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: 3, num_experts_per_tok: 3 }, 'ep test');
const E = config.n_routed_experts, k = config.num_experts_per_tok, D = config.hidden_size;
const MOE_LAYER = 1;
const SEED = 23;
/**
 * f32 tolerance, relative to the largest magnitude of the reference: the two computations differ
 * only in the order of f32 additions (a token's k expert outputs are summed per rank and then
 * over ranks; gradients of shared rows are summed in another order), a few dozen terms, each
 * rounding at 6e-8; 2e-6 leaves a margin of ~10 over the largest error seen.
 */
const TOL = 2e-6;
/**
 * bf16 rows and experts: the expert-parallel path rounds each pair's combined row to bf16 before
 * the tokens add them up, where a single process rounds once (2^-9 relative each), and the
 * experts' inputs and outputs round at different points of the gradient sums; 2e-2 of the
 * largest value bounds a few such roundings.
 */
const TOL_BF16 = 2e-2;

/** A value in [-1, 1) from (a, b, c): a cheap integer hash. */
function hash(a: number, b: number, c: number): number {
  let h = Math.imul(a + 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 1, 0xc2b2ae35) ^ Math.imul(c + 7, 0x27d4eb2f);
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h ^= h >>> 13;
  return ((h >>> 0) / 2 ** 32) * 2 - 1;
}

let checks = 0, worst = 0, worstBf16 = 0;
function close(got: Float32Array, want: Float32Array, what: string, tol = TOL): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let scale = 0;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  if (scale === 0) {
    // An expert that no token reaches: its gradient must be exactly zero.
    for (let i = 0; i < got.length; i++) if (got[i] !== 0) assert.fail(`${what}: element ${i} is ${got[i]}, expected exactly 0`);
    checks++;
    return;
  }
  let err = 0;
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
  const rel = err / scale;
  if (!(rel <= tol)) assert.fail(`${what}: max |diff| ${err} is ${rel} of the largest reference value ${scale} (tolerance ${tol})`);
  if (tol === TOL) worst = Math.max(worst, rel);
  else worstBf16 = Math.max(worstBf16, rel);
  checks++;
}

/** The layer part [MOE_LAYER, MOE_LAYER+1) holding experts [first, end), initialised like the whole model. */
function layerModel(experts: readonly [number, number], dtype: DType = 'f32'): DeepseekV2 {
  const m = new DeepseekV2(config, be, dtype, { layers: [MOE_LAYER, MOE_LAYER + 1], experts, embed: false, head: false });
  m.initialize(SEED);
  return m;
}

/** name → gradient of every parameter (host copies), then the gradients are zeroed. */
function takeGrads(m: DeepseekV2): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const { name, param } of namedParameters(m)) { out.set(name, toHostF32(param.grad)); param.zeroGrad(); }
  return out;
}

const isExpert = (name: string): boolean => name.includes('.mlp.experts.');

function addInto(acc: Map<string, Float32Array>, g: Map<string, Float32Array>): void {
  for (const [name, v] of g) {
    const a = acc.get(name);
    if (!a) acc.set(name, Float32Array.from(v));
    else for (let i = 0; i < v.length; i++) a[i] += v[i]!;
  }
}

/**
 * Σ out ⊙ g as a [1] loss for out, g [N, D], any N (zero included: a rank with no tokens still
 * runs backward, which is collective): rows summed by a scatter into one row, then summed.
 */
function lossOf(out: Tensor, g: Float32Array, width = D): Tensor {
  const N = out.shape[0]!;
  const rows = mul(out, fromHost(be, g, [N, width], 'f32'));
  return sumAll(scatterAddRows(rows, fromHost(be, new Int32Array(N), [N], 'i32'), null, 1));
}

/** A leaf that requires a gradient (its gradient arrives as f32). */
function leaf(values: Float32Array, shape: number[], dtype: DType = 'f32'): Tensor {
  const t = fromHost(be, values, shape, dtype);
  t.requiresGrad = true;
  return t;
}

/** One rank's tokens for the dispatcher: x [N, D], routing [N, k], router weights, output cotangent. */
interface DispatchCase { N: number; indices: Int32Array; weights: Float32Array; x: Float32Array; g: Float32Array }

type Routing = 'random' | 'last-rank-idle' | 'rank-1-empty';

function dispatchCase(routing: Routing, q: number, P: number): DispatchCase {
  const L = E / P;
  const N = routing === 'rank-1-empty' && q === 1 ? 0 : 5 + 3 * q;
  const indices = new Int32Array(N * k);
  for (let n = 0; n < N; n++) {
    // k distinct experts in hashed order; 'last-rank-idle' keeps every token off the last
    // rank's experts and sends token 0 to experts 0…k−1 (rank 0's, so one pair carries k slots
    // when k ≤ L).
    const pool = Array.from({ length: routing === 'last-rank-idle' ? E - L : E }, (_, e) => e);
    pool.sort((a, b) => hash(q, n * E + a, 1) - hash(q, n * E + b, 1));
    const chosen = routing === 'last-rank-idle' && n === 0 ? pool.sort((a, b) => a - b).slice(0, k) : pool.slice(0, k);
    indices.set(chosen, n * k);
  }
  const weights = Float32Array.from({ length: N * k }, (_, i) => 0.55 + 0.45 * hash(q, i, 3));
  const x = Float32Array.from({ length: N * D }, (_, i) => hash(q, i, 4));
  const g = Float32Array.from({ length: N * D }, (_, i) => hash(q, i, 5));
  return { N, indices, weights, x, g };
}

/** Unique (token, owning rank) pairs of a routing. */
function uniquePairs(c: DispatchCase, P: number): number[] {
  const L = E / P, perRank = new Array<number>(P).fill(0);
  for (let n = 0; n < c.N; n++) {
    const ranks = new Set<number>();
    for (let j = 0; j < k; j++) ranks.add(Math.floor(c.indices[n * k + j]! / L));
    for (const r of ranks) perRank[r]!++;
  }
  return perRank;
}

/**
 * The single-process routed output, written out here: slots sorted by expert on the host, the
 * whole model's experts on them, outputs added back weighted. Returns out, dx, dweights.
 */
function referenceRouted(whole: DeepseekV2, c: DispatchCase): { out: Float32Array; dx: Float32Array; dw: Float32Array } {
  return tidy(() => {
    const x = leaf(c.x, [c.N, D], whole.computeDtype), w = leaf(c.weights, [c.N, k]);
    const order = Array.from({ length: c.N * k }, (_, s) => s).sort((a, b) => c.indices[a]! - c.indices[b]! || a - b);
    const counts = new Array<number>(E).fill(0);
    for (const e of c.indices) counts[e]!++;
    const tokens = fromHost(be, order.map((s) => Math.floor(s / k)), [order.length], 'i32');
    const xs = gatherRows(x, tokens, null);
    const ws = gatherRows(reshape(w, [c.N * k, 1]), fromHost(be, order, [order.length], 'i32'), null);
    const out = scatterAddRows(whole.routedExperts(whole.layers[0]!.moe!, xs, counts), tokens, ws, c.N);
    backward(lossOf(out, c.g));
    const r = { out: toHostF32(out), dx: toHostF32(x.grad!), dw: toHostF32(w.grad!) };
    x.grad!.dispose(); w.grad!.dispose();
    return r;
  });
}

function dispatchMode(comm: Communicator, routing: Routing, dtype: DType): void {
  const P = comm.size, me = comm.rank, what = `${routing} ${dtype}`, tol = dtype === 'f32' ? TOL : TOL_BF16;
  const owned = ownedExperts(me, P, E);
  const whole = layerModel([0, E], dtype), part = layerModel(owned, dtype);
  const moe = part.layers[0]!.moe!;
  const dispatch = new ExpertDispatch(comm, E);
  const local = { first: owned[0], count: owned[1] - owned[0], run: (xs: Tensor, counts: readonly number[]) => part.routedExperts(moe, xs, counts) };
  const cases = Array.from({ length: P }, (_, q) => dispatchCase(routing, q, P));
  const refs = cases.map((c) => referenceRouted(whole, c));
  const wholeGrads = takeGrads(whole); // the experts' gradients over every rank's tokens
  const mine = cases[me]!, ref = refs[me]!;
  tidy(() => {
    const x = leaf(mine.x, [mine.N, D], dtype), w = leaf(mine.weights, [mine.N, k]);
    const out = dispatch.routedOutput(x, fromHost(be, mine.indices, [mine.N, k], 'i32'), w, local);
    assert.equal(out.dtype, dtype, `${what}: output dtype`);
    backward(lossOf(out, mine.g));
    close(toHostF32(out), ref.out, `${what}: routed output`, tol);
    close(toHostF32(x.grad!), ref.dx, `${what}: x gradient`, tol);
    close(toHostF32(w.grad!), ref.dw, `${what}: router weight gradient`, tol);
    x.grad!.dispose(); w.grad!.dispose();
  });
  for (const [name, g] of takeGrads(part)) {
    if (isExpert(name)) close(g, wholeGrads.get(name)!, `${what}: ${name} gradient`, tol);
  }
  // Dedupe: one row per unique (token, rank) pair, each way.
  const sent = uniquePairs(mine, P).reduce((a, b) => a + b, 0);
  const received = cases.reduce((s, c) => s + uniquePairs(c, P)[me]!, 0);
  assert.deepEqual(dispatch.stats, { layers: 1, slots: mine.N * k, sentRows: sent, receivedRows: received }, `${what}: rows moved`);
  if (routing === 'last-rank-idle') {
    if (me === P - 1) assert.equal(received, 0, 'the last rank receives nothing');
    if (me === 0) assert.ok(sent < mine.N * k, 'token 0 sends fewer rows than slots');
  }
  checks++;
  whole.dispose(); part.dispose();
}

/** allToAllRows on rows that name (source, destination, row, column), exactly, both ways. */
function allToAllMode(comm: Communicator): void {
  const P = comm.size, me = comm.rank, W = 3;
  const rows = (src: number, dst: number): number => (src * 5 + dst * 3 + 1) % 4; // zeros included
  const value = (src: number, dst: number, i: number, j: number): number => src * 64 + dst * 16 + i * 4 + j; // exact in bf16
  const send = Array.from({ length: P }, (_, p) => rows(me, p)), recv = Array.from({ length: P }, (_, p) => rows(p, me));
  const table = (counts: number[], f: (p: number, i: number, j: number) => number): Float32Array => {
    const out: number[] = [];
    counts.forEach((n, p) => { for (let i = 0; i < n; i++) for (let j = 0; j < W; j++) out.push(f(p, i, j)); });
    return Float32Array.from(out);
  };
  for (const dtype of ['f32', 'bf16'] as const) {
    tidy(() => {
      const x = leaf(table(send, (p, i, j) => value(me, p, i, j)), [send.reduce((a, b) => a + b, 0), W], dtype);
      const out = allToAllRows(x, send, recv, comm);
      assert.equal(out.dtype, dtype);
      assert.deepEqual(toHostF32(out), table(recv, (p, i, j) => value(p, me, i, j)), `${dtype}: rows received`);
      // Loss Σ out ⊙ G with G = 1 + the row's value: x's gradient is G at the row's destination.
      const G = table(recv, (p, i, j) => 1 + value(p, me, i, j));
      backward(lossOf(out, G, W));
      assert.deepEqual(toHostF32(x.grad!), table(send, (p, i, j) => 1 + value(me, p, i, j)), `${dtype}: gradients returned`);
      x.grad!.dispose();
    });
    checks += 2;
  }
}

/** One rank's input to the layer: h [S, D] (one sequence of S tokens) and the output cotangent. */
function layerInput(q: number): { S: number; h: Float32Array; g: Float32Array } {
  const S = 6 + 2 * q;
  return { S, h: Float32Array.from({ length: S * D }, (_, i) => hash(q, i, 6)), g: Float32Array.from({ length: S * D }, (_, i) => hash(q, i, 7)) };
}

function runLayer(m: DeepseekV2, q: number): { out: Float32Array; dh: Float32Array; grads: Map<string, Float32Array> } {
  const inp = layerInput(q);
  let result: { out: Float32Array; dh: Float32Array } | null = null;
  tidy(() => {
    const h = leaf(inp.h, [inp.S, D]);
    const r = m.runLayers(h, 1, inp.S, { form: 'micro-batch', alpha: 0.05 });
    backward(add(sumAll(mul(r.h, fromHost(be, inp.g, [inp.S, D], 'f32'))), r.loadBalance));
    result = { out: toHostF32(r.h), dh: toHostF32(h.grad!) };
    h.grad!.dispose();
  });
  return { ...result!, grads: takeGrads(m) };
}

function layerMode(comm: Communicator): void {
  const P = comm.size, me = comm.rank;
  const whole = layerModel([0, E]), part = layerModel(ownedExperts(me, P, E));
  part.expertDispatch = new ExpertDispatch(comm, E);
  const refs = Array.from({ length: P }, (_, q) => runLayer(whole, q));
  const expertSums = new Map<string, Float32Array>();
  for (const r of refs) addInto(expertSums, new Map([...r.grads].filter(([name]) => isExpert(name))));
  const got = runLayer(part, me), ref = refs[me]!;
  close(got.out, ref.out, 'layer output');
  close(got.dh, ref.dh, 'layer input gradient');
  let experts = 0;
  for (const [name, g] of got.grads) {
    if (isExpert(name)) { close(g, expertSums.get(name)!, `${name} gradient (all ranks' tokens)`); experts++; }
    else close(g, ref.grads.get(name)!, `${name} gradient`);
  }
  assert.equal(experts, 3 * E / P, 'every owned expert was compared');
  whole.dispose(); part.dispose();
}

/** Cross-entropy and load-balance loss of the model on ep rank q's two sequences; gradients taken. */
function runModel(m: DeepseekV2, q: number): { losses: Float32Array; grads: Map<string, Float32Array> } {
  const B = 2, S = 8, V = config.vocab_size;
  const ids = Array.from({ length: B * S }, (_, i) => Math.floor((hash(q, i, 8) * 0.5 + 0.5) * V));
  const labels = ids.map((_, i) => (i % S === S - 1 ? -1 : ids[i + 1]!));
  let losses = new Float32Array(0);
  tidy(() => {
    const r = m.forward(fromHost(be, ids, [B, S], 'i32'), fromHost(be, labels, [B, S], 'i32'), B * (S - 1), { form: 'sequence', alpha: 0.05 });
    backward(add(r.crossEntropy, r.loadBalance));
    losses = Float32Array.from([...toHostF32(r.crossEntropy), ...toHostF32(r.loadBalance)]);
  });
  return { losses, grads: takeGrads(m) };
}

function modelMode(comm: Communicator): void {
  const P = comm.size, me = comm.rank;
  const whole = new DeepseekV2(config, be, 'f32');
  const part = new DeepseekV2(config, be, 'f32', { layers: [0, config.num_hidden_layers], experts: ownedExperts(me, P, E), embed: true, head: true });
  for (const m of [whole, part]) m.initialize(SEED);
  part.expertDispatch = new ExpertDispatch(comm, E);
  const refs = Array.from({ length: P }, (_, q) => runModel(whole, q));
  const expertSums = new Map<string, Float32Array>();
  for (const r of refs) addInto(expertSums, new Map([...r.grads].filter(([name]) => isExpert(name))));
  const got = runModel(part, me), ref = refs[me]!;
  // A second step (after the first made the RoPE tables and k, which live on) leaks nothing.
  const live = be.memoryStats().liveBytes;
  runModel(part, me);
  assert.equal(be.memoryStats().liveBytes, live, 'the dispatched step releases every tensor it made');
  close(got.losses.subarray(0, 1), ref.losses.subarray(0, 1), 'model cross-entropy');
  close(got.losses.subarray(1), ref.losses.subarray(1), 'model load-balance loss');
  for (const [name, g] of got.grads) close(g, (isExpert(name) ? expertSums : ref.grads).get(name)!, `model: ${name} gradient`);
  assert.equal(got.grads.size, [...ref.grads.keys()].filter((n) => !isExpert(n)).length + 2 * 3 * E / P, 'every dense parameter and owned expert was compared');
  whole.dispose(); part.dispose();
}

async function main(): Promise<void> {
  const [mode, dpText] = process.argv.slice(2);
  if (!mode) return;
  const world = Number(process.env.WORLD_SIZE ?? 1), dp = Number(dpText ?? 1);
  const d = await initDistributed(
    { parallel: { pp: 1, dp, cp: 1, ep: world / dp, collective_timeout_sec: 60 }, global_batch_size: world, micro_batch_size: 1 },
    { num_hidden_layers: config.num_hidden_layers, n_routed_experts: E }, be);
  for (const m of mode.split(',')) {
    switch (m) {
      case 'dispatch':
        dispatchMode(d.groups.ep, 'random', 'f32');
        dispatchMode(d.groups.ep, 'random', 'bf16');
        dispatchMode(d.groups.ep, 'last-rank-idle', 'f32');
        if (d.groups.ep.size > 1) dispatchMode(d.groups.ep, 'rank-1-empty', 'f32');
        break;
      case 'a2a': allToAllMode(d.groups.ep); break;
      case 'layer': layerMode(d.groups.ep); break;
      case 'model': modelMode(d.groups.ep); break;
      default: throw new Error(`unknown mode ${m}`);
    }
  }
  d.comm.barrier();
  await d.close();
  console.log(`rank ${d.rank} ok ${checks} checks, max rel err ${worst.toExponential(2)} (bf16 ${worstBf16.toExponential(2)})`);
}

main().catch((e: unknown) => {
  console.error(`moetrain: error: ${(e as Error).stack ?? (e as Error).message}`);
  process.exit(1);
});
