// Gradient squares left by their writer for the norm (autograd/grad_squares.ts, train/grad_square_sum.ts)
// on the CPU. The CPU backend declines the squares (a sum there costs what the norm's pass costs),
// so these tests use a CPU backend that gives them (SquaresCpu: the Σ of the squares of what the
// grouped weight product wrote, and of the embedding rows its backward named, each plus `bias`):
// - the ledger: a record covers its group; a write of any of its gradients (claimGradBeta,
//   settleGrad's fill, a grouped product) or a zero mark drops the whole group; turning recording
//   off or on drops every record; the ledger takes nothing while recording is off;
// - groupedLinear records an overwrite (every expert's gradient marked zero) with the backend's
//   sum, and a second backward (an accumulate) leaves no record; no record when the backend declines;
// - the trainer, tiny model, 3 steps: with the squares its losses, norms and weights match the
//   plain CPU run's (norms within 1e-6 relative: only the order of the f32 adds differs); with
//   one micro-batch the records are what the norm reads (a bias in the backend's sums moves the
//   norm by exactly that much), with three micro-batches (accumulating writes) they are not; the
//   embedding is asked for its squares at each step's first micro-batch only (its gradient is zero
//   outside the rows named only then);
// - GradSquareSum ignores a record whose gradients are not all its own.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { claimGradBeta, markGradZero, settleGrad } from '../src/autograd/lazy_grad_zero.js';
import { isRecordingGradSquares, recordGradSquares, setGradSquaresRecording, takeGradSquares } from '../src/autograd/grad_squares.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { Param } from '../src/nn/param.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32, toHostI32 } from '../src/ops/create.js';
import { groupedLinear } from '../src/ops/grouped_linear.js';
import { tidy } from '../src/tensor/scope.js';
import { emptyTensor, type Tensor } from '../src/tensor/tensor.js';
import { GradSquareSum } from '../src/train/grad_square_sum.js';
import { trainTiny } from './helpers/train_tiny.js';

/** A CPU backend whose grouped weight product gives the squares of what it wrote (+ bias). */
class SquaresCpu extends CpuBackend {
  given = 0;
  constructor(private readonly bias = 0) { super(); }
  override groupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1 = 1, squares?: Tensor): boolean {
    super.groupedLinearWeightGrad(dweights, dy, x, offsets, beta);
    if (!squares) return false;
    let s = this.bias;
    for (const g of dweights) for (const v of toHostF32(g)) s += v * v;
    this.write(squares, new Float32Array([s]));
    this.given++;
    return true;
  }

  /** As CUDA's: the squares of the rows ids name, each once (+ bias); right only when the rest is zero. */
  override embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor, squares?: Tensor): boolean {
    super.embeddingBackward(dweight, ids, dout);
    if (!squares) return false;
    const D = dweight.shape[1]!, g = toHostF32(dweight);
    let s = this.bias;
    for (const id of new Set(toHostI32(ids))) for (let d = 0; d < D; d++) s += g[id * D + d]! ** 2;
    this.write(squares, new Float32Array([s]));
    this.embeddingGiven++;
    return true;
  }
  embeddingGiven = 0;
}

const cpu = new SquaresCpu();
const sumSq = (ts: readonly Tensor[]) => ts.reduce((s, t) => s + toHostF32(t).reduce((a, v) => a + v * v, 0), 0);
const scalar = (v: number) => fromHost(cpu, [v], [1], 'f32');

function normals(seed: number, n: number, s = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => s * rng.normal());
}

test('the ledger: a write or zero mark of one gradient drops its whole group; recording off or on drops every record', () => {
  const [a, b, c] = [0, 1, 2].map(() => fromHost(cpu, normals(1, 4), [4], 'f32')) as [Tensor, Tensor, Tensor];
  setGradSquaresRecording(false);
  recordGradSquares([a, b], scalar(1));
  assert.equal(takeGradSquares().length, 0, 'nothing is recorded while recording is off');
  setGradSquaresRecording(true);
  assert.ok(isRecordingGradSquares());
  const writes: [string, (g: Tensor) => void][] = [
    ['claimGradBeta', (g) => claimGradBeta(g)],
    ['markGradZero', (g) => markGradZero(g)],
    ['settleGrad of a marked gradient', (g) => { markGradZero(g); recordGradSquares([a, b], scalar(2)); settleGrad(g); }],
    ['a newer record', (g) => recordGradSquares([g, c], scalar(3))],
  ];
  for (const [what, write] of writes) {
    recordGradSquares([a, b], scalar(2));
    write(b);
    const left = takeGradSquares();
    const covering = left.filter((r) => r.grads.includes(a));
    assert.equal(covering.length, 0, `${what}: the group of a and b is gone`);
    for (const r of left) r.squares.dispose();
  }
  recordGradSquares([a, b], scalar(4));
  settleGrad(a);  // not marked: no write, the record stays
  const kept = takeGradSquares();
  assert.equal(kept.length, 1);
  assert.deepEqual(kept[0]!.grads, [a, b]);
  assert.equal(toHostF32(kept[0]!.squares)[0], 4);
  assert.equal(takeGradSquares().length, 0, 'taking empties the ledger');
  kept[0]!.squares.dispose();
  recordGradSquares([a], scalar(5));
  setGradSquaresRecording(true);
  assert.equal(takeGradSquares().length, 0, 'turning recording on drops the old records');
  setGradSquaresRecording(false);
  for (const t of [a, b, c]) t.dispose();
});

