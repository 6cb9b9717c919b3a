// Activations recomputed in backward instead of kept: an op whose output is cheap to compute
// again from tensors that stay alive anyway (SwiGLU from its saved gate and up; gathered rows
// from the layer's normalised input and the routing indices) marks that output recomputable.
// When the forward's last handle on it goes, only the views autograd saved for backward are left,
// and the storage gives its memory back (tensor/storage.ts); the first backward rule that reads
// it computes it again (GradNode.prepare), bit for bit, and it lives until the last saved view is
// released. The cost is one more pass of the op in backward; the gain is the output's bytes from
// its layer's forward until its backward, which is where the step's memory peaks.
import { keep } from '../tensor/scope.js';
import { Tensor } from '../tensor/tensor.js';
import { isRecording } from './tape.js';

/**
 * What an op recomputes: 'copy', an output that is a copy of a tensor kept anyway (gathered rows,
 * a widening cast: no arithmetic, only memory), or 'compute', one that takes arithmetic (SwiGLU).
 */
export type RecomputeKind = 'copy' | 'compute';

let enabled: ReadonlySet<RecomputeKind> = new Set(['copy', 'compute']);

/**
 * Runs fn with only these kinds of marks taking effect (train option recompute: 'cheap' both,
 * 'copies' the copies only, 'none' neither; 'layers' none while a whole layer is computed again in
 * backward, rerun.ts, whose backward follows at once).
 */
export function withRecomputeMarks<T>(kinds: readonly RecomputeKind[], fn: () => T): T {
  const before = enabled;
  enabled = new Set(kinds);
  try { return fn(); } finally { enabled = before; }
}

/**
 * Marks out (a whole, contiguous tensor in a storage of its own) as recomputable by
 * compute(dst, sources), which must write exactly what produced out from the same sources. The
 * sources are held until out is recomputed or released. No-op when gradients are not recorded.
 */
export function markRecomputable(out: Tensor, sources: readonly Tensor[], compute: (dst: Tensor, sources: readonly Tensor[]) => void,
                                 kind: RecomputeKind): void {
  if (!enabled.has(kind) || !isRecording() || out.offset !== 0 || !out.isContiguous() || out.bytes !== out.storage.bytes) return;
  const held = sources.map((s) => keep(s.view(s.shape, s.strides, s.offset)));
  const { shape, strides, dtype } = out;
  out.storage.setRebuild({
    run: (storage) => {
      storage.retain();
      const dst = keep(new Tensor(storage, shape, strides, 0, dtype));
      compute(dst, held);
      dst.dispose();
    },
    release: () => { for (const s of held) s.dispose(); },
  });
}
