// recompute=layers under the parallel layouts, on one simulated rank in this process
// (parallel/simulated_rank.ts: every collective a loopback copy): the rerun of a layer in
// backward (autograd/rerun.ts) sits inside the unit hooks (FSDP gathers the layer's weights again
// before its backward, then reduce-scatters its gradients), the pipeline schedules (several
// micro-batches' layers waiting for their backward, two parts on a DualPipeV rank), expert
// parallelism (the all-to-all runs again in the rerun) and context parallelism (the ring
// attention and the sequence counts' all-reduce run again). For each layout, 2 steps with
// recompute layers give the rank's losses, norms and its shards' weights bit for bit as recompute
// cheap: the same ops in the same order, only when they run differs. The collectives called in
// the second step are the same in kind and bytes, except for those a rerun repeats (all-to-all,
// cp's ring and all-reduce) which may only grow.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toHostF32 } from '../src/ops/create.js';
import { simulatedTraining, type SimCase } from './helpers/simulated_training.js';

async function run(c: SimCase, recompute: 'cheap' | 'layers') {
  const { metrics, stats, training, dist } = await simulatedTraining(c, { recompute });
  const weights = training.checkpointEntries().map((e) => toHostF32(e.tensor));
  training.dispose();
  await dist.close();
  return { metrics, stats, weights };
}

const CASES: SimCase[] = [
  { name: 'dp2 (FSDP), 2 micro-batches per replica', sizes: { pp: 1, dp: 2, cp: 1, ep: 1 }, rank: 0, kind: '1f1b', layers: 2, globalBatch: 4 },
  { name: 'ep2, 2 micro-batches per replica', sizes: { pp: 1, dp: 1, cp: 1, ep: 2 }, rank: 1, kind: '1f1b', layers: 2, globalBatch: 4 },
  { name: 'cp2', sizes: { pp: 1, dp: 1, cp: 2, ep: 1 }, rank: 1, kind: '1f1b', layers: 2, globalBatch: 2 },
  { name: 'pp2·dp2·ep2 1f1b, first stage', sizes: { pp: 2, dp: 2, cp: 1, ep: 2 }, rank: 0, kind: '1f1b', layers: 4, globalBatch: 8 },
  { name: 'pp2·dp2·ep2 dualpipev (two parts), last rank', sizes: { pp: 2, dp: 2, cp: 1, ep: 2 }, rank: 7, kind: 'dualpipev', layers: 4, globalBatch: 12 },
];

for (const c of CASES) {
  test(`recompute layers under ${c.name}: the rank's losses, norms and weights bit for bit as recompute cheap`, async (t) => {
    const cheap = await run(c, 'cheap'), layers = await run(c, 'layers');
    layers.metrics.forEach((m, s) => {
      for (const k of ['crossEntropy', 'loadBalance', 'gradientNorm'] as const) {
        assert.ok(Number.isFinite(m[k]), `step ${s + 1} ${k}: ${m[k]}`);
        assert.ok(Object.is(m[k], cheap.metrics[s]![k]), `step ${s + 1} ${k}: layers ${m[k]}, cheap ${cheap.metrics[s]![k]}`);
      }
    });
    layers.weights.forEach((w, i) => {
      const want = cheap.weights[i]!;
      assert.equal(w.length, want.length);
      for (let j = 0; j < w.length; j++) if (!Object.is(w[j], want[j])) assert.fail(`checkpoint tensor ${i} element ${j}: ${w[j]} vs ${want[j]}`);
    });
    const kinds = new Set([...Object.keys(cheap.stats), ...Object.keys(layers.stats)]) as Set<keyof typeof cheap.stats>;
    const seen: string[] = [];
    for (const kind of kinds) {
      const a = cheap.stats[kind], b = layers.stats[kind];
      seen.push(`${kind} ${a?.calls ?? 0}→${b?.calls ?? 0}`);
      if (kind === 'all-to-all' || kind === 'all-reduce' || kind === 'p2p') {
        assert.ok((b?.calls ?? 0) >= (a?.calls ?? 0), `${kind}: a rerun repeats these, never drops them`);
      } else {
        assert.deepEqual([b?.calls, b?.payloadBytes], [a?.calls, a?.payloadBytes], `${kind}: the same collectives`);
      }
    }
    t.diagnostic(`collective calls in step 2, cheap → layers: ${seen.join(', ')}`);
  });
}