test('groupedLinear records an overwrite of every expert gradient with the backend sum; an accumulate or a declining backend leaves none', () => {
  const counts = [3, 0, 5, 2];
  const off = fromHost(cpu, [4, 7, 7, 12, 14], [5], 'i32');
  for (const backend of [cpu, new CpuBackend()]) {
    const ps = counts.map((_, i) => {
      const p = new Param([6, 8], backend, 'bf16');
      p.load(normals(10 + i, p.size, 0.5));
      backend.fill(p.grad, Number.NaN);
      markGradZero(p.grad);
      return p;
    });
    setGradSquaresRecording(true);
    const pass = () => tidy(() => {
      const y = groupedLinear(fromHost(backend, normals(3, 80), [10, 8], 'bf16'), ps.map((p) => p.value), off);
      backward(y, fromHost(backend, normals(7, y.size), y.shape, y.dtype));
    });
    pass();
    const first = takeGradSquares();
    if (backend === cpu) {
      assert.equal(first.length, 1, 'one record for the product');
      assert.deepEqual(first[0]!.grads, ps.map((p) => p.grad));
      const want = sumSq(ps.map((p) => p.grad));
      assert.ok(want > 0 && Math.abs(toHostF32(first[0]!.squares)[0]! - want) <= 1e-6 * want, 'the recorded sum is Σ g² of the written gradients');
    } else {
      assert.equal(first.length, 0, 'a backend that declines leaves no record');
    }
    for (const r of first) r.squares.dispose();
    pass();  // records again (nothing marked now: beta 1)
    pass();
    assert.equal(takeGradSquares().length, 0, 'accumulating writes leave no record');
    setGradSquaresRecording(false);
    for (const p of ps) p.dispose();
  }
  off.dispose();
});

const model = tinyConfig();
const train = (backend: CpuBackend, micro: number) => trainTiny(backend, micro);

for (const micro of [1, 3]) {
  test(`trainer, ${micro} micro-batch${micro > 1 ? 'es' : ''}: the norm with the writers' squares matches the plain run; the records are ${micro === 1 ? '' : 'not '}what it reads`, () => {
    const plain = train(new CpuBackend(), micro);
    const withSquares = new SquaresCpu();
    const got = train(withSquares, micro);
    assert.ok(withSquares.given > 0, 'the backend was asked for squares');
    // The embedding's gradient is zero before the step's first scatter only: asked once a step.
    assert.equal(withSquares.embeddingGiven, 3, 'the embedding was asked for its squares at each step\'s first micro-batch');
    got.metrics.forEach((m, s) => {
      const p = plain.metrics[s]!;
      if (s === 0) assert.ok(Object.is(m.crossEntropy, p.crossEntropy), 'step 1 loss bit for bit');
      assert.ok(Math.abs(m.crossEntropy - p.crossEntropy) <= 1e-5 * p.crossEntropy, `step ${s + 1} loss ${m.crossEntropy} vs ${p.crossEntropy}`);
      assert.ok(Math.abs(m.gradientNorm - p.gradientNorm) <= 1e-6 * p.gradientNorm, `step ${s + 1} norm ${m.gradientNorm} vs ${p.gradientNorm}`);
    });
    got.weights.forEach((w, i) => {
      const want = plain.weights[i]!;
      for (let j = 0; j < w.length; j++) {
        if (!(Math.abs(w[j]! - want[j]!) <= 1e-5 * (Math.abs(want[j]!) + 1e-3))) assert.fail(`checkpoint tensor ${i} element ${j}: ${w[j]} vs ${want[j]}`);
      }
    });
    // A bias in each product's sum moves the norm²: by bias × the products in the step where the records are read.
    const bias = 1000, biased = train(new SquaresCpu(bias), micro);
    const n = plain.metrics[0]!.gradientNorm, b = biased.metrics[0]!.gradientNorm;
    // Each expert weight product's record, and the embedding's.
    const products = 3 * (model.num_hidden_layers - model.first_k_dense_replace) + 1;
    const want = micro === 1 ? Math.sqrt(n * n + bias * products) : n;
    assert.ok(Math.abs(b - want) <= 1e-5 * want, `step 1 norm ${b}, expected ${want} (plain ${n}, ${products} records: expert products and the embedding)`);
  });
}

test('GradSquareSum reads a record only if all its gradients are its own', () => {
  const grads = [0, 1, 2].map((i) => fromHost(cpu, normals(20 + i, 5), [5], 'f32'));
  const stranger = fromHost(cpu, normals(30, 5), [5], 'f32');
  const sum = new GradSquareSum(cpu, grads);
  const out = emptyTensor(cpu, [1], 'f32');
  const close = (got: number, want: number, what: string) => assert.ok(Math.abs(got - want) <= 1e-6 * want, `${what}: ${got} vs ${want}`);
  setGradSquaresRecording(true);
  recordGradSquares([grads[0]!, grads[1]!], scalar(100));
  sum.sum(out);
  close(toHostF32(out)[0]!, 100 + sumSq([grads[2]!]), 'its own record replaces the two gradients');
  assert.equal(sum.lastReadBytes, grads[2]!.bytes, 'only the unrecorded gradient was read');
  recordGradSquares([grads[0]!, stranger], scalar(100));
  sum.sum(out);
  close(toHostF32(out)[0]!, sumSq(grads), 'a record with a stranger is ignored');
  sum.sum(out);
  close(toHostF32(out)[0]!, sumSq(grads), 'no records: every gradient');
  assert.equal(sum.lastReadBytes, 3 * grads[0]!.bytes);
  setGradSquaresRecording(false);
  sum.dispose();
  for (const t of [...grads, stranger, out]) t.dispose();
});
