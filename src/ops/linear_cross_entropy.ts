// The lm_head and the mean cross-entropy as one op that never holds the logits of the whole
// micro-batch: over a 102,400-word vocabulary those are N·V·2 bytes (1.56 GiB for 8192 tokens in
// bf16), and the plain linear → crossEntropyMean pair keeps them for backward and then allocates
// their gradient beside them (3.1 GiB at the start of backward, where the step's memory peaks).
//
// Rows are processed in chunks of at most `chunkRows` (chosen by bytes, CHUNK_LOGIT_BYTES):
//   forward   per chunk: logits = x_c·Wᵀ (one buffer reused by every chunk) → loss rows and lse
//             (Backend.crossEntropy); the mean is one sum over the loss rows of all chunks.
//   backward  per chunk: the logits again (one lm_head GEMM more than the unchunked pair), turned
//             into dlogits in place (crossEntropyBackward allows dlogits = logits), then
//             dx_c = dlogits·W and dW += dlogitsᵀ·x_c (f32, straight into the parameter's grad
//             as linear.ts does).
// Why recompute rather than compute the gradients during forward (the loss's upstream gradient
// is a scalar, so dx and dW could be formed at forward time and scaled in backward): that needs a
// [V, D] f32 temporary for dW (800 MiB at DeepSeek-V2-Lite widths) alive from the head's forward
// to its backward — at the start of backward, when every layer's saved activations are alive —
// and one per micro-batch in flight on the head's pipeline stage (DualPipeV runs several
// forwards before their backwards), plus a pass over it to apply the scalar (≈1.3 ms). The
// recompute costs one GEMM of 2·N·D·V FLOPs (3.4 TFLOP, ≈4.5 ms at ~750 TFLOP/s for 8192 tokens)
// and no memory beyond one chunk, whatever the schedule.
// Under FSDP the lm_head's weights are gathered for the head unit's forward and again for its
// backward (fsdp.ts), so both passes read W as this op does.
//
// With a single chunk (every N ≤ chunkRows, the tiny demo model included) the arithmetic is that
// of linear → crossEntropyMean operation for operation, so results are bitwise the same. With
// several chunks, dW is accumulated chunk by chunk (a different f32 summation order over the
// rows; each row's logits, loss and dx are the same as unchunked on the CPU backend).
//
// keepLogits (the train option keep_logits) trades memory for that GEMM: forward computes all N
// rows' logits at once into one [N, V] buffer that stays alive until backward, and backward runs
// dx and dW as one GEMM each (no recompute, and dW's f32 gradient read and written once rather
// than once per chunk). It costs N·V·2 bytes held from the head's forward to its backward
// (1.56 GiB for 8192 tokens), at the start of backward where the step's memory peaks, against
// the chunk's 512 MiB. Forward turns the buffer into dlogits/count in the same pass that computes
// the loss (Backend.crossEntropyWithGrad: one read and one write of the logits, where a
// forward pass and a backward pass read them twice and write once: 1.68 GB less at 8192 tokens.
// Measured on an H100 (2026-12-07) it took 1.81 ms against the two kernels' 1.69, one block per SM
// with one load in flight per thread; with four loads ahead (kernels/cross_entropy.cu) 1.48 ms
// (2026-12-08, bench train --kernels), against a 1.12 ms floor), and backward applies the
// upstream gradient g as the two GEMMs' alpha.
// g is a device scalar: backward reads it (one wait on the device per micro-batch, before the
// head's backward products are queued). When g is a power of two (1/micro-batches: 1, ½, ¼, …)
// the results are bit for bit those of scaling dlogits by it, as the chunked path does.
//
// Shape legend: N rows (tokens), D hidden, V vocabulary, R rows of one chunk.
import { backendOf } from '../backend/backend.js';
import { beginNode, isRecording, linkOutputs, needsGrad } from '../autograd/tape.js';
import { accumulateLeafGrad } from '../autograd/backward.js';
import { claimGradBeta } from '../autograd/lazy_grad_zero.js';
import { bytesPerElement } from '../tensor/dtype.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { toHostF32 } from './create.js';

/**
 * Bytes of one chunk's logits. Larger chunks make dW's accumulation cheaper: each chunk's dW GEMM
 * reads and writes the whole [V, D] f32 gradient once (1.6 GB at V=102400, D=2048, ≈0.55 ms at
 * ~3 TB/s, next to its 2·R·D·V FLOPs: ≈1.4 ms for R = 2560 rows), so every chunk beyond the first
 * adds up to ≈0.55 ms. Smaller chunks lower the head's working set, which at the bench's shapes
 * stays below an MoE layer's forward working set (≈0.75 GiB) with 512 MiB: 2560 rows of bf16
 * logits at V=102400, four chunks for 8192 tokens.
 */
export const CHUNK_LOGIT_BYTES = 512 * 2 ** 20;

/** Rows per chunk for a vocabulary of V in x's dtype: a multiple of 64 when that many fit (GEMM tiles). */
export function linearCrossEntropyChunkRows(V: number, elementBytes: number): number {
  const rows = Math.floor(CHUNK_LOGIT_BYTES / Math.max(1, V * elementBytes));
  return rows >= 64 ? rows - (rows % 64) : Math.max(1, rows);
}

const rowsView = (t: Tensor, r0: number, rows: number, width: number): Tensor => t.view([rows, width], [width, 1], t.offset + r0 * width);
const vecView = (t: Tensor, r0: number, rows: number): Tensor => t.view([rows], [1], t.offset + r0);

