// The MoE's routed rows without atomics (ops/expert_rows.ts) against the composition they
// replace (rows.ts: gatherRows forward with a scatter-add backward; scatterAddRows forward with
// a weighted gather and gatheredRowDots backward), on the CPU:
// - expertOrderInverse on a hand example (a block of the order, the other slots −1);
// - dispatchRows and combineRows on random routings of N = 37 tokens, k = 3, D = 53, E = 7 with
//   one expert that no token picks, for owned blocks of experts (all; a middle block holding the
//   empty expert; the last two; the empty expert alone: no rows), in f32 and bf16: outputs and
//   the gradients of x, ys and the router weights bit for bit (the new sums add a token's rows
//   in the order of the old scatter-add, and the weight gradient rounds each product to f32 as
//   the old f32 product buffer did);
// - the tiny model (two MoE layers), whole and owning experts [2, 5), f32 and bf16: the loss and
//   every parameter's gradient bit for bit against the same model whose MoE runs the old
//   composition (through an ExpertDispatchHook written here).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward, backwardFrom } from '../src/autograd/backward.js';
import { settleGrad } from '../src/autograd/lazy_grad_zero.js';
import { fromHost, toHostF32, toHostI32, item } from '../src/ops/create.js';
import { add } from '../src/ops/elementwise.js';
import { reshape } from '../src/ops/shape.js';
import { expertOrder, expertOrderInverse } from '../src/ops/routing.js';
import { gatherRows, scatterAddRows } from '../src/ops/rows.js';
import { combineRows, dispatchRows } from '../src/ops/expert_rows.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { parseDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import type { ExpertDispatchHook, LocalExperts } from '../src/models/expert_dispatch_hook.js';
import { namedParameters } from '../src/models/deepseek_v2_names.js';
import { wholeModel } from '../src/models/deepseek_v2_weights.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import { Rng } from '../src/nn/rng.js';
import { tidy } from '../src/tensor/scope.js';
import type { DType } from '../src/tensor/dtype.js';
import type { Tensor } from '../src/tensor/tensor.js';

const be = new CpuBackend();

function leaf(values: Float32Array, shape: number[], dtype: DType): Tensor {
  const t = fromHost(be, values, shape, dtype);
  t.requiresGrad = true;
  return t;
}

function assertSame(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i])) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
  }
}

/** N tokens' k distinct experts out of E, never `skip`; as the router's slots [N·k]. */
function randomSlots(rng: Rng, N: number, k: number, E: number, skip: number): number[] {
  const slots: number[] = [];
  for (let n = 0; n < N; n++) {
    const picks: number[] = [];
    while (picks.length < k) { const e = Math.floor(rng.uniform() * E); if (e !== skip && !picks.includes(e)) picks.push(e); }
    slots.push(...picks);
  }
  return slots;
}

describe('expertOrderInverse', () => {
  test('a block of the order gets its rows, every other slot −1', () => {
    tidy(() => {
      const order = fromHost(be, [1, 4, 7, 3, 0, 2, 5, 6], [8], 'i32');
      assert.deepEqual(Array.from(toHostI32(expertOrderInverse(order, 3, 4))), [1, -1, 2, 0, -1, 3, -1, -1]);
      assert.deepEqual(Array.from(toHostI32(expertOrderInverse(order, 0, 8))), [4, 0, 5, 3, 1, 6, 7, 2]);
      assert.deepEqual(Array.from(toHostI32(expertOrderInverse(order, 5, 0))), [-1, -1, -1, -1, -1, -1, -1, -1]);
    });
  });
});

