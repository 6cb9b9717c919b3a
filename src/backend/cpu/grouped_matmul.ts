// CPU reference of the grouped expert linear (Backend.groupedLinear and its two backward
// products): one cpuMatmul per expert on views of its row block, with exactly the operands and
// options ops/linear.ts passes for one expert, so the grouped path computes bit for bit what a
// per-expert linear computes.
import type { Tensor } from '../../tensor/tensor.js';
import { cpuMatmul } from './matmul.js';
import { readI32 } from './host.js';

/** Row blocks [start, end) of each expert, relative to offsets[0], checked against M rows. */
function blocks(offsets: Tensor, E: number, M: number, what: string): [number, number][] {
  const off = readI32(offsets);
  if (off.length !== E + 1) throw new Error(`internal: ${what}: offsets has ${off.length} entries for ${E} experts`);
  const out: [number, number][] = [];
  for (let e = 0; e < E; e++) {
    const s = off[e]! - off[0]!, en = off[e + 1]! - off[0]!;
    if (s < 0 || en < s || en > M) throw new Error(`internal: ${what}: expert ${e} rows [${s}, ${en}) outside [0, ${M}]`);
    out.push([s, en]);
  }
  if (E > 0 && out[E - 1]![1] !== M) throw new Error(`internal: ${what}: offsets cover ${out[E - 1]![1]} rows of ${M}`);
  return out;
}

function rows(t: Tensor, s: number, en: number): Tensor {
  const C = t.shape[1]!;
  return t.view([en - s, C], [C, 1], t.offset + s * C);
}

export function cpuGroupedLinear(out: Tensor, x: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
  blocks(offsets, weights.length, x.shape[0]!, 'groupedLinear').forEach(([s, en], e) => {
    if (en === s) return;
    const xv = rows(x, s, en), ov = rows(out, s, en);
    cpuMatmul(ov, xv, weights[e]!, { transB: true });
    xv.dispose(); ov.dispose();
  });
}

export function cpuGroupedLinearBackwardData(dx: Tensor, dy: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
  blocks(offsets, weights.length, dy.shape[0]!, 'groupedLinearBackwardData').forEach(([s, en], e) => {
    if (en === s) return;
    const gv = rows(dy, s, en), dv = rows(dx, s, en);
    cpuMatmul(dv, gv, weights[e]!, {});
    gv.dispose(); dv.dispose();
  });
}

/** beta 1 accumulates (an expert with no rows keeps its gradient); beta 0 overwrites (no rows: zeros, the product over no rows). */
export function cpuGroupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1): void {
  blocks(offsets, dweights.length, x.shape[0]!, 'groupedLinearWeightGrad').forEach(([s, en], e) => {
    if (en === s && beta === 1) return;
    const gv = rows(dy, s, en), xv = rows(x, s, en);
    cpuMatmul(dweights[e]!, gv, xv, { transA: true, beta });
    gv.dispose(); xv.dispose();
  });
}
