// Expert parallelism in one process: the host plan of the pairs sent (dedupe, order, counts,
// the unused-slot marker) on a routing worked out by hand, the owned expert ranges, and the
// whole model with an ExpertDispatch over a group of one against the same model without it
// (the dispatch path end to end: plan, counts, all-to-alls, expert order, combine, backward).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32, item } from '../src/ops/create.js';
import { add } from '../src/ops/elementwise.js';
import { tidy } from '../src/tensor/scope.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { parseDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import { LocalCommunicator } from '../src/parallel/local_communicator.js';
import { ExpertDispatch, ownedExperts, planDispatch } from '../src/parallel/expert_dispatch.js';

const be = new CpuBackend();

test('the plan sends one pair per (token, rank), ordered by rank then token, with local ids and counts', () => {
  // E 8 over 2 ranks (L 4), k 3. Token 0 → experts 1, 6, 2; token 1 → 7, 5, 4 (all rank 1);
  // token 2 → 0, 3, 5.
  const plan = planDispatch(Int32Array.from([1, 6, 2, 7, 5, 4, 0, 3, 5]), 3, 8, 2);
  assert.deepEqual(plan.sendPairs, [2, 3]);
  assert.deepEqual([...plan.tokenOfPair], [0, 2, 0, 1, 2]);
  const L = 4; // marks a slot whose expert is on another rank
  assert.deepEqual([...plan.localExpert], [
    1, L, 2, // token 0 on rank 0
    0, 3, L, // token 2 on rank 0
    L, 2, L, // token 0 on rank 1 (expert 6)
    3, 1, 0, // token 1 on rank 1 (experts 7, 5, 4): one pair for three slots
    L, L, 1, // token 2 on rank 1 (expert 5)
  ]);
  assert.deepEqual([...plan.slotOfPairSlot], [0, 1, 2, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
  // Slots per local expert: rank 0's experts 0-3 once each; rank 1's 4, 5 (twice), 6, 7.
  assert.deepEqual([...plan.expertSlots], [1, 1, 1, 1, 1, 2, 1, 1]);
});

test('a plan over one rank is one pair per token; a plan of no tokens sends nothing', () => {
  const one = planDispatch(Int32Array.from([3, 1, 0, 2]), 2, 4, 1);
  assert.deepEqual(one.sendPairs, [2]);
  assert.deepEqual([...one.localExpert], [3, 1, 0, 2]);
  const none = planDispatch(new Int32Array(0), 2, 4, 2);
  assert.deepEqual(none.sendPairs, [0, 0]);
  assert.equal(none.tokenOfPair.length, 0);
});

test('ep rank i owns experts [i·E/ep, (i+1)·E/ep)', () => {
  assert.deepEqual(ownedExperts(0, 2, 8), [0, 4]);
  assert.deepEqual(ownedExperts(3, 4, 64), [48, 64]);
  assert.throws(() => ownedExperts(0, 3, 8), /do not split/);
});

test('the whole model through an ExpertDispatch over one rank equals the model without it', () => {
  const c = parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: 3, num_experts_per_tok: 3 }, 'ep test');
  const run = (dispatch: boolean) => {
    const m = new DeepseekV2(c, be, 'f32');
    m.initialize(5);
    const dispatcher = dispatch ? new ExpertDispatch(new LocalCommunicator('ep'), c.n_routed_experts) : null;
    m.expertDispatch = dispatcher;
    const B = 2, S = 9;
    const ids = Array.from({ length: B * S }, (_, i) => (i * 37 + 11) % c.vocab_size);
    const losses = tidy(() => {
      const r = m.forward(fromHost(be, ids, [B, S], 'i32'), fromHost(be, ids.map((v, i) => (i % S === S - 1 ? -1 : v)), [B, S], 'i32'), B * (S - 1),
        { form: 'sequence', alpha: 0.01 });
      backward(add(r.crossEntropy, r.loadBalance));
      return [item(r.crossEntropy), item(r.loadBalance)];
    });
    const grads = m.params.map((p) => toHostF32(p.grad));
    m.dispose();
    return { losses, grads, stats: dispatcher?.stats };
  };
  const want = run(false), got = run(true);
  assert.deepEqual(got.stats, { layers: 2, slots: 2 * 18 * 3, sentRows: 2 * 18, receivedRows: 2 * 18 });
  got.losses.forEach((v, i) => assert.ok(Math.abs(v - want.losses[i]!) <= 1e-6 * Math.abs(want.losses[i]!), `loss ${i}: ${v} vs ${want.losses[i]}`));
  let worst = 0;
  got.grads.forEach((g, p) => {
    const w = want.grads[p]!;
    let scale = 0, err = 0;
    for (let i = 0; i < w.length; i++) { scale = Math.max(scale, Math.abs(w[i]!)); err = Math.max(err, Math.abs(g[i]! - w[i]!)); }
    assert.ok(scale > 0, `parameter ${p} has a gradient`);
    worst = Math.max(worst, err / scale);
  });
  // The same f32 arithmetic summed in another order (per pair, then per token).
  assert.ok(worst <= 2e-6, `largest gradient difference ${worst} of the largest gradient`);
});