describe('dispatchRows and combineRows against gatherRows and scatterAddRows', () => {
  const N = 37, k = 3, D = 53, E = 7, EMPTY = 4;
  for (const dtype of ['f32', 'bf16'] as const) {
    for (const [e0, e1] of [[0, 7], [2, 5], [5, 7], [4, 5]] as const) {
      test(`${dtype}, experts [${e0}, ${e1}) of ${E} (expert ${EMPTY} without rows)`, () => {
        const rng = new Rng(100 + e0 * 10 + e1);
        const slots = randomSlots(rng, N, k, E, EMPTY);
        const randn = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
        tidy(() => {
          const { order, offsets } = expertOrder(fromHost(be, slots, [N * k], 'i32'), E);
          const bounds = toHostI32(offsets), first = bounds[e0]!, M = bounds[e1]! - first;
          if (e0 === EMPTY && e1 === EMPTY + 1) assert.equal(M, 0);
          const owned = toHostI32(order).slice(first, first + M);
          const tokenOfRow = fromHost(be, Array.from(owned, (s) => Math.floor(s / k)), [M], 'i32');
          const rowOfSlot = expertOrderInverse(order, first, M);
          const xv = randn(N * D), yv = randn(M * D), wv = randn(M).map(Math.abs), gxs = randn(M * D), gout = randn(N * D);
          const run = (fresh: boolean) => {
            const x = leaf(xv, [N, D], dtype), ys = leaf(yv, [M, D], dtype), w = leaf(wv, [M, 1], 'f32');
            const xs = fresh ? dispatchRows(x, tokenOfRow, rowOfSlot) : gatherRows(x, tokenOfRow, null);
            const out = fresh ? combineRows(ys, tokenOfRow, rowOfSlot, w, N) : scatterAddRows(ys, tokenOfRow, w, N);
            const values = [toHostF32(xs), toHostF32(out)];
            backwardFrom([{ root: xs, seed: fromHost(be, gxs, [M, D], dtype) }, { root: out, seed: fromHost(be, gout, [N, D], dtype) }]);
            return { values, grads: [x, ys, w].map((t) => (t.grad ? toHostF32(t.grad) : null)) };
          };
          const old = run(false), fresh = run(true);
          assertSame(fresh.values[0]!, old.values[0]!, 'dispatched rows');
          assertSame(fresh.values[1]!, old.values[1]!, 'combined rows');
          ['dx', 'dys', 'dweights'].forEach((what, i) => {
            const want = old.grads[i], got = fresh.grads[i];
            if (M === 0 && !want) return;
            assertSame(got!, want!, what);
          });
          if (M > 0) assert.ok(fresh.grads[2]!.some((v) => v !== 0), 'the router weights get a gradient');
        });
      });
    }
  }
});

/** The old MoE combine, as an expert-dispatch hook: expertOrder, gatherRows, the experts, scatterAddRows. */
class ScatterAddDispatch implements ExpertDispatchHook {
  constructor(private readonly numExperts: number) {}
  routedOutput(x: Tensor, indices: Tensor, weights: Tensor, local: LocalExperts): Tensor {
    const [N, k] = indices.shape as [number, number];
    const { order, offsets } = expertOrder(indices.view([N * k], [1], indices.offset), this.numExperts);
    const bounds = toHostI32(offsets), first = bounds[local.first]!, M = bounds[local.first + local.count]! - first;
    const owned = order.view([M], [1], order.offset + first);
    const tokenOfRow = fromHost(be, Array.from(toHostI32(owned), (s) => Math.floor(s / k)), [M], 'i32');
    const sortedWeights = gatherRows(reshape(weights, [N * k, 1]), owned, null);
    const counts = Array.from({ length: local.count }, (_, i) => bounds[local.first + i + 1]! - bounds[local.first + i]!);
    const ys = local.run(gatherRows(x, tokenOfRow, null), counts);
    return scatterAddRows(ys, tokenOfRow, sortedWeights, N);
  }
}

describe('the tiny model: loss and gradients against the scatter-add composition', () => {
  const c = parseDeepseekV2Config({ ...TINY_CONFIG_JSON, num_hidden_layers: 3, num_experts_per_tok: 3 }, 'expert rows test');
  for (const dtype of ['f32', 'bf16'] as const) {
    for (const experts of [[0, 8], [2, 5]] as const) {
      test(`${dtype}, experts [${experts[0]}, ${experts[1]})`, () => {
        const B = 2, S = 7;
        const ids = Array.from({ length: B * S }, (_, i) => (i * 37 + 5) % c.vocab_size);
        const labels = ids.map((t, i) => (i % S === S - 1 ? -100 : (t * 11 + 3) % c.vocab_size));
        const result = (hook: ExpertDispatchHook | null) => {
          const m = new DeepseekV2(c, be, dtype, { ...wholeModel(c), experts });
          m.initialize(21);
          m.expertDispatch = hook;
          const loss = tidy(() => {
            const r = m.forward(fromHost(be, ids, [B, S], 'i32'), fromHost(be, labels, [B, S], 'i32'), B * (S - 1), { form: 'micro-batch', alpha: 0.01 });
            const total = add(r.crossEntropy, r.loadBalance);
            const v = item(total);
            backward(total);
            return v;
          });
          const grads = new Map(namedParameters(m).map(({ name, param }) => { settleGrad(param.grad); return [name, toHostF32(param.grad)]; }));
          m.dispose();
          return { loss, grads };
        };
        const old = result(new ScatterAddDispatch(c.n_routed_experts)), fresh = result(null);
        assert.ok(Number.isFinite(old.loss));
        assert.equal(fresh.loss, old.loss, 'loss');
        let routed = 0;
        for (const [name, want] of old.grads) {
          assertSame(fresh.grads.get(name)!, want, name);
          if (name.includes('mlp.experts.') || name.includes('mlp.gate.')) routed += want.some((v) => v !== 0) ? 1 : 0;
        }
        assert.ok(routed > 0, 'routed experts and routers get gradients');
      });
    }
  }
});
