// Finite-difference gradient checking for the CPU backend in f32. A function of some f32 leaf
// tensors (returning one tensor or several) is turned into a scalar by a fixed random projection,
// loss = Σ_outputs sum(out ⊙ R), so every output element contributes with a distinct weight. The
// autograd gradient (backward → leaf.grad) is compared against central differences of the same
// scalar, evaluated on the host in float64 from the f32 outputs.
//
// Tolerance: relative error ‖g − g_fd‖ / ‖g_fd‖ < 1e-2. With inputs of order 1 and eps = 1e-2,
// the central difference's truncation error is eps²·|f'''|/6 ≈ 1e-5 relative, and the f32
// rounding of each forward evaluation (a few ulp of Σ|terms|, ~1e-6 relative) divided by 2·eps
// adds ~1e-4; 1e-2 leaves a wide margin for those while a wrong rule (a missing term, a sign, a
// factor, a transposed index) gives errors of order 1.
import type { Backend } from '../../src/backend/backend.js';
import { backward } from '../../src/autograd/backward.js';
import { noGrad } from '../../src/autograd/tape.js';
import { fromHost, toHostF32 } from '../../src/ops/create.js';
import { add, mul } from '../../src/ops/elementwise.js';
import { sumAll } from '../../src/ops/reduce.js';
import { tidy } from '../../src/tensor/scope.js';
import { emptyTensor, type Tensor } from '../../src/tensor/tensor.js';
import { Rng } from '../../src/nn/rng.js';

/** Deterministic random values: N(0,1)·scale + shift. */
export function randomValues(n: number, seed: number, scale = 1, shift = 0): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * scale + shift;
  return out;
}

/** Values bounded away from zero (|v| in [0.5, 1.5], random sign): safe denominators. */
export function awayFromZero(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (0.5 + rng.uniform()) * (rng.uniform() < 0.5 ? -1 : 1);
  return out;
}

export interface GradCheckInput {
  shape: number[];
  values: Float32Array;
  /** Give the leaf a preallocated f32 grad filled with this value (tests fused accumulation paths). */
  preallocatedGrad?: number;
}

export interface GradCheckResult {
  /** Per input: ‖g − g_fd‖ / ‖g_fd‖ (absolute ‖g − g_fd‖ when ‖g_fd‖ < 1e-6). */
  relErrors: number[];
  autograd: Float32Array[];
  finiteDiff: Float64Array[];
  /** Backend live bytes after the check minus before (0 when every rule frees what it made). */
  leakedBytes: number;
}

type Outputs = Tensor | readonly Tensor[];

function asList(o: Outputs): readonly Tensor[] { return Array.isArray(o) ? o : [o as Tensor]; }

/**
 * Checks fn's gradients with respect to every input. fn receives the leaves (f32, requiresGrad)
 * and returns the output(s) to differentiate; tensors it needs without gradients are captured.
 */
export function gradCheck(backend: Backend, inputs: readonly GradCheckInput[], fn: (leaves: Tensor[]) => Outputs, eps = 1e-2): GradCheckResult {
  const before = backend.memoryStats().liveBytes;
  // Projection weights, fixed per output shape (drawn on the first forward).
  let projections: Float32Array[] | null = null;
  const project = (outs: readonly Tensor[]): number => {
    if (!projections) projections = outs.map((o, i) => randomValues(o.size, 1000 + i));
    let s = 0;
    outs.forEach((o, i) => {
      const v = toHostF32(o), r = projections![i]!;
      for (let j = 0; j < v.length; j++) s += v[j]! * r[j]!;
    });
    return s;
  };

  const autograd: Float32Array[] = [];
  tidy(() => {
    const leaves = inputs.map((inp) => {
      const t = fromHost(backend, inp.values, inp.shape, 'f32');
      t.requiresGrad = true;
      if (inp.preallocatedGrad !== undefined) {
        const g = emptyTensor(backend, inp.shape, 'f32');
        backend.fill(g, inp.preallocatedGrad);
        t.grad = g;
      }
      return t;
    });
    const outs = asList(fn(leaves));
    project(outs);
    let loss: Tensor | null = null;
    for (let i = 0; i < outs.length; i++) {
      const o = outs[i]!;
      const r = fromHost(backend, projections![i]!, o.shape, 'f32');
      const term = sumAll(mul(o, r));
      loss = loss ? add(loss, term) : term;
    }
    if (!loss) throw new Error('gradCheck: fn returned no outputs');
    backward(loss);
    leaves.forEach((l, i) => {
      const g = l.grad ? toHostF32(l.grad) : new Float32Array(l.size);
      const pre = inputs[i]!.preallocatedGrad;
      if (pre !== undefined) for (let j = 0; j < g.length; j++) g[j] = g[j]! - pre;
      l.grad?.dispose();
      l.grad = null;
      autograd.push(g);
    });
  });

  const evaluate = (vals: Float32Array[]): number => tidy(() => noGrad(() => {
    const leaves = inputs.map((inp, i) => fromHost(backend, vals[i]!, inp.shape, 'f32'));
    return project(asList(fn(leaves)));
  }));

  const base = inputs.map((inp) => Float32Array.from(inp.values));
  const finiteDiff = inputs.map((inp, k) => {
    const fd = new Float64Array(inp.values.length);
    const x = base[k]!;
    for (let i = 0; i < x.length; i++) {
      const orig = x[i]!;
      x[i] = orig + eps; const up = evaluate(base);
      x[i] = orig - eps; const down = evaluate(base);
      x[i] = orig;
      // The step actually taken in f32 (orig ± eps rounds).
      fd[i] = (up - down) / (Math.fround(orig + eps) - Math.fround(orig - eps));
    }
    return fd;
  });

  const relErrors = autograd.map((g, k) => {
    const fd = finiteDiff[k]!;
    let num = 0, den = 0;
    for (let i = 0; i < g.length; i++) { num += (g[i]! - fd[i]!) ** 2; den += fd[i]! ** 2; }
    return den < 1e-12 ? Math.sqrt(num) : Math.sqrt(num / den);
  });
  return { relErrors, autograd, finiteDiff, leakedBytes: backend.memoryStats().liveBytes - before };
}

export const GRAD_TOLERANCE = 1e-2;
