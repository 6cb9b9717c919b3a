// The pipeline executor in one process (pp = 1, LocalCommunicator): 1F1B is the whole model as
// one stage; DualPipeV holds both virtual stages on rank 0, so every activation and gradient
// crosses the V's turn by the local hand-off. Both must give the single-process step's losses
// and gradients bit for bit, and leave no tensor behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { LocalCommunicator } from '../src/parallel/local_communicator.js';
import type { LoadBalance } from '../src/models/deepseek_v2.js';
import { gradientDifference, pipelineOf, singleProcess } from './helpers/pipeline_fixture.js';
import { assertNoLeak } from './helpers/memory.js';

const be = new CpuBackend();
const lb: LoadBalance = { form: 'sequence', alpha: 0.01 };

for (const kind of ['1f1b', 'dualpipev'] as const) {
  test(`pp 1, ${kind}, 3 micro-batches: the single-process losses and gradients, no leak`, () => {
    const want = singleProcess(be, 3, lb, 'f32');
    const pipe = pipelineOf(new LocalCommunicator(), be, kind, 3, lb, 'f32');
    assert.deepEqual(pipe.chunks.map((c) => c.stage), kind === '1f1b' ? [0] : [0, 1]);
    assertNoLeak(be, () => {
      const got = pipe.step();
      assert.equal(got.crossEntropySum, want.ce);
      assert.ok(Math.abs(got.loadBalanceSum - want.lb) <= 1e-6 * want.lb, `load balance ${got.loadBalanceSum} vs ${want.lb}`);
      const diff = gradientDifference(pipe.chunks, want);
      assert.equal(diff.worst, 0, `gradient${diff.where}`);
    }, 1);
    pipe.dispose();
  });
}