/**
 * Mean over `count` labelled rows of the softmax cross-entropy of logits x·Wᵀ: x [N, D] (compute
 * dtype), w [V, D] (the lm_head), labels i32 [N] (a label < 0 is ignored) → [1] f32. `count` is
 * the number of labels ≥ 0, known to the caller from the data (no device read). `chunkRows`
 * overrides the byte-based chunk size (tests).
 */
export function linearCrossEntropyMean(x: Tensor, w: Tensor, labels: Tensor, count: number, chunkRows?: number, keepLogits = false): Tensor {
  const backend = backendOf(x);
  const D = x.shape[x.rank - 1]!, N = x.size / D, V = w.shape[0]!;
  if (w.shape[1] !== D || w.rank !== 2) throw new Error(`internal: linearCrossEntropyMean of [${x.shape}] with weight [${w.shape}]`);
  if (labels.size !== N) throw new Error(`internal: linearCrossEntropyMean of ${N} rows with ${labels.size} labels`);
  if (!x.isContiguous() || !labels.isContiguous()) throw new Error('internal: linearCrossEntropyMean takes contiguous x and labels');
  // Kept only where backward will read them (a forward without gradients chunks as usual).
  const keep = keepLogits && isRecording() && (needsGrad(x) || needsGrad(w));
  const R = keep ? Math.max(1, N) : Math.max(1, Math.min(chunkRows ?? linearCrossEntropyChunkRows(V, bytesPerElement(x.dtype)), N));
  const x2 = x.view([N, D], [D, 1], x.offset);
  const loss = emptyTensor(backend, [N], 'f32');
  const lse = emptyTensor(backend, [N], 'f32');
  const chunk = N > 0 ? emptyTensor(backend, [R, V], x.dtype) : null;
  forEachChunk(N, R, (r0, rows) => {
    const logits = chunk!.view([rows, V], [V, 1], 0), xc = rowsView(x2, r0, rows, D);
    const lc = vecView(loss, r0, rows), zc = vecView(lse, r0, rows), yc = vecView(labels, r0, rows);
    backend.matmul(logits, xc, w, { transB: true });
    if (keep) backend.crossEntropyWithGrad(lc, zc, logits, logits, yc, 1 / Math.max(count, 1));
    else backend.crossEntropy(lc, zc, logits, yc);
    for (const t of [logits, xc, lc, zc, yc]) t.dispose();
  });
  const mean = emptyTensor(backend, [1], 'f32');
  const lossRows = loss.view([1, N], [N, 1], 0);
  backend.sumLastDim(mean, lossRows);
  backend.unary('scale', mean, mean, 1 / Math.max(count, 1));
  lossRows.dispose(); loss.dispose();
  const node = beginNode('linearCrossEntropy', [x, w], 1);
  if (node) {
    // Kept: the whole micro-batch's logits (one chunk of N rows) go to backward.
    const sx = node.save(x2), sw = node.save(w), sy = node.save(labels), sz = node.save(lse), sl = keep && chunk ? node.save(chunk) : null;
    node.rule = ([g]) => {
      const gx = needsGrad(x) ? emptyTensor(backend, x.shape, x.dtype) : null;
      if (N === 0) return [gx, null];
      const gx2 = gx?.view([N, D], [D, 1], 0) ?? null;
      // dW goes straight into the parameter's f32 gradient when it has one (beta = 1 from the
      // first chunk on, unless that gradient is logically zero, autograd/lazy_grad_zero.ts: then
      // the first chunk overwrites it); otherwise into a gradient of its own that the first chunk overwrites.
      const direct = w.requiresGrad && !w.gradLink && w.grad !== null;
      const gw = !needsGrad(w) ? null : direct ? w.grad! : emptyTensor(backend, w.shape, 'f32');
      const buf = sl ?? emptyTensor(backend, [R, V], x.dtype);
      // Kept: the buffer already holds dlogits/count; g scales the products.
      const alpha = sl ? toHostF32(g!)[0]! : 1;
      forEachChunk(N, R, (r0, rows) => {
        const dlogits = buf.view([rows, V], [V, 1], buf.offset), xc = rowsView(sx, r0, rows, D);
        const yc = vecView(sy, r0, rows), zc = vecView(sz, r0, rows);
        if (!sl) {
          backend.matmul(dlogits, xc, sw, { transB: true });
          backend.crossEntropyBackward(dlogits, dlogits, yc, zc, g!, 1 / Math.max(count, 1));
        }
        if (gx2) { const gxc = rowsView(gx2, r0, rows, D); backend.matmul(gxc, dlogits, sw, { alpha }); gxc.dispose(); }
        if (gw) backend.matmul(gw, dlogits, xc, { transA: true, alpha, beta: direct ? claimGradBeta(gw) : r0 > 0 ? 1 : 0 });
        for (const t of [dlogits, xc, yc, zc]) t.dispose();
      });
      if (!sl) buf.dispose();
      gx2?.dispose();
      if (gw && !direct && w.requiresGrad && !w.gradLink) { accumulateLeafGrad(w, gw); gw.dispose(); return [gx, null]; }
      return [gx, direct ? null : gw];
    };
  }
  x2.dispose(); lse.dispose(); chunk?.dispose();
  linkOutputs(node, [mean]);
  return mean;
}

function forEachChunk(N: number, R: number, fn: (r0: number, rows: number) => void): void {
  for (let r0 = 0; r0 < N; r0 += R) fn(r0, Math.min(R, N - r0));
}
