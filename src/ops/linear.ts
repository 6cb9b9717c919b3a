// Matrix products: linear layers (x·Wᵀ) and batched matmul, with fused weight-gradient
// accumulation: when W is a parameter leaf with a preallocated f32 grad, the backward writes
// dW straight into it instead of materialising a separate gradient: beta = 1, or beta = 0 for
// the first write of a step into a gradient marked logically zero (autograd/lazy_grad_zero.ts).
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { accumulateLeafGrad } from '../autograd/backward.js';
import { claimGradBeta } from '../autograd/lazy_grad_zero.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

function rows2d(x: Tensor): Tensor {
  const K = x.shape[x.rank - 1]!;
  if (!x.isContiguous()) throw new Error(`internal: linear input must be contiguous, got ${x}`);
  return x.view([x.size / K, K], [K, 1], x.offset);
}

/** y[..., N] = x[..., K] · W[N, K]ᵀ in x's dtype (f32 accumulation). */
export function linear(x: Tensor, w: Tensor): Tensor {
  const backend = backendOf(x);
  const K = x.shape[x.rank - 1]!, N = w.shape[0]!;
  if (w.shape[1] !== K) throw new Error(`internal: linear of [${x.shape}] with weight [${w.shape}]`);
  const x2 = rows2d(x);
  const out = emptyTensor(backend, [...x.shape.slice(0, -1), N], x.dtype);
  const o2 = out.view([x2.shape[0]!, N], [N, 1], 0);
  if (x2.shape[0]! > 0) backend.matmul(o2, x2, w, { transB: true });
  o2.dispose();
  const node = beginNode('linear', [x, w], 1);
  if (node) {
    const sx = node.save(x2), sw = node.save(w);
    node.rule = ([g]) => {
      const g2 = rows2d(g!);
      if (g2.shape[0] === 0) { g2.dispose(); return [needsGrad(x) ? emptyTensor(backend, x.shape, x.dtype) : null, null]; }
      let gx: Tensor | null = null;
      if (needsGrad(x)) {
        gx = emptyTensor(backend, x.shape, x.dtype);
        const gx2 = gx.view(sx.shape, [K, 1], 0);
        backend.matmul(gx2, g2, sw, {});
        gx2.dispose();
      }
      let gw: Tensor | null = null;
      if (needsGrad(w)) {
        if (w.requiresGrad && !w.gradLink && w.grad) {
          backend.matmul(w.grad, g2, sx, { transA: true, beta: claimGradBeta(w.grad) });
        } else {
          gw = emptyTensor(backend, w.shape, 'f32');
          backend.matmul(gw, g2, sx, { transA: true });
          if (w.requiresGrad && !w.gradLink) { accumulateLeafGrad(w, gw); gw.dispose(); gw = null; }
        }
      }
      g2.dispose();
      return [gx, gw];
    };
  }
  x2.dispose();
  linkOutputs(node, [out]);
  return out;
}

/** out[b] = a[b]·b[b] (optionally transposed) for rank-3 operands (differentiable). */
export function bmm(a: Tensor, b: Tensor, transB = false): Tensor {
  const backend = backendOf(a);
  const [B, M] = a.shape as [number, number, number];
  const N = transB ? b.shape[1]! : b.shape[2]!;
  const out = emptyTensor(backend, [B, M, N], a.dtype);
  backend.matmul(out, a, b, { transB });
  const node = beginNode('bmm', [a, b], 1);
  if (node) {
    const sa = node.save(a), sb = node.save(b);
    node.rule = ([g]) => {
      const ga = emptyTensor(backend, a.shape, a.dtype);
      backend.matmul(ga, g!, sb, { transB: !transB });
      const gb = emptyTensor(backend, b.shape, b.dtype);
      if (transB) backend.matmul(gb, g!, sa, { transA: true });
      else backend.matmul(gb, sa, g!, { transA: true });
      return [ga, gb];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
