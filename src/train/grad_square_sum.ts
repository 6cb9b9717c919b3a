// The step's Σ g² for the gradient norm: one multi-tensor pass per gradient dtype
// (Backend.sumSquaresMulti), except over the gradients whose writer already left their sum
// (autograd/grad_squares.ts: the expert weight products), whose sums are added instead. In a
// single-GPU bench step that skips the expert gradients, ~74% of the bytes the pass reads.
//
// The lists without the recorded gradients are built once for a set of recorded gradients and
// kept while the set stays the same, which it does from step to step: a TensorList uploads its
// device table on first use.
import type { Backend } from '../backend/backend.js';
import { TensorList } from '../backend/tensor_list.js';
import { takeGradSquares } from '../autograd/grad_squares.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { keep } from '../tensor/scope.js';

export class GradSquareSum {
  private readonly all: TensorList<Tensor>[];
  private readonly index: Map<Tensor, number>;
  private rest: { key: string; lists: TensorList<Tensor>[] } | null = null;
  private readonly scratch: Tensor;
  /** Gradient bytes the last sum read (the recorded gradients' squares cost nothing here). */
  lastReadBytes = 0;

  constructor(private readonly backend: Backend, private readonly grads: readonly Tensor[]) {
    this.all = listsByDtype(grads);
    this.index = new Map(grads.map((g, i) => [g, i]));
    this.scratch = keep(emptyTensor(backend, [1], 'f32'));
  }

  /** out (f32 [1]) = Σ of the squares of every element of every gradient; takes the ledger's records. */
  sum(out: Tensor): void {
    const records = takeGradSquares();
    // A record counts only if every gradient it covers is one of this sum's.
    const used = records.filter((r) => r.grads.every((g) => this.index.has(g)));
    const covered = new Set(used.flatMap((r) => r.grads.map((g) => this.index.get(g)!)));
    const lists = covered.size === 0 ? this.all : this.listsWithout(covered);
    this.lastReadBytes = lists.reduce((n, l) => n + l.entries.reduce((m, t) => m + t.bytes, 0), 0);
    lists.forEach((list, i) => {
      if (i === 0) { this.backend.sumSquaresMulti(out, list); return; }
      this.backend.sumSquaresMulti(this.scratch, list);
      this.backend.binary('add', out, out, this.scratch);
    });
    if (lists.length === 0) this.backend.fill(out, 0);
    for (const r of used) this.backend.binary('add', out, out, r.squares);
    for (const r of records) r.squares.dispose();
  }

  dispose(): void {
    for (const l of this.all) l.dispose();
    for (const l of this.rest?.lists ?? []) l.dispose();
    this.scratch.dispose();
  }

  private listsWithout(covered: Set<number>): TensorList<Tensor>[] {
    const key = [...covered].sort((a, b) => a - b).join(',');
    if (this.rest?.key !== key) {
      for (const l of this.rest?.lists ?? []) l.dispose();
      this.rest = { key, lists: listsByDtype(this.grads.filter((_, i) => !covered.has(i))) };
    }
    return this.rest.lists;
  }
}

/** One list per dtype present (f32 first), as Backend.sumSquaresMulti takes one dtype a list. */
function listsByDtype(grads: readonly Tensor[]): TensorList<Tensor>[] {
  return (['f32', 'bf16'] as const).map((dt) => grads.filter((g) => g.dtype === dt)).filter((l) => l.length > 0).map((l) => new TensorList(l));
}
